"""Ray actors as workers: one :class:`LoomWorker` actor per GPU (or N CPU actors), each behind a
:class:`RayExecutor` in the server process.

:class:`RayExecutor` has the interface of :class:`~server.executor.Executor` (``execute``, ``interrupt``,
``free``, ``running_prompt_id``) and of :class:`~server.worker_process.ProcessExecutor` (``start``,
``close``, ``ready``, ``wait_ready``, ``status``), so a worker thread (one lane) drives it as it drives the
other transports; the queue, the client hub and the WebSocket protocol do not change. Each actor is one
executor: it holds a real :class:`~server.executor.Executor` with its node registry, output cache and model
cache, configured from the same :class:`~server.worker_process.WorkerSpec` as a worker process (folders,
node packs, the pickle policy, torch's thread count).

Streaming. :meth:`LoomWorker.run` is a Ray *streaming generator* method: the actor runs the prompt on a
thread of its own and yields, as they come, batches of messages

    ("accepted", pid)                                the first message, before anything of the prompt runs
    ("events", [(event, data), ...])                 executor events, in order
    ("files", [(kind, subfolder, filename, bytes)])  files the prompt wrote (output/temp), before the
                                                     ``executed`` event that names them
    ("done", result_fields, loaded_models)           the prompt's ExecutionResult fields; the models the
                                                     actor holds now

and :meth:`RayExecutor.execute` (on the lane's thread) waits on the generator with ``ray.wait`` (a
timeout, so the prompt's wall-clock limit and the cancel token are checked), so events reach
``on_event`` in the order the actor produced them. The actor is created with ``max_concurrency`` 4
(a threaded actor): :meth:`LoomWorker.interrupt`, ``ping`` and ``models`` run while ``run`` is running, and
interrupt sets the executor's cancel token, so it takes effect between sampler steps as in a thread.

Files. No shared storage is assumed between the server and the actors. Each actor has input/output/temp
folders of its own (a temporary directory). The files a prompt reads from the server's input (or, with
``[output]``/``[temp]`` annotations, output/temp) folder, found from the prompt's string inputs, are sent
with the prompt as bytes (only when the actor does not have that version yet); the files the prompt writes
come back as bytes and the server writes them into its own folders, taking the next free
``{prefix}_{counter:05}_`` name there (what the thread transport would have named it) and rewriting the
names in the ``executed`` events and the outputs. In the actor a shipped file is truncated to an empty
placeholder, so its counters keep going up and its names stay unique; the name map lives as long as the
actor (its output cache may answer a later prompt with an old name). Model files are *not* shipped: they
are expected at the same paths on every host (see docs/ray.md).

Faults. An actor that dies while running a prompt (``ray.kill``, a crash, the OOM killer, its node lost)
fails that prompt with ``exception_type`` ``worker_died``; it is never re-run. An actor that dies before it
has accepted the prompt (killed while idle, between its last ping and the hand-over: ``ray.kill`` is
asynchronous) has run nothing of it, so the prompt goes to the next actor instead. A prompt past
``prompt_timeout_s`` kills its actor and fails with ``timeout``. Either way a supervisor thread creates a new
actor; an actor found dead while idle (a ``ping`` before each prompt, and every few seconds) is replaced
before any prompt is handed to it. A prompt still waiting for an actor when it is interrupted or the server
stops ends at once as interrupted (not run), as with worker processes.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from loom.nodes.kernel import services
from loom.server.executor import RECORDED_EVENTS, CancelToken, EventSink, ExecutionResult
from loom.server.queue import PromptState
from loom.server.worker_process import WorkerSpec, _build_executor, fault_result, unstarted_result

log = logging.getLogger("loom.server.ray_worker")

INSTALL_HINT = "Ray is not installed: pip install 'loom[ray]'"
START_TIMEOUT_S = 300.0
"""How long a new actor may take to be scheduled, import and build its registry."""
PREVIEW_INTERVAL_S = 0.05
"""The actor sends at most one latent preview per this interval (the lane's own rate limit)."""
HEALTH_INTERVAL_S = 5.0
"""How often an idle actor is pinged (so /api/ready notices a dead one and it is replaced)."""
MAX_CONCURRENCY = 4
"""Threads of a LoomWorker actor: ``run`` takes one; ``interrupt``, ``ping``, ``free`` the others."""
HANDOVER_ATTEMPTS = 3
"""How many new actors a prompt is offered to when each dies before accepting it (see Faults)."""
RESULT_WAIT_S = 60.0
"""How long fetching a message the actor reported as sent may take before the actor counts as lost."""
MAX_INPUT_FILE_BYTES = 1 << 30
"""An input file larger than this is not sent (the node then fails to find it, with a clear message)."""
_RESULT_FIELDS = ("status", "outputs", "messages", "error", "validation", "executed", "cached", "timings",
                  "duration")
_ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}
_SHIPPED_KINDS = ("output", "temp")
_COUNTER_NAME = re.compile(r"(?P<base>.+)_(?P<counter>\d{5,})_(?P<ext>(\.[^/]*)?)")


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return ray


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             object_store_memory: int | None = None, node_ip_address: str | None = None,
             auth: bool = True) -> Any:
    """Connect to the Ray cluster at ``address`` (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"``) or,
    without one, start a local one (``num_cpus``, ``num_gpus``, ``object_store_memory`` bytes, bound to
    ``node_ip_address``). Token authentication (``RAY_AUTH_MODE=token``, Ray 2.52+) is turned on unless the
    environment already chose a mode or ``auth`` is False: a local cluster then generates its token, a
    remote one needs the cluster's token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``). Returns the ``ray`` module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if auth:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                               "namespace": "loom", "configure_logging": False}
    if address:
        ray.init(address=address, **{k: v for k, v in options.items() if k != "include_dashboard"})
    else:
        options.update(num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory)
        if node_ip_address:
            options["_node_ip_address"] = node_ip_address
        ray.init(**{k: v for k, v in options.items() if v is not None})
    return ray


# -------------------------------------------------------------------------------------------------
# The actor
# -------------------------------------------------------------------------------------------------

class LoomWorker:
    """The Ray actor (decorated by :func:`actor_class`): one executor with its caches, on one host."""

    def __init__(self, spec: WorkerSpec, index: int = 0) -> None:
        started = time.perf_counter()
        logging.basicConfig(level=spec.log_level,
                            format=f"%(asctime)s %(levelname)s %(name)s [ray worker {index}]: %(message)s")
        _remove_stale_dirs()
        self.root = Path(tempfile.mkdtemp(prefix=f"loom-ray-{os.getpid()}-"))
        self.dirs = {kind: self.root / kind for kind in ("input", "output", "temp")}
        for folder in self.dirs.values():
            folder.mkdir()
        # the actor's own input/output/temp: files come and go as bytes, never through shared storage
        self.spec = replace(spec, data_dirs={kind: str(path) for kind, path in self.dirs.items()})
        self.executor = _build_executor(self.spec)
        self.index = index
        self._cancel = threading.Event()
        self._known: dict[Path, tuple[int, int]] = {}
        self._run_lock = threading.Lock()
        self.running_prompt_id: str | None = None
        self.startup_s = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        import ray

        try:
            gpus = [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # pragma: no cover - outside a worker
            gpus = []
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "ip": ray.util.get_node_ip_address(), "gpus": gpus, "nodes": self.executor.registry.names(),
                "startup_s": self.startup_s, "root": str(self.root)}

    def ping(self) -> int:
        return os.getpid()

    def models(self) -> list[str]:
        return _loaded_models()

    def interrupt(self) -> bool:
        self._cancel.set()
        return self.running_prompt_id is not None

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        with self._run_lock:  # never while a prompt runs
            self.executor.free(unload_models=bool(unload_models), free_memory=bool(free_memory))

    def run(self, prompt_id: str, prompt: dict[str, Any], extra_data: dict[str, Any],
            outputs: list[str] | None, files: list[tuple[str, str, bytes | None, int]]) -> Iterator[list]:
        """Run one prompt; yields batches of messages (see the module docstring)."""
        with self._run_lock:
            self._cancel.clear()
            self.running_prompt_id = prompt_id
            try:
                yield [("accepted", os.getpid())]
                yield from self._run(prompt_id, prompt, extra_data, outputs, files)
            finally:
                self.running_prompt_id = None
                self._cancel.clear()

    def _run(self, prompt_id: str, prompt: dict[str, Any], extra_data: dict[str, Any],
             outputs: list[str] | None, files: list[tuple[str, str, bytes | None, int]]) -> Iterator[list]:
        self._write_inputs(files)
        self._take_new_files(ship=False)  # what is there now (inputs, placeholders) is not the prompt's
        models_before = set(_loaded_models())
        items: queue.SimpleQueue = queue.SimpleQueue()
        last_preview = [0.0]

        def on_event(event: str, data: dict[str, Any]) -> None:
            if event == "preview":
                now = time.monotonic()
                if now - last_preview[0] < PREVIEW_INTERVAL_S:
                    return
                last_preview[0] = now
            if event == "executed":
                produced = self._take_new_files()
                if produced:
                    items.put(("files", produced))
            items.put(("event", event, data))

        def body() -> None:
            try:
                result = self.executor.execute(prompt, prompt_id, extra_data=extra_data, outputs=outputs,
                                               on_event=on_event, cancel=self._cancel)
                items.put(("done", result))
            except BaseException as error:  # the executor itself failed: say so, as a result
                items.put(("crash", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))

        thread = threading.Thread(target=body, name=f"loom-ray-run-{prompt_id}", daemon=True)
        thread.start()
        finished = False
        while not finished:
            batch: list[Any] = []
            item = items.get()
            while True:
                kind = item[0]
                if kind == "event":
                    if batch and batch[-1][0] == "events":
                        batch[-1][1].append((item[1], item[2]))
                    else:
                        batch.append(("events", [(item[1], item[2])]))
                elif kind == "files":
                    batch.append(item)
                else:
                    leftover = self._take_new_files()
                    if leftover:
                        batch.append(("files", leftover))
                    loaded = _loaded_models()
                    if kind == "done":
                        result = item[1]
                        state = {name: getattr(result, name) for name in _RESULT_FIELDS}
                    else:
                        state = {"status": PromptState.ERROR,
                                 "error": {"type": "executor_error", "message": item[1]}}
                    state["models_loaded"] = sorted(set(loaded) - models_before)
                    batch.append(("done", state, loaded))
                    finished = True
                    break
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    break
            yield batch
        thread.join()

    # -- files -----------------------------------------------------------------------------------

    def _write_inputs(self, files: list[tuple[str, str, bytes | None, int]]) -> None:
        from loom.nodes.kernel import folders

        for kind, name, data, mtime_ns in files:
            if data is None:  # the server knows this actor has this version already
                continue
            try:
                path = folders.resolve_data(kind, name)
            except PermissionError:
                log.warning("not writing input file %r: outside the %s folder", name, kind)
                continue
            if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
                os.utime(path, ns=(mtime_ns, mtime_ns))
                continue
            folders.write_replacing(path, data)
            os.utime(path, ns=(mtime_ns, mtime_ns))

    def _take_new_files(self, ship: bool = True) -> list[tuple[str, str, str, bytes]]:
        """Files under output/temp that are new or changed since the last look, as bytes (each then
        truncated to an empty placeholder that keeps its name taken); with ``ship`` False, only looks."""
        found: list[tuple[str, str, str, bytes]] = []
        for kind in _SHIPPED_KINDS:
            root = self.dirs[kind]
            for dirpath, _, filenames in os.walk(root):
                for filename in filenames:
                    path = Path(dirpath, filename)
                    if filename.startswith(".") and filename.endswith(".part"):
                        continue  # a file being written (folders.write_new)
                    try:
                        stat = path.stat()
                    except OSError:
                        continue
                    signature = (stat.st_size, stat.st_mtime_ns)
                    if self._known.get(path) == signature:
                        continue
                    if ship:
                        try:
                            data = path.read_bytes()
                            os.truncate(path, 0)
                            stat = path.stat()
                        except OSError:
                            log.exception("cannot read back %s", path)
                            continue
                        subfolder = Path(dirpath).relative_to(root).as_posix()
                        found.append((kind, "" if subfolder == "." else subfolder, filename, data))
                    self._known[path] = (stat.st_size, stat.st_mtime_ns)
        return found


def _loaded_models() -> list[str]:
    """The model files whose contents the model cache of this process holds (real paths)."""
    return services.loaded_model_files()


def _remove_stale_dirs() -> None:
    """Remove the folders of actors that are gone (a killed actor cannot clean up after itself)."""
    import psutil

    for entry in Path(tempfile.gettempdir()).glob("loom-ray-*-*"):
        try:
            pid = int(entry.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not psutil.pid_exists(pid):
            shutil.rmtree(entry, ignore_errors=True)


_ACTOR_CLASS: Any = None


def actor_class() -> Any:
    """``LoomWorker`` as a Ray actor class (made once, when Ray is first needed)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        ray = require_ray()
        _ACTOR_CLASS = ray.remote(max_concurrency=MAX_CONCURRENCY, max_restarts=0)(LoomWorker)
    return _ACTOR_CLASS


