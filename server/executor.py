"""Runs a validated prompt: the nodes its outputs need, in topological order, through the output cache.

Events use ComfyUI's WebSocket message types and payloads (``execution_start``, ``execution_cached``,
``executing``, ``progress``, ``executed``, ``execution_success``, ``execution_error``,
``execution_interrupted``) plus ``preview`` (``{"node", "prompt_id", "image": PIL.Image}``) for latent
previews. A node's exception fails its prompt with the node id, type and message, and leaves the
executor ready for the next prompt. Before a node runs, every value linked into one of its sockets is
checked against the socket's type (:mod:`loom.nodes.kernel.sockets`): a wrong one fails the prompt with
``exception_type`` ``invalid_input_type`` and a message naming the node, the input and the problem,
and the node does not run. Interruption is checked before every node and on every progress tick.

Three kinds of failure are named in ``exception_type`` instead of the exception's class (which then goes
in ``exception_class``): ``invalid_input_type`` (the socket check above), ``oom`` (an out-of-memory error,
also one wrapped by the node: every model is unloaded and the output cache emptied before the next
prompt) and ``storage_error`` (the disk is full, read-only or over quota).

The fast path (``loom.nodes.runtime.fast``) is chosen per prompt by :func:`fast_setting`; a prompt run with it
on gets cache keys of its own, so its outputs never answer a prompt run without it (and the reverse).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from loom.nodes.kernel import config, services
from loom.nodes.kernel.progress import ExecutionContext, Interrupted, running_node
from loom.nodes.kernel.schema import (ALWAYS_RERUN, InputSpec, InputValueError, Node, NodeOutput, NodeRegistry,
                                     Socket, literal_kwargs)

from loom.server import events
from loom.server.cache import OutputCache, cache_key
from loom.server.queue import PromptState
from loom.server.validation import ValidationResult, is_link, validate_prompt

EventSink = Callable[[str, dict[str, Any]], None]

log = logging.getLogger(__name__)

# events recorded in ExecutionResult.messages (and so in history), as ComfyUI records them
RECORDED_EVENTS = ("execution_start", "execution_cached", "execution_success", "execution_error",
                   "execution_interrupted")


FAST_KEY = "fast"
"""Under ``extra_data["loom"]`` (an API client's choice) or a UI workflow's ``extra["loom"]`` (saved with the
workflow, sent by the editor in ``extra_data.extra_pnginfo.workflow``): ``true``/``false`` turns the fast path
on/off for that prompt, whatever the server's ``--fast``. ComfyUI ignores both keys."""


def fast_setting(extra_data: dict[str, Any]) -> bool | None:
    """A prompt's own fast-path setting: ``extra_data.loom.fast``, else its workflow's ``extra.loom.fast``,
    else None (the server's). Raises ValueError naming the key when the value is not a boolean."""
    places = [("extra_data.loom.fast", extra_data.get("loom"))]
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow") \
        if isinstance(extra_data.get("extra_pnginfo"), dict) else None
    if isinstance(workflow, dict) and isinstance(workflow.get("extra"), dict):
        places.append(("the workflow's extra.loom.fast", workflow["extra"].get("loom")))
    for where, settings in places:
        if settings is None:
            continue
        if not isinstance(settings, dict):
            raise ValueError(f"{where.rsplit('.', 1)[0]} must be an object, e.g. {{\"fast\": true}}")
        value = settings.get(FAST_KEY)
        if value is not None:
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, not {value!r}")
            return value
    return None


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class ExecutionResult:
    prompt_id: str
    status: str  # a PromptState: SUCCESS, ERROR or INTERRUPTED
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # output node id -> ui dict
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    validation: ValidationResult | None = None
    executed: list[str] = field(default_factory=list)  # nodes that ran
    cached: list[str] = field(default_factory=list)  # nodes answered from the cache
    timings: dict[str, float] = field(default_factory=dict)  # seconds per node that ran
    duration: float = 0.0
    worker: str | None = None  # which worker ran it ("process:<pid>"); None: this thread
    loaded_models: list[str] | None = None  # real paths of the model files its executor holds after it

    @property
    def ok(self) -> bool:
        return self.status == PromptState.SUCCESS


class NodeExecutionError(Exception):
    def __init__(self, node_id: str, class_type: str, cause: BaseException) -> None:
        super().__init__(f"node {node_id} ({class_type}): {type(cause).__name__}: {cause}")
        self.node_id = node_id
        self.class_type = class_type
        self.cause = cause


class Executor:
    def __init__(self, registry: NodeRegistry, cache: OutputCache | None = None) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else OutputCache()
        self._interrupt = threading.Event()
        self._lock = threading.Lock()  # one prompt at a time
        self.running_prompt_id: str | None = None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running prompt (only if it is ``prompt_id``, when given). True if one was running."""
        running = self.running_prompt_id
        if running is None or (prompt_id is not None and prompt_id != running):
            return False
        self._interrupt.set()
        return True

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        if free_memory:
            self.cache.clear()
        if unload_models or free_memory:
            services.free_models()

    def execute(self, prompt: dict[str, Any], prompt_id: str, *, extra_data: dict[str, Any] | None = None,
                outputs: list[str] | None = None, on_event: EventSink | None = None,
                cancel: CancelToken | None = None, validation: ValidationResult | None = None) -> ExecutionResult:
        with self._lock:
            self._interrupt.clear()
            self.running_prompt_id = prompt_id
            try:
                result = _Run(self, prompt, prompt_id, extra_data or {}, outputs, on_event, cancel,
                              validation).run()
            finally:
                self.running_prompt_id = None
                self._interrupt.clear()
            if result.error is not None and result.error.get("exception_type") == "oom":
                # the run (and the frames of its traceback) is gone now, so what it held can be freed
                log.warning("prompt %s ran out of memory in node %s: unloading every model and emptying "
                            "the output cache", prompt_id, result.error.get("node_id"))
                try:
                    self.free(unload_models=True, free_memory=True)
                except Exception:
                    log.exception("freeing memory after running out of it failed")
            result.loaded_models = self.loaded_models()
            return result

    def loaded_models(self) -> list[str]:
        """The real paths of the model files this process's model cache holds (what routing reads)."""
        return services.loaded_model_files()


class _Run:
    """One execution of one prompt."""

    def __init__(self, executor: Executor, prompt: dict, prompt_id: str, extra_data: dict,
                 outputs: list[str] | None, on_event: EventSink | None, cancel: CancelToken | None,
                 validation: ValidationResult | None) -> None:
        self.executor = executor
        self.registry = executor.registry
        self.cache = executor.cache
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.requested_outputs = outputs
        self.on_event = on_event
        self.cancel = cancel
        self.validation = validation
        self.result = ExecutionResult(prompt_id=prompt_id, status=PromptState.SUCCESS)
        self.values: dict[str, tuple[list[Any], ...]] = {}

    def cancelled(self) -> bool:
        return self.executor._interrupt.is_set() or (self.cancel is not None and self.cancel.is_set())

    def emit(self, event: str, data: dict[str, Any]) -> None:
        if event in RECORDED_EVENTS:
            self.result.messages.append((event, data))
        if self.on_event is not None:
            try:
                self.on_event(event, data)
            except Exception:  # a broken listener must not fail the prompt
                pass

    def run(self) -> ExecutionResult:
        started = time.perf_counter()
        validation = self.validation or validate_prompt(self.prompt, self.registry, self.requested_outputs)
        self.result.validation = validation
        if not validation.ok:
            self.result.status = PromptState.ERROR
            self.result.error = validation.error
            return self.result
        outputs = [o for o in validation.outputs if self.requested_outputs is None
                   or o in set(map(str, self.requested_outputs))]
        try:
            fast = fast_setting(self.extra_data)
        except ValueError as problem:
            self.result.status = PromptState.ERROR
            self.result.error = {"type": "invalid_prompt", "message": "Invalid extra_data", "details": str(problem),
                                 "extra_info": {}}
            return self.result
        with config.prompt_settings(fast=fast):
            return self._run_nodes(validation, outputs, started)

    def _run_nodes(self, validation: ValidationResult, outputs: list[str], started: float) -> ExecutionResult:
        self.emit(*events.execution_start(self.prompt_id))
        try:
            keys = self.compute_keys(validation)
            to_run = self.plan(validation, outputs, keys)
            cached = [n for n in validation.order if keys[n] in self.cache and n not in to_run]
            self.result.cached = cached
            self.emit(*events.execution_cached(cached, self.prompt_id))
            protected = set(keys.values())
            for node_id in cached:
                entry = self.cache.get(keys[node_id])
                if entry is None:
                    continue
                self.values[node_id] = entry.outputs
                if node_id in outputs:
                    self.result.outputs[node_id] = entry.ui or {}
                    self.emit(*events.executed(node_id, entry.ui, self.prompt_id))
            for node_id in validation.order:
                if node_id not in to_run:
                    continue
                if self.cancelled():
                    raise _Interrupt(node_id)
                self.run_node(node_id, validation, keys, protected, outputs)
        except _Interrupt as stop:
            self.interrupted(stop.node_id)
        except NodeExecutionError as failure:
            self.failed(failure)
        else:
            self.emit(*events.execution_success(self.prompt_id))
        finally:
            self.result.duration = time.perf_counter() - started
            self.emit(*events.executing(None, self.prompt_id))
        return self.result

    def compute_keys(self, validation: ValidationResult) -> dict[str, str]:
        fast = config.fast_enabled()
        keys: dict[str, str] = {}
        for node_id in validation.order:
            node = self.prompt[node_id]
            node_class = self.registry.get(node["class_type"])
            schema = node_class.schema()
            literals = validation.values.get(node_id, {})
            links = {name: (keys[str(v[0])], v[1]) for name, v in (node.get("inputs") or {}).items()
                     if is_link(v) and str(v[0]) in keys}
            fingerprint = None
            if node_class.has_fingerprint():
                fingerprint = _fingerprint(node_class, literals)
            unique = schema.not_idempotent or any(h.type == "UNIQUE_ID" for h in schema.hidden)
            keys[node_id] = cache_key(node["class_type"], literals, links, fingerprint,
                                      node_id if unique else None, variant="fast" if fast else None)
        return keys

    def plan(self, validation: ValidationResult, outputs: list[str], keys: dict[str, str]) -> set[str]:
        """Nodes that must run: not cached, and needed by an output through uncached nodes only."""
        to_run: set[str] = set()
        stack = list(outputs)
        seen: set[str] = set()
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            if keys[node_id] in self.cache:
                continue
            to_run.add(node_id)
            for value in (self.prompt[node_id].get("inputs") or {}).values():
                if is_link(value) and str(value[0]) in keys:
                    stack.append(str(value[0]))
        return to_run

    def run_node(self, node_id: str, validation: ValidationResult, keys: dict[str, str],
                 protected: set[str], outputs: list[str]) -> None:
        node = self.prompt[node_id]
        class_type = node["class_type"]
        node_class = self.registry.get(class_type)
        schema = node_class.schema()
        self.emit(*events.executing(node_id, self.prompt_id))
        inputs = self.gather_inputs(node_id, node, node_class, validation)
        self.check_sockets(node_id, class_type, schema.inputs, inputs)

        def on_progress(value: int, total: int, preview: Any) -> None:
            self.emit(*events.progress(value, total, self.prompt_id, node_id))
            if preview is not None:
                self.emit(*events.preview(node_id, self.prompt_id, preview))

        context = ExecutionContext(self.prompt_id, node_id, class_type, on_progress, self.cancelled)
        started = time.perf_counter()
        try:
            with running_node(context):
                values, ui = _call(node_class, inputs, schema.input_is_list)
        except Interrupted:
            raise _Interrupt(node_id) from None
        except Exception as exc:
            raise NodeExecutionError(node_id, class_type, exc) from exc
        self.result.timings[node_id] = time.perf_counter() - started
        self.result.executed.append(node_id)
        self.values[node_id] = values
        self.cache.put(keys[node_id], values, ui, protected=protected)
        if ui is not None or node_id in outputs:
            if node_id in outputs:
                self.result.outputs[node_id] = ui or {}
            self.emit(*events.executed(node_id, ui, self.prompt_id))

    def gather_inputs(self, node_id: str, node: dict, node_class: type[Node],
                      validation: ValidationResult) -> dict[str, list[Any]]:
        schema = node_class.schema()
        literals = validation.values.get(node_id, {})
        raw = node.get("inputs") or {}
        inputs: dict[str, list[Any]] = {}
        for spec in schema.inputs:
            value = raw.get(spec.name)
            if is_link(value):
                inputs[spec.name] = self.values[str(value[0])][value[1]]
            elif spec.name in literals:
                inputs[spec.name] = [literals[spec.name]]
        for hidden in schema.hidden:
            if hidden.type == "PROMPT":
                inputs[hidden.name] = [self.prompt]
            elif hidden.type == "EXTRA_PNGINFO":
                inputs[hidden.name] = [self.extra_data.get("extra_pnginfo")]
            elif hidden.type == "UNIQUE_ID":
                inputs[hidden.name] = [node_id]
        return inputs

    def check_sockets(self, node_id: str, class_type: str, specs: list[InputSpec],
                      inputs: dict[str, list[Any]]) -> None:
        """Refuse a value linked into a socket that is not of the socket's type (validation checked the
        literals), naming the node, the input, the problem and where the value came from."""
        raw = self.prompt[node_id].get("inputs") or {}
        for spec in specs:
            link = raw.get(spec.name)
            if not isinstance(spec, Socket) or not is_link(link):
                continue
            values = inputs.get(spec.name, [])
            for index, value in enumerate(values):
                problem = spec.check_linked(value)
                if problem is None:
                    continue
                item = f" (item {index} of the {len(values)} it received)" if len(values) > 1 else ""
                source = self.prompt[str(link[0])]["class_type"]
                message = (f"{class_type}: input '{spec.name}'{item} {problem} (it came from output {link[1]} of "
                           f"node {link[0]}, {source})")
                raise NodeExecutionError(node_id, class_type, InputValueError("invalid_input_type", message))

    def interrupted(self, node_id: str) -> None:
        self.result.status = PromptState.INTERRUPTED
        node = self.prompt.get(node_id, {})
        self.emit(*events.execution_interrupted(self.prompt_id, node_id, node.get("class_type"),
                                                self.result.executed))

    def failed(self, failure: NodeExecutionError) -> None:
        cause = failure.cause
        self.result.status = PromptState.ERROR
        message = str(cause) or type(cause).__name__
        exception_type = _qualified_name(type(cause))
        kind, reason = classify_failure(cause)
        extra: dict[str, Any] = {}
        if isinstance(cause, InputValueError):  # a socket received a value of another type
            extra["exception_class"] = exception_type
            exception_type = cause.code
        elif kind is not None:
            extra["exception_class"] = exception_type
            exception_type = kind
            message = _failure_message(failure.class_type, kind, reason)
        event, payload = events.execution_error(
            self.prompt_id, failure.node_id, failure.class_type, self.result.executed, message, exception_type,
            traceback.format_exception(type(cause), cause, cause.__traceback__), list(self.values), **extra)
        if kind == "oom":
            # the frames of the traceback hold the tensors that filled the memory: let them go
            _clear_frames(cause)
            self.values.clear()
        self.result.error = payload
        self.emit(event, payload)


_STORAGE_ERRNOS = frozenset(code for code in (getattr(errno, name, None) for name in
                                               ("ENOSPC", "EROFS", "EDQUOT", "EFBIG")) if code is not None)


def _qualified_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 32 and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class), named so that the server
    # need not import torch; older backends raise a RuntimeError that says so
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def classify_failure(error: BaseException) -> tuple[str | None, BaseException | None]:
    """``("oom" | "storage_error", the exception that says so)`` for a node's failure, or ``(None, None)``.

    The whole chain is searched, so a node that wraps an out-of-memory error in its own ``ValueError``
    (a loader naming its input) is still an out-of-memory failure."""
    for cause in _causes(error):
        if _is_oom(cause):
            return "oom", cause
    for cause in _causes(error):
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
            return "storage_error", cause
    return None, None


