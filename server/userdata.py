"""ComfyUI's user-data API: the files the editor keeps on the server (saved workflows, mostly), under
``<user_dir>/default/`` (ComfyUI's single user's folder), named and shaped as ComfyUI's
``app/user_manager.py`` serves them:

* ``GET /userdata?dir=&recurse=&full_info=&split=`` — the files of a folder (relative ``/`` paths; with
  ``full_info`` ``{path, size, modified, created}``, times in milliseconds; with ``split`` ``[path, *parts]``).
  Hidden files (``.name``, e.g. a write in progress) are not listed, as ComfyUI's glob does not list them.
* ``GET /userdata/{file}`` — the file's bytes, always as an attachment (``nosniff``, a sandboxing CSP): user
  files are never rendered in the editor's origin.
* ``POST /userdata/{file}?overwrite=&full_info=`` — the raw body becomes the file, written atomically
  (readers see the old file or the new one); ``overwrite=false`` and a file of that name: 409 (the check and
  the write are one step). Answers the path relative to the user folder, or its file info.
* ``DELETE /userdata/{file}`` — 204; 404 when there is no such file.
* ``POST /userdata/{file}/move/{dest}?overwrite=&full_info=`` — rename/move; 404 without the source, 409 when
  ``overwrite=false`` and ``dest`` exists.

``{file}`` is one URL segment holding a URL-encoded relative path (``workflows%2Fmy.json``). Unlike ComfyUI
(which answers a bare 403 and lets some names reach ``open``), every name is checked first: no ``..``, no
absolute or drive paths, no backslashes, control bytes or over-long names (400/403), and the resolved path,
symlinks followed, must stay inside the user folder (403). Bodies are limited to :data:`MAX_FILE_BYTES`.
"""
from __future__ import annotations

import asyncio
import errno
import os
import re
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web

from loom.nodes.kernel import folders
from loom.server.security import WINDOWS_RESERVED, ClientError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

USER = "default"  # ComfyUI's single user's folder under user/
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PATH_CHARS = 1024
MAX_PART_CHARS = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SERVED_TYPES = {".json": "application/json", ".txt": "text/plain; charset=utf-8",
                ".md": "text/plain; charset=utf-8", ".csv": "text/plain; charset=utf-8"}
FILE_CSP = "default-src 'none'; sandbox"


def routes(server: Any) -> list[tuple[str, str, Handler]]:
    """``(method, path, handler)`` for each route; ``server`` is the :class:`~server.state.LoomServer`."""
    def root() -> Path:
        return Path(server.user_dir) / USER

    async def get_userdata(request: web.Request) -> web.Response:
        return await list_folder(request, root())

    async def get_userdata_file(request: web.Request) -> web.StreamResponse:
        return await read_file(request, root())

    async def post_userdata_file(request: web.Request) -> web.Response:
        return await write_file(request, root())

    async def delete_userdata_file(request: web.Request) -> web.Response:
        return await delete_file(request, root())

    async def post_userdata_move(request: web.Request) -> web.Response:
        return await move_file(request, root())

    return [
        ("GET", "/userdata", get_userdata),
        ("GET", "/userdata/{file}", get_userdata_file),
        ("POST", "/userdata/{file}", post_userdata_file),
        ("DELETE", "/userdata/{file}", delete_userdata_file),
        ("POST", "/userdata/{file}/move/{dest}", post_userdata_move),
    ]


# -------------------------------------------------------------------------------------------------
# Names
# -------------------------------------------------------------------------------------------------

def relative_name(raw: str) -> str:
    """The checked, ``/``-separated relative path a client named (URL-decoded once more when it still
    holds ``%``, as ComfyUI does); ClientError (400/403) for anything that is not a plain relative path."""
    if "%" in raw:
        try:
            raw = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise ClientError(400, "invalid_filename", "Invalid file name", "the name is not UTF-8") from None
    if not raw:
        raise ClientError(400, "invalid_filename", "Missing file name")
    if len(raw) > MAX_PATH_CHARS:
        raise ClientError(400, "invalid_filename", "File name too long", f"at most {MAX_PATH_CHARS} characters")
    if _CONTROL.search(raw) or "\\" in raw or ":" in raw:
        raise ClientError(400, "invalid_filename", "Invalid file name",
                          "no control characters, backslashes or colons")
    if raw.startswith("/"):
        raise ClientError(403, "forbidden_path", "Path not allowed", "the path must be relative to the user folder")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if not parts:
        raise ClientError(400, "invalid_filename", "Missing file name")
    for part in parts:
        if part == "..":
            raise ClientError(403, "forbidden_path", "Path not allowed", "the path must stay inside the user folder")
        if len(part) > MAX_PART_CHARS:
            raise ClientError(400, "invalid_filename", "File name too long",
                              f"each part at most {MAX_PART_CHARS} characters")
        if part.rstrip(" .") != part or part.split(".")[0].lower() in WINDOWS_RESERVED:
            raise ClientError(400, "invalid_filename", "Invalid file name",
                              "no trailing dots or spaces, no reserved device names (con, nul, ...)")
    return "/".join(parts)


def user_path(root: Path, raw: str) -> Path:
    """The path of a client-named file in the user folder; ClientError unless it stays inside (symlinks
    followed: a link out of the folder is refused like ``..``)."""
    path = root / relative_name(raw)
    if not folders.inside(root, path):
        raise ClientError(403, "forbidden_path", "Path not allowed", "the path must stay inside the user folder")
    return path


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    return value.lower() != "false" if default else value.lower() == "true"


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": path.relative_to(relative_to).as_posix(), "size": stat.st_size,
            "modified": int(stat.st_mtime * 1000), "created": int(stat.st_ctime * 1000)}


