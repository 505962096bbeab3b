"""The durable prompt queue and history, kept in one SQLite file under the base directory.

Pending prompts survive a restart and run after it. A prompt that was running when the process died is
moved to history as *interrupted* on the next start (never silently re-run, never lost) and can be
re-queued. History keeps status, outputs, timings and errors, bounded by count and by age.

Order is ComfyUI's: the lowest ``number`` runs first; without an explicit ``number`` a prompt gets the
next value of a counter, and ``front=True`` gets ``-counter`` (so several "front" prompts run newest
first, ahead of everything queued normally). Ties run in submission order. The counter is persisted, so
numbers keep growing across restarts.

One connection guarded by a lock serves every thread (the HTTP handlers and the worker); writes are
few and small, so this is not a bottleneck at the scale of one executor.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable

from loom.server import events, json_chunked
from loom.server.routing import Pending

SECRET_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
"""Keys of ``extra_data`` never written to disk or shown in history (ComfyUI strips the same ones)."""

SCHEMA_VERSION = 1
ROUTING_WINDOW = 1000
"""How many pending prompts (from the head) a routing ``select`` hook is shown."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    queued_at REAL NOT NULL,
    started_at REAL
);
CREATE INDEX IF NOT EXISTS queue_order ON queue (state, number, seq);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    state TEXT NOT NULL,
    outputs TEXT NOT NULL,
    messages TEXT NOT NULL,
    error TEXT,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_finished ON history (finished_at);
"""



class PromptState(str, Enum):
    """A prompt's state: ``pending`` and ``running`` in the queue table, the others (terminal) in history.

    str-valued: a member is equal to its value, binds to SQLite as it and encodes to JSON as it, so the
    database rows, ``/history``'s ``status.state`` and the executor's ``status`` hold the same strings as
    ComfyUI clients read. ``str()`` and f-strings give the value too.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = (PromptState.SUCCESS, PromptState.ERROR, PromptState.INTERRUPTED, PromptState.CANCELLED)


class QueueStoreError(RuntimeError):
    """The queue database cannot be opened or is not Loom's (the server refuses to start)."""


