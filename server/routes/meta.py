"""What the server is and has: node definitions (``/object_info``), model folders and embeddings,
``/system_stats``, ``/features``, Loom's ``/notices``, ``/health`` and ``/ready``."""
from __future__ import annotations

import asyncio
import logging
import os
import platform
import sys
import time
from typing import Any

from aiohttp import web

from loom.nodes.kernel import folders
from loom.nodes.kernel.schema import NodeRegistry
from loom.server.clients import SERVER_FEATURES
from loom.server.notices import startup_notices
from loom.server.security import ClientError
from loom.server.state import SERVER_KEY

log = logging.getLogger("loom.server")

VERSION = "0.1.0"
COMFYUI_COMPATIBLE_VERSION = "0.3.64"  # the ComfyUI API (routes, messages, shapes) Loom speaks
COMFYUI_REQUIRED_FRONTEND_VERSION = "1.27.10"  # comfyui-frontend-package that ComfyUI release pins
COMFYUI_REQUIRED_TEMPLATES_VERSION = "0.1.94"  # comfyui-workflow-templates that ComfyUI release pins

routes = web.RouteTableDef()


@routes.get("/object_info")
async def get_object_info(request: web.Request) -> web.Response:
    info = await asyncio.to_thread(_object_info, request.app[SERVER_KEY].registry, None)
    return web.json_response(info)


@routes.get("/object_info/{node_class}")
async def get_object_info_node(request: web.Request) -> web.Response:
    info = await asyncio.to_thread(_object_info, request.app[SERVER_KEY].registry, request.match_info["node_class"])
    return web.json_response(info)


@routes.get("/models")
async def get_models(request: web.Request) -> web.Response:
    return web.json_response(list(folders.MODEL_FOLDERS))


@routes.get("/models/{folder}")
async def get_model_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in folders.MODEL_FOLDERS:
        raise ClientError(404, "not_found", "Unknown model folder",
                          f"known folders: {', '.join(folders.MODEL_FOLDERS)}")
    return web.json_response(await asyncio.to_thread(folders.list_files, folder))


@routes.get("/embeddings")
async def get_embeddings(request: web.Request) -> web.Response:
    names = await asyncio.to_thread(folders.list_files, "embeddings")
    return web.json_response([name.rsplit(".", 1)[0] for name in names])


@routes.get("/system_stats")
async def get_system_stats(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_system_stats))


@routes.get("/features")
async def get_features(request: web.Request) -> web.Response:
    return web.json_response({**SERVER_FEATURES, "max_upload_size": request.app[SERVER_KEY].config.upload.max_bytes})


# Loom's own

@routes.get("/notices")
async def get_notices(request: web.Request) -> web.Response:
    """Loom: what the editor shows a new user once (e.g. where checkpoints go); see server.notices."""
    return web.json_response(await asyncio.to_thread(startup_notices))


@routes.get("/health")
async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/ready")
async def get_ready(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    now = time.monotonic()
    stalled = any(w.current is not None and now - w.heartbeat > server.config.stall_timeout_s
                  for w in server.workers)
    checks = {
        "queue": not server.queue.closed,
        "registry": len(server.registry.names()) > 0,
        "worker": all(w.alive for w in server.workers) or not server.config.start_worker,
        "worker_responsive": not stalled,
    }
    if server.config.start_worker and any(hasattr(e, "ready") for e in server.executors):
        # up, not starting or being replaced (every lane's)
        checks["worker_process"] = all(bool(getattr(e, "ready", True)) for e in server.executors)
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


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
