"""The aiohttp application: ComfyUI's HTTP/WebSocket API, Loom's additions, and the editor's files.

:func:`create_app` builds one :class:`web.Application` that owns the durable queue, the worker thread
and the WebSocket clients. Every API route is served at ``/path`` and ``/api/path``; the editor
(``web/``) is served at ``/``. Security (token, cross-site checks, safe paths, error hygiene) lives in
:mod:`server.security`; routes only call its helpers.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from aiohttp import web

from loom.nodes import folders
from loom.nodes.schema import NodeRegistry
from loom.server import json_chunked
from loom.server.budget import ResourceBudget
from loom.server import comfy_routes, model_library, templates
from loom.server.clients import SERVER_FEATURES, ClientHub
from loom.server.notices import startup_notices
from loom.server.queue import PromptQueue, QueueStoreError
from loom.server.security import (ClientError, SecurityConfig, UploadLimits, add_hardening_headers,
                                  content_disposition, data_path, error_middleware, json_error, non_finite_error,
                                  non_finite_path, read_json, sanitize_upload_name, scrub_paths,
                                  security_middleware, split_annotation, view_content_type)
from loom.server.worker import Worker

log = logging.getLogger("loom.server")

VERSION = "0.1.0"
COMFYUI_COMPATIBLE_VERSION = "0.3.64"  # the ComfyUI API (routes, messages, shapes) Loom speaks
COMFYUI_REQUIRED_FRONTEND_VERSION = "1.27.10"  # comfyui-frontend-package that ComfyUI release pins
COMFYUI_REQUIRED_TEMPLATES_VERSION = "0.1.94"  # comfyui-workflow-templates that ComfyUI release pins
WORKER_TRANSPORTS = ("thread", "process")
PROMPT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
VIEWABLE_EXAMPLE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # shipped example inputs /view may show

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".ico": "image/x-icon",
    ".gif": "image/gif", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8",
}
UPLOAD_FORMATS = {"PNG": ("PNG", ".png"), "JPEG": ("JPEG", ".jpg"), "MPO": ("JPEG", ".jpg"),
                  "WEBP": ("WEBP", ".webp"), "GIF": ("PNG", ".png"), "BMP": ("PNG", ".png"),
                  "TIFF": ("PNG", ".png")}
"""Image formats accepted by uploads, and what each is re-encoded to."""


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
    """Everything a running server holds; its methods are the route handlers."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.security = SecurityConfig.for_bind(config.host, config.token, allowed_hosts=config.allowed_hosts,
                                                allowed_origins=config.allowed_origins)
        if config.registry is None:
            from loom.nodes.schema import default_registry
            config.registry = default_registry(config.extra_node_packs)
        self.registry: NodeRegistry = config.registry
        base = folders.base_dir()
        self.user_dir = Path(config.user_dir or base / "user")
        self.user_dir.mkdir(parents=True, exist_ok=True)
        self.queue = PromptQueue(config.db_path or self.user_dir / "loom.sqlite3",
                                 max_history_items=config.history_max_items,
                                 max_history_age_s=config.history_max_age_s)
        if config.workers not in WORKER_TRANSPORTS:
            raise ValueError(f"workers must be one of {', '.join(WORKER_TRANSPORTS)}, not {config.workers!r}")
        executors = list(config.executors) if config.executors else self._make_executors(config)
        self.executors: list[Any] = executors
        self.executor = executors[0]  # the first lane's (the only one, by default)
        self.pending_at_start = self.queue.counts()[0]
        self.hub = ClientHub()
        self.hub.status_source = lambda: {"exec_info": {"queue_remaining": self.queue.remaining()}}
        self.queue.add_listener(self.hub.status_changed)
        router = None
        if len(executors) > 1:
            from loom.server.routing import Router
            router = Router(k=config.routing_k)
        self.router = router
        self.workers: list[Worker] = [
            Worker(self.queue, executor, self.hub, expose_tracebacks=config.expose_tracebacks,
                   preview_method=config.preview_method, router=router, name=f"lane-{index}")
            for index, executor in enumerate(executors)]
        self.worker = self.workers[0]
        self._settings_lock = asyncio.Lock()
        self.started_at = time.time()

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

    # -- lifecycle -----------------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        self.hub.attach(asyncio.get_running_loop())
        if self.config.start_worker:
            for executor, worker in zip(self.executors, self.workers):
                start = getattr(executor, "start", None)
                if callable(start):  # a worker process starts in the background; /api/ready waits for it
                    start()
                worker.start()

    async def _stop_workers(self) -> None:
        for worker in self.workers:  # all at once: each may wait for its running prompt to stop
            worker.request_stop()
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in self.workers))

    async def on_shutdown(self, app: web.Application) -> None:
        # stop taking prompts first, so none starts (and is interrupted) while the server winds down
        await self._stop_workers()
        hung = [(w, getattr(e, "close", None)) for w, e in zip(self.workers, self.executors)]
        hung = [(w, close) for w, close in hung if w.alive and callable(close)]
        if hung:
            # a running prompt ignored the interrupt (a hung node): stop its worker process, so that the
            # prompt is recorded as interrupted while the queue is still open
            await asyncio.gather(*(asyncio.to_thread(close) for _, close in hung))
            await self._stop_workers()
        await asyncio.sleep(0)  # let the interrupted prompts' final events reach their clients
        await self.hub.close_all()

    async def on_cleanup(self, app: web.Application) -> None:
        await self._stop_workers()
        closes = [close for close in (getattr(e, "close", None) for e in self.executors) if callable(close)]
        await asyncio.gather(*(asyncio.to_thread(close) for close in closes))
        self.queue.close()

    def _interrupt(self, prompt_id: str | None) -> bool:
        """Interrupt ``prompt_id`` in whichever lane runs it (every running prompt, without an id)."""
        hit = False
        for worker in self.workers:
            if worker.interrupt(prompt_id):
                hit = True
                if prompt_id is not None:
                    break
        return hit

    # -- prompts -------------------------------------------------------------------------------

    async def post_prompt(self, request: web.Request) -> web.Response:
        # non-finite numbers inside the prompt are reported per node and input (after validation, below)
        body = await read_json(request, self.config.max_prompt_bytes, finite=False)
        if not isinstance(body, dict):
            raise ClientError(400, "invalid_prompt", "Invalid request",
                              'the body must be a JSON object: {"prompt": {...}, "client_id": "..."}')
        if "prompt" not in body:
            if _looks_like_ui_workflow(body):
                raise _ui_format_error()
            raise ClientError(400, "no_prompt", "No prompt provided", 'the body has no "prompt" key')
        prompt = body["prompt"]
        if _looks_like_ui_workflow(prompt):
            raise _ui_format_error()
        if not isinstance(prompt, dict):
            raise ClientError(400, "invalid_prompt", "Invalid prompt",
                              "the prompt must be a JSON object of nodes by id (the API format)")
        extra_data = body.get("extra_data")
        extra_data = {} if extra_data is None else extra_data
        if not isinstance(extra_data, dict):
            raise ClientError(400, "invalid_prompt", "Invalid extra_data", "extra_data must be a JSON object")
        client_id = body.get("client_id")
        if client_id is not None:
            if not isinstance(client_id, str) or len(client_id) > 128:
                raise ClientError(400, "invalid_prompt", "Invalid client_id", "client_id must be a short string")
            extra_data = {**extra_data, "client_id": client_id}
        if (path := non_finite_path({k: v for k, v in body.items() if k != "prompt"})) is not None:
            raise non_finite_error(path)
        prompt_id = _check_prompt_id(body.get("prompt_id"))
        number = _check_number(body.get("number"))
        front = bool(body.get("front")) if body.get("front") is not None else False
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list)
                                    or not all(isinstance(t, (str, int)) and not isinstance(t, bool)
                                               for t in targets)):
            raise ClientError(400, "invalid_prompt", "Invalid partial_execution_targets",
                              "partial_execution_targets must be a list of node ids")
        return await self._enqueue(prompt, prompt_id, extra_data, number, front,
                                   [str(t) for t in targets] if targets is not None else None)

    async def _enqueue(self, prompt: dict, prompt_id: str | None, extra_data: dict, number: float | None,
                       front: bool, targets: list[str] | None) -> web.Response:
        # validating and storing are one trip to a thread: each trip costs a hand-over both ways, and under
        # many concurrent clients those hand-overs are most of an enqueue's latency
        prompt_id = prompt_id or str(uuid.uuid4())
        validation, number = await asyncio.to_thread(self._validate_and_store, prompt, prompt_id, extra_data,
                                                     number, front, targets)
        if not validation.ok:
            return web.json_response(scrub_paths({"error": validation.error,
                                                  "node_errors": validation.node_errors}), status=400)
        log.debug("prompt %s queued (number %s)", prompt_id, _plain(number))
        return web.json_response({"prompt_id": prompt_id, "number": _plain(number),
                                  "node_errors": scrub_paths(validation.node_errors)})

    def _validate_and_store(self, prompt: dict, prompt_id: str, extra_data: dict, number: float | None,
                            front: bool, targets: list[str] | None) -> tuple[Any, float]:
        """(validation, queue number); an invalid prompt is not stored (its number is then 0)."""
        from loom.server.validation import validate_prompt
        validation = validate_prompt(prompt, self.registry, targets, self.config.budget)
        if not validation.ok:
            return validation, 0
        if (path := non_finite_path(prompt)) is not None:
            # an input validation did not read (one the node does not have) can still hold 1e999
            node_id, rest = path[0], path[1:]
            where = f"input '{rest[1]}'" if len(rest) >= 2 and rest[0] == "inputs" else "/".join(rest)
            raise ClientError(400, "invalid_prompt", "Invalid prompt",
                              f"node {node_id} {where}: the number is too large to be finite (JSON has no "
                              "Infinity)", node_id=node_id)
        try:
            return validation, self.queue.put(prompt_id, prompt, extra_data, validation.outputs, number=number,
                                              front=front, required_models=validation.required_models)
        except KeyError:
            raise ClientError(400, "duplicate_prompt_id", "prompt_id already used",
                              "a queued, running or finished prompt has this id; leave prompt_id out "
                              "to get a fresh one") from None
        except QueueStoreError as error:
            raise ClientError(503, "queue_unavailable", "The queue is not available", str(error)) from None

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.queue.remaining()}})

    async def get_queue(self, request: web.Request) -> web.Response:
        running, pending = await asyncio.to_thread(lambda: (self.queue.running(), self.queue.pending()))
        return await _json_off_loop({"queue_running": [i.as_list() for i in running],
                                     "queue_pending": [i.as_list() for i in pending]}, depth=QUEUE_PROMPT_DEPTH)

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        return web.json_response(_clear_and_delete(body, self.queue.clear_pending, self.queue.delete_pending))

    async def cancel_prompt(self, request: web.Request) -> web.Response:
        """Loom: cancel a queued prompt, or interrupt it when it is running."""
        prompt_id = request.match_info["prompt_id"]
        for _ in range(100):
            if self.queue.cancel(prompt_id):
                log.info("prompt %s cancelled", prompt_id)
                return web.json_response({"prompt_id": prompt_id, "state": "cancelled"})
            if self._interrupt(prompt_id):
                return web.json_response({"prompt_id": prompt_id, "state": "interrupting"})
            state = self.queue.state_of(prompt_id)
            if state != "running":  # running but not yet handed to the executor: try again shortly
                break
            await asyncio.sleep(0.01)
        if state is None:
            raise ClientError(404, "not_found", "Unknown prompt_id", f"no prompt {prompt_id!r}")
        return json_error(409, "already_finished", "The prompt has already finished", f"its state is {state}")

    async def requeue_prompt(self, request: web.Request) -> web.Response:
        """Loom: queue a finished (e.g. interrupted) prompt again, under a new id."""
        item = self.queue.history_prompt(request.match_info["prompt_id"])
        if item is None:
            raise ClientError(404, "not_found", "Unknown prompt_id", "no finished prompt with this id")
        body = await _json_object(request)
        extra_data = dict(item.extra_data)
        if isinstance(body.get("client_id"), str):
            extra_data["client_id"] = body["client_id"]
        return await self._enqueue(item.prompt, None, extra_data, None, bool(body.get("front")),
                                   item.outputs or None)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await read_json(request, 64 * 1024, required=False)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id is not None and not isinstance(prompt_id, str):
            raise ClientError(400, "invalid_request", "prompt_id must be a string")
        interrupted = self._interrupt(prompt_id)
        return web.json_response({"interrupted": interrupted})

    async def post_free(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        for worker in self.workers:
            worker.request_free(unload_models=bool(body.get("unload_models")),
                                free_memory=bool(body.get("free_memory")))
        return web.json_response({})

    # -- history -------------------------------------------------------------------------------

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = _query_int(request, "max_items")
        offset = _query_int(request, "offset")
        history = await asyncio.to_thread(self.queue.history, max_items, -1 if offset is None else offset)
        return await _json_off_loop(history, depth=HISTORY_PROMPT_DEPTH)

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = await asyncio.to_thread(self.queue.history_item, prompt_id)
        return await _json_off_loop({prompt_id: entry} if entry is not None else {}, depth=HISTORY_PROMPT_DEPTH)

    async def post_history(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        return web.json_response(_clear_and_delete(body, self.queue.clear_history, self.queue.delete_history))

    # -- nodes and models ----------------------------------------------------------------------

    async def get_object_info(self, request: web.Request) -> web.Response:
        info = await asyncio.to_thread(_object_info, self.registry, None)
        return web.json_response(info)

    async def get_object_info_node(self, request: web.Request) -> web.Response:
        info = await asyncio.to_thread(_object_info, self.registry, request.match_info["node_class"])
        return web.json_response(info)

    async def get_models(self, request: web.Request) -> web.Response:
        return web.json_response(list(folders.MODEL_FOLDERS))

    async def get_model_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in folders.MODEL_FOLDERS:
            raise ClientError(404, "not_found", "Unknown model folder",
                              f"known folders: {', '.join(folders.MODEL_FOLDERS)}")
        return web.json_response(await asyncio.to_thread(folders.list_files, folder))

    async def get_embeddings(self, request: web.Request) -> web.Response:
        names = await asyncio.to_thread(folders.list_files, "embeddings")
        return web.json_response([name.rsplit(".", 1)[0] for name in names])

    async def get_system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(_system_stats))

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response({**SERVER_FEATURES, "max_upload_size": self.config.upload.max_bytes})

    # -- files ---------------------------------------------------------------------------------

    async def get_view(self, request: web.Request) -> web.StreamResponse:
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
        preview, channel = _preview_format(query.get("preview")), query.get("channel", "rgba")
        if channel not in ("rgba", "rgb", "a"):
            raise ClientError(400, "invalid_request", "channel must be rgba, rgb or a")
        if content_type.startswith("image/") and (preview or channel != "rgba"):
            data, content_type, suffix = await asyncio.to_thread(_transform_image, real, preview, channel)
            headers["Content-Disposition"] = content_disposition("inline", Path(filename).stem + suffix)
            return web.Response(body=data, content_type=content_type, headers=headers)
        headers["Content-Disposition"] = content_disposition("inline" if inline else "attachment", filename)
        headers["Content-Type"] = content_type
        return web.FileResponse(real, headers=headers)

    async def post_upload_image(self, request: web.Request) -> web.Response:
        fields, image_name, image_bytes = await self._read_upload(request)
        saved = await asyncio.to_thread(self._save_upload, fields, image_name, image_bytes, None)
        return web.json_response(saved)

    async def post_upload_mask(self, request: web.Request) -> web.Response:
        fields, image_name, image_bytes = await self._read_upload(request)
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
        saved = await asyncio.to_thread(self._save_upload, fields, image_name, image_bytes, original)
        return web.json_response(saved)

    async def _read_upload(self, request: web.Request) -> tuple[dict[str, str], str, bytes]:
        limit = self.config.upload.max_bytes
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

    def _save_upload(self, fields: dict[str, str], image_name: str, image_bytes: bytes,
                     mask_original: Path | None) -> dict[str, str]:
        kind = fields.get("type") or "input"
        subfolder = fields.get("subfolder", "")
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        image = _decode_upload(image_bytes, self.config.upload.max_pixels)
        if mask_original is not None:
            data, suffix = _apply_mask(mask_original, image, self.config.upload.max_pixels)
        else:
            data, suffix = _reencode(image)
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

    # -- Loom additions ------------------------------------------------------------------------

    async def post_workflow_convert(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.config.max_prompt_bytes)
        from loom.server import workflow

        if isinstance(body, dict) and isinstance(body.get("workflow"), dict) and "nodes" not in body:
            body = body["workflow"]
        if not isinstance(body, dict):
            raise ClientError(400, "invalid_workflow", "Invalid workflow", "send the UI workflow JSON object")
        try:
            result = await asyncio.to_thread(workflow.ui_to_api, body, self.registry)
        except ValueError as error:
            problems = [p if isinstance(p, dict) else {"message": str(p)}
                        for p in getattr(error, "problems", None) or [str(error)]]
            details = "; ".join(_describe_problem(p) for p in problems)
            return web.json_response({"error": {"type": "invalid_workflow", "message": "Cannot convert workflow",
                                                "details": details, "extra_info": {}},
                                      "problems": problems}, status=400)
        return web.json_response({"prompt": result.prompt, "warnings": [str(w) for w in result.warnings]})

    async def get_default_workflow(self, request: web.Request) -> web.Response:
        """Loom: the workflow the editor opens first (``loom serve --workflow``), UI format when it has one."""
        path = self.config.default_workflow or folders.EXAMPLE_WORKFLOWS_DIR / "txt2img.json"
        if not Path(path).is_file():
            raise ClientError(404, "not_found", "No default workflow")
        from loom.server import workflow
        try:
            loaded = await asyncio.to_thread(workflow.load_workflow_file, path)
        except ValueError:
            log.exception("cannot read the default workflow %s", path)
            raise ClientError(404, "not_found", "The default workflow cannot be read") from None
        return web.json_response(loaded.ui if loaded.ui is not None else loaded.api)

    async def get_notices(self, request: web.Request) -> web.Response:
        """Loom: what the editor shows a new user once (e.g. where checkpoints go); see server.notices."""
        return web.json_response(await asyncio.to_thread(startup_notices))

    async def get_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_ready(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        stalled = any(w.current is not None and now - w.heartbeat > self.config.stall_timeout_s
                      for w in self.workers)
        checks = {
            "queue": not self.queue.closed,
            "registry": len(self.registry.names()) > 0,
            "worker": all(w.alive for w in self.workers) or not self.config.start_worker,
            "worker_responsive": not stalled,
        }
        if self.config.start_worker and any(hasattr(e, "ready") for e in self.executors):
            # up, not starting or being replaced (every lane's)
            checks["worker_process"] = all(bool(getattr(e, "ready", True)) for e in self.executors)
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self._load_settings))

    async def get_setting(self, request: web.Request) -> web.Response:
        settings = await asyncio.to_thread(self._load_settings)
        return web.json_response(settings.get(request.match_info["setting_id"]))

    async def post_settings(self, request: web.Request) -> web.Response:
        body = await read_json(request, 1024 * 1024)
        if not isinstance(body, dict):
            raise ClientError(400, "invalid_request", "Settings must be a JSON object")
        async with self._settings_lock:
            settings = await asyncio.to_thread(self._load_settings)
            settings.update(body)
            await asyncio.to_thread(self._store_settings, settings)
        return web.json_response({})

    async def post_setting(self, request: web.Request) -> web.Response:
        value = await read_json(request, 1024 * 1024)
        async with self._settings_lock:
            settings = await asyncio.to_thread(self._load_settings)
            settings[request.match_info["setting_id"]] = value
            await asyncio.to_thread(self._store_settings, settings)
        return web.json_response({})

    def _load_settings(self) -> dict[str, Any]:
        path = self.user_dir / "settings.json"
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return settings if isinstance(settings, dict) else {}

    def _store_settings(self, settings: dict[str, Any]) -> None:
        folders.write_replacing(self.user_dir / "settings.json", json.dumps(settings, indent=2).encode("utf-8"))

    # -- WebSocket -----------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1024 * 1024)
        await ws.prepare(request)
        client = self.hub.register(ws, request.query.get("clientId"))
        try:
            self.hub.send_status(client)
            for worker in self.workers:
                current, node = worker.current, worker.current_node
                if current is not None and current.client_id == client.client_id and node is not None:
                    self.hub.send("executing", {"node": node, "display_node": node,
                                                "prompt_id": current.prompt_id}, client.client_id)
            async for message in ws:
                if message.type != web.WSMsgType.TEXT:
                    continue
                try:
                    parsed = json.loads(message.data)
                except ValueError:
                    continue
                if isinstance(parsed, dict) and parsed.get("type") == "feature_flags":
                    flags = parsed.get("data") if isinstance(parsed.get("data"), dict) else {}
                    client.supports_preview_metadata = bool(flags.get("supports_preview_metadata"))
                    client.latent_previews = bool(flags.get("latent_previews"))
                    self.hub.send("feature_flags", {**SERVER_FEATURES,
                                                    "max_upload_size": self.config.upload.max_bytes},
                                  client.client_id)
        finally:
            await self.hub.unregister(client)
        return ws

    # -- the editor ----------------------------------------------------------------------------

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        relative = request.match_info.get("path", "")
        root = Path(os.path.realpath(self.config.web_root))
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


