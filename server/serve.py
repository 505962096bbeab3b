"""``loom serve``: run the application until SIGINT/SIGTERM, print where it listens, open the editor.

On SIGTERM/SIGINT the server stops taking prompts, interrupts the running one (it is recorded in history
as interrupted) and closes the queue database; pending prompts stay queued for the next start.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import webbrowser
from typing import Any

from aiohttp import web

from loom.server.app import ServerConfig, create_app, server_of
from loom.server.budget import ResourceBudget
from loom.server.notices import startup_notices

log = logging.getLogger("loom.server")


def server_config(args: argparse.Namespace | None = None, registry: Any = None, **options: Any) -> ServerConfig:
    """The :class:`ServerConfig` for the ``loom serve`` namespace ``args`` and keyword ``options`` (which win):
    ``host`` (default 127.0.0.1), ``port`` (8188), ``token``, ``workflow`` (the file the editor opens first,
    served at ``/api/workflows/default``), ``allowed_hosts``, ``allowed_origins``, ``expose_tracebacks``,
    ``preview_method``, ``workers`` (``process``, the default here, or ``thread``), ``lanes`` (worker processes
    sharing the queue, routed by model affinity; default 1), ``prompt_timeout``
    (seconds; None or 0: no limit), ``nodes`` (the node packs, which a worker process loads too), ``backend``
    (``local``, or ``ray``: one lane per Ray actor, with ``ray_address`` and ``ray_actors``) and the
    budget's ``max_pixels``/``max_batch``/``max_steps``. ``registry`` is the node registry (default: the
    built-in nodes)."""
    def option(name: str, default: Any) -> Any:
        return options.get(name, getattr(args, name, default) if args is not None else default)

    ray_lanes: dict[str, Any] = {}
    if option("backend", "local") == "ray":  # one lane per Ray actor (server/ray_worker.py)
        from loom.server.ray_worker import serve_executors
        ray_lanes["executors"] = serve_executors(registry, address=option("ray_address", None),
                                                 actors=option("ray_actors", None),
                                                 prompt_timeout_s=_timeout(option("prompt_timeout", None)),
                                                 node_packs=tuple(option("nodes", ()) or ()))
    return ServerConfig(**ray_lanes, host=option("host", "127.0.0.1"), port=int(option("port", 8188)),
                        token=option("token", None), registry=registry,
                        expose_tracebacks=bool(option("expose_tracebacks", False)),
                        default_workflow=option("workflow", None),
                        allowed_hosts=tuple(option("allowed_hosts", ()) or ()),
                        allowed_origins=tuple(option("allowed_origins", ()) or ()),
                        preview_method=option("preview_method", None),
                        workers=option("workers", "process"),
                        lanes=int(option("lanes", 1) or 1),
                        prompt_timeout_s=_timeout(option("prompt_timeout", None)),
                        extra_node_packs=tuple(option("nodes", ()) or ()),
                        budget=ResourceBudget(max_pixels=int(option("max_pixels", ResourceBudget.max_pixels)),
                                              max_batch=int(option("max_batch", ResourceBudget.max_batch)),
                                              max_steps=int(option("max_steps", ResourceBudget.max_steps))))


def _timeout(value: Any) -> float | None:
    return float(value) if value is not None and float(value) > 0 else None


def run_server(args: argparse.Namespace | None = None, registry: Any = None, **options: Any) -> int:
    """Serve until stopped; returns an exit code. ``args``, ``registry`` and ``options`` are those of
    :func:`server_config`, plus ``no_browser`` / ``open_browser``. The base/models directories must already
    be configured in :mod:`loom.nodes.kernel.folders` (``loom serve`` does it)."""
    config = server_config(args, registry, **options)
    open_browser = options.get("open_browser", not (options.get("no_browser", getattr(args, "no_browser", False))))
    host, port = config.host, config.port
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(config)
    except Exception as error:  # e.g. an unreadable queue database: refuse to start, say why
        print(f"loom serve: cannot start: {error}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(app, host, port, open_browser))
    except OSError as error:
        print(f"loom serve: cannot listen on {host}:{port}: {error.strerror or error}", file=sys.stderr)
        return 1


async def _serve(app: web.Application, host: str, port: int, open_browser: bool) -> int:
    server = server_of(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()  # opens the queue and starts the workers (server.app.lifecycle)
    except Exception as error:  # e.g. an unreadable queue database: refuse to start, say why
        print(f"loom serve: cannot start: {error}", file=sys.stderr)
        await runner.cleanup()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            pass
    # what is alive now (modules, the node registry) lives as long as the server: keep it out of the
    # collector's full passes, each of which stops every thread while it walks all tracked objects
    gc.freeze()
    try:
        hosts = [h.strip() for h in host.split(",") if h.strip()] or ["127.0.0.1"]
        for each in hosts:
            await web.TCPSite(runner, each, port).start()
        bound = _bound_port(runner) or port
        if hosts == ["127.0.0.1"]:
            await _also_ipv6_loopback(runner, bound)
        shown = hosts[0] if hosts[0] not in ("0.0.0.0", "::") else "127.0.0.1"
        url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{bound}/"
        token = server.security.token
        if server.queue.recovered:
            print(f"{len(server.queue.recovered)} prompt(s) were running when Loom last stopped; they are "
                  "in history as interrupted (re-queue with POST /api/history/<id>/requeue)", flush=True)
        pending = server.pending_at_start
        if pending:
            print(f"{pending} queued prompt(s) from the last run will run now", flush=True)
        if token:
            print(f"Access token: {token}", flush=True)
            url_with_token = f"{url}?token={token}"
        else:
            url_with_token = url
        for notice in startup_notices():
            print(notice["text"], flush=True)
        if shown != hosts[0]:
            print(f"Listening on {', '.join(hosts)} port {bound}", flush=True)
        print(f"Loom is running at {url_with_token}", flush=True)
        if open_browser and _has_desktop():
            threading.Thread(target=webbrowser.open, args=(url_with_token,), daemon=True).start()
        await stop.wait()
        print("Loom is stopping: pending prompts stay queued for the next start", flush=True)
    finally:
        await runner.cleanup()
    return 0


async def _also_ipv6_loopback(runner: web.AppRunner, port: int) -> None:
    """Listen on ``[::1]`` too, on the same port: ``localhost`` resolves there first on many systems.
    Skipped quietly where the machine has no IPv6 loopback."""
    try:
        await web.TCPSite(runner, "::1", port).start()
    except OSError as error:
        log.info("not listening on [::1]:%s: %s", port, error.strerror or error)


def _has_desktop() -> bool:
    """False on a headless Linux box, where ``webbrowser`` would start a text browser in this terminal."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