@dataclass
class QueueItem:
    """A pending or running prompt, as ``GET /queue`` lists it."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    queued_at: float = 0.0
    started_at: float | None = None
    required_models: list[str] = field(default_factory=list)  # "folder/name" of the model files it needs

    @property
    def client_id(self) -> str | None:
        client = self.extra_data.get("client_id")
        return client if isinstance(client, str) else None

    def as_list(self) -> list[Any]:
        """ComfyUI's 5-tuple ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``."""
        return [_plain_number(self.number), self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class Outcome:
    """How a prompt ended: what the worker hands to :meth:`PromptQueue.finish`."""

    state: str  # one of TERMINAL_STATES (a PromptState)
    outputs: dict[str, Any] = field(default_factory=dict)
    messages: list[Any] = field(default_factory=list)
    error: dict[str, Any] | None = None
    worker: str | None = None  # which worker ran it: "thread" or "process:<pid>" (history's status.worker)


def public_extra_data(extra_data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra_data.items() if k not in SECRET_EXTRA_DATA_KEYS}


def _plain_number(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


def _dumps(value: Any) -> str:
    return json_chunked.dumps(value)


def _loads(text: str) -> Any:
    return json_chunked.loads(text)


class PromptQueue:
    """Pending/running prompts and finished history in SQLite; safe to share between threads."""

    def __init__(self, db_path: str | Path, *, max_history_items: int = 10_000,
                 max_history_age_s: float | None = 30 * 24 * 3600) -> None:
        self.db_path = Path(db_path)
        self.max_history_items = max_history_items
        self.max_history_age_s = max_history_age_s
        self._lock = threading.RLock()
        self._available = threading.Condition(self._lock)
        self._listeners: list[Callable[[], None]] = []
        self._closed = False
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None,
                                       timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise QueueStoreError(f"queue database {self.db_path.name} has schema version {row[0]}, "
                                      f"this Loom reads version {SCHEMA_VERSION}")
            self._add_columns()
        except sqlite3.DatabaseError as error:
            raise QueueStoreError(f"cannot open the queue database {self.db_path.name}: {error}") from None
        self.recovered = self._recover()
        self._trim_history()
        self._counts = (0, 0)
        self._count_states()

    def _add_columns(self) -> None:
        """Columns added after schema version 1 (nullable, so an older Loom still reads the file)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(history)").fetchall()}
        if "worker" not in columns:
            self._db.execute("ALTER TABLE history ADD COLUMN worker TEXT")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(queue)").fetchall()}
        if "required_models" not in columns:  # JSON list of "folder/name"; NULL: queued by an older Loom
            self._db.execute("ALTER TABLE queue ADD COLUMN required_models TEXT")
        if "waited" not in columns:  # dispatches that took a prompt queued after this one (routing)
            self._db.execute("ALTER TABLE queue ADD COLUMN waited INTEGER NOT NULL DEFAULT 0")

    # -- lifecycle ---------------------------------------------------------------------------

    def _recover(self) -> list[str]:
        """Move prompts that were running when the process died to history as interrupted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT prompt_id FROM queue WHERE state='running' ORDER BY seq").fetchall()
            for (prompt_id,) in rows:
                self._to_history(prompt_id, Outcome(
                    state=PromptState.INTERRUPTED,
                    messages=[list(events.execution_interrupted(
                        prompt_id, None, None, [], reason="the server stopped while this prompt was running"))],
                    error={"type": "server_restarted",
                           "message": "the server stopped while this prompt was running; re-queue it to run it"}))
            return [r[0] for r in rows]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._available.notify_all()
            self._db.close()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called (from the changing thread) after every change of the queue."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._count_states()
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must never break the queue
                pass

    # -- the queue ---------------------------------------------------------------------------

    def _next_counter(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='counter'").fetchone()
        counter = int(row[0]) if row else 0
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('counter', ?)", (str(counter + 1),))
        return counter

    def contains(self, prompt_id: str) -> bool:
        with self._lock:
            return bool(self._db.execute("SELECT 1 FROM queue WHERE prompt_id=? UNION ALL "
                                         "SELECT 1 FROM history WHERE prompt_id=?",
                                         (prompt_id, prompt_id)).fetchone())

    def put(self, prompt_id: str, prompt: dict[str, Any], extra_data: dict[str, Any], outputs: Iterable[str],
            *, number: float | None = None, front: bool = False,
            required_models: Iterable[str] = ()) -> float:
        """Queue a prompt; returns its priority number. Raises ``KeyError`` for a prompt id in use.
        ``required_models`` are the model files it needs (validation's), which routing reads."""
        # encoded before taking the lock: a big prompt must not hold up the readers of the queue
        encoded = (_dumps(prompt), _dumps(public_extra_data(extra_data)), _dumps(list(outputs)),
                   _dumps(sorted(set(required_models))))
        with self._lock:
            if self._closed:
                raise QueueStoreError("the queue is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM queue WHERE prompt_id=? UNION ALL "
                                    "SELECT 1 FROM history WHERE prompt_id=?", (prompt_id, prompt_id)).fetchone():
                    raise KeyError(prompt_id)
                if number is None:
                    counter = self._next_counter()
                    number = float(-counter if front else counter)
                self._db.execute(
                    "INSERT INTO queue (prompt_id, number, prompt, extra_data, outputs, required_models, "
                    "queued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (prompt_id, float(number), *encoded, time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._available.notify_all()  # every idle lane looks: the routing may choose any of them
        self._changed()
        return number

    def get(self, timeout: float | None = None,
            select: Callable[[list[Pending]], int | None] | None = None) -> QueueItem | None:
        """Take the next pending prompt and mark it running; ``None`` after ``timeout`` or on close.

        Without ``select`` the next is the head (lowest ``number``, then oldest). With it, ``select`` is
        called under the queue's lock with the first :data:`ROUTING_WINDOW` pending prompts in that order
        (as :class:`~server.routing.Pending`: id, required models, dispatches waited) and returns the index
        of the one to take, or None to wait for the next change of the queue. Taking a prompt that is not
        the head counts one dispatch waited for every prompt ahead of it (the routing's starvation bound)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    return None
                row = self._select(select) if select is not None else self._db.execute(
                    "SELECT prompt_id, number, prompt, extra_data, outputs, queued_at, required_models FROM queue "
                    "WHERE state='pending' ORDER BY number, seq LIMIT 1").fetchone()
                if row is not None:
                    started = time.time()
                    self._db.execute("UPDATE queue SET state='running', started_at=? WHERE prompt_id=?",
                                     (started, row[0]))
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._available.wait(remaining)
            if select is not None:
                self._available.notify_all()  # lanes that waited for this one to take its prompt look again
        self._changed()
        # decoded after letting go of the lock, for the same reason as in put()
        return QueueItem(number=row[1], prompt_id=row[0], prompt=_loads(row[2]), extra_data=_loads(row[3]),
                         outputs=_loads(row[4]), queued_at=row[5], started_at=started,
                         required_models=_loads(row[6]) if row[6] else [])

    def _select(self, select: Callable[[list[Pending]], int | None]) -> tuple | None:
        rows = self._db.execute("SELECT prompt_id, required_models, waited, number, seq FROM queue "
                                "WHERE state='pending' ORDER BY number, seq LIMIT ?", (ROUTING_WINDOW,)).fetchall()
        if not rows:
            return None
        index = select([Pending(r[0], frozenset(_loads(r[1])) if r[1] else frozenset(), r[2]) for r in rows])
        if index is None:
            return None
        chosen = rows[index]
        if index > 0:
            self._db.execute("UPDATE queue SET waited=waited+1 WHERE state='pending' AND "
                             "(number < ? OR (number = ? AND seq < ?))", (chosen[3], chosen[3], chosen[4]))
        return self._db.execute("SELECT prompt_id, number, prompt, extra_data, outputs, queued_at, required_models "
                                "FROM queue WHERE prompt_id=?", (chosen[0],)).fetchone()

    def finish(self, prompt_id: str, outcome: Outcome) -> None:
        """Move a running prompt to history with its outcome."""
        with self._lock:
            self._to_history(prompt_id, outcome)
            self._trim_history()
        self._changed()

    def _to_history(self, prompt_id: str, outcome: Outcome) -> None:
        if outcome.state not in TERMINAL_STATES:
            raise ValueError(f"unknown final state {outcome.state!r}")
        row = self._db.execute("SELECT number, prompt, extra_data, outputs, queued_at, started_at FROM queue "
                               "WHERE prompt_id=?", (prompt_id,)).fetchone()
        if row is None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM queue WHERE prompt_id=?", (prompt_id,))
            self._db.execute("DELETE FROM history WHERE prompt_id=?", (prompt_id,))
            self._db.execute(
                "INSERT INTO history (prompt_id, number, prompt, extra_data, outputs_to_execute, state, outputs, "
                "messages, error, queued_at, started_at, finished_at, worker) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (prompt_id, row[0], row[1], row[2], row[3], outcome.state, _dumps(outcome.outputs),
                 _dumps(outcome.messages), _dumps(outcome.error) if outcome.error else None, row[4], row[5],
                 time.time(), outcome.worker))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def cancel(self, prompt_id: str) -> bool:
        """Remove a pending prompt, recording it in history as cancelled. False if it is not pending."""
        with self._lock:
            if not self._db.execute("SELECT 1 FROM queue WHERE prompt_id=? AND state='pending'",
                                    (prompt_id,)).fetchone():
                return False
            self._to_history(prompt_id, Outcome(state=PromptState.CANCELLED, messages=[list(
                events.execution_interrupted(prompt_id, None, None, [], reason="cancelled before it ran"))]))
            self._trim_history()
        self._changed()
        return True

    def delete_pending(self, prompt_ids: Iterable[str]) -> int:
        """ComfyUI's ``POST /queue {"delete": [...]}``: drop pending prompts (the running one is untouched)."""
        ids = [str(p) for p in prompt_ids]
        with self._lock:
            deleted = sum(self._db.execute("DELETE FROM queue WHERE prompt_id=? AND state='pending'",
                                           (p,)).rowcount for p in ids)
        if deleted:
            self._changed()
        return deleted

    def clear_pending(self) -> int:
        with self._lock:
            deleted = self._db.execute("DELETE FROM queue WHERE state='pending'").rowcount
        self._changed()
        return deleted

    def _items(self, state: str) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT prompt_id, number, prompt, extra_data, outputs, queued_at, started_at, required_models "
                "FROM queue WHERE state=? ORDER BY number, seq", (state,)).fetchall()
        return [QueueItem(number=r[1], prompt_id=r[0], prompt=_loads(r[2]), extra_data=_loads(r[3]),
                          outputs=_loads(r[4]), queued_at=r[5], started_at=r[6],
                          required_models=_loads(r[7]) if r[7] else []) for r in rows]

    def pending(self) -> list[QueueItem]:
        return self._items(PromptState.PENDING)

    def running(self) -> list[QueueItem]:
        return self._items(PromptState.RUNNING)

    def state_of(self, prompt_id: str) -> PromptState | None:
        """``pending``, ``running``, a terminal state from history, or ``None`` when unknown."""
        with self._lock:
            row = self._db.execute("SELECT state FROM queue WHERE prompt_id=?", (prompt_id,)).fetchone()
            if row is None:
                row = self._db.execute("SELECT state FROM history WHERE prompt_id=?", (prompt_id,)).fetchone()
        return PromptState(row[0]) if row else None

    def counts(self) -> tuple[int, int]:
        """``(pending, running)``, as of the last change: read without waiting for the lock, so the event
        loop's status messages never wait for a thread that is writing the queue."""
        return self._counts

    def _count_states(self) -> None:
        with self._lock:
            if self._closed:
                return
            rows = dict(self._db.execute("SELECT state, COUNT(*) FROM queue GROUP BY state").fetchall())
            self._counts = (rows.get(PromptState.PENDING, 0), rows.get(PromptState.RUNNING, 0))

    def remaining(self) -> int:
        """ComfyUI's ``queue_remaining``: pending plus running."""
        pending, running = self.counts()
        return pending + running

    # -- history -----------------------------------------------------------------------------

    def _trim_history(self) -> None:
        with self._lock:
            if self.max_history_age_s is not None:
                self._db.execute("DELETE FROM history WHERE finished_at < ?",
                                 (time.time() - self.max_history_age_s,))
            if self.max_history_items is not None:
                self._db.execute(
                    "DELETE FROM history WHERE seq <= (SELECT seq FROM history ORDER BY seq DESC "
                    "LIMIT 1 OFFSET ?)", (max(self.max_history_items, 0),))

    def history_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, dict[str, Any]]:
        """ComfyUI's paging: no offset and ``max_items=N`` gives the last N; ``offset=k`` skips the first k."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            if offset < 0 and max_items is not None:
                offset = total - max_items
            offset = max(offset, 0)
            limit = -1 if max_items is None else max(max_items, 0)
            rows = self._db.execute(f"SELECT {_HISTORY_COLUMNS} FROM history ORDER BY seq LIMIT ? OFFSET ?",
                                    (limit, offset)).fetchall()
        return {row[0]: _history_entry(row) for row in rows}

    def history_item(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_HISTORY_COLUMNS} FROM history WHERE prompt_id=?",
                                   (prompt_id,)).fetchone()
        return _history_entry(row) if row else None

    def history_prompt(self, prompt_id: str) -> QueueItem | None:
        """The stored prompt of a finished item (used to re-queue it)."""
        with self._lock:
            row = self._db.execute("SELECT prompt_id, number, prompt, extra_data, outputs_to_execute, queued_at "
                                   "FROM history WHERE prompt_id=?", (prompt_id,)).fetchone()
        if row is None:
            return None
        return QueueItem(number=row[1], prompt_id=row[0], prompt=_loads(row[2]),
                         extra_data=_loads(row[3]), outputs=_loads(row[4]), queued_at=row[5])

    def delete_history(self, prompt_ids: Iterable[str]) -> int:
        with self._lock:
            return sum(self._db.execute("DELETE FROM history WHERE prompt_id=?", (str(p),)).rowcount
                       for p in prompt_ids)

    def clear_history(self) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM history").rowcount


_HISTORY_COLUMNS = ("prompt_id, number, prompt, extra_data, outputs_to_execute, state, outputs, messages, error, "
                    "queued_at, started_at, finished_at, worker")


def _history_entry(row: tuple) -> dict[str, Any]:
    """ComfyUI's history entry shape, plus Loom's ``status.state``, ``status.error``, ``status.worker`` (which
    worker ran it: ``thread`` or ``process:<pid>``; absent for prompts that never ran) and ``timing``."""
    (prompt_id, number, prompt, extra_data, outputs_to_execute, state, outputs, messages, error,
     queued_at, started_at, finished_at, worker) = row
    status: dict[str, Any] = {
        "status_str": "success" if state == PromptState.SUCCESS else "error",
        "completed": state == PromptState.SUCCESS,
        "messages": _loads(messages),
        "state": state,
    }
    if error:
        status["error"] = _loads(error)
    if worker:
        status["worker"] = worker
    output_map = _loads(outputs)
    return {
        "prompt": [_plain_number(number), prompt_id, _loads(prompt), _loads(extra_data),
                   _loads(outputs_to_execute)],
        "outputs": output_map,
        "status": status,
        "meta": {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                           "real_node_id": node_id} for node_id in output_map},
        "timing": {"queued_at": queued_at, "started_at": started_at, "finished_at": finished_at},
    }
