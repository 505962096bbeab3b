"""``/queue`` (running and pending prompts, clear/delete) and ``/history`` (finished prompts)."""
from __future__ import annotations

import asyncio

from aiohttp import web

from loom.server.routes.common import (HISTORY_PROMPT_DEPTH, QUEUE_PROMPT_DEPTH, clear_and_delete, json_object,
                                       json_off_loop, query_int)
from loom.server.state import SERVER_KEY

routes = web.RouteTableDef()


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    queue = request.app[SERVER_KEY].queue
    running, pending = await asyncio.to_thread(lambda: (queue.running(), queue.pending()))
    return await json_off_loop({"queue_running": [i.as_list() for i in running],
                                "queue_pending": [i.as_list() for i in pending]}, depth=QUEUE_PROMPT_DEPTH)


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    queue = request.app[SERVER_KEY].queue
    body = await json_object(request)
    return web.json_response(clear_and_delete(body, queue.clear_pending, queue.delete_pending))


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    max_items = query_int(request, "max_items")
    offset = query_int(request, "offset")
    history = await asyncio.to_thread(request.app[SERVER_KEY].queue.history, max_items,
                                      -1 if offset is None else offset)
    return await json_off_loop(history, depth=HISTORY_PROMPT_DEPTH)


@routes.post("/history")
async def post_history(request: web.Request) -> web.Response:
    queue = request.app[SERVER_KEY].queue
    body = await json_object(request)
    return web.json_response(clear_and_delete(body, queue.clear_history, queue.delete_history))


@routes.get("/history/{prompt_id}")
async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = await asyncio.to_thread(request.app[SERVER_KEY].queue.history_item, prompt_id)
    return await json_off_loop({prompt_id: entry} if entry is not None else {}, depth=HISTORY_PROMPT_DEPTH)
