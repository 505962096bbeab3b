"""Small request/response helpers the route modules share."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

from aiohttp import web

from loom.server import json_chunked
from loom.server.security import ClientError, read_json

HISTORY_PROMPT_DEPTH = 5  # {id: {"prompt": [number, id, {node_id: node}, ...]}}: one node per encode call
QUEUE_PROMPT_DEPTH = 4  # {"queue_pending": [[number, id, {node_id: node}, ...]]}
QUERY_INT_BOUND = 2 ** 62
"""Integer query parameters are clamped to ±this: Python's ints are unbounded, SQLite's are 64-bit."""


async def json_off_loop(value: Any, depth: int) -> web.Response:
    """A JSON response encoded in a thread, in small steps: what holds whole prompts can be megabytes."""
    text = await asyncio.to_thread(json_chunked.dumps, value, depth=depth, separators=(", ", ": "))
    return web.Response(text=text, content_type="application/json")


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when there is none)."""
    body = await read_json(request, 1024 * 1024, required=False)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ClientError(400, "invalid_request", "The body must be a JSON object")
    return body


def query_int(request: web.Request, name: str) -> int | None:
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


def clear_and_delete(body: dict[str, Any], clear: Callable[[], int],
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
