"""What a running node can tell the executor: progress, previews, and whether to stop.

The executor sets an :class:`ExecutionContext` around each node call (a context variable, so
threads and async code report for the right node). Node and runtime code only call
:func:`report_progress` / :class:`ProgressBar` and :func:`check_interrupted`; they never see the server.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator


class Interrupted(Exception):
    """Raised inside a node when its prompt was interrupted or cancelled."""


@dataclass
class ExecutionContext:
    prompt_id: str
    node_id: str
    class_type: str
    on_progress: Callable[[int, int, Any], None]
    is_cancelled: Callable[[], bool]


_current: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar("loom_node", default=None)


@contextlib.contextmanager
def running_node(context: ExecutionContext) -> Iterator[ExecutionContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current() -> ExecutionContext | None:
    return _current.get()


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if the running prompt should stop."""
    context = _current.get()
    if context is not None and context.is_cancelled():
        raise Interrupted(f"prompt {context.prompt_id} interrupted")


def report_progress(value: int, total: int, preview: Any = None) -> None:
    """Report ``value`` of ``total`` steps for the running node (and a preview image, if any).

    Checks for interruption first, so every progress tick is also a place where a prompt stops.
    ``preview`` is a PIL image (the executor encodes it) or ``None``.
    """
    context = _current.get()
    if context is None:
        return
    if context.is_cancelled():
        raise Interrupted(f"prompt {context.prompt_id} interrupted")
    context.on_progress(int(value), int(total), preview)


class ProgressBar:
    """Counts steps of a loop and reports each one."""

    def __init__(self, total: int) -> None:
        self.total = int(total)
        self.value = 0

    def update(self, steps: int = 1, preview: Any = None) -> None:
        self.update_absolute(self.value + steps, preview)

    def update_absolute(self, value: int, preview: Any = None) -> None:
        self.value = min(int(value), self.total)
        report_progress(self.value, self.total, preview)