# -------------------------------------------------------------------------------------------------
# The application
# -------------------------------------------------------------------------------------------------

SERVER_KEY = web.AppKey("loom_server", LoomServer)


def create_app(config: ServerConfig | None = None) -> web.Application:
    """The aiohttp application for ``config``; the worker starts with the app."""
    config = config or ServerConfig()
    server = LoomServer(config)
    app = web.Application(middlewares=[error_middleware, security_middleware(server.security)],
                          client_max_size=max(config.max_prompt_bytes, config.upload.max_bytes) + 1024 * 1024)
    app[SERVER_KEY] = server
    app.on_response_prepare.append(add_hardening_headers)
    app.on_startup.append(server.on_startup)
    app.on_shutdown.append(server.on_shutdown)
    app.on_cleanup.append(server.on_cleanup)

    api_routes = [
        ("GET", "/ws", server.websocket),
        ("POST", "/prompt", server.post_prompt),
        ("GET", "/prompt", server.get_prompt),
        ("DELETE", "/prompt/{prompt_id}", server.cancel_prompt),
        ("GET", "/queue", server.get_queue),
        ("POST", "/queue", server.post_queue),
        ("POST", "/queue/{prompt_id}/cancel", server.cancel_prompt),
        ("POST", "/interrupt", server.post_interrupt),
        ("POST", "/free", server.post_free),
        ("GET", "/history", server.get_history),
        ("POST", "/history", server.post_history),
        ("GET", "/history/{prompt_id}", server.get_history_item),
        ("POST", "/history/{prompt_id}/requeue", server.requeue_prompt),
        ("GET", "/object_info", server.get_object_info),
        ("GET", "/object_info/{node_class}", server.get_object_info_node),
        ("GET", "/view", server.get_view),
        ("POST", "/upload/image", server.post_upload_image),
        ("POST", "/upload/mask", server.post_upload_mask),
        ("GET", "/models", server.get_models),
        ("GET", "/models/{folder}", server.get_model_folder),
        ("GET", "/embeddings", server.get_embeddings),
        ("GET", "/system_stats", server.get_system_stats),
        ("GET", "/features", server.get_features),
        ("POST", "/workflow/convert", server.post_workflow_convert),
        ("GET", "/workflows/default", server.get_default_workflow),
        *templates.routes(),
        *model_library.routes(),
        ("GET", "/notices", server.get_notices),
        ("GET", "/health", server.get_health),
        ("GET", "/ready", server.get_ready),
        ("GET", "/settings", server.get_settings),
        ("POST", "/settings", server.post_settings),
        ("GET", "/settings/{setting_id}", server.get_setting),
        ("POST", "/settings/{setting_id}", server.post_setting),
        *comfy_routes.routes(server),
    ]
    for prefix in ("", "/api"):
        for method, path, handler in api_routes:
            app.router.add_route(method, prefix + path, handler)
    app.router.add_get("/", server.static_file)
    app.router.add_get("/{path:.*}", server.static_file)
    return app


