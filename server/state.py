"""What a running server holds: :class:`ServerConfig` (how it was asked to run) and :class:`LoomServer` (the
registry, the executors, the WebSocket hub; the queue and the lane workers once the app has started).

Building a :class:`LoomServer` checks the configuration and does no I/O: the queue database is opened, the
user folder made and the workers started by :func:`server.app.lifecycle`, the app's one ``cleanup_ctx``.
Route handlers reach the server through ``request.app[SERVER_KEY]`` (:func:`server_of`).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from aiohttp import web

from loom.nodes.kernel import folders
from loom.nodes.kernel.schema import NodeRegistry
from loom.server.budget import ResourceBudget
from loom.server.clients import ClientHub
from loom.server.queue import PromptQueue
from loom.server.security import SecurityConfig, UploadLimits
from loom.server.worker import Worker

WORKER_TRANSPORTS = ("thread", "process")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    token: str | None = None
    registry: NodeRegistry | None = None
    extra_node_packs: Sequence[str | Path] = ()
    db_path: Path | None = None  # default <base>/user/loom.sqlite3
    user_dir: Path | None = None  # default <base>/user
    web_root: Path = folders.WEB_DIR
    max_prompt_bytes: int = 20 * 1024 * 1024
    upload: UploadLimits = field(default_factory=UploadLimits)
    history_max_items: int = 10_000
    history_max_age_s: float | None = 30 * 24 * 3600
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    expose_tracebacks: bool = False
    budget: ResourceBudget = field(default_factory=ResourceBudget)  # per-node limits checked before queueing
    default_workflow: Path | None = None  # what the editor opens first (default workflows/txt2img.json)
    stall_timeout_s: float = 900.0  # /api/ready turns 503 when a running prompt reports nothing for this long
    preview_method: str | None = None  # ComfyUI's --preview-method; None: latent previews only to clients that ask
    start_worker: bool = True
    executor: Any = None  # default: per ``workers``
    workers: str = "thread"  # "thread": the executor runs in a thread here; "process": in a worker process
    prompt_timeout_s: float | None = None  # process workers: a prompt running longer fails with ``timeout``
    worker_spec: Any = None  # process workers: a server.worker_process.WorkerSpec (default: as configured now)
    lanes: int = 1  # lanes (one worker thread + its own executor each) sharing the queue; >1 needs process workers
    executors: Sequence[Any] | None = None  # one executor per lane, of any transport (overrides executor/lanes)
    routing_k: int | None = None  # lanes > 1: the routing's starvation bound (default 16 per lane)


class LoomServer:
    """Everything a running server holds. ``queue``, ``workers`` and ``worker`` exist once the app has
    started (:meth:`open`), and stay readable after it stopped."""

    queue: PromptQueue
    workers: list[Worker]
    worker: Worker
    pending_at_start: int

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.security = SecurityConfig.for_bind(config.host, config.token, allowed_hosts=config.allowed_hosts,
                                                allowed_origins=config.allowed_origins)
        if config.registry is None:
            from loom.nodes.kernel.schema import default_registry
            config.registry = default_registry(config.extra_node_packs)
        self.registry: NodeRegistry = config.registry
        self.user_dir = Path(config.user_dir or folders.base_dir() / "user")
        if config.workers not in WORKER_TRANSPORTS:
            raise ValueError(f"workers must be one of {', '.join(WORKER_TRANSPORTS)}, not {config.workers!r}")
        executors = list(config.executors) if config.executors else self._make_executors(config)
        self.executors: list[Any] = executors
        self.executor = executors[0]  # the first lane's (the only one, by default)
        self.hub = ClientHub()
        self.router = None
        if len(executors) > 1:
            from loom.server.routing import Router
            self.router = Router(k=config.routing_k)
        self.settings_lock = asyncio.Lock()
        self.started_at = time.time()
        self.workers = []
        self._workers_stopped = False

    def _make_executors(self, config: ServerConfig) -> list[Any]:
        """One executor per lane: ``config.executor`` (one lane), else per ``workers`` and ``lanes``."""
        lanes = int(config.lanes)
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {config.lanes!r}")
        if config.executor is not None:
            if lanes != 1:
                raise ValueError("lanes > 1 needs one executor per lane: pass executors=[...], not executor=")
            return [config.executor]
        if config.workers == "process":
            from loom.server.worker_process import ProcessExecutor, WorkerSpec
            spec = config.worker_spec or WorkerSpec.current(self.registry, config.extra_node_packs)
            executors = [ProcessExecutor(spec, prompt_timeout_s=config.prompt_timeout_s,
                                         expected_nodes=self.registry.names()) for _ in range(lanes)]
            config.executor = executors[0]
            return executors
        if config.prompt_timeout_s:
            raise ValueError("prompt_timeout_s needs process workers (workers='process'): a thread cannot be "
                             "stopped from outside")
        if lanes != 1:
            raise ValueError(f"{lanes} lanes need process workers (workers='process', loom serve --workers "
                             "process): thread workers share one process and so one model cache, so only one "
                             "thread lane makes sense")
        from loom.server.executor import Executor
        config.executor = Executor(self.registry)
        return [config.executor]

    # -- lifecycle (called by server.app.lifecycle and server.app.wind_down) -------------------------------

    def open(self) -> None:
        """Make the user folder, open the durable queue and build one worker per lane (not started yet)."""
        config = self.config
        self.user_dir.mkdir(parents=True, exist_ok=True)
        self.queue = PromptQueue(config.db_path or self.user_dir / "loom.sqlite3",
                                 max_history_items=config.history_max_items,
                                 max_history_age_s=config.history_max_age_s)
        self.pending_at_start = self.queue.counts()[0]
        self.hub.status_source = lambda: {"exec_info": {"queue_remaining": self.queue.remaining()}}
        self.queue.add_listener(self.hub.status_changed)
        self.workers = [
            Worker(self.queue, executor, self.hub, expose_tracebacks=config.expose_tracebacks,
                   preview_method=config.preview_method, router=self.router, name=f"lane-{index}")
            for index, executor in enumerate(self.executors)]
        self.worker = self.workers[0]

    def start_workers(self) -> None:
        for executor, worker in zip(self.executors, self.workers):
            start = getattr(executor, "start", None)
            if callable(start):  # a worker process starts in the background; /api/ready waits for it
                start()
            worker.start()

    async def stop_workers(self) -> None:
        """Stop taking prompts and join every lane's worker (once: later calls return at once). A running
        prompt is interrupted; one whose node ignores the interrupt has its worker process stopped, so that
        it is recorded as interrupted while the queue is still open."""
        if self._workers_stopped:
            return
        self._workers_stopped = True
        await self._join(self.workers)
        hung = [(w, getattr(e, "close", None)) for w, e in zip(self.workers, self.executors)]
        hung = [(w, close) for w, close in hung if w.alive and callable(close)]
        if hung:
            await asyncio.gather(*(asyncio.to_thread(close) for _, close in hung))
            await self._join([w for w, _ in hung])

    @staticmethod
    async def _join(workers: list[Worker]) -> None:
        for worker in workers:  # all at once: each may wait for its running prompt to stop
            worker.request_stop()
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in workers))

    async def close(self) -> None:
        """Close every executor (worker processes end) and then the queue."""
        closes = [close for close in (getattr(e, "close", None) for e in self.executors) if callable(close)]
        await asyncio.gather(*(asyncio.to_thread(close) for close in closes))
        self.queue.close()

    def interrupt(self, prompt_id: str | None) -> bool:
        """Interrupt ``prompt_id`` in whichever lane runs it (every running prompt, without an id)."""
        hit = False
        for worker in self.workers:
            if worker.interrupt(prompt_id):
                hit = True
                if prompt_id is not None:
                    break
        return hit


SERVER_KEY = web.AppKey("loom_server", LoomServer)


def server_of(app: web.Application) -> LoomServer:
    return app[SERVER_KEY]