# -------------------------------------------------------------------------------------------------
# The server side
# -------------------------------------------------------------------------------------------------

class _Actor:
    def __init__(self, handle: Any, index: int, info: dict[str, Any], spawn_s: float) -> None:
        self.handle = handle
        self.index = index
        self.info = info
        self.pid = int(info.get("pid") or 0)
        self.spawn_s = spawn_s
        self.dead = False
        self.sent: dict[tuple[str, str], tuple[int, int]] = {}  # input files the actor has: (size, mtime)
        self.renames: dict[tuple[str, str, str], tuple[str, str]] = {}  # its output names -> the server's

    @property
    def label(self) -> str:
        return f"ray:{self.index}:{self.info.get('ip', '?')}:{self.pid}"


class _Died(Exception):
    pass


class _NotAccepted(Exception):
    """The actor died (or could not be reached) before it accepted the prompt: nothing of it ran."""


class RayExecutor:
    """Runs prompts on one Ray actor (see the module docstring); one prompt at a time.

    ``index`` names the lane (``ray:<index>:<ip>:<pid>`` in history); ``num_gpus`` (default: 1 where the
    cluster has GPUs, else 0) and ``num_cpus`` (default 1) are the actor's resources; ``actor_options`` go
    to ``.options()`` as they are (e.g. ``{"resources": {"big-gpu": 1}}`` or a ``scheduling_strategy``).
    Ray must be initialised first (:func:`init_ray`)."""

    def __init__(self, spec: WorkerSpec, *, index: int = 0, num_cpus: float | None = None,
                 num_gpus: float | None = None, actor_options: dict[str, Any] | None = None,
                 prompt_timeout_s: float | None = None, start_timeout_s: float = START_TIMEOUT_S,
                 expected_nodes: list[str] | None = None) -> None:
        if prompt_timeout_s is not None and prompt_timeout_s <= 0:
            prompt_timeout_s = None
        self.spec = spec
        self.index = index
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.actor_options = dict(actor_options or {})
        self.prompt_timeout_s = prompt_timeout_s
        self.start_timeout_s = start_timeout_s
        self.expected_nodes = expected_nodes
        self.running_prompt_id: str | None = None
        self.restarts = 0
        self.spawn_times: list[float] = []
        self.last_start_error: str | None = None
        self._loaded: list[str] = []  # the model files the actor holds (real paths), as of its last prompt
        self.loads: list[str] = []
        """Every model file an actor of this executor loaded, once per load, in order."""
        self._cond = threading.Condition()
        self._actor: _Actor | None = None
        self._busy = False
        self._closing = False
        self._spawn_failures = 0
        self._run_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._supervisor is None:
                self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                                    name=f"loom-ray-supervisor-{self.index}")
                self._supervisor.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            actor, self._actor = self._actor, None
            self._cond.notify_all()
        if actor is not None:
            self._kill(actor)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout)

    @property
    def ready(self) -> bool:
        actor = self._actor
        return actor is not None and not actor.dead

    @property
    def pid(self) -> int | None:
        actor = self._actor
        return actor.pid if actor is not None else None

    @property
    def actor(self) -> Any:
        """The Ray actor handle now (None while none is up): for ``ray.kill`` in tests and tools."""
        actor = self._actor
        return actor.handle if actor is not None else None

    @property
    def label(self) -> str | None:
        actor = self._actor
        return actor.label if actor is not None else None

    def status(self) -> dict[str, Any]:
        actor = self._actor
        return {"transport": "ray", "index": self.index, "ready": self.ready,
                "pid": actor.pid if actor else None, "ip": actor.info.get("ip") if actor else None,
                "gpus": actor.info.get("gpus") if actor else None, "running": self.running_prompt_id,
                "restarts": self.restarts, "models": self.loaded_models(),
                "spawn_s": round(self.spawn_times[-1], 3) if self.spawn_times else None}

    def loaded_models(self) -> list[str]:
        """The model files (real paths on the actor's host) the actor reported holding after its last
        prompt; none for an actor that has run nothing (a new actor holds nothing)."""
        actor = self._actor
        return list(self._loaded) if actor is not None and not actor.dead else []

    def wait_ready(self, timeout: float | None = None) -> bool:
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self.ready:
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._closing or (remaining is not None and remaining <= 0):
                    return False
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def _supervise(self) -> None:
        ray = require_ray()
        while True:
            with self._cond:
                deadline = time.monotonic() + HEALTH_INTERVAL_S
                while not self._closing and self._actor is not None and not self._actor.dead \
                        and (self._busy or time.monotonic() < deadline):
                    self._cond.wait(0.5)
                if self._closing:
                    return
                actor = self._actor
                idle_check = actor is not None and not actor.dead
            if idle_check:
                assert actor is not None
                if self._alive(actor):
                    continue
                with self._cond:
                    if self._actor is not actor or self._busy:
                        continue
                    actor.dead = True
                log.warning("Ray worker %s died while idle; creating another", actor.label)
            with self._cond:
                if self._actor is not None and self._actor.dead:
                    dead, self._actor = self._actor, None
                else:
                    dead = None
                failures = self._spawn_failures
            if dead is not None:
                self._kill(dead)
            if failures:
                time.sleep(min(30.0, 0.5 * 2 ** min(failures - 1, 6)))
            new = self._spawn(ray)
            with self._cond:
                if new is None:
                    self._spawn_failures += 1
                else:
                    self._spawn_failures = 0
                    if self.spawn_times:
                        self.restarts += 1
                    self.spawn_times.append(new.spawn_s)
                    if self._closing:
                        self._kill(new)
                        return
                    self._actor = new
                    self._loaded = []
                self._cond.notify_all()

    def _alive(self, actor: _Actor, timeout: float = 10.0) -> bool:
        ray = require_ray()
        try:
            ray.get(actor.handle.ping.remote(), timeout=timeout)
            return True
        except ray.exceptions.GetTimeoutError:
            return True  # busy or slow, not known dead
        except Exception:
            return False

    def _spawn(self, ray: Any) -> _Actor | None:
        started = time.perf_counter()
        options: dict[str, Any] = {"name": f"loom-worker-{self.index}-{uuid.uuid4().hex[:8]}",
                                   "num_cpus": 1 if self.num_cpus is None else self.num_cpus}
        num_gpus = self.num_gpus
        if num_gpus is None:
            num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        if num_gpus:
            options["num_gpus"] = num_gpus
        options.update(self.actor_options)
        handle = None
        try:
            handle = actor_class().options(**options).remote(self.spec, self.index)
            info = ray.get(handle.info.remote(), timeout=self.start_timeout_s)
        except Exception as error:
            self.last_start_error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            log.error("cannot start Ray worker %d: %s", self.index, error)
            if handle is not None:
                try:
                    ray.kill(handle, no_restart=True)
                except Exception:
                    pass
            return None
        spawn_s = time.perf_counter() - started
        if self.expected_nodes is not None:
            missing = sorted(set(self.expected_nodes) - set(info.get("nodes") or []))
            if missing:
                log.warning("Ray worker %d lacks %d node type(s) the server knows (%s): prompts using them fail "
                            "there; install the node packs on every host", self.index, len(missing),
                            ", ".join(missing[:10]))
        self.last_start_error = None
        actor = _Actor(handle, self.index, info, spawn_s)
        log.info("Ray worker %s ready in %.2f s (its own start-up %.2f s)", actor.label, spawn_s,
                 info.get("startup_s", 0.0))
        return actor

    def _kill(self, actor: _Actor) -> None:
        actor.dead = True
        try:
            require_ray().kill(actor.handle, no_restart=True)
        except Exception:
            pass

    def _take_actor(self, cancel: CancelToken | None = None) -> _Actor | None:
        """The ready actor (checked alive), marked busy; waits while one is starting. None if none can, or
        when the server closes or ``cancel`` is set before one is ready."""
        self.start()
        deadline = time.monotonic() + self.start_timeout_s + 5.0
        while True:
            with self._cond:
                failures = self._spawn_failures
                while True:
                    actor = self._actor
                    if actor is not None and not actor.dead:
                        self._busy = True
                        break
                    if self._closing or (cancel is not None and cancel.is_set()) \
                            or time.monotonic() > deadline or self._spawn_failures > failures:
                        return None
                    self._cond.notify_all()
                    self._cond.wait(0.1)
            if self._alive(actor):
                return actor
            log.warning("Ray worker %s is gone; waiting for a new one before running the prompt", actor.label)
            self._release(actor, dead=True)

    def _release(self, actor: _Actor, dead: bool) -> None:
        with self._cond:
            self._busy = False
            if dead:
                actor.dead = True
            self._cond.notify_all()
        if dead:
            self._kill(actor)

    # -- the executor interface ----------------------------------------------------------------

    def interrupt(self, prompt_id: str | None = None) -> bool:
        running = self.running_prompt_id
        if running is None or (prompt_id is not None and prompt_id != running):
            return False
        actor = self._actor
        if actor is not None and not actor.dead:
            try:
                actor.handle.interrupt.remote()
            except Exception:
                log.exception("interrupting Ray worker %s failed", actor.label)
        return True

    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """ComfyUI's ``/free`` on the actor (it waits for a running prompt). A new actor holds nothing."""
        if not (unload_models or free_memory):
            return
        actor = self._actor
        if actor is None or actor.dead:
            return
        ray = require_ray()
        try:
            ray.get(actor.handle.free.remote(bool(unload_models), bool(free_memory)), timeout=60)
            self._loaded = []
        except Exception as error:
            log.warning("freeing memory on Ray worker %s failed: %s", actor.label, error)

    def execute(self, prompt: dict[str, Any], prompt_id: str, *, extra_data: dict[str, Any] | None = None,
                outputs: list[str] | None = None, on_event: EventSink | None = None,
                cancel: CancelToken | None = None, validation: Any = None) -> ExecutionResult:
        with self._run_lock:
            self.running_prompt_id = prompt_id
            try:
                for attempt in range(HANDOVER_ATTEMPTS):
                    actor = self._take_actor(cancel)
                    if actor is None:
                        return unstarted_result(prompt, prompt_id, f"ray:{self.index}", on_event, "Ray worker",
                                                closing=self._closing, cancel=cancel,
                                                start_error=self.last_start_error)
                    try:
                        return self._run(actor, prompt, prompt_id, extra_data or {}, outputs, on_event, cancel)
                    except _NotAccepted as error:
                        log.warning("Ray worker %s died before it took prompt %s (%s); handing it to a new worker",
                                    actor.label, prompt_id, error)
                        self._release(actor, dead=True)
                return fault_result(prompt, prompt_id, f"ray:{self.index}", on_event, [], None, "worker_died",
                                    f"{HANDOVER_ATTEMPTS} Ray workers in a row died before they could take the "
                                    "prompt; it was not run", [])
            finally:
                self.running_prompt_id = None

    def _run(self, actor: _Actor, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any],
             outputs: list[str] | None, on_event: EventSink | None, cancel: CancelToken | None) -> ExecutionResult:
        ray = require_ray()
        recorded: list[tuple[str, dict[str, Any]]] = []
        executed: list[str] = []
        current: list[str | None] = [None]

        def deliver_event(event: str, data: dict[str, Any]) -> None:
            if event == "executing":
                if current[0] is not None and current[0] not in executed:
                    executed.append(current[0])
                current[0] = data.get("node")
            elif event == "executed" and data.get("output"):
                data = {**data, "output": _rename_ui(data["output"], actor.renames)}
            if event in RECORDED_EVENTS:
                recorded.append((event, data))
            if on_event is not None:
                try:
                    on_event(event, data)
                except Exception:
                    log.exception("delivering event %s failed", event)

        def deliver(message: Any) -> ExecutionResult | None:
            kind = message[0]
            if kind == "events":
                for event, data in message[1]:
                    deliver_event(event, data)
            elif kind == "files":
                for file_kind, subfolder, filename, data in message[1]:
                    _store_output(actor, file_kind, subfolder, filename, data)
            elif kind == "done":
                fields, loaded = message[1], message[2]
                self._loaded = list(loaded)
                fields = dict(fields)
                self.loads.extend(fields.pop("models_loaded", None) or [])
                if fields.get("outputs"):
                    fields["outputs"] = {node: _rename_ui(ui, actor.renames) for node, ui in fields["outputs"].items()}
                result = ExecutionResult(prompt_id=prompt_id, worker=actor.label,
                                         **{name: fields.get(name) for name in _RESULT_FIELDS
                                            if fields.get(name) is not None})
                result.loaded_models = list(loaded)  # what routing reads
                return result
            return None

        started = time.monotonic()
        deadline = None if self.prompt_timeout_s is None else started + self.prompt_timeout_s
        try:
            files = _input_files(prompt, actor)
            generator = actor.handle.run.remote(prompt_id, prompt, extra_data, outputs, files)
        except Exception as error:
            raise _NotAccepted(f"{type(error).__name__}: {error}") from None
        interrupted = False
        accepted = False
        try:
            while True:
                timeout = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                ready, _ = ray.wait([generator], timeout=timeout)
                if ready:
                    try:
                        ref = next(generator)
                    except StopIteration:
                        raise _Died("the actor ended the prompt without a result") from None
                    try:
                        batch = ray.get(ref, timeout=RESULT_WAIT_S)
                    except ray.exceptions.RayActorError as error:
                        raise _Died(_actor_error(error)) from None
                    except ray.exceptions.GetTimeoutError:
                        raise _Died(f"a message the actor sent did not arrive in {RESULT_WAIT_S:g} s") from None
                    except ray.exceptions.RayTaskError as error:
                        self._release(actor, dead=False)
                        return fault_result(prompt, prompt_id, actor.label, on_event, recorded, current[0],
                                      "executor_error", f"the Ray worker failed: {error}", executed)
                    for message in batch:
                        if message[0] == "accepted":
                            accepted = True
                            continue
                        result = deliver(message)
                        if result is not None:
                            actor.sent.update(_sent_versions(files))
                            self._release(actor, dead=False)
                            return result
                    continue
                if cancel is not None and cancel.is_set() and not interrupted:
                    interrupted = True
                    try:
                        actor.handle.interrupt.remote()
                    except Exception:
                        pass
                if deadline is not None and time.monotonic() >= deadline:
                    node = current[0]
                    log.error("prompt %s ran past its limit of %.0f s in node %s: killing Ray worker %s",
                              prompt_id, self.prompt_timeout_s, node, actor.label)
                    self._release(actor, dead=True)
                    where = f" (node {node}, {prompt.get(node, {}).get('class_type')})" if node else ""
                    return fault_result(prompt, prompt_id, actor.label, on_event, recorded, node, "timeout",
                                  f"the prompt ran longer than the limit of {self.prompt_timeout_s:g} s{where}; "
                                  "its Ray worker was stopped and a new one started", executed)
        except (_Died, ray.exceptions.RayActorError) as error:
            reason = (str(error) if isinstance(error, _Died) else _actor_error(error)).rstrip(".")
            if not accepted and not self._closing:
                raise _NotAccepted(reason) from None
            self._release(actor, dead=True)
            if self._closing:
                return fault_result(prompt, prompt_id, actor.label, on_event, recorded, current[0], "interrupted",
                              "the server stopped while this prompt was running", executed)
            node = current[0]
            where = f" while running node {node} ({prompt.get(node, {}).get('class_type')})" if node else ""
            log.error("Ray worker %s died%s: %s", actor.label, where, reason)
            return fault_result(prompt, prompt_id, actor.label, on_event, recorded, node, "worker_died",
                          f"the Ray worker died{where}: {reason}. The prompt was not re-run; a new worker "
                          "was started", executed)


