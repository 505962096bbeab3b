"""The local worker process: the executor behind :class:`~server.worker.Worker`, run in a child process.

:class:`ProcessExecutor` has the interface of :class:`~server.executor.Executor` (``execute``,
``interrupt``, ``free``, ``running_prompt_id``), so the worker thread, the queue, the client hub and the
WebSocket protocol are the same for both transports. The real :class:`Executor` runs in a child started
with :mod:`multiprocessing`'s *spawn* context; the node registry, the output cache and the model cache
live there, so a second prompt that uses a loaded model finds it loaded. The child is configured from a
:class:`WorkerSpec` (folders, node packs, the pickle policy, torch's thread count): nothing is inherited
by accident.

The pipe (one duplex :func:`multiprocessing.Pipe`, pickled tuples):

    parent -> child   ("run", prompt_id, prompt, extra_data, outputs)   run one prompt
                      ("free", unload_models, free_memory)             ComfyUI's /free, between prompts
                      ("stop",)                                        exit
    child -> parent   ("ready", pid, {"nodes": [...], "startup_s": s}) once, after start-up
                      ("fatal", message)                               start-up failed; the child exits
                      ("events", [(event, data), ...])                 executor events, in order
                      ("done", result_fields, [(event, data), ...])    the prompt's ExecutionResult and
                                                                       its last events; its fields include
                                                                       loaded_models, the model files the
                                                                       child holds now (for routing)

Events are delivered to ``on_event`` by the thread that called :meth:`ProcessExecutor.execute` (the
worker's thread), which reads the pipe until ``done``, so they arrive in the order the child sent them.
The child batches events that no node work separates (see :class:`_EventSender`): fewer messages, no
added delay.
Previews travel as PIL images (pickled; a 512x512 RGB image costs well under a millisecond) and the worker
encodes them as before; the child drops previews that come faster than half the worker's rate limit.
Interrupt is a :class:`multiprocessing.Event` that the child's executor reads as its cancel token, so it
takes effect between sampler steps exactly as in a thread.

Faults. A prompt running longer than ``prompt_timeout_s`` gets the child killed and fails with
``exception_type`` ``timeout``; a child that exits or is killed while running a prompt (``os._exit``, a
signal, the kernel's OOM killer) fails that prompt with ``worker_died``: it is never re-run. Either way a
supervisor thread starts a new child and the queue goes on; a child that dies while idle is replaced too.
A prompt still waiting for a child to start when it is interrupted or the server stops ends at once as
interrupted (not run); one whose child cannot start fails with ``worker_died``. While no child is ready
:attr:`ProcessExecutor.ready` is false, which ``/api/ready`` reports.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from loom.server import events
from loom.server.executor import RECORDED_EVENTS, CancelToken, EventSink, ExecutionResult
from loom.server.queue import PromptState

log = logging.getLogger("loom.server.worker_process")

START_TIMEOUT_S = 300.0
"""How long a child may take to import and build its registry before it counts as failed."""
PREVIEW_INTERVAL_S = 0.025
"""The child sends at most one latent preview per this interval (the worker sends one per 0.05 s)."""
_RESULT_FIELDS = ("status", "outputs", "messages", "error", "validation", "executed", "cached", "timings",
                  "duration", "loaded_models")


@dataclass
class WorkerSpec:
    """What a worker process configures before it runs anything (picklable, passed explicitly)."""

    base_dir: str
    models_dir: str
    extra_paths: dict[str, list[str]] = field(default_factory=dict)  # loom.nodes.kernel.folders extra model paths
    data_dirs: dict[str, str] = field(default_factory=dict)  # input/output/temp overrides
    builtin_nodes: bool = True  # the default registry (Loom's nodes) ...
    node_packs: list[str] = field(default_factory=list)  # ... plus these packs (loom serve --nodes)
    node_modules: list[str] = field(default_factory=list)  # ... plus these importable modules
    runtime: dict[str, Any] = field(default_factory=dict)  # loom.nodes.kernel.config.RuntimeConfig, as a dict
    torch_threads: int | None = None  # torch.set_num_threads in the child, when the parent had set it
    log_level: int = logging.INFO
    rlimit_as_headroom: int | None = None
    """Test-only: once started, the child limits its address space (RLIMIT_AS) to its size then plus this."""

    @classmethod
    def current(cls, registry: Any = None, node_packs: Any = (), **overrides: Any) -> "WorkerSpec":
        """The spec for this process as it is configured now (folders, pickle policy, torch threads), with
        the node packs and modules that ``registry`` was built from (or ``node_packs`` when given)."""
        from loom.nodes.kernel import folders

        current = folders.current()
        builtin, packs, modules = _registry_sources(registry)
        if node_packs:
            packs = [str(Path(p).resolve()) for p in node_packs]
        from loom.nodes.kernel import config

        torch = sys.modules.get("torch")
        spec = cls(base_dir=str(current.base_dir), models_dir=str(current.models_dir),
                   extra_paths={k: [str(p) for p in v] for k, v in current.extra_paths.items()},
                   data_dirs={k: str(v) for k, v in current.data_dirs.items()},
                   builtin_nodes=builtin, node_packs=packs, node_modules=modules,
                   runtime=config.current().as_dict(),
                   torch_threads=torch.get_num_threads() if torch is not None else None,
                   log_level=logging.getLogger().getEffectiveLevel())
        for name, value in overrides.items():
            setattr(spec, name, value)
        return spec


def _registry_sources(registry: Any) -> tuple[bool, list[str], list[str]]:
    """(built-in nodes?, node pack paths, other modules) that ``registry`` holds nodes from."""
    from loom.nodes.kernel import schema

    if registry is None:
        return True, [], []
    builtin_modules = set(schema.BUILTIN_NODE_MODULES) | set(schema.OPTIONAL_BUILTIN_NODE_MODULES)
    builtin = registry is getattr(schema, "_default", None)
    packs: list[str] = []
    modules: list[str] = []
    for _, node_class in registry.items():
        module_name = node_class.__module__
        top = module_name.split(".")[0]
        if top.startswith("loom_nodepack_"):
            module = sys.modules.get(top)
            origin = getattr(getattr(module, "__spec__", None), "origin", None)
            if origin:
                path = Path(origin)
                pack = str(path.parent if path.name == "__init__.py" else path)
                if pack not in packs:
                    packs.append(pack)
        elif module_name in builtin_modules or any(module_name.startswith(m + ".") for m in builtin_modules):
            builtin = True
        elif module_name not in modules and module_name != "__main__":
            modules.append(module_name)
    return builtin, packs, modules


# -------------------------------------------------------------------------------------------------
# The child
# -------------------------------------------------------------------------------------------------

def _child_main(spec: WorkerSpec, conn: Connection, interrupt: Any, parent_pid: int) -> None:
    """The worker process: configure, build the registry, then run what the pipe asks."""
    started = time.perf_counter()
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the server's to handle
    logging.basicConfig(level=spec.log_level,
                        format=f"%(asctime)s %(levelname)s %(name)s [worker {os.getpid()}]: %(message)s")
    try:
        executor = _build_executor(spec)
    except BaseException as error:  # start-up failed: say why, then exit
        try:
            conn.send(("fatal", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))
        finally:
            os._exit(1)
    if spec.rlimit_as_headroom is not None:
        _limit_address_space(spec.rlimit_as_headroom)
    conn.send(("ready", os.getpid(), {"nodes": executor.registry.names(),
                                      "startup_s": time.perf_counter() - started}))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server went away
            return
        kind = message[0]
        if kind == "run":
            _, prompt_id, prompt, extra_data, outputs = message
            sender = _EventSender(conn)
            result = executor.execute(prompt, prompt_id, extra_data=extra_data, outputs=outputs,
                                      on_event=sender, cancel=interrupt)
            state = {name: getattr(result, name) for name in _RESULT_FIELDS}
            try:
                conn.send(("done", state, sender.take()))
            except (BrokenPipeError, EOFError, OSError):
                return
            except Exception as error:  # something in the result does not pickle: send what does
                log.exception("the result of prompt %s cannot be sent whole", prompt_id)
                sender.send(("done", {**state, "validation": None, "outputs": {},
                                      "status": PromptState.ERROR,
                                      "error": {"type": "executor_error",
                                                "message": f"the result cannot be sent back: {error}"}},
                             sender.held))
        elif kind == "free":
            try:
                executor.free(unload_models=bool(message[1]), free_memory=bool(message[2]))
            except Exception:
                log.exception("freeing memory failed")
        elif kind == "stop":
            return


def _build_executor(spec: WorkerSpec) -> Any:
    from loom.nodes.kernel import folders

    folders.configure(spec.base_dir, spec.models_dir,
                      extra_paths={k: [Path(p) for p in v] for k, v in spec.extra_paths.items()},
                      data_dirs=spec.data_dirs or None)
    if spec.torch_threads:
        import torch
        torch.set_num_threads(spec.torch_threads)
    from loom.nodes.kernel import config

    config.configure(config.RuntimeConfig(**spec.runtime))
    from loom.nodes.kernel.schema import NodeRegistry, default_registry
    from loom.server.executor import Executor

    if spec.builtin_nodes:
        registry = default_registry(spec.node_packs)
    else:
        registry = NodeRegistry()
        for pack in spec.node_packs:
            registry.load_path(pack)
    for module in spec.node_modules:
        registry.load_module(module)
    return Executor(registry)


class _EventSender:
    """The child's ``on_event``: events go out in batches, each sent before any node work could delay it.

    An event is held only while the executor is between two events with nothing to run: ``execution_start``,
    every ``executing`` of a node, ``progress`` and ``preview`` send what is held (a node's work follows
    them); ``executed``, ``execution_cached`` and the prompt's last events wait for the next of those or
    ride with ``done``. A prompt of two nodes is four messages instead of eight."""

    FLUSH = frozenset({"execution_start", "progress", "preview"})

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.held: list[tuple[str, dict[str, Any]]] = []
        self.last_preview = 0.0

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "preview" and not isinstance(data.get("image"), tuple):  # a tuple is an output image
            now = time.monotonic()
            if now - self.last_preview < PREVIEW_INTERVAL_S:
                return
            self.last_preview = now
        self.held.append((event, data))
        if event in self.FLUSH or (event == "executing" and data.get("node") is not None):
            self.send(("events", self.take()))

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        held, self.held = self.held, []
        return held

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except (BrokenPipeError, EOFError, ConnectionResetError):
            os._exit(3)  # the server is gone: nobody is waiting for this prompt
        except Exception:
            log.exception("events of the running prompt cannot be sent")


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel kill this process when the server dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # pragma: no cover - then the pipe's EOF ends the child
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(0)


def _limit_address_space(headroom: int) -> None:
    import resource

    size = 0
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    limit = size + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    log.info("address space limited to %d MiB (%d MiB above its size)", limit >> 20, headroom >> 20)


# -------------------------------------------------------------------------------------------------
# The parent
# -------------------------------------------------------------------------------------------------

class _Child:
    def __init__(self, process: Any, conn: Connection, interrupt: Any, pid: int, spawn_s: float,
                 nodes: list[str]) -> None:
        self.process = process
        self.conn = conn
        self.interrupt = interrupt
        self.pid = pid
        self.spawn_s = spawn_s
        self.nodes = nodes

    @property
    def label(self) -> str:
        return f"process:{self.pid}"

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.join(10)
        except Exception:  # pragma: no cover - already reaped
            pass
        try:
            self.conn.close()
        except OSError:
            pass


class _Died(Exception):
    pass


class ProcessExecutor:
    """Runs prompts in a worker process (see the module docstring); one prompt at a time."""

    def __init__(self, spec: WorkerSpec, *, prompt_timeout_s: float | None = None,
                 start_timeout_s: float = START_TIMEOUT_S, expected_nodes: list[str] | None = None) -> None:
        if prompt_timeout_s is not None and prompt_timeout_s <= 0:
            prompt_timeout_s = None
        self.spec = spec
        self.prompt_timeout_s = prompt_timeout_s
        self.start_timeout_s = start_timeout_s
        self.expected_nodes = expected_nodes
        self.running_prompt_id: str | None = None
        self.restarts = 0  # children started after the first
        self.spawn_times: list[float] = []  # seconds from start to "ready", per child
        self.last_start_error: str | None = None
        self._loaded: tuple[int, list[str]] = (0, [])  # (child pid, the model files it reported holding)
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._child: _Child | None = None
        self._busy = False
        self._closing = False
        self._spawn_failures = 0
        self._send_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor, which starts the first child (in the background)."""
        with self._cond:
            if self._supervisor is None:
                self._supervisor = threading.Thread(target=self._supervise, name="loom-worker-supervisor",
                                                    daemon=True)
                self._supervisor.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (asking first, then killing) and the supervisor."""
        with self._cond:
            self._closing = True
            child, self._child = self._child, None
            self._cond.notify_all()
        if child is not None:
            if child.interrupt is not None:
                child.interrupt.set()
            try:
                with self._send_lock:
                    child.conn.send(("stop",))
            except (OSError, ValueError):
                pass
            child.process.join(min(timeout, 5.0))
            child.kill()
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    @property
    def ready(self) -> bool:
        """A child is up (idle or running a prompt)."""
        child = self._child
        return child is not None and child.alive()

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None else None

    def loaded_models(self) -> list[str]:
        """The model files (real paths) the current child reported holding after its last prompt; none for
        a child that has run nothing (a new child holds nothing)."""
        pid, files = self._loaded
        child = self._child
        return list(files) if child is not None and child.pid == pid else []

    def status(self) -> dict[str, Any]:
        child = self._child
        return {"transport": "process", "ready": self.ready, "pid": child.pid if child else None,
                "running": self.running_prompt_id, "restarts": self.restarts,
                "spawn_s": round(self.spawn_times[-1], 3) if self.spawn_times else None}

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until a child is ready (starting the supervisor if needed)."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._child is not None and self._child.alive()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._closing or (remaining is not None and remaining <= 0):
                    return False
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def _supervise(self) -> None:
        while True:
            with self._cond:
                while not self._closing and self._child is not None and (self._busy or self._child.alive()):
                    self._cond.wait(0.5)
                if self._closing:
                    return
                if self._child is not None:  # it died while idle
                    dead, self._child = self._child, None
                    log.warning("the worker process %s exited while idle (exit code %s); starting another",
                                dead.pid, dead.process.exitcode)
                    dead.kill()
                failures = self._spawn_failures
            if failures:
                time.sleep(min(30.0, 0.5 * 2 ** min(failures - 1, 6)))
            child = self._spawn()
            with self._cond:
                if child is None:
                    self._spawn_failures += 1
                else:
                    self._spawn_failures = 0
                    if self.spawn_times:
                        self.restarts += 1
                    self.spawn_times.append(child.spawn_s)
                    if self._closing:
                        child.kill()
                        return
                    self._child = child
                self._cond.notify_all()

    def _spawn(self) -> _Child | None:
        started = time.perf_counter()
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        interrupt = self._context.Event()
        process = self._context.Process(target=_child_main, name="loom-worker", daemon=True,
                                        args=(self.spec, child_conn, interrupt, os.getpid()))
        try:
            process.start()
        except Exception as error:
            self.last_start_error = f"{type(error).__name__}: {error}"
            log.error("cannot start a worker process: %s", self.last_start_error)
            return None
        finally:
            child_conn.close()
        deadline = time.monotonic() + self.start_timeout_s
        message: Any = None
        while time.monotonic() < deadline and not self._closing:
            ready = wait([parent_conn, process.sentinel], timeout=0.5)
            if parent_conn in ready:
                try:
                    message = parent_conn.recv()
                except (EOFError, OSError):
                    message = None
                break
            if process.sentinel in ready:
                break
        if not (isinstance(message, tuple) and message and message[0] == "ready"):
            if isinstance(message, tuple) and message and message[0] == "fatal":
                self.last_start_error = str(message[1]).strip().splitlines()[0]
                log.error("the worker process could not start:\n%s", message[1])
            else:
                process.join(0.5)
                self.last_start_error = (f"it exited during start-up ({_exit_reason(process.exitcode)})"
                                         if process.exitcode is not None else "it did not start in time")
                log.error("the worker process could not start: %s", self.last_start_error)
            _Child(process, parent_conn, interrupt, process.pid or 0, 0.0, []).kill()
            return None
        _, pid, info = message
        spawn_s = time.perf_counter() - started
        nodes = list(info.get("nodes") or [])
        if self.expected_nodes is not None:
            missing = sorted(set(self.expected_nodes) - set(nodes))
            if missing:
                log.warning("the worker process lacks %d node type(s) the server knows (%s): prompts using them "
                            "fail there; pass the node packs with --nodes", len(missing), ", ".join(missing[:10]))
        self.last_start_error = None
        log.info("worker process %s ready in %.2f s (its own start-up %.2f s)", pid, spawn_s,
                 info.get("startup_s", 0.0))
        return _Child(process, parent_conn, interrupt, pid, spawn_s, nodes)

    def _take_child(self, cancel: CancelToken | None = None) -> _Child | None:
        """The ready child, marked busy; waits while one is starting. None when none can start, or when the
        server closes or ``cancel`` is set before one is ready."""
        self.start()
        deadline = time.monotonic() + self.start_timeout_s + 5.0
        with self._cond:
            failures = self._spawn_failures
            while True:
                child = self._child
                if child is not None and child.alive():
                    self._busy = True
                    return child
                if self._closing or (cancel is not None and cancel.is_set()) or time.monotonic() > deadline \
                        or self._spawn_failures > failures:
                    return None
                self._cond.notify_all()  # wake the supervisor: it replaces a dead child
                self._cond.wait(0.1)

    def _release(self, child: _Child, dead: bool) -> None:
        with self._cond:
            self._busy = False
            if dead and self._child is child:
                self._child = None
            self._cond.notify_all()
        if dead:
            child.kill()

    # -- the executor interface ----------------------------------------------------------------

    def interrupt(self, prompt_id: str | None = None) -> bool:
        running = self.running_prompt_id
        if running is None or (prompt_id is not None and prompt_id != running):
            return False
        child = self._child
        if child is not None:
            child.interrupt.set()
        return True

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """Ask the child to free memory; it does so before its next prompt. A new child holds nothing."""
        if not (unload_models or free_memory):
            return
        child = self._child
        if child is None or not child.alive():
            return
        try:
            with self._send_lock:
                child.conn.send(("free", bool(unload_models), bool(free_memory)))
        except (OSError, ValueError):
            pass

    def execute(self, prompt: dict[str, Any], prompt_id: str, *, extra_data: dict[str, Any] | None = None,
                outputs: list[str] | None = None, on_event: EventSink | None = None,
                cancel: CancelToken | None = None, validation: Any = None) -> ExecutionResult:
        with self._run_lock:
            child = self._take_child(cancel)
            if child is None:
                return unstarted_result(prompt, prompt_id, "process", on_event, "worker process",
                                        closing=self._closing, cancel=cancel, start_error=self.last_start_error)
            self.running_prompt_id = prompt_id
            try:
                return self._run(child, prompt, prompt_id, extra_data or {}, outputs, on_event, cancel)
            finally:
                self.running_prompt_id = None

    def _run(self, child: _Child, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any],
             outputs: list[str] | None, on_event: EventSink | None, cancel: CancelToken | None) -> ExecutionResult:
        child.interrupt.clear()
        recorded: list[tuple[str, dict[str, Any]]] = []
        executed: list[str] = []
        current: list[str | None] = [None]

        def deliver_event(event: str, data: dict[str, Any]) -> None:
            if event == "executing":
                if current[0] is not None and current[0] not in executed:
                    executed.append(current[0])
                current[0] = data.get("node")
            if event in RECORDED_EVENTS:
                recorded.append((event, data))
            if on_event is not None:
                try:
                    on_event(event, data)
                except Exception:  # a broken listener must not fail the prompt
                    log.exception("delivering event %s failed", event)

        def deliver(message: Any) -> ExecutionResult | None:
            if message[0] in ("events", "done"):
                for event, data in message[-1]:
                    deliver_event(event, data)
            if message[0] == "done":
                fields = message[1]
                self._loaded = (child.pid, list(fields.get("loaded_models") or []))
                return ExecutionResult(prompt_id=prompt_id, worker=child.label,
                                       **{name: fields.get(name) for name in _RESULT_FIELDS
                                          if fields.get(name) is not None})
            return None

        started = time.monotonic()
        deadline = None if self.prompt_timeout_s is None else started + self.prompt_timeout_s
        try:
            with self._send_lock:
                child.conn.send(("run", prompt_id, prompt, extra_data, outputs))
        except (OSError, ValueError) as error:
            self._release(child, dead=True)
            return self._fault(prompt, prompt_id, child, on_event, recorded, None, "worker_died",
                               f"the prompt could not be handed to the worker process ({error}); it was not run",
                               executed)
        try:
            while True:
                timeout = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                ready = wait([child.conn, child.process.sentinel], timeout=timeout)
                if child.conn in ready:
                    try:
                        message = child.conn.recv()
                    except (EOFError, OSError):
                        raise _Died() from None
                    result = deliver(message)
                    if result is not None:
                        self._release(child, dead=False)
                        return result
                    continue
                if child.process.sentinel in ready:
                    while child.conn.poll(0):  # what it sent before it died
                        try:
                            message = child.conn.recv()
                        except (EOFError, OSError):
                            break
                        result = deliver(message)
                        if result is not None:
                            self._release(child, dead=True)
                            return result
                    raise _Died()
                if cancel is not None and cancel.is_set():
                    child.interrupt.set()
                if deadline is not None and time.monotonic() >= deadline:
                    log.error("prompt %s ran past its limit of %.0f s in node %s: killing worker process %s",
                              prompt_id, self.prompt_timeout_s, current[0], child.pid)
                    self._release(child, dead=True)
                    node = current[0]
                    where = f" (node {node}, {prompt.get(node, {}).get('class_type')})" if node else ""
                    return self._fault(prompt, prompt_id, child, on_event, recorded, node, "timeout",
                                       f"the prompt ran longer than the limit of {self.prompt_timeout_s:g} s"
                                       f"{where}; its worker process was stopped and a new one started",
                                       executed)
        except _Died:
            child.process.join(2.0)
            code = child.process.exitcode
            self._release(child, dead=True)
            if self._closing:
                return self._fault(prompt, prompt_id, child, on_event, recorded, current[0], "interrupted",
                                   "the server stopped while this prompt was running", executed)
            node = current[0]
            where = f" while running node {node} ({prompt.get(node, {}).get('class_type')})" if node else ""
            log.error("worker process %s died%s: %s", child.pid, where, _exit_reason(code))
            return self._fault(prompt, prompt_id, child, on_event, recorded, node, "worker_died",
                               f"the worker process died{where}: {_exit_reason(code)}. The prompt was not "
                               "re-run; a new worker process was started", executed)

    def _fault(self, prompt: dict[str, Any], prompt_id: str, child: _Child | None, on_event: EventSink | None,
               recorded: list, node_id: str | None, kind: str, message: str,
               executed: list[str]) -> ExecutionResult:
        return fault_result(prompt, prompt_id, child.label if child is not None else "process", on_event,
                            recorded, node_id, kind, message, executed)


def unstarted_result(prompt: dict[str, Any], prompt_id: str, label: str, on_event: EventSink | None, worker: str, *,
                     closing: bool, cancel: CancelToken | None, start_error: str | None) -> ExecutionResult:
    """The end of a prompt that never reached its ``worker`` ("worker process", "Ray worker"). Interrupted when
    the server stopped or the prompt was interrupted while the worker started: a slow start-up (a loaded
    machine) is no fault of the prompt's, and the user may queue it again. Otherwise ``worker_died``, saying
    why the worker cannot start."""
    if closing or (cancel is not None and cancel.is_set()):
        why = "the server stopped" if closing else "it was interrupted"
        return fault_result(prompt, prompt_id, label, on_event, [], None, "interrupted",
                            f"{why} before a {worker} was ready for it; it was not run", [])
    return fault_result(prompt, prompt_id, label, on_event, [], None, "worker_died",
                        f"the {worker} cannot start: {start_error or 'it did not start in time'}; the prompt was "
                        "not run", [])


def fault_result(prompt: dict[str, Any], prompt_id: str, label: str, on_event: EventSink | None, recorded: list,
                 node_id: str | None, kind: str, message: str, executed: list[str]) -> ExecutionResult:
    """The prompt's end when its worker (process or Ray actor ``label``) could not finish it: ComfyUI's error
    (or interrupt) events, delivered to ``on_event``. A worker that died or was killed holds no models."""
    node_type = prompt.get(node_id, {}).get("class_type") if node_id is not None else None
    if kind == "interrupted":
        event, payload = events.execution_interrupted(prompt_id, node_id, node_type, executed, reason=message)
        status, error = PromptState.INTERRUPTED, None
    else:
        event, payload = events.execution_error(prompt_id, node_id, node_type, executed, message, kind,
                                                worker=label)
        status, error = PromptState.ERROR, payload
    result = ExecutionResult(prompt_id=prompt_id, status=status, error=error,
                             messages=[*recorded, (event, payload)], executed=list(executed), worker=label)
    if kind in ("worker_died", "timeout"):
        result.loaded_models = []  # its worker is gone: the new one holds nothing
    if on_event is not None:
        for name, data in ((event, payload), events.executing(None, prompt_id)):
            try:
                on_event(name, data)
            except Exception:
                log.exception("delivering event %s failed", name)
    return result


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's out-of-memory killer sends this)" if -code == signal.SIGKILL else ""
        return f"it was killed by {name}{hint}"
    return f"it exited with code {code}"
