"""Model-affinity routing: which pending prompt a free lane takes when several lanes share one queue.

A *lane* is one worker thread with its own executor (a thread, a worker process, a Ray actor: anything
with the executor interface); each lane reports the model files its executor holds loaded. A prompt's
*required models* are the model files its loader inputs name (``checkpoints/x.safetensors``,
``loras/y.safetensors``, ...), recorded by validation and stored with the prompt. Loading a model costs
tens of seconds; running a prompt on a model already loaded costs none of that, so a free lane should
take work it already holds the models for, without letting anything wait for ever.

The policy (:func:`choose`), for a free lane L, over the pending prompts in queue order (ComfyUI's:
lowest ``number`` first, ``front`` prompts ahead, ties in submission order):

1. **Starvation bound.** A prompt that has waited ``k`` dispatches (default 16 per lane) behind newer prompts (each time a lane
   took a prompt queued after it) is taken now, oldest first - unless another idle lane holds its
   models, which takes it at once instead.
2. **Affinity.** Else the oldest prompt whose models L already holds.
3. **The queue head**, unless another idle lane holds the head's models; then the oldest prompt that no
   other idle lane holds (those lanes take theirs). If every pending prompt is held by another idle lane,
   L takes nothing and waits.

A prompt *holds* when every one of its required models of a kind some lane holds is held: a kind (the
folder: ``checkpoints``, ``vae``, ``controlnet``, ...) that no lane holds at all is one the executors do not
keep resident (Loom loads LoRAs per use), so it says nothing about where a prompt should run; while no
lane holds anything every prompt holds, and the policy is first-come first-served.

The function is pure: the queue calls it under its lock (:meth:`server.queue.PromptQueue.get` with
``select=``) through :class:`Router`, which keeps the lanes' state; ``bench/routing.py`` simulates it.
With one lane the server does not route at all: the head runs next, exactly as before lanes existed.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

STARVATION_DISPATCHES_PER_LANE = 16
"""The default starvation bound ``k`` is this many dispatches per lane (see :func:`starvation_bound`)."""


def starvation_bound(lanes: int) -> int:
    """The default ``k`` for ``lanes`` lanes: 16 per lane, so a prompt is passed over for at most about 16 run
    times of a prompt (N lanes dispatch about N prompts per run time). A bound that does not grow with the
    lanes starves affinity: with 64 workers, k = 8 is under two seconds of dispatches and the policy becomes
    first-come first-served (``bench/routing.py --k 8``)."""
    return STARVATION_DISPATCHES_PER_LANE * max(1, lanes)


@dataclass(frozen=True)
class Pending:
    """A pending prompt as the policy sees it."""

    prompt_id: str
    models: frozenset[str] = frozenset()  # required models, "folder/name"
    waited: int = 0  # dispatches that took a prompt queued after this one


@dataclass(frozen=True)
class Lane:
    """A lane as the policy sees it."""

    name: str
    models: frozenset[str] = frozenset()  # the model files its executor holds loaded, "folder/name"
    idle: bool = True


def model_kind(model: str) -> str:
    """The folder of a ``folder/name`` model key."""
    return model.split("/", 1)[0]


def _holds(models: frozenset[str], prompt: Pending, kinds: frozenset[str]) -> bool:
    return all(m in models for m in prompt.models if model_kind(m) in kinds)


def choose(pending: Sequence[Pending], lanes: Sequence[Lane], lane: int, k: int | None = None) -> int | None:
    """The index in ``pending`` (queue order) of the prompt ``lanes[lane]`` takes now, or None to wait.
    ``k`` is the starvation bound (default :func:`starvation_bound` of the number of lanes)."""
    if not pending:
        return None
    if k is None:
        k = starvation_bound(len(lanes))
    me = lanes[lane]
    kinds = frozenset(model_kind(m) for each in lanes for m in each.models)
    others = [other for i, other in enumerate(lanes) if i != lane and other.idle and other.models]

    def held_elsewhere(prompt: Pending) -> bool:
        return any(_holds(other.models, prompt, kinds) for other in others) and not _holds(me.models, prompt, kinds)

    for index, prompt in enumerate(pending):  # 1. the starvation bound
        if prompt.waited >= k and not held_elsewhere(prompt):
            return index
    for index, prompt in enumerate(pending):  # 2. affinity
        if _holds(me.models, prompt, kinds):
            return index
    for index, prompt in enumerate(pending):  # 3. the head, or the oldest no other idle lane holds
        if not held_elsewhere(prompt):
            return index
    return None


@dataclass
class _LaneState:
    name: str
    models: frozenset[str] = frozenset()
    busy: bool = False
    gone: bool = False


@dataclass
class Router:
    """The lanes' state (held models, idle or busy) and the ``select`` hook each lane passes to the queue."""

    k: int | None = None  # the starvation bound; None: starvation_bound(lanes)
    _lanes: list[_LaneState] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_lane(self, name: str) -> int:
        with self._lock:
            self._lanes.append(_LaneState(name))
            return len(self._lanes) - 1

    def snapshot(self) -> list[Lane]:
        with self._lock:
            return [Lane(s.name, s.models, not s.busy) for s in self._lanes if not s.gone]

    def selector(self, lane: int):
        """``select(pending) -> index | None`` for :meth:`PromptQueue.get`: chooses for ``lane`` and, when
        it takes a prompt, marks the lane busy (under the queue's lock, so no two lanes decide on stale
        state)."""
        def select(pending: Sequence[Pending]) -> int | None:
            with self._lock:
                state = self._lanes[lane]
                live = [s for s in self._lanes if not s.gone or s is state]
                view = [Lane(s.name, s.models, not s.busy) for s in live]
                index = choose(pending, view, live.index(state), self.k)
                if index is not None:
                    state.busy = True
                return index
        return select

    def finished(self, lane: int, models: Iterable[str] | None = None) -> None:
        """``lane`` is idle again, holding ``models`` (None: as before)."""
        with self._lock:
            state = self._lanes[lane]
            state.busy = False
            if models is not None:
                state.models = frozenset(models)

    def set_models(self, lane: int, models: Iterable[str]) -> None:
        with self._lock:
            self._lanes[lane].models = frozenset(models)

    def remove(self, lane: int) -> None:
        """``lane`` stopped: the others no longer leave work to it."""
        with self._lock:
            self._lanes[lane].gone = True
            self._lanes[lane].busy = True
