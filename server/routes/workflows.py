"""Loom's workflow routes: UI → API conversion in the backend (``POST /workflow/convert``) and the workflow
the editor opens first (``GET /workflows/default``)."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from loom.nodes.kernel import folders
from loom.server import workflow
from loom.server.security import ClientError, read_json
from loom.server.state import SERVER_KEY

log = logging.getLogger("loom.server")

routes = web.RouteTableDef()


@routes.post("/workflow/convert")
async def post_workflow_convert(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    body = await read_json(request, server.config.max_prompt_bytes)
    if isinstance(body, dict) and isinstance(body.get("workflow"), dict) and "nodes" not in body:
        body = body["workflow"]
    if not isinstance(body, dict):
        raise ClientError(400, "invalid_workflow", "Invalid workflow", "send the UI workflow JSON object")
    try:
        result = await asyncio.to_thread(workflow.ui_to_api, body, server.registry)
    except ValueError as error:
        problems = [p if isinstance(p, dict) else {"message": str(p)}
                    for p in getattr(error, "problems", None) or [str(error)]]
        details = "; ".join(_describe_problem(p) for p in problems)
        return web.json_response({"error": {"type": "invalid_workflow", "message": "Cannot convert workflow",
                                            "details": details, "extra_info": {}},
                                  "problems": problems}, status=400)
    return web.json_response({"prompt": result.prompt, "warnings": [str(w) for w in result.warnings]})


@routes.get("/workflows/default")
async def get_default_workflow(request: web.Request) -> web.Response:
    """Loom: the workflow the editor opens first (``loom serve --workflow``), UI format when it has one."""
    path = request.app[SERVER_KEY].config.default_workflow or folders.EXAMPLE_WORKFLOWS_DIR / "txt2img.json"
    if not Path(path).is_file():
        raise ClientError(404, "not_found", "No default workflow")
    try:
        loaded = await asyncio.to_thread(workflow.load_workflow_file, path)
    except ValueError:
        log.exception("cannot read the default workflow %s", path)
        raise ClientError(404, "not_found", "The default workflow cannot be read") from None
    return web.json_response(loaded.ui if loaded.ui is not None else loaded.api)


def _describe_problem(problem: dict[str, Any]) -> str:
    node = problem.get("node_id")
    where = f"node {node} ({problem.get('class_type')}): " if node is not None else ""
    return where + str(problem.get("message", ""))