def _actor_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__


def ray_executors(spec: WorkerSpec, count: int | None = None, **options: Any) -> list[RayExecutor]:
    """``count`` executors (default: one per GPU in the cluster, or one when it has none), each with its actor
    (started by the executor's ``start()``). ``options`` go to :class:`RayExecutor`."""
    ray = require_ray()
    if count is None:
        count = max(1, int(ray.cluster_resources().get("GPU", 0)))
    return [RayExecutor(spec, index=index, **options) for index in range(count)]


def serve_executors(registry: Any = None, *, address: str | None = None, actors: int | None = None,
                    prompt_timeout_s: float | None = None, node_packs: Any = ()) -> list[RayExecutor]:
    """``loom serve --backend ray``: join the cluster at ``address`` (or start a local one, token
    authentication on) and make one executor per actor (``actors``, default one per GPU, or 1), each a lane."""
    if actors is not None and actors < 1:
        raise ValueError(f"--ray-actors must be at least 1, not {actors}")
    init_ray(address)
    if registry is None:
        from loom.nodes.kernel.schema import default_registry
        registry = default_registry(list(node_packs))
    spec = WorkerSpec.current(registry, node_packs)
    executors = ray_executors(spec, actors, prompt_timeout_s=prompt_timeout_s, expected_nodes=registry.names())
    log.info("Ray backend: %d LoomWorker actor(s) on %s", len(executors), address or "a local Ray cluster")
    return executors


