"""Loom: what the editor's Models panel lists — the model files of each folder with size and family.

* ``GET /model_library`` — ``[{folder, count}]`` for every model folder (``GET /models`` names them).
* ``GET /model_library/{folder}`` — ``{folder, files: [{name, size, modified, family, detail}]}``: ``family`` is
  what the loaders' own detection finds in the file (``"SD1.x"``, ``"SDXL"``, ``"ViT-L"``, ...; null when that
  folder's loaders detect nothing or the file is not understood), ``detail`` a short note (prediction type,
  or why the family is unknown). Detection reads only a file's header (and, for a v-prediction guess, one
  tensor), in a worker thread, and is cached by the file's fingerprint (real path, mtime, size), so a
  listing after the first costs a ``stat`` per file. ``?refresh=1`` forgets the cache first.

ComfyUI's own model listing (``/experiment/models``) hands out server paths; this one names files only, as
``/models/{folder}`` does. The family detection is the model runtime's, reached through the describer the
loaders of each folder register (:func:`loom.nodes.kernel.services.model_describer`); a folder without one
lists its files without a family.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from typing import Any, Awaitable, Callable

from aiohttp import web

from loom.nodes.kernel import folders, services
from loom.server.security import ClientError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CACHE_ENTRIES = 4096
_cache: OrderedDict[tuple[str, int, int, str], tuple[str | None, str]] = OrderedDict()
_lock = threading.Lock()


def routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/model_library", get_folders),
        ("GET", "/model_library/{folder}", get_folder),
    ]


def _fingerprint(path: Any) -> tuple[str, int, int]:
    """``(real path, mtime in ns, size)``: the key detection results are kept under."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return real, stat.st_mtime_ns, stat.st_size


def detect_family(folder: str, path: Any) -> tuple[str | None, str]:
    """``(family, detail)`` of one model file, as the loaders of ``folder`` would see it."""
    describe = services.model_describer(folder)
    if describe is None:
        return None, ""
    try:
        return describe(path)
    except Exception as error:  # noqa: BLE001 - any unreadable or unknown file is listed, without a family
        return None, _short(error)


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _cached_family(folder: str, path: Any) -> tuple[str | None, str]:
    key = (*_fingerprint(path), folder)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    found = detect_family(folder, path)
    with _lock:
        _cache[key] = found
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return found


def list_folder(folder: str) -> list[dict[str, Any]]:
    """The files of one model folder with size, modification time and family."""
    files = []
    for name in folders.list_files(folder):
        try:
            path = folders.resolve(folder, name)
            _, modified_ns, size = _fingerprint(path)
        except (OSError, PermissionError, ValueError):
            continue
        family, detail = _cached_family(folder, path)
        files.append({"name": name, "size": size, "modified": modified_ns / 1e9, "family": family, "detail": detail})
    return files


def forget() -> None:
    with _lock:
        _cache.clear()


async def get_folders(request: web.Request) -> web.Response:
    counts = await asyncio.to_thread(lambda: [{"folder": f, "count": len(folders.list_files(f))}
                                              for f in folders.MODEL_FOLDERS])
    return web.json_response(counts)


async def get_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in folders.MODEL_FOLDERS:
        raise ClientError(404, "not_found", "Unknown model folder", f"known folders: {', '.join(folders.MODEL_FOLDERS)}")
    if request.query.get("refresh") in ("1", "true"):
        forget()
    return web.json_response({"folder": folder, "files": await asyncio.to_thread(list_folder, folder)})
