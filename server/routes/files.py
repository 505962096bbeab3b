"""Files in the data folders: ``/view`` (outputs, inputs, temp; shipped example inputs) and the uploads
``/upload/image`` and ``/upload/mask`` (read with limits, decoded and re-encoded by :mod:`server.images`)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from aiohttp import web

from loom.nodes.kernel import folders
from loom.server import images
from loom.server.security import (ClientError, content_disposition, data_path, sanitize_upload_name,
                                  split_annotation, view_content_type)
from loom.server.state import SERVER_KEY, LoomServer

VIEWABLE_EXAMPLE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # shipped example inputs /view may show

routes = web.RouteTableDef()


@routes.get("/view")
async def get_view(request: web.Request) -> web.StreamResponse:
    query = request.query
    filename, annotated = split_annotation(query.get("filename", ""))
    kind = query.get("type") or annotated or "output"
    path = data_path(kind, filename, query.get("subfolder", ""))
    if not path.is_file() and kind == "input" and not query.get("subfolder"):
        path = folders.example_input(filename, VIEWABLE_EXAMPLE_EXTENSIONS) or path
    if not path.is_file():
        raise ClientError(404, "not_found", "File not found")
    real = Path(os.path.realpath(path))
    content_type, inline = view_content_type(real)
    headers = {"Content-Security-Policy": "default-src 'none'; img-src 'self' data:; media-src 'self'; sandbox",
               "Cache-Control": "no-cache"}
    preview, channel = images.preview_format(query.get("preview")), query.get("channel", "rgba")
    if channel not in ("rgba", "rgb", "a"):
        raise ClientError(400, "invalid_request", "channel must be rgba, rgb or a")
    if content_type.startswith("image/") and (preview or channel != "rgba"):
        data, content_type, suffix = await asyncio.to_thread(images.transform_image, real, preview, channel)
        headers["Content-Disposition"] = content_disposition("inline", Path(filename).stem + suffix)
        return web.Response(body=data, content_type=content_type, headers=headers)
    headers["Content-Disposition"] = content_disposition("inline" if inline else "attachment", filename)
    headers["Content-Type"] = content_type
    return web.FileResponse(real, headers=headers)


@routes.post("/upload/image")
async def post_upload_image(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    fields, image_name, image_bytes = await _read_upload(server, request)
    saved = await asyncio.to_thread(_save_upload, server, fields, image_name, image_bytes, None)
    return web.json_response(saved)


@routes.post("/upload/mask")
async def post_upload_mask(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    fields, image_name, image_bytes = await _read_upload(server, request)
    try:
        ref = json.loads(fields.get("original_ref") or "")
    except ValueError:
        ref = None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise ClientError(400, "invalid_request", "original_ref must be JSON {filename, subfolder, type}")
    name, annotated = split_annotation(ref["filename"])
    original = data_path(str(ref.get("type") or annotated or "input"), name, str(ref.get("subfolder") or ""))
    if not original.is_file():
        raise ClientError(404, "not_found", "The original image was not found")
    saved = await asyncio.to_thread(_save_upload, server, fields, image_name, image_bytes, original)
    return web.json_response(saved)


async def _read_upload(server: LoomServer, request: web.Request) -> tuple[dict[str, str], str, bytes]:
    """The multipart upload's text fields, the image's file name and its bytes, within the upload limit."""
    limit = server.config.upload.max_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise ClientError(413, "too_large", "Upload too large", f"the limit is {limit} bytes")
    if not request.content_type.startswith("multipart/"):
        raise ClientError(415, "unsupported_media_type", "Send the image as multipart/form-data")
    reader = await request.multipart()
    fields: dict[str, str] = {}
    image_name, image_bytes = "", b""
    while True:
        part = await reader.next()
        if part is None:
            break
        if part.name == "image":
            image_name = part.filename or "image.png"
            chunks, size = [], 0
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise ClientError(413, "too_large", "Upload too large", f"the limit is {limit} bytes")
                chunks.append(chunk)
            image_bytes = b"".join(chunks)
        elif part.name:
            raw = await part.read()
            if len(raw) > 64 * 1024:
                raise ClientError(413, "too_large", f"Field {part.name} too large")
            fields[part.name] = raw.decode("utf-8", "replace")
        else:
            await part.release()
    if not image_bytes:
        raise ClientError(400, "invalid_request", "No image", 'send the file in a field named "image"')
    return fields, image_name, image_bytes


def _save_upload(server: LoomServer, fields: dict[str, str], image_name: str, image_bytes: bytes,
                 mask_original: Path | None) -> dict[str, str]:
    kind = fields.get("type") or "input"
    subfolder = fields.get("subfolder", "")
    overwrite = fields.get("overwrite", "").lower() in ("true", "1")
    max_pixels = server.config.upload.max_pixels
    image = images.decode_upload(image_bytes, max_pixels)
    if mask_original is not None:
        data, suffix = images.apply_mask(mask_original, image, max_pixels)
    else:
        data, suffix = images.reencode(image)
    name = sanitize_upload_name(image_name, suffix)
    target = data_path(kind, name, subfolder)
    if overwrite:
        folders.write_replacing(target, data)
    else:
        # the next free "name (n).png", claimed and written in one step (concurrent uploads of one name)
        stem, counter = name[: -len(suffix)], 1
        while not folders.write_new(target, data):
            if target.is_file() and folders.file_sha256(target) == hashlib.sha256(data).hexdigest():
                break  # the same image is already there: reuse it
            name = f"{stem} ({counter}){suffix}"
            target = data_path(kind, name, subfolder)
            counter += 1
    return {"name": name, "subfolder": "/".join(p for p in subfolder.split("/") if p not in ("", ".")),
            "type": kind}