# -------------------------------------------------------------------------------------------------
# Files between the server and an actor
# -------------------------------------------------------------------------------------------------

def _input_files(prompt: dict[str, Any], actor: _Actor) -> list[tuple[str, str, bytes | None, int]]:
    """The server's files the prompt's string inputs name (input, or annotated output/temp), as
    ``(kind, name, bytes, mtime_ns)``; bytes None where the actor has that version already."""
    from loom.nodes.kernel import folders

    found: dict[tuple[str, str], tuple[str, str, bytes | None, int]] = {}
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for value in inputs.values():
            if not isinstance(value, str) or not value.strip() or len(value) > 1024 or "\x00" in value:
                continue
            name, kind = value, "input"
            for suffix, annotated in _ANNOTATIONS.items():
                if value.endswith(suffix):
                    name, kind = value[:-len(suffix)], annotated
                    break
            if (kind, name) in found:
                continue
            try:
                path = folders.resolve_data(kind, name)
                if not path.is_file():
                    continue
                stat = path.stat()
            except (OSError, ValueError):
                continue
            if stat.st_size > MAX_INPUT_FILE_BYTES:
                log.warning("not sending %s file %r to the Ray worker: %d MiB is over the limit", kind, name,
                            stat.st_size >> 20)
                continue
            version = (stat.st_size, stat.st_mtime_ns)
            if actor.sent.get((kind, name)) == version:
                found[(kind, name)] = (kind, name, None, stat.st_mtime_ns)
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found[(kind, name)] = (kind, name, data, stat.st_mtime_ns)
    return list(found.values())


