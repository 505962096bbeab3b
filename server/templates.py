"""Loom: the example workflows shipped in ``workflows/`` as templates for the editor's Templates dialog.

* ``GET /workflows/templates`` — ``[{name, title, description, thumbnail, models}]`` for every UI workflow in
  the folder, the ones that run with the built-in demo model first. ``thumbnail`` is the URL of a picture
  the workflow made with the demo model (``web/templates/<name>.png``, drawn by ``loom run``), or null when
  it needs a model Loom does not ship; ``models`` names the checkpoint files its loaders ask for.
* ``GET /workflows/templates/{name}`` — the workflow itself (UI format).

(ComfyUI's ``GET /workflow_templates`` lists custom node packs' templates by pack; Loom has none: ``{}``.)
"""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from loom.nodes.kernel import folders
from loom.server.security import ClientError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

THUMBNAILS = "templates"  # under web/: web/templates/<name>.png
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")

DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "txt2img": ("Text to image", "A caption becomes a 128×128 picture: the default graph, with the demo model."),
    "img2img": ("Image to image", "Repaints demo-scene.png (a green triangle) blue at denoise 0.75."),
    "inpaint": ("Inpainting", "Repaints the transparent half of a picture: a red circle appears beside the triangle."),
    "hires-fix": ("Hires fix", "A 128×128 first pass, upscaled 1.5× in latent space and refined by a second sampler."),
    "sdxl-base-refiner": ("SDXL base + refiner", "SDXL base for 20 of 25 steps, then the refiner; 1024×1024."),
    "lora": ("LoRA", "Text to image with a Load LoRA node between the checkpoint and the sampler."),
    "controlnet-canny": ("ControlNet (Canny)", "The edges of example.png steer an SD1.5 picture through ControlNet."),
}


def routes() -> list[tuple[str, str, Handler]]:
    return [
        ("GET", "/workflows/templates", get_templates),
        ("GET", "/workflows/templates/{name}", get_template),
    ]


def _models(workflow: dict[str, Any]) -> list[str]:
    """The checkpoint/model files the workflow's loaders name (the widget values ending like a model file)."""
    found: list[str] = []
    for node in workflow.get("nodes", []):
        if not isinstance(node, dict) or "Loader" not in str(node.get("type", "")):
            continue
        for value in node.get("widgets_values") or []:
            if isinstance(value, str) and value.lower().endswith(folders.MODEL_EXTENSIONS) and value not in found:
                found.append(value)
    return found


def list_templates(folder: Path = folders.EXAMPLE_WORKFLOWS_DIR, web_dir: Path = folders.WEB_DIR) -> list[dict[str, Any]]:
    templates = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            workflow = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
            continue
        name = path.stem
        title, description = DESCRIPTIONS.get(name, (name.replace("-", " ").capitalize(), ""))
        thumbnail = web_dir / THUMBNAILS / f"{name}.png"
        models = _models(workflow)
        templates.append({
            "name": name, "title": title, "description": description,
            "thumbnail": f"{THUMBNAILS}/{name}.png" if thumbnail.is_file() else None,
            "models": models, "builtin_model": models == [folders.DEMO_CHECKPOINT],
        })
    order = list(DESCRIPTIONS)
    templates.sort(key=lambda t: (not t["builtin_model"], order.index(t["name"]) if t["name"] in order else len(order),
                                  t["name"]))
    return templates


async def get_templates(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(list_templates))


async def get_template(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name.endswith(".json"):
        name = name[:-5]
    path = folders.EXAMPLE_WORKFLOWS_DIR / f"{name}.json"
    if not NAME.match(name) or not path.is_file():
        raise ClientError(404, "not_found", "No such template", "GET /api/workflows/templates lists them")
    workflow = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    return web.json_response(workflow)