def server_of(app: web.Application) -> LoomServer:
    return app[SERVER_KEY]


# -------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------

HISTORY_PROMPT_DEPTH = 5  # {id: {"prompt": [number, id, {node_id: node}, ...]}}: one node per encode call
QUEUE_PROMPT_DEPTH = 4  # {"queue_pending": [[number, id, {node_id: node}, ...]]}


async def _json_off_loop(value: Any, depth: int) -> web.Response:
    """A JSON response encoded in a thread, in small steps: what holds whole prompts can be megabytes."""
    text = await asyncio.to_thread(json_chunked.dumps, value, depth=depth, separators=(", ", ": "))
    return web.Response(text=text, content_type="application/json")


def _plain(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


def _clear_and_delete(body: dict[str, Any], clear: Callable[[], int],
                      delete: Callable[[Iterable[str]], int]) -> dict[str, int]:
    """ComfyUI's ``POST /queue`` and ``POST /history`` body: ``{"clear": true, "delete": [ids]}``."""
    cleared = clear() if body.get("clear") else 0
    deleted = 0
    if "delete" in body:
        ids = body["delete"]
        if not isinstance(ids, list):
            raise ClientError(400, "invalid_request", "delete must be a list of prompt ids")
        deleted = delete(str(i) for i in ids)
    return {"cleared": cleared, "deleted": deleted}


def _describe_problem(problem: dict[str, Any]) -> str:
    node = problem.get("node_id")
    where = f"node {node} ({problem.get('class_type')}): " if node is not None else ""
    return where + str(problem.get("message", ""))


def _looks_like_ui_workflow(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("nodes"), list) and "links" in value


def _ui_format_error() -> ClientError:
    return ClientError(400, "expected_api_format", "Expected the API format",
                       "this is a UI workflow (nodes/links); send the API format, or convert it first with "
                       "POST /api/workflow/convert")


def _check_prompt_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not set(value) <= PROMPT_ID_CHARS:
        raise ClientError(400, "invalid_prompt_id", "Invalid prompt_id",
                          "prompt_id must be 1-128 characters of letters, digits, '-', '_', '.', ':'")
    return value


def _check_number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ClientError(400, "invalid_request", "Invalid number", "number must be a finite number")
    try:
        number = float(value)
    except ValueError:
        raise ClientError(400, "invalid_request", "Invalid number", "number must be a finite number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ClientError(400, "invalid_request", "Invalid number", "number must be a finite number")
    return number


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request, 1024 * 1024, required=False)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ClientError(400, "invalid_request", "The body must be a JSON object")
    return body


QUERY_INT_BOUND = 2 ** 62
"""Integer query parameters are clamped to ±this: Python's ints are unbounded, SQLite's are 64-bit."""


def _query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if len(value) > 40:
        raise ClientError(400, "invalid_request", f"{name} must be an integer", "it is over 40 characters long")
    try:
        number = int(value)
    except ValueError:
        raise ClientError(400, "invalid_request", f"{name} must be an integer") from None
    return max(-QUERY_INT_BOUND, min(QUERY_INT_BOUND, number))  # "more than there is" keeps its meaning


def _object_info(registry: NodeRegistry, name: str | None) -> dict[str, Any]:
    if name is not None:
        try:
            return registry.object_info(name)
        except Exception:
            log.exception("object_info of %s failed", name)
            return {}
    info: dict[str, Any] = {}
    for node_name in registry.names():
        try:
            info.update(registry.object_info(node_name))
        except Exception:  # one broken node must not hide the others
            log.exception("object_info of %s failed", node_name)
    return info


def _system_stats() -> dict[str, Any]:
    import importlib.metadata

    import psutil
    memory = psutil.virtual_memory()
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = ""
    devices: list[dict[str, Any]] = []
    torch = sys.modules.get("torch")  # report GPUs only when torch is already loaded: never import it here
    if torch is not None and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": torch.cuda.get_device_name(index), "type": "cuda", "index": index,
                            "vram_total": total, "vram_free": free, "torch_vram_total": total,
                            "torch_vram_free": free})
    if not devices:
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": memory.total,
                        "vram_free": memory.available, "torch_vram_total": memory.total,
                        "torch_vram_free": memory.available})
    # ComfyUI 0.3.64's keys and meanings (os is os.name; the versions are of the ComfyUI API Loom speaks),
    # then Loom's own; argv is not the real command line, which can name server paths
    return {"system": {"os": os.name, "ram_total": memory.total, "ram_free": memory.available,
                       "comfyui_version": COMFYUI_COMPATIBLE_VERSION,
                       "required_frontend_version": COMFYUI_REQUIRED_FRONTEND_VERSION,
                       "installed_templates_version": None,
                       "required_templates_version": COMFYUI_REQUIRED_TEMPLATES_VERSION,
                       "python_version": sys.version, "pytorch_version": torch_version,
                       "embedded_python": False, "argv": ["loom"],
                       "loom_version": VERSION, "platform": platform.system().lower()},
            "devices": devices}


