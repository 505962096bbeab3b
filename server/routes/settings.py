"""ComfyUI's ``/settings`` (all at once, or one by id), kept in ``<user>/settings.json``; writes are
serialised by the server's settings lock. (Per-user files, ``/userdata``, are :mod:`server.userdata`.)"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from loom.nodes.kernel import folders
from loom.server.security import ClientError, read_json
from loom.server.state import SERVER_KEY

routes = web.RouteTableDef()


@routes.get("/settings")
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(load_settings, request.app[SERVER_KEY].user_dir))


@routes.post("/settings")
async def post_settings(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    body = await read_json(request, 1024 * 1024)
    if not isinstance(body, dict):
        raise ClientError(400, "invalid_request", "Settings must be a JSON object")
    async with server.settings_lock:
        settings = await asyncio.to_thread(load_settings, server.user_dir)
        settings.update(body)
        await asyncio.to_thread(store_settings, server.user_dir, settings)
    return web.json_response({})


@routes.get("/settings/{setting_id}")
async def get_setting(request: web.Request) -> web.Response:
    settings = await asyncio.to_thread(load_settings, request.app[SERVER_KEY].user_dir)
    return web.json_response(settings.get(request.match_info["setting_id"]))


@routes.post("/settings/{setting_id}")
async def post_setting(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    value = await read_json(request, 1024 * 1024)
    async with server.settings_lock:
        settings = await asyncio.to_thread(load_settings, server.user_dir)
        settings[request.match_info["setting_id"]] = value
        await asyncio.to_thread(store_settings, server.user_dir, settings)
    return web.json_response({})


def load_settings(user_dir: Path) -> dict[str, Any]:
    try:
        settings = json.loads((user_dir / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def store_settings(user_dir: Path, settings: dict[str, Any]) -> None:
    folders.write_replacing(user_dir / "settings.json", json.dumps(settings, indent=2).encode("utf-8"))
