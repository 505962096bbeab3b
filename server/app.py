"""The aiohttp application factory: ComfyUI's HTTP/WebSocket API, Loom's additions, and the editor's files.

:func:`create_app` builds one :class:`web.Application` around a :class:`~server.state.LoomServer`:

* middlewares and ``on_response_prepare`` from :mod:`server.security` (token, cross-site checks, error
  hygiene, hardening headers); routes only call its helpers;
* one ``cleanup_ctx``, :func:`lifecycle`: open the queue and start the lane workers; on the way down stop
  the workers, close the executors, close the queue;
* ``on_shutdown``, :func:`wind_down`: stop the workers before the WebSocket clients are closed, so that an
  interrupted prompt's last events still reach them (aiohttp closes connections between ``on_shutdown``
  and the cleanup contexts); the workers are stopped once, whichever runs first;
* the route tables of :mod:`server.routes` (and the older route lists of :mod:`server.templates`,
  :mod:`server.model_library`, :mod:`server.comfy_routes`), every API route at ``/path`` and ``/api/path``;
  the editor's files last, at ``/``.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable

from aiohttp import web

from loom.server import comfy_routes, model_library, templates
from loom.server.routes import editor, files, history, meta, prompts, settings, workflows, ws
from loom.server.routes.meta import (COMFYUI_COMPATIBLE_VERSION, COMFYUI_REQUIRED_FRONTEND_VERSION,
                                     COMFYUI_REQUIRED_TEMPLATES_VERSION, VERSION)
from loom.server.security import add_hardening_headers, error_middleware, security_middleware
from loom.server.state import SERVER_KEY, WORKER_TRANSPORTS, LoomServer, ServerConfig, server_of

__all__ = ["COMFYUI_COMPATIBLE_VERSION", "COMFYUI_REQUIRED_FRONTEND_VERSION", "COMFYUI_REQUIRED_TEMPLATES_VERSION",
           "SERVER_KEY", "VERSION", "WORKER_TRANSPORTS", "LoomServer", "ServerConfig", "api_routes", "create_app",
           "lifecycle", "server_of", "wind_down"]


def create_app(config: ServerConfig | None = None) -> web.Application:
    """The aiohttp application for ``config``; the queue opens and the worker starts with the app."""
    config = config or ServerConfig()
    server = LoomServer(config)
    app = web.Application(middlewares=[error_middleware, security_middleware(server.security)],
                          client_max_size=max(config.max_prompt_bytes, config.upload.max_bytes) + 1024 * 1024)
    app[SERVER_KEY] = server
    app.on_response_prepare.append(add_hardening_headers)
    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(wind_down)
    routes = api_routes(server)
    for prefix in ("", "/api"):
        for route in routes:
            app.router.add_route(route.method, prefix + route.path, route.handler)
    app.router.add_routes(editor.routes)  # the catch-all: after every API route
    return app


def api_routes(server: LoomServer) -> list[web.RouteDef]:
    """Every API route, in the order they are matched (each is mounted at ``/path`` and ``/api/path``)."""
    return [*ws.routes, *prompts.routes, *history.routes, *meta.routes, *files.routes, *workflows.routes,
            *_route_defs(templates.routes()), *_route_defs(model_library.routes()), *settings.routes,
            *_route_defs(comfy_routes.routes(server))]


def _route_defs(routes: Iterable[tuple[str, str, object]]) -> list[web.RouteDef]:
    return [web.route(method, path, handler) for method, path, handler in routes]  # type: ignore[arg-type]


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The app's ``cleanup_ctx``: open the queue and start the workers; then stop them and close the queue."""
    server = app[SERVER_KEY]
    server.open()
    server.hub.attach(asyncio.get_running_loop())
    if server.config.start_worker:
        server.start_workers()
    try:
        yield
    finally:
        await server.stop_workers()  # at once when wind_down stopped them
        await server.close()


async def wind_down(app: web.Application) -> None:
    """``on_shutdown``: stop taking prompts, so none starts (and is interrupted) while the server winds down;
    then close the WebSocket clients, after the interrupted prompts' final events."""
    server = app[SERVER_KEY]
    await server.stop_workers()
    await asyncio.sleep(0)  # let the interrupted prompts' final events reach their clients
    await server.hub.close_all()