def _decode_upload(data: bytes, max_pixels: int) -> Any:
    """The uploaded bytes as a loaded PIL image; ClientError unless it is a raster image within limits."""
    from PIL import Image, UnidentifiedImageError
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ClientError(413, "image_too_large", "Image too large",
                          f"the image has more than the limit of {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ClientError(415, "not_an_image", "The upload is not an image",
                          f"accepted formats: {', '.join(sorted(UPLOAD_FORMATS))}") from None
    if image.format not in UPLOAD_FORMATS:
        raise ClientError(415, "not_an_image", "Unsupported image format", f"{image.format} is not accepted")
    width, height = image.size
    if width * height > max_pixels:
        raise ClientError(413, "image_too_large", "Image too large",
                          f"{width}x{height} is more than the limit of {max_pixels} pixels")
    try:
        image.load()
    except Exception:
        raise ClientError(415, "not_an_image", "The image could not be decoded") from None
    return image


def _reencode(image: Any) -> tuple[bytes, str]:
    """Re-encode an upload (dropping anything that is not pixels, except PNG workflow text)."""
    from PIL.PngImagePlugin import PngInfo
    target, suffix = UPLOAD_FORMATS[image.format]
    buffer = io.BytesIO()
    if target == "PNG":
        info = PngInfo()
        for key in ("prompt", "workflow"):
            text = image.info.get(key)
            if isinstance(text, str):
                info.add_text(key, text)
        _png_frame(image).save(buffer, format="PNG", pnginfo=info, compress_level=4)
    elif target == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="WEBP", quality=95)
    return buffer.getvalue(), suffix


