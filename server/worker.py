"""The execution worker: one thread that takes prompts from the durable queue and runs them.

The event loop never runs a node. Events from the executor go to the submitting client's socket
through ``loop.call_soon_threadsafe`` (:class:`~server.clients.ClientHub`); previews are encoded to JPEG
here, off the loop. The terminal events of a prompt (``execution_success`` / ``execution_error`` /
``execution_interrupted`` and the final ``executing {node: null}``) are held back until the history entry
is written, so a client that reads ``/history/<id>`` on receiving them always finds it.

Tracebacks of failing nodes go to the server log; clients get the node id, type and message only
(unless the server was started with ``expose_tracebacks``).
"""
from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any

from loom.server.clients import ClientHub
from loom.server.queue import Outcome, PromptQueue, QueueItem
from loom.server.security import scrub_paths

log = logging.getLogger("loom.server")

TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
PREVIEW_MAX_SIZE = 512
PREVIEW_MIN_INTERVAL_S = 0.05


def encode_preview(image: Any, max_size: int = PREVIEW_MAX_SIZE) -> bytes:
    """A PIL image as JPEG bytes (quality 95), fitted inside ``max_size``."""
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    if max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class Worker:
    """Runs queued prompts one at a time on its own thread."""

    def __init__(self, queue: PromptQueue, executor: Any, hub: ClientHub, *,
                 expose_tracebacks: bool = False) -> None:
        self.queue = queue
        self.executor = executor
        self.hub = hub
        self.expose_tracebacks = expose_tracebacks
        self.current: QueueItem | None = None
        self.current_node: str | None = None
        self.heartbeat = time.monotonic()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._free_flags: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.completed = 0

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loom-worker", daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking prompts; interrupt the running one (it is recorded as interrupted)."""
        self._stop.set()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id``, when given). True if one was hit."""
        with self._lock:
            item = self.current
            if item is None or (prompt_id is not None and item.prompt_id != prompt_id):
                return False
            self._cancel.set()
        try:
            self.executor.interrupt(item.prompt_id)
        except Exception:
            log.exception("executor.interrupt failed")
        return True

    def request_free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """ComfyUI's ``/free``: applied between prompts (now, when idle)."""
        with self._lock:
            self._free_flags["unload_models"] = self._free_flags.get("unload_models", False) or unload_models
            self._free_flags["free_memory"] = self._free_flags.get("free_memory", False) or free_memory
        if self.current is None:
            self._apply_free()

    def _apply_free(self) -> None:
        with self._lock:
            flags, self._free_flags = self._free_flags, {}
        if flags.get("unload_models") or flags.get("free_memory"):
            try:
                self.executor.free(unload_models=bool(flags.get("unload_models")),
                                   free_memory=bool(flags.get("free_memory")))
            except Exception:
                log.exception("freeing memory failed")

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                item = self.queue.get(timeout=0.5)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("reading the queue failed")
                time.sleep(0.5)
                continue
            if item is None:
                continue
            self._execute(item)
            self.heartbeat = time.monotonic()
            self._apply_free()

    def _execute(self, item: QueueItem) -> None:
        with self._lock:
            self._cancel = threading.Event()
            cancel = self._cancel
            self.current = item
            self.current_node = None
        self.heartbeat = time.monotonic()
        client_id = item.client_id
        held: list[tuple[str, dict[str, Any]]] = []
        last_preview = [0.0]

        def on_event(event: str, data: dict[str, Any]) -> None:
            self.heartbeat = time.monotonic()
            if event == "preview":
                self._send_preview(client_id, data, last_preview)
                return
            if event == "executing":
                self.current_node = data.get("node")
                if data.get("node") is None:
                    held.append((event, data))
                    return
            if event == "execution_error":
                log.error("prompt %s failed in node %s (%s): %s\n%s", data.get("prompt_id"), data.get("node_id"),
                          data.get("node_type"), data.get("exception_message"), "".join(data.get("traceback") or ()))
                data = self._public_error(data)
            if event in TERMINAL_EVENTS:
                held.append((event, data))
                return
            self.hub.call(self.hub.send, event, data, client_id)

        started = time.monotonic()
        log.info("prompt %s started", item.prompt_id)
        try:
            result = self.executor.execute(item.prompt, item.prompt_id, extra_data=item.extra_data,
                                           outputs=item.outputs or None, on_event=on_event, cancel=cancel)
            outcome = self._outcome(item, result, held)
        except Exception as error:  # the executor itself failed: the prompt fails, the worker lives on
            log.exception("executing prompt %s failed", item.prompt_id)
            payload = self._error_payload(item, "executor_error", f"{type(error).__name__}: {error}")
            held[:] = [("execution_error", payload),
                       ("executing", {"node": None, "display_node": None, "prompt_id": item.prompt_id})]
            outcome = Outcome(state="error", messages=[["execution_error", payload]], error=payload)
        try:
            self.queue.finish(item.prompt_id, outcome)
        except Exception:
            log.exception("recording prompt %s in history failed", item.prompt_id)
        log.info("prompt %s %s in %.2f s", item.prompt_id, outcome.state, time.monotonic() - started)
        with self._lock:
            self.current = None
            self.current_node = None
        self.completed += 1
        for event, data in held:
            self.hub.call(self.hub.send, event, data, client_id)

    # -- helpers -------------------------------------------------------------------------------

    def _outcome(self, item: QueueItem, result: Any, held: list) -> Outcome:
        status = result.status if result.status in ("success", "error", "interrupted") else "error"
        messages = [[event, self._public_error(data) if event == "execution_error" else data]
                    for event, data in result.messages]
        error = result.error
        if status == "error" and not any(e == "execution_error" for e, _ in result.messages):
            # failed before anything ran (e.g. an input file vanished after queueing): tell the client
            validation = getattr(result, "validation", None)
            lines = validation.messages() if validation is not None and hasattr(validation, "messages") else []
            message = "; ".join(lines) or (error or {}).get("message", "the prompt is no longer valid")
            payload = self._error_payload(item, (error or {}).get("type", "prompt_invalid"), message)
            messages.append(["execution_error", payload])
            held.insert(0, ("execution_error", payload))
            if not any(e == "executing" for e, _ in held):
                held.append(("executing", {"node": None, "display_node": None, "prompt_id": item.prompt_id}))
            error = {"type": payload["exception_type"], "message": message,
                     "node_errors": getattr(validation, "node_errors", {}) if validation is not None else {}}
        elif status == "error" and error is not None:
            error = self._public_error(error)
        return Outcome(state=status, outputs=result.outputs or {}, messages=messages, error=error)

    def _error_payload(self, item: QueueItem, kind: str, message: str) -> dict[str, Any]:
        return {"prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": message, "exception_type": kind, "traceback": [],
                "current_inputs": {}, "current_outputs": [], "timestamp": int(time.time() * 1000)}

    def _public_error(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.expose_tracebacks:
            return data
        return scrub_paths({**data, "traceback": []})

    def _send_preview(self, client_id: str | None, data: dict[str, Any], last: list[float]) -> None:
        if client_id is None or data.get("image") is None:
            return
        now = time.monotonic()
        if now - last[0] < PREVIEW_MIN_INTERVAL_S:
            return
        last[0] = now
        try:
            image = encode_preview(data["image"])
        except Exception:
            log.exception("encoding a preview failed")
            return
        node = data.get("node")
        metadata = {"node_id": node, "prompt_id": data.get("prompt_id"), "display_node_id": node,
                    "parent_node_id": None, "real_node_id": node, "image_type": "image/jpeg"}
        self.hub.call(self.hub.send_preview, client_id, image, metadata)