def _sent_versions(files: list[tuple[str, str, bytes | None, int]]) -> dict[tuple[str, str], tuple[int, int]]:
    return {(kind, name): (len(data), mtime_ns) for kind, name, data, mtime_ns in files if data is not None}


def _store_output(actor: _Actor, kind: str, subfolder: str, filename: str, data: bytes) -> None:
    """Write a file the actor produced into the server's ``kind`` folder under the next free name and
    remember the name it took (the actor's name -> the server's)."""
    from loom.nodes.kernel import folders

    if kind not in _SHIPPED_KINDS:
        return
    try:
        folder = folders.resolve_data(kind, "", subfolder)
        if not folders.inside(folders.current().data_dir(kind), folder / filename):
            raise PermissionError(filename)
    except PermissionError:
        log.warning("refusing a file from Ray worker %s outside the %s folder: %r", actor.label, kind,
                    f"{subfolder}/{filename}")
        return
    folders.make_dirs(folder)
    match = _COUNTER_NAME.fullmatch(filename)
    if match:
        base, ext = match["base"], match["ext"]
        counter = _next_counter(folder, base)
        while not folders.write_new(folder / f"{base}_{counter:05}_{ext}", data):
            counter += 1
        name = f"{base}_{counter:05}_{ext}"
    else:
        stem, suffix = os.path.splitext(filename)
        name, number = filename, 1
        while not folders.write_new(folder / name, data):
            name, number = f"{stem}-{number}{suffix}", number + 1
    actor.renames[(kind, subfolder, filename)] = (subfolder, name)


def _next_counter(folder: Path, base: str) -> int:
    """One more than the highest counter of ``{base}_NNNNN...`` files in ``folder`` (as SaveImage counts)."""
    highest = 0
    prefix = os.path.normcase(base + "_")
    for name in os.listdir(folder):
        if os.path.normcase(name[:len(prefix)]) != prefix:
            continue
        try:
            highest = max(highest, int(name[len(prefix):].split("_")[0]))
        except ValueError:
            continue
    return highest + 1


def _rename_ui(value: Any, renames: dict[tuple[str, str, str], tuple[str, str]]) -> Any:
    """``value`` (a node's ui dict) with the file names the actor wrote replaced by the server's."""
    if isinstance(value, dict):
        filename = value.get("filename")
        if isinstance(filename, str):
            key = (str(value.get("type") or "output"), str(value.get("subfolder") or ""), filename)
            if key in renames:
                subfolder, name = renames[key]
                return {**value, "subfolder": subfolder, "filename": name}
        return {k: _rename_ui(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_ui(v, renames) for v in value]
    if isinstance(value, tuple):
        return tuple(_rename_ui(v, renames) for v in value)
    return value


