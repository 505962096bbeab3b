"""Queueing prompts (``POST /prompt``: checks, validation, storage), their queue status (``GET /prompt``),
Loom's cancel and requeue, ``/interrupt`` and ``/free``."""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import web

from loom.server.executor import fast_setting
from loom.server.queue import PromptState, QueueStoreError
from loom.server.routes.common import json_object
from loom.server.security import ClientError, json_error, non_finite_error, non_finite_path, read_json, scrub_paths
from loom.server.state import SERVER_KEY, LoomServer

log = logging.getLogger("loom.server")

PROMPT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")

routes = web.RouteTableDef()


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    # non-finite numbers inside the prompt are reported per node and input (after validation, below)
    body = await read_json(request, server.config.max_prompt_bytes, finite=False)
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
    try:
        fast_setting(extra_data)
    except ValueError as problem:
        raise ClientError(400, "invalid_prompt", "Invalid extra_data", str(problem)) from None
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
    return await enqueue(server, prompt, prompt_id, extra_data, number, front,
                         [str(t) for t in targets] if targets is not None else None)


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[SERVER_KEY].queue.remaining()}})


@routes.delete("/prompt/{prompt_id}")
async def cancel_prompt(request: web.Request) -> web.Response:
    """Loom: cancel a queued prompt, or interrupt it when it is running."""
    server = request.app[SERVER_KEY]
    prompt_id = request.match_info["prompt_id"]
    for _ in range(100):
        if server.queue.cancel(prompt_id):
            log.info("prompt %s cancelled", prompt_id)
            return web.json_response({"prompt_id": prompt_id, "state": PromptState.CANCELLED})
        if server.interrupt(prompt_id):
            return web.json_response({"prompt_id": prompt_id, "state": "interrupting"})
        state = server.queue.state_of(prompt_id)
        if state != PromptState.RUNNING:  # running but not yet handed to the executor: try again shortly
            break
        await asyncio.sleep(0.01)
    if state is None:
        raise ClientError(404, "not_found", "Unknown prompt_id", f"no prompt {prompt_id!r}")
    return json_error(409, "already_finished", "The prompt has already finished", f"its state is {state}")


routes.post("/queue/{prompt_id}/cancel")(cancel_prompt)


@routes.post("/interrupt")
async def post_interrupt(request: web.Request) -> web.Response:
    body = await read_json(request, 64 * 1024, required=False)
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    if prompt_id is not None and not isinstance(prompt_id, str):
        raise ClientError(400, "invalid_request", "prompt_id must be a string")
    return web.json_response({"interrupted": request.app[SERVER_KEY].interrupt(prompt_id)})


@routes.post("/free")
async def post_free(request: web.Request) -> web.Response:
    body = await json_object(request)
    for worker in request.app[SERVER_KEY].workers:
        worker.request_free(unload_models=bool(body.get("unload_models")),
                            free_memory=bool(body.get("free_memory")))
    return web.json_response({})


@routes.post("/history/{prompt_id}/requeue")
async def requeue_prompt(request: web.Request) -> web.Response:
    """Loom: queue a finished (e.g. interrupted) prompt again, under a new id."""
    server = request.app[SERVER_KEY]
    item = server.queue.history_prompt(request.match_info["prompt_id"])
    if item is None:
        raise ClientError(404, "not_found", "Unknown prompt_id", "no finished prompt with this id")
    body = await json_object(request)
    extra_data = dict(item.extra_data)
    if isinstance(body.get("client_id"), str):
        extra_data["client_id"] = body["client_id"]
    return await enqueue(server, item.prompt, None, extra_data, None, bool(body.get("front")),
                         item.outputs or None)


async def enqueue(server: LoomServer, prompt: dict, prompt_id: str | None, extra_data: dict,
                  number: float | None, front: bool, targets: list[str] | None) -> web.Response:
    """Validate and store ``prompt``; ComfyUI's ``{prompt_id, number, node_errors}`` or its 400 body."""
    # validating and storing are one trip to a thread: each trip costs a hand-over both ways, and under
    # many concurrent clients those hand-overs are most of an enqueue's latency
    prompt_id = prompt_id or str(uuid.uuid4())
    validation, number = await asyncio.to_thread(_validate_and_store, server, prompt, prompt_id, extra_data,
                                                 number, front, targets)
    if not validation.ok:
        return web.json_response(scrub_paths({"error": validation.error,
                                              "node_errors": validation.node_errors}), status=400)
    log.debug("prompt %s queued (number %s)", prompt_id, _plain(number))
    return web.json_response({"prompt_id": prompt_id, "number": _plain(number),
                              "node_errors": scrub_paths(validation.node_errors)})


def _validate_and_store(server: LoomServer, prompt: dict, prompt_id: str, extra_data: dict,
                        number: float | None, front: bool, targets: list[str] | None) -> tuple[Any, float]:
    """(validation, queue number); an invalid prompt is not stored (its number is then 0)."""
    from loom.server.validation import validate_prompt
    validation = validate_prompt(prompt, server.registry, targets, server.config.budget)
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
        return validation, server.queue.put(prompt_id, prompt, extra_data, validation.outputs, number=number,
                                            front=front, required_models=validation.required_models)
    except KeyError:
        raise ClientError(400, "duplicate_prompt_id", "prompt_id already used",
                          "a queued, running or finished prompt has this id; leave prompt_id out "
                          "to get a fresh one") from None
    except QueueStoreError as error:
        raise ClientError(503, "queue_unavailable", "The queue is not available", str(error)) from None


def _plain(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


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
