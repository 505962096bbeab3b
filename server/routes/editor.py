"""The editor's files (``web/``, or ``ServerConfig.web_root``) at ``/`` and every path no API route took.

A handler of our own rather than aiohttp's ``add_static``: the root is read from the config on each request
(it may change while the server runs), ``/`` serves ``index.html``, dotfiles and links out of the root are
404, the editor's code is sent ``no-cache`` with exact charset types, and a missing editor gets a page saying
the API runs. The hardening headers come from the app's ``on_response_prepare`` like every response's.
"""
from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from loom.server.security import ClientError
from loom.server.state import SERVER_KEY

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".ico": "image/x-icon",
    ".gif": "image/gif", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8",
}

routes = web.RouteTableDef()


@routes.get("/")
async def static_file(request: web.Request) -> web.StreamResponse:
    relative = request.match_info.get("path", "")
    root = Path(os.path.realpath(request.app[SERVER_KEY].config.web_root))
    parts = [p for p in relative.split("/") if p]
    if any(p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        raise ClientError(404, "not_found", "Not found")
    try:
        candidate = Path(os.path.realpath(root.joinpath(*parts))) if parts else root
        if candidate.is_dir():
            candidate = candidate / "index.html"
        exists = candidate.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        raise ClientError(404, "not_found", "Not found") from None
    if candidate != root and not str(candidate).startswith(str(root) + os.sep):
        raise ClientError(404, "not_found", "Not found")
    if not exists:
        if not parts:
            return web.Response(text="<!doctype html><title>Loom</title><p>The Loom editor is not "
                                     "installed (web/index.html is missing); the API is running.",
                                content_type="text/html")
        raise ClientError(404, "not_found", "Not found")
    content_type = STATIC_TYPES.get(candidate.suffix.lower(), "application/octet-stream")
    headers = {"Content-Type": content_type}
    if candidate.suffix.lower() in (".html", ".js", ".mjs", ".css", ".json"):
        headers.update({"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})
    return web.FileResponse(candidate, headers=headers)


routes.get("/{path:.*}")(static_file)
