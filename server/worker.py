"""The execution worker: one thread that takes prompts from the durable queue and runs them.

The event loop never runs a node. Events from the executor go to the submitting client's socket
through ``loop.call_soon_threadsafe`` (:class:`~server.clients.ClientHub`); previews are encoded to JPEG
here, off the loop. The terminal events of a prompt (``execution_success`` / ``execution_error`` /
``execution_interrupted`` and the final ``executing {node: null}``) are held back until the history entry
is written, so a client that reads ``/history/<id>`` on receiving them always finds it; then they go out in
ComfyUI's order: the terminal event, the ``status`` broadcast (queue_remaining after the prompt), and
``executing {node: null, prompt_id}``.

Like current ComfyUI, each change of a node's state is also sent as ``progress_state``
(``{prompt_id, nodes: {id: {value, max, state, node_id, prompt_id, display_node_id, parent_node_id,
real_node_id}}}``, every node that is not pending): before a node's ``executing``, with each ``progress``,
and when it finishes (after its ``executed``); a cached output node is finished after its ``executed``.

Latent previews follow ComfyUI's ``--preview-method`` (``preview_method``): ``"none"`` sends none;
``"auto"``, ``"latent2rgb"`` and ``"taesd"`` send them to every prompt's client (Loom computes the cheap
latent → RGB projection for all three: it has no TAESD decoder yet); ``None`` (the default, no flag) sends
them only to clients that asked with the ``latent_previews`` feature flag, as Loom's editor does. A
prompt's ``extra_data.preview_method`` (what newer ComfyUI frontends send) overrides the server's for that
prompt (``"default"`` keeps it). Output images of ``SaveImageWebsocket`` (a ``("PNG", image, max_size)``
preview, as in ComfyUI) are not previews: they go, as PNG and unthrottled, to the prompt's client always.

With several lanes (``ServerConfig.lanes``) there is one :class:`Worker` per lane, each with its own executor,
and a :class:`~server.routing.Router` chooses which pending prompt a free lane takes (model affinity); after
each prompt the lane tells the router which of the model files it ran it holds loaded now (the executor's
``ExecutionResult.loaded_models`` or ``loaded_models()``, real paths, mapped back to the ``folder/name`` keys
of the prompts' ``required_models``; an executor that reports neither is taken to hold what it ran).

Tracebacks of failing nodes go to the server log; clients get the node id, type and message only
(unless the server was started with ``expose_tracebacks``).
"""
from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any

from loom.server import events
from loom.server.clients import ClientHub
from loom.server.events import TERMINAL_EVENTS
from loom.server.queue import Outcome, PromptQueue, PromptState, QueueItem
from loom.server.security import scrub_paths

log = logging.getLogger("loom.server")

PREVIEW_MAX_SIZE = 512
PREVIEW_MIN_INTERVAL_S = 0.05
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")
"""ComfyUI's ``--preview-method`` values."""


def check_preview_method(value: str | None) -> str | None:
    if value is not None and value not in PREVIEW_METHODS:
        raise ValueError(f"preview_method must be one of {', '.join(PREVIEW_METHODS)}, not {value!r}")
    return value


def _real_path(model: str) -> str | None:
    """The real path of a ``folder/name`` model file here (None when it is not there)."""
    from loom.nodes.kernel import folders

    folder, _, name = model.partition("/")
    try:
        return str(folders.resolve(folder, name))
    except Exception:  # not there, not a model folder, not a valid name
        return None


