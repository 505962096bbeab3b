"""ComfyUI's smaller routes, answered in ComfyUI's shapes (baseline 0.3.64), or with a clear JSON 404.

The core routes (``/prompt``, ``/queue``, ``/history``, ``/view``, ...) live in :mod:`server.routes`; these
are the ones a ComfyUI client or frontend reads around them:

* ``GET /extensions`` — ComfyUI lists its frontend extension scripts; Loom's editor has none: ``[]``.
* ``GET /view_metadata/{folder}?filename=x.safetensors`` — the ``__metadata__`` of a safetensors header
  (read at most 1 MiB of it, as ComfyUI does); 404 otherwise.
* ``GET /users`` — single-user: ``{"storage": "server", "migrated": true}``. ``POST /users`` — 400: Loom
  has one user (a 4xx: the request cannot be served, the server is fine).
* ``/userdata`` (listing) and ``/userdata/{file}`` (read, write, delete, move) — ComfyUI's user-data API,
  in :mod:`server.userdata`.
* ``GET /workflow_templates`` — custom node packs' templates by pack: ``{}`` (Loom has no packs with
  templates); ``GET /i18n`` — ``{}``.
* ``GET /internal/files/{input|output|temp}`` — top-level file names, newest first.
* ``GET /internal/logs`` (a JSON string), ``/internal/logs/raw`` (``{entries, size}``) and
  ``PATCH /internal/logs/subscribe`` — Loom keeps no log buffer for the browser: empty.
* ``GET /internal/folder_paths`` and ``/experiment/models*`` — JSON 404: they hand out the server's
  absolute paths, which Loom never does (``/models`` and ``/models/{folder}`` list the same files).
* ``/api/jobs`` — only in ComfyUI after 0.3.6x: JSON 404 naming what to use instead.

Every route is also served under ``/api`` (the caller adds the prefixes).
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from loom.nodes.kernel import folders
from loom.server import userdata
from loom.server.security import ClientError, read_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFETENSORS_HEADER_LIMIT = 1024 * 1024


def routes(server: Any) -> list[tuple[str, str, Handler]]:
    """``(method, path, handler)`` for each route; ``server`` is the :class:`~server.state.LoomServer`."""
    return [
        ("GET", "/extensions", get_extensions),
        ("GET", "/view_metadata/{folder_name}", get_view_metadata),
        ("GET", "/users", get_users),
        ("POST", "/users", post_users),
        *userdata.routes(server),
        ("GET", "/workflow_templates", get_empty_object),
        ("GET", "/i18n", get_empty_object),
        ("GET", "/internal/files/{directory_type}", get_internal_files),
        ("GET", "/internal/logs", get_internal_logs),
        ("GET", "/internal/logs/raw", get_internal_logs_raw),
        ("PATCH", "/internal/logs/subscribe", patch_logs_subscribe),
        ("GET", "/internal/folder_paths", not_served(
            "Loom does not hand out the server's folder paths", "list the files with GET /models/{folder}")),
        ("GET", "/experiment/models", not_served(
            "the experimental model listing names server paths", "use GET /models and GET /models/{folder}")),
        ("GET", "/experiment/models/{folder}", not_served(
            "the experimental model listing names server paths", "use GET /models/{folder}")),
        ("GET", "/jobs", not_served(
            "jobs are not part of ComfyUI 0.3.6x's API", "use GET /queue and GET /history")),
        ("GET", "/jobs/{job_id}", not_served(
            "jobs are not part of ComfyUI 0.3.6x's API", "use GET /history/{prompt_id}")),
    ]


def not_served(reason: str, instead: str) -> Handler:
    async def get_not_served(request: web.Request) -> web.StreamResponse:  # read-only (get_): see security tests
        raise ClientError(404, "not_served", f"Loom does not serve {request.path}: {reason}", instead)
    return get_not_served


async def get_extensions(request: web.Request) -> web.Response:
    return web.json_response([])


async def get_empty_object(request: web.Request) -> web.Response:
    return web.json_response({})


async def get_users(request: web.Request) -> web.Response:
    return web.json_response({"storage": "server", "migrated": True})


async def post_users(request: web.Request) -> web.Response:
    raise ClientError(400, "not_supported", "Loom has a single user",
                      "ComfyUI's users exist only with --multi-user; Loom has no such mode")


async def get_view_metadata(request: web.Request) -> web.Response:
    folder = request.match_info["folder_name"]
    filename = request.query.get("filename", "")
    if not filename.endswith(".safetensors"):
        raise ClientError(404, "not_found", "No metadata", "filename must name a .safetensors file")
    if folder not in folders.MODEL_FOLDERS:
        raise ClientError(404, "not_found", "Unknown model folder", f"known folders: {', '.join(folders.MODEL_FOLDERS)}")
    try:
        path = folders.resolve(folder, filename)
    except (FileNotFoundError, PermissionError):
        raise ClientError(404, "not_found", "Model file not found", f"no {filename!r} in {folder}") from None
    metadata = await asyncio.to_thread(safetensors_metadata, path)
    if metadata is None:
        raise ClientError(404, "not_found", "No metadata", "the file's header has no __metadata__")
    return web.json_response(metadata)


def safetensors_metadata(path: Path, limit: int = SAFETENSORS_HEADER_LIMIT) -> dict[str, Any] | None:
    """The ``__metadata__`` object of a safetensors header, or None (no header, too large, not JSON)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                return None
            (length,) = struct.unpack("<Q", raw)
            if length > limit:
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


async def get_internal_files(request: web.Request) -> web.Response:
    kind = request.match_info["directory_type"]
    if kind not in ("input", "output", "temp"):
        raise ClientError(400, "invalid_request", "Invalid directory type", "one of input, output, temp")
    return web.json_response(await asyncio.to_thread(_newest_first, kind))


def _newest_first(kind: str) -> list[str]:
    root = folders.current().data_dir(kind)

    def mtime(name: str) -> float:
        try:
            return os.stat(root / name).st_mtime
        except OSError:
            return 0.0
    return sorted(folders.data_files(kind), key=lambda name: -mtime(name))


async def get_internal_logs(request: web.Request) -> web.Response:
    return web.json_response("")


async def get_internal_logs_raw(request: web.Request) -> web.Response:
    return web.json_response({"entries": [], "size": {"cols": 80, "rows": 24}})


async def patch_logs_subscribe(request: web.Request) -> web.Response:
    body = await read_json(request, 64 * 1024, required=False)
    if body is not None and not isinstance(body, dict):
        raise ClientError(400, "invalid_request", "The body must be a JSON object", '{"clientId", "enabled"}')
    return web.Response(status=200)
