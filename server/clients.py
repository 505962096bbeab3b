"""The WebSocket clients: who is connected, and delivering each message only to whom it belongs.

Execution messages go only to the socket of the client that submitted the prompt (``client_id``); a
prompt without a client id sends its execution messages to nobody (ComfyUI broadcasts some of them).
``status`` (queue counts only) is the one broadcast. Each socket has a bounded outgoing queue drained
by its own task, so one slow reader never delays the others: when its queue is full, previews and
progress are dropped, and a socket that still cannot keep up is closed with code 1013.

Binary preview frames use ComfyUI's layout: a big-endian uint32 event type, then for type 1
(``PREVIEW_IMAGE``) a uint32 image format (1 = JPEG, 2 = PNG) and the image, and for type 4
(``PREVIEW_IMAGE_WITH_METADATA``, to clients that sent ``supports_preview_metadata``) a uint32 length,
that many bytes of JSON metadata, and the image.

Latent previews (JPEG) go only to clients that want them: ComfyUI sends none unless a preview method is
enabled, and API clients (e.g. comfy-api-simplified) take every binary frame for an output image. A client
asks for them with ``"latent_previews": true`` in its ``feature_flags`` message (Loom's editor does);
``loom serve --preview-method`` decides for everyone (see :class:`~server.worker.Worker`). Output images of
``SaveImageWebsocket`` (PNG) always go to the prompt's client and are never dropped.

A socket whose send raises anything (not only a closed connection) is logged once, closed and
unregistered; the other clients are not affected.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import threading
import uuid
from typing import Any, Callable

from aiohttp import WSCloseCode, web

log = logging.getLogger("loom.server")

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMAT_JPEG = 1
IMAGE_FORMAT_PNG = 2
IMAGE_FORMATS = {"image/jpeg": IMAGE_FORMAT_JPEG, "image/png": IMAGE_FORMAT_PNG}

DROPPABLE_EVENTS = frozenset({"progress", "progress_state"})
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SERVER_FEATURES = {"supports_preview_metadata": True}


def preview_frame(image: bytes, metadata: dict[str, Any] | None, image_type: str = "image/jpeg") -> bytes:
    """A binary preview frame: type 4 with ``metadata``, else legacy type 1 (format from ``image_type``)."""
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS.get(image_type, IMAGE_FORMAT_JPEG)) + image
    meta = json.dumps(metadata, separators=(",", ":")).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image


class Client:
    """One connected socket and its outgoing queue."""

    def __init__(self, client_id: str, ws: web.WebSocketResponse, max_pending: int,
                 on_failure: Callable[["Client"], None] | None = None) -> None:
        self.client_id = client_id
        self.ws = ws
        self.outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(max_pending)
        self.supports_preview_metadata = False
        self.latent_previews = False  # asked for latent preview frames (feature flag "latent_previews")
        self.sender: asyncio.Task | None = None
        self.closed = False
        self.on_failure = on_failure

    async def drain(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None or self.ws.closed:
                return
            try:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message)
            except asyncio.CancelledError:
                return
            except (ConnectionError, RuntimeError) as error:  # the connection went away: nothing to report
                log.debug("client %s: send failed (%s)", self.client_id, error)
                await self._drop()
                return
            except Exception:  # anything else is a bug or a broken transport: log it once, drop this socket
                log.exception("sending to client %s failed; closing its socket", self.client_id)
                await self._drop()
                return

    async def _drop(self) -> None:
        """Stop delivering to this socket: unregister it and close it (the others are unaffected)."""
        self.closed = True
        if self.on_failure is not None:
            self.on_failure(self)
        try:
            await self.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"send failed")
        except Exception:
            pass


class ClientHub:
    """All connected clients. Every method runs on the event loop; worker threads use :meth:`call`."""

    def __init__(self, max_pending: int = 1024) -> None:
        self.max_pending = max_pending
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._status_scheduled = False
        self._status_held = False  # while a finished prompt's last messages are pending (see end_prompt)
        self._status_lock = threading.Lock()
        self.status_source: Callable[[], dict[str, Any]] = lambda: {"exec_info": {"queue_remaining": 0}}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop, from any thread."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is shutting down
            pass

    # -- connections ---------------------------------------------------------------------------

    def register(self, ws: web.WebSocketResponse, requested_id: str | None) -> Client:
        """Add a socket. A requested id already held by an open socket is not taken over: the new
        socket gets a fresh id (sent back as ``sid``, which ComfyUI clients adopt)."""
        client_id = requested_id if requested_id and CLIENT_ID_PATTERN.match(requested_id) else None
        if client_id is None or client_id in self.clients:
            client_id = uuid.uuid4().hex
        client = Client(client_id, ws, self.max_pending, on_failure=self._forget)
        self.clients[client_id] = client
        client.sender = asyncio.ensure_future(client.drain())
        return client

    def _forget(self, client: Client) -> None:
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]

    async def unregister(self, client: Client) -> None:
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
        client.closed = True
        if client.sender is not None and not client.sender.done():
            client.sender.cancel()
            try:
                await client.sender
            except (asyncio.CancelledError, Exception):
                pass

    async def close_all(self) -> None:
        for client in list(self.clients.values()):
            try:
                await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
            except Exception:
                pass
            await self.unregister(client)

    # -- sending -------------------------------------------------------------------------------

    def _enqueue(self, client: Client, message: str | bytes, droppable: bool) -> None:
        if client.closed:
            return
        try:
            client.outbox.put_nowait(message)
        except asyncio.QueueFull:
            if droppable:
                return
            log.warning("client %s is not reading its messages; closing its socket", client.client_id)
            client.closed = True
            if self.clients.get(client.client_id) is client:
                del self.clients[client.client_id]
            asyncio.ensure_future(client.ws.close(code=WSCloseCode.TRY_AGAIN_LATER,
                                                  message=b"too many unread messages"))

    def send(self, event: str, data: Any, client_id: str | None) -> None:
        """A JSON message to one client; nothing when ``client_id`` is None or not connected."""
        if client_id is None:
            return
        client = self.clients.get(client_id)
        if client is None:
            return
        message = json.dumps({"type": event, "data": data}, separators=(",", ":"), default=str)
        self._enqueue(client, message, droppable=event in DROPPABLE_EVENTS)

    def wants_latent_previews(self, client_id: str | None) -> bool:
        """Whether the client asked for latent previews (safe to call from any thread: one read)."""
        client = self.clients.get(client_id) if client_id else None
        return client is not None and client.latent_previews

    def send_preview(self, client_id: str | None, image: bytes, metadata: dict[str, Any],
                     only_if_asked: bool = False) -> None:
        """A latent preview (JPEG): droppable; with ``only_if_asked``, only to a client that asked."""
        client = self.clients.get(client_id) if client_id else None
        if client is None or (only_if_asked and not client.latent_previews):
            return
        frame = preview_frame(image, metadata if client.supports_preview_metadata else None)
        self._enqueue(client, frame, droppable=True)

    def send_image(self, client_id: str | None, image: bytes, metadata: dict[str, Any]) -> None:
        """An output image (``SaveImageWebsocket``): to the prompt's client only, never dropped.

        ``metadata["image_type"]`` names the format (``image/png``); a client without
        ``supports_preview_metadata`` gets ComfyUI's legacy frame (type 1, format 2 = PNG).
        """
        client = self.clients.get(client_id) if client_id else None
        if client is None:
            return
        image_type = metadata.get("image_type", "image/png")
        frame = preview_frame(image, metadata if client.supports_preview_metadata else None, image_type)
        self._enqueue(client, frame, droppable=False)

    def send_status(self, client: Client | None = None) -> None:
        status = self.status_source()
        if client is not None:
            self.send("status", {"status": status, "sid": client.client_id}, client.client_id)
            return
        message = json.dumps({"type": "status", "data": {"status": status}}, separators=(",", ":"))
        for each in list(self.clients.values()):
            self._enqueue(each, message, droppable=False)

    def status_changed(self) -> None:
        """Schedule one ``status`` broadcast (many queue changes in a burst coalesce into one).

        While :meth:`hold_status` is in effect the broadcast waits for :meth:`end_prompt`, which sends it
        between a prompt's terminal event and its final ``executing``, where ComfyUI sends it.
        """
        with self._status_lock:
            if self._status_held or self._status_scheduled:
                return
            self._status_scheduled = True
        self.call(self._flush_status)

    def _flush_status(self) -> None:
        with self._status_lock:
            self._status_scheduled = False
            if self._status_held:
                return
        self.send_status()

    def hold_status(self) -> None:
        """From the worker, before a finished prompt is recorded: keep the next ``status`` for end_prompt."""
        with self._status_lock:
            self._status_held = True

    def end_prompt(self, client_id: str | None, before: list[tuple[str, Any]],
                   after: list[tuple[str, Any]]) -> None:
        """A prompt's last messages in ComfyUI's order: ``before`` (e.g. ``execution_success``) to its
        client, then the ``status`` broadcast, then ``after`` (the final ``executing {node: null}``)."""
        for event, data in before:
            self.send(event, data, client_id)
        with self._status_lock:
            self._status_held = False
        self.send_status()
        for event, data in after:
            self.send(event, data, client_id)
