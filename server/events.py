"""The events of a prompt's run, ComfyUI's WebSocket messages: one builder per message, each returning
``(event, data)``, so that the executor, the lane worker, the worker-process and Ray transports and the
queue all send the same shapes (ComfyUI 0.3.6x's keys, in its order)::

    emit(*events.executing("3", prompt_id))      # {"node": "3", "display_node": "3", "prompt_id": ...}

``preview`` is Loom's internal event (a latent preview image; the worker turns it into a binary frame).
The ``status`` message and the hub's own messages are :mod:`server.clients`'.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

Event = tuple[str, dict[str, Any]]

TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
"""The events that end a prompt's run (one of them, once)."""


def now_ms() -> int:
    """ComfyUI's event timestamps: milliseconds since the epoch."""
    return int(time.time() * 1000)


def execution_start(prompt_id: str) -> Event:
    return "execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()}


def execution_cached(nodes: list[str], prompt_id: str) -> Event:
    return "execution_cached", {"nodes": nodes, "prompt_id": prompt_id, "timestamp": now_ms()}


def executing(node_id: str | None, prompt_id: str) -> Event:
    """The node that runs now; ``None`` when the executor has finished the prompt."""
    return "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}


def idle(prompt_id: str) -> Event:
    """``executing`` with no node, as ComfyUI's prompt worker sends it after a prompt (no ``display_node``)."""
    return "executing", {"node": None, "prompt_id": prompt_id}


def progress(value: int, total: int, prompt_id: str, node_id: str) -> Event:
    return "progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}


def preview(node_id: str, prompt_id: str, image: Any) -> Event:
    return "preview", {"node": node_id, "prompt_id": prompt_id, "image": image}


def executed(node_id: str, output: dict[str, Any] | None, prompt_id: str) -> Event:
    return "executed", {"node": node_id, "display_node": node_id, "output": output, "prompt_id": prompt_id}


def execution_success(prompt_id: str) -> Event:
    return "execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()}


def execution_interrupted(prompt_id: str, node_id: str | None, node_type: str | None, executed_ids: Iterable[str],
                          reason: str | None = None) -> Event:
    """``reason`` (Loom's) says why, when it was not the user's interrupt of a running node."""
    data: dict[str, Any] = {"prompt_id": prompt_id, "node_id": node_id, "node_type": node_type,
                            "executed": list(executed_ids), "timestamp": now_ms()}
    if reason is not None:
        data["reason"] = reason
    return "execution_interrupted", data


def execution_error(prompt_id: str, node_id: str | None, node_type: str | None, executed_ids: Iterable[str],
                    message: str, exception_type: str, traceback: list[str] | None = None,
                    current_outputs: list[str] | None = None, **extra: Any) -> Event:
    """ComfyUI's error message; ``extra`` (Loom's: ``exception_class``, ``worker``) goes after its keys."""
    return "execution_error", {"prompt_id": prompt_id, "node_id": node_id, "node_type": node_type,
                               "executed": list(executed_ids), "exception_message": message,
                               "exception_type": exception_type, "traceback": traceback or [],
                               "current_inputs": {}, "current_outputs": current_outputs or [],
                               "timestamp": now_ms(), **extra}