def _png_frame(image: Any) -> Any:
    """``image`` in a mode PNG can hold, keeping what LoadImage reads from it: deep greyscale (32-bit integer,
    16-bit of either byte order) becomes 16-bit, clipped to its range; 32-bit float becomes 8-bit greyscale,
    as Pillow converts it for display (and LoadImage would)."""
    if image.mode in ("RGB", "RGBA", "L", "LA", "P", "I;16"):
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        return image.convert("I").convert("I;16")  # Pillow clips to 0..65535
    if image.mode == "F":
        return image.convert("L")
    return image.convert("RGBA")


def _apply_mask(original_path: Path, mask: Any, max_pixels: int) -> tuple[bytes, str]:
    """ComfyUI's mask upload: the mask's alpha becomes the original image's alpha (saved as PNG)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    original = _decode_upload(original_path.read_bytes(), max_pixels)
    info = PngInfo()
    for key, value in original.info.items():
        if isinstance(value, str) and key in ("prompt", "workflow"):
            info.add_text(key, value)
    alpha = mask.convert("RGBA").getchannel("A")
    if alpha.size != original.size:
        alpha = alpha.resize(original.size, Image.LANCZOS)
    result = original.convert("RGBA")
    result.putalpha(alpha)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue(), ".png"


def _preview_format(preview: str | None) -> tuple[str, int] | None:
    """``/view``'s ``preview=format;quality`` (ComfyUI: webp or jpeg, quality 1-100, default 90)."""
    if not preview:
        return None
    fmt, _, quality = preview.partition(";")
    fmt = fmt.strip().lower()
    if fmt not in ("webp", "jpeg"):
        raise ClientError(400, "invalid_request", "preview must be webp or jpeg", "e.g. preview=webp;90")
    try:
        return fmt, max(1, min(100, int(quality))) if quality else 90
    except ValueError:
        raise ClientError(400, "invalid_request", "preview quality must be a number", "e.g. preview=webp;90") from None


def _transform_image(path: Path, preview: tuple[str, int] | None, channel: str) -> tuple[bytes, str, str]:
    """``/view``'s ``channel`` and ``preview`` options applied to the image at ``path``."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            return _converted(image, preview, channel)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ClientError(415, "not_an_image", "The file is not an image that can be converted",
                          "preview and channel apply to raster images only") from None


def _converted(image: Any, preview: tuple[str, int] | None, channel: str) -> tuple[bytes, str, str]:
    from PIL import Image
    if channel == "rgb":
        image = image.convert("RGB")
    elif channel == "a":
        alpha = image.convert("RGBA").getchannel("A")
        image = Image.new("RGBA", image.size)
        image.putalpha(alpha)
    buffer = io.BytesIO()
    if preview is None:
        _png_frame(image).save(buffer, format="PNG")
        return buffer.getvalue(), "image/png", ".png"
    fmt, quality = preview
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), "image/jpeg", ".jpg"
    image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue(), "image/webp", ".webp"