def encode_png(image: Any, max_size: int | None = None) -> bytes:
    """A PIL image as PNG bytes (compress_level 1, as ComfyUI sends images), fitted inside ``max_size``."""
    if max_size is not None and max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ProgressState:
    """The per-node state map of one prompt, as ComfyUI's ``progress_state`` message carries it."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}
        self.running: str | None = None

    def start(self, node_id: str) -> dict[str, Any]:
        self.running = node_id
        return self._set(node_id, "running", 0.0, 1.0)

    def update(self, node_id: str, value: float, maximum: float) -> dict[str, Any]:
        return self._set(node_id, "running", value, maximum)

    def finish(self, node_id: str) -> dict[str, Any]:
        if self.running == node_id:
            self.running = None
        entry = self.nodes.get(node_id)
        maximum = entry["max"] if entry is not None else 1.0
        return self._set(node_id, "finished", maximum, maximum)

    def _set(self, node_id: str, state: str, value: float, maximum: float) -> dict[str, Any]:
        self.nodes[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                               "prompt_id": self.prompt_id, "display_node_id": node_id,
                               "parent_node_id": None, "real_node_id": node_id}
        return self.message()

    def message(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "nodes": {k: dict(v) for k, v in self.nodes.items()}}


def encode_preview(image: Any, max_size: int = PREVIEW_MAX_SIZE) -> bytes:
    """A PIL image as JPEG bytes (quality 95), fitted inside ``max_size``."""
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    if max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class Worker:
    """Runs queued prompts one at a time on its own thread."""

    def __init__(self, queue: PromptQueue, executor: Any, hub: ClientHub, *,
                 expose_tracebacks: bool = False, preview_method: str | None = None,
                 router: Any = None, name: str = "lane-0") -> None:
        self.queue = queue
        self.name = name
        self.router = router  # a server.routing.Router when several lanes share the queue
        self.lane = router.add_lane(name) if router is not None else None
        self._select = router.selector(self.lane) if router is not None else None
        self.models: frozenset[str] = frozenset()  # "folder/name" of the model files this lane holds
        self._model_paths: dict[str, str | None] = {}  # "folder/name" -> its real path (None: not found)
        self.executor = executor
        self.hub = hub
        self.expose_tracebacks = expose_tracebacks
        self.preview_method = check_preview_method(preview_method)
        self.current: QueueItem | None = None
        self.current_node: str | None = None
        self.heartbeat = time.monotonic()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._free_flags: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.completed = 0

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"loom-worker-{self.name}", daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking prompts; interrupt the running one (it is recorded as interrupted)."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_stop(self) -> None:
        """Stop taking prompts and interrupt the running one, without waiting (see :meth:`stop`)."""
        self._stop.set()
        if self.router is not None:
            self.router.remove(self.lane)
        self.interrupt()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given). True if one was hit."""
        with self._lock:
            item = self.current
            if item is None or (prompt_id is not None and item.prompt_id != prompt_id):
                return False
            self._cancel.set()
        try:
            self.executor.interrupt(item.prompt_id)
        except Exception:
            log.exception("executor.interrupt failed")
        return True

    def request_free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """ComfyUI's ``/free``: applied between prompts (now, when idle)."""
        with self._lock:
            self._free_flags["unload_models"] = self._free_flags.get("unload_models", False) or unload_models
            self._free_flags["free_memory"] = self._free_flags.get("free_memory", False) or free_memory
        if self.current is None:
            self._apply_free()

    def _apply_free(self) -> None:
        with self._lock:
            flags, self._free_flags = self._free_flags, {}
        if flags.get("unload_models") or flags.get("free_memory"):
            self._set_models(())  # every model is unloaded (free_memory unloads them too)
            try:
                self.executor.free(unload_models=bool(flags.get("unload_models")),
                                   free_memory=bool(flags.get("free_memory")))
            except Exception:
                log.exception("freeing memory failed")

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                item = self.queue.get(timeout=0.5, select=self._select) if self._select is not None else \
                    self.queue.get(timeout=0.5)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("reading the queue failed")
                time.sleep(0.5)
                continue
            if item is None:
                continue
            try:
                self._execute(item)
            finally:
                if self.router is not None:
                    self.router.finished(self.lane)  # again, for a prompt _execute gave up on half-way
            self.heartbeat = time.monotonic()
            self._apply_free()

    def _execute(self, item: QueueItem) -> None:
        with self._lock:
            self._cancel = threading.Event()
            cancel = self._cancel
            self.current = item
            self.current_node = None
        self.heartbeat = time.monotonic()
        client_id = item.client_id
        held: list[tuple[str, dict[str, Any]]] = []
        last_preview = [0.0]
        state = ProgressState(item.prompt_id)
        method = self._preview_method_for(item)

        def send(event: str, data: dict[str, Any]) -> None:
            self.hub.call(self.hub.send, event, data, client_id)

        def finish_running() -> None:
            if state.running is not None:
                send("progress_state", state.finish(state.running))

        def on_event(event: str, data: dict[str, Any]) -> None:
            self.heartbeat = time.monotonic()
            if event == "preview":
                image = data.get("image")
                if isinstance(image, tuple):  # ("PNG", image, max_size): an output image, not a preview
                    self._send_image(client_id, data)
                elif method != "none" and (method is not None or self.hub.wants_latent_previews(client_id)):
                    self._send_preview(client_id, data, last_preview, only_if_asked=method is None)
                return
            if event == "executing":
                node = data.get("node")
                self.current_node = node
                finish_running()
                if node is None:
                    held.append(events.idle(data.get("prompt_id")))
                    return
                send("progress_state", state.start(node))
            elif event == "progress":
                node = data.get("node")
                if node is not None:
                    send("progress_state", state.update(node, data.get("value", 0), data.get("max", 1)))
            if event == "execution_error":
                log.error("prompt %s failed in node %s (%s): %s\n%s", data.get("prompt_id"), data.get("node_id"),
                          data.get("node_type"), data.get("exception_message"), "".join(data.get("traceback") or ()))
                data = self._public_error(data)
            if event == "execution_success":
                finish_running()
            elif event in TERMINAL_EVENTS:
                state.running = None  # ComfyUI leaves a failed or interrupted node as it was
            if event in TERMINAL_EVENTS:
                held.append((event, data))
                return
            if event == "executed":
                node = data.get("node")
                ran = node is not None and state.running == node
                if not ran or data.get("output"):  # ComfyUI: a node that ran tells its ui only if it has one
                    send(event, data)
                if node is not None and (ran or node not in state.nodes):
                    send("progress_state", state.finish(node))  # ran now, or a cached output node
                return
            send(event, data)

        started = time.monotonic()
        log.info("prompt %s started%s", item.prompt_id, f" on {self.name}" if self.router is not None else "")
        result = None
        try:
            result = self.executor.execute(item.prompt, item.prompt_id, extra_data=item.extra_data,
                                           outputs=item.outputs or None, on_event=on_event, cancel=cancel)
            outcome = self._outcome(item, result, held)
        except Exception as error:  # the executor itself failed: the prompt fails, the worker lives on
            log.exception("executing prompt %s failed", item.prompt_id)
            payload = self._error_payload(item, "executor_error", f"{type(error).__name__}: {error}")
            held[:] = [("execution_error", payload), events.idle(item.prompt_id)]
            outcome = Outcome(state=PromptState.ERROR, messages=[["execution_error", payload]], error=payload,
                              worker=self._worker_label())
        self._update_models(item, result)
        if self.router is not None:
            # idle before anyone hears the prompt is done: a prompt queued on that news must see this lane
            # free, or another idle lane takes it (with this lane's models still counted busy)
            self.router.finished(self.lane)
        if self.hub.loop is not None:
            self.hub.hold_status()  # the status this finish causes goes out after the terminal event
        try:
            self.queue.finish(item.prompt_id, outcome)
        except Exception:
            log.exception("recording prompt %s in history failed", item.prompt_id)
        log.info("prompt %s %s in %.2f s", item.prompt_id, outcome.state, time.monotonic() - started)
        with self._lock:
            self.current = None
            self.current_node = None
        self.completed += 1
        before = [(e, d) for e, d in held if not (e == "executing" and d.get("node") is None)]
        after = [(e, d) for e, d in held if e == "executing" and d.get("node") is None]
        self.hub.call(self.hub.end_prompt, client_id, before, after)

    def _preview_method_for(self, item: QueueItem) -> str | None:
        """The preview method of one prompt: its ``extra_data.preview_method``, else the server's."""
        requested = (item.extra_data or {}).get("preview_method")
        if isinstance(requested, str) and requested in PREVIEW_METHODS:
            return requested
        return self.preview_method

    # -- the models this lane holds ------------------------------------------------------------

    def _update_models(self, item: QueueItem, result: Any) -> None:
        """After a prompt: which of the model files this lane's prompts named its executor holds now."""
        if self.router is None:
            return
        try:
            loaded = result.loaded_models
            if loaded is None:
                loaded = self.executor.loaded_models()
            for name in item.required_models:
                if name not in self._model_paths:
                    self._model_paths[name] = _real_path(name)
            files = set(loaded)
            self._set_models(name for name, path in self._model_paths.items() if path is not None and path in files)
        except Exception:
            log.exception("reading the models of %s failed", self.name)

    def _set_models(self, models: Any) -> None:
        self.models = frozenset(models)
        if self.router is not None:
            self.router.set_models(self.lane, self.models)

    # -- helpers -------------------------------------------------------------------------------

    def _outcome(self, item: QueueItem, result: Any, held: list) -> Outcome:
        finished = (PromptState.SUCCESS, PromptState.ERROR, PromptState.INTERRUPTED)
        status = PromptState(result.status) if result.status in finished else PromptState.ERROR
        messages = [[event, self._public_error(data) if event == "execution_error" else data]
                    for event, data in result.messages]
        error = result.error
        if status == PromptState.ERROR and not any(e == "execution_error" for e, _ in result.messages):
            # failed before anything ran (e.g. an input file vanished after queueing): tell the client
            validation = result.validation
            lines = validation.messages() if validation is not None else []
            message = "; ".join(lines) or (error or {}).get("message", "the prompt is no longer valid")
            payload = self._error_payload(item, (error or {}).get("type", "prompt_invalid"), message)
            messages.append(["execution_error", payload])
            held.insert(0, ("execution_error", payload))
            if not any(e == "executing" for e, _ in held):
                held.append(events.idle(item.prompt_id))
            error = {"type": payload["exception_type"], "message": message,
                     "node_errors": validation.node_errors if validation is not None else {}}
        elif status == PromptState.ERROR and error is not None:
            error = self._public_error(error)
        return Outcome(state=status, outputs=result.outputs or {}, messages=messages, error=error,
                       worker=result.worker or self._worker_label())

    def _worker_label(self) -> str:
        """Which worker runs prompts now: ``thread``, or ``process:<pid>`` for a worker process."""
        pid = getattr(self.executor, "pid", None)
        return f"process:{pid}" if isinstance(pid, int) else "thread"

    def _error_payload(self, item: QueueItem, kind: str, message: str) -> dict[str, Any]:
        return events.execution_error(item.prompt_id, None, None, [], message, kind)[1]

    def _public_error(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.expose_tracebacks:
            return data
        return scrub_paths({**data, "traceback": []})

    def _send_image(self, client_id: str | None, data: dict[str, Any]) -> None:
        """An output image of ``SaveImageWebsocket``: PNG, to the prompt's client, none skipped."""
        if client_id is None:
            return
        image_format, image, max_size = (tuple(data["image"]) + (None, None))[:3]
        try:
            encoded = encode_png(image, max_size) if str(image_format).upper() == "PNG" else \
                encode_preview(image, max_size or 1 << 30)
        except Exception:
            log.exception("encoding an output image failed")
            return
        node = data.get("node")
        metadata = {"node_id": node, "prompt_id": data.get("prompt_id"), "display_node_id": node,
                    "parent_node_id": None, "real_node_id": node,
                    "image_type": "image/png" if str(image_format).upper() == "PNG" else "image/jpeg"}
        self.hub.call(self.hub.send_image, client_id, encoded, metadata)

    def _send_preview(self, client_id: str | None, data: dict[str, Any], last: list[float],
                      only_if_asked: bool = False) -> None:
        if client_id is None or data.get("image") is None:
            return
        now = time.monotonic()
        if now - last[0] < PREVIEW_MIN_INTERVAL_S:
            return
        last[0] = now
        try:
            image = encode_preview(data["image"])
        except Exception:
            log.exception("encoding a preview failed")
            return
        node = data.get("node")
        metadata = {"node_id": node, "prompt_id": data.get("prompt_id"), "display_node_id": node,
                    "parent_node_id": None, "real_node_id": node, "image_type": "image/jpeg"}
        self.hub.call(self.hub.send_preview, client_id, image, metadata, only_if_asked)