def _answer(path: Path, root: Path, full_info: bool) -> web.Response:
    return web.json_response(file_info(path, root) if full_info else path.relative_to(root).as_posix())


# -------------------------------------------------------------------------------------------------
# Handlers
# -------------------------------------------------------------------------------------------------

async def list_folder(request: web.Request, root: Path) -> web.Response:
    directory = request.query.get("dir", "")
    if not directory:
        raise ClientError(400, "invalid_request", "Directory not provided", "send ?dir=<folder>, e.g. workflows")
    try:
        target = user_path(root, directory)
    except ClientError:
        raise ClientError(403, "forbidden", "Invalid directory") from None
    if not target.is_dir():
        raise ClientError(404, "not_found", "Directory not found")
    recurse = _flag(request, "recurse", False)
    full_info = _flag(request, "full_info", False)
    split = _flag(request, "split", False)
    return web.json_response(await asyncio.to_thread(_list, root, target, recurse, full_info, split))


def _list(root: Path, target: Path, recurse: bool, full_info: bool, split: bool) -> list[Any]:
    results: list[Any] = []
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recurse else []
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.startswith(".") or not path.is_file() or not folders.inside(root, path):
                continue
            relative = path.relative_to(target).as_posix()
            if full_info:
                info = file_info(path, target)
                results.append(info)
            elif split:
                results.append([relative, *relative.split("/")])
            else:
                results.append(relative)
    key = (lambda item: item["path"]) if full_info else (lambda item: item[0] if split else item)
    return sorted(results, key=key)


async def read_file(request: web.Request, root: Path) -> web.StreamResponse:
    path = user_path(root, request.match_info["file"])
    if not path.is_file():
        raise ClientError(404, "not_found", "File not found")
    content_type = SERVED_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return web.FileResponse(path, headers={
        "Content-Type": content_type, "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "attachment", "Content-Security-Policy": FILE_CSP,
        "Cache-Control": "no-cache"})


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_FILE_BYTES:
        raise ClientError(413, "too_large", "File too large", f"the limit is {MAX_FILE_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise ClientError(413, "too_large", "File too large", f"the limit is {MAX_FILE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _not_a_folder_error(path: Path) -> ClientError:
    return ClientError(409, "conflict", "A folder has that name", f"{path.name} is a folder, not a file")


def _write(path: Path, root: Path, data: bytes, overwrite: bool) -> bool:
    """Write ``data`` as ``path``; False when ``overwrite`` is off and the name is taken."""
    if path.is_dir():
        raise _not_a_folder_error(path)
    try:
        if overwrite:
            folders.write_replacing(path, data)
            return True
        return folders.write_new(path, data)
    except (NotADirectoryError, FileExistsError):  # a part of the path is a file
        raise ClientError(409, "conflict", "A file stands where a folder is needed",
                          "a part of the path names an existing file") from None
    except IsADirectoryError:
        raise _not_a_folder_error(path) from None


async def write_file(request: web.Request, root: Path) -> web.Response:
    path = user_path(root, request.match_info["file"])
    overwrite = _flag(request, "overwrite", True)
    full_info = _flag(request, "full_info", False)
    data = await _read_body(request)
    if not await asyncio.to_thread(_write, path, root, data, overwrite):
        raise ClientError(409, "conflict", "File already exists", "send overwrite=true to replace it")
    return _answer(path, root, full_info)


async def delete_file(request: web.Request, root: Path) -> web.Response:
    path = user_path(root, request.match_info["file"])
    if path.is_dir():
        raise ClientError(400, "invalid_request", "Not a file", "only files can be deleted")
    try:
        path.unlink()
    except FileNotFoundError:
        raise ClientError(404, "not_found", "File not found") from None
    return web.Response(status=204)


def _move(source: Path, dest: Path, overwrite: bool) -> bool:
    """Rename ``source`` to ``dest``; False when ``overwrite`` is off and ``dest`` exists (checked and
    done in one step: a hard link to the new name fails if it is taken)."""
    if dest.is_dir():
        raise _not_a_folder_error(dest)
    try:
        folders.make_dirs(dest.parent)
        if overwrite:
            os.replace(source, dest)
            return True
        try:
            os.link(source, dest)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                raise
            if dest.exists():  # no hard links here: check, then rename
                return False
            os.rename(source, dest)
            return True
        source.unlink()
        return True
    except (NotADirectoryError, FileExistsError):
        raise ClientError(409, "conflict", "A file stands where a folder is needed",
                          "a part of the destination names an existing file") from None
    except FileNotFoundError:
        raise ClientError(404, "not_found", "File not found") from None


async def move_file(request: web.Request, root: Path) -> web.Response:
    source = user_path(root, request.match_info["file"])
    dest = user_path(root, request.match_info["dest"])
    overwrite = _flag(request, "overwrite", True)
    full_info = _flag(request, "full_info", False)
    if not source.is_file():
        raise ClientError(404, "not_found", "File not found")
    if source == dest:
        return _answer(dest, root, full_info)
    if not await asyncio.to_thread(_move, source, dest, overwrite):
        raise ClientError(409, "conflict", "File already exists", "send overwrite=true to replace it")
    return _answer(dest, root, full_info)
