"""``/ws?clientId=``: ComfyUI's WebSocket. A new client gets the status (and the node now running, when its
prompt is running); ``feature_flags`` messages set what previews it receives."""
from __future__ import annotations

import json

from aiohttp import web

from loom.server import events
from loom.server.clients import SERVER_FEATURES
from loom.server.state import SERVER_KEY

routes = web.RouteTableDef()


@routes.get("/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    server = request.app[SERVER_KEY]
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    client = server.hub.register(ws, request.query.get("clientId"))
    try:
        server.hub.send_status(client)
        for worker in server.workers:
            current, node = worker.current, worker.current_node
            if current is not None and current.client_id == client.client_id and node is not None:
                server.hub.send(*events.executing(node, current.prompt_id), client.client_id)
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
                server.hub.send("feature_flags", {**SERVER_FEATURES,
                                                  "max_upload_size": server.config.upload.max_bytes},
                                client.client_id)
    finally:
        await server.hub.unregister(client)
    return ws