def _failure_message(class_type: str, kind: str, reason: BaseException | None) -> str:
    if kind == "oom":
        detail = str(reason).strip().splitlines()[0] if reason is not None and str(reason).strip() else ""
        name = _qualified_name(type(reason)) if reason is not None else "MemoryError"
        return (f"{class_type}: out of memory ({name}{': ' + detail if detail else ''}). Every model was "
                "unloaded and the cache emptied; try a smaller size or batch, or fewer models at once.")
    text = str(reason) if reason is not None else ""
    if isinstance(reason, OSError) and (not text or text.startswith("[Errno")):
        problem = (reason.strerror or "storage error").lower()
        what = f" {os.path.basename(str(reason.filename))}" if reason.filename else " a file"
        text = f"could not save{what}: {problem}"
    return f"{class_type}: {text}"


def _clear_frames(error: BaseException) -> None:
    for cause in _causes(error):
        try:
            traceback.clear_frames(cause.__traceback__)
        except Exception:  # pragma: no cover - a frame that cannot be cleared is only memory kept
            pass


class _Interrupt(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


def _fingerprint(node_class: type[Node], literals: dict[str, Any]) -> Any:
    kwargs = literal_kwargs(node_class.fingerprint, literals)
    if kwargs is None:
        return ALWAYS_RERUN  # it depends on a linked value
    try:
        return node_class.fingerprint(**kwargs)
    except Exception:
        return ALWAYS_RERUN  # unknown state


def _call(node_class: type[Node], inputs: dict[str, list[Any]],
          input_is_list: bool) -> tuple[tuple[list[Any], ...], dict[str, Any] | None]:
    """Call the node once per list element (ComfyUI's list semantics) and merge the results."""
    schema = node_class.schema()
    if input_is_list:
        calls = [inputs]
    else:
        count = max((len(v) for v in inputs.values()), default=1)
        if any(len(v) == 0 for v in inputs.values()):
            count = 0
        calls = [{name: values[min(i, len(values) - 1)] for name, values in inputs.items()}
                 for i in range(count)]
    merged: list[list[Any]] = [[] for _ in schema.outputs]
    ui: dict[str, Any] | None = None
    for kwargs in calls:
        returned = node_class.execute(**kwargs)
        if isinstance(returned, NodeOutput):
            values, call_ui = returned.values, returned.ui
        elif isinstance(returned, tuple):
            values, call_ui = returned, None
        elif returned is None and not schema.outputs:
            values, call_ui = (), None
        else:
            raise TypeError(f"execute() must return a tuple or NodeOutput, not {type(returned).__name__}")
        if len(values) != len(schema.outputs):
            raise TypeError(f"returned {len(values)} outputs, its schema declares {len(schema.outputs)}")
        for slot, (output, value) in enumerate(zip(schema.outputs, values)):
            if output.is_list:
                merged[slot].extend(value)
            else:
                merged[slot].append(value)
        if call_ui:
            ui = ui or {}
            for key, items in call_ui.items():
                if isinstance(items, list):
                    ui.setdefault(key, []).extend(items)
                else:
                    ui[key] = items
    return tuple(merged), ui
