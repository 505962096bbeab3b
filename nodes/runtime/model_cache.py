"""Loaded models stay resident between prompts, keyed by the file they came from.

The key is the file's real path, modification time and size (a replaced file loads afresh) plus
the options that changed how it was built. Entries are evicted least-recently-used when the cache
would grow past its byte budget, or when the device is short of memory for the next load.
:func:`free` empties the cache (``POST /free`` with ``unload_models``). Importing this module registers
:func:`free` and :func:`loaded_files` as the kernel's model-cache services (the server asks through those).

A model evicted here stays alive while something else (a node output in the executor's cache)
still holds it; eviction only drops the cache's own reference.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

import torch

from loom.nodes.kernel import services

log = logging.getLogger(__name__)

MEMORY_HEADROOM = 1 << 30
"""Bytes kept free on the device beyond a new model's estimated size before it is loaded."""


def file_key(path: str | Path) -> tuple[str, int, int]:
    """``(real path, mtime in ns, size)`` of a model file."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return real, stat.st_mtime_ns, stat.st_size


def tensor_bytes(value: Any) -> int:
    """Bytes held by the parameters and buffers of the modules reachable from ``value`` (deduplicated)."""
    return _module_bytes(_reachable_modules(value))


def _module_bytes(modules: list[torch.nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            ptr = tensor.data_ptr()
            if ptr and ptr not in seen:
                seen.add(ptr)
                total += tensor.numel() * tensor.element_size()
    return total


def _reachable_modules(value: Any) -> list[torch.nn.Module]:
    """The outermost modules reachable from ``value`` through lists, tuples, dicts and dataclasses."""
    found: list[torch.nn.Module] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item)
        elif hasattr(obj, "__dataclass_fields__"):
            for name in obj.__dataclass_fields__:
                visit(getattr(obj, name))

    visit(value)
    return found


@dataclass
class _Entry:
    value: Any
    nbytes: int
    modules: frozenset[int]
    """``id`` of each module reachable from ``value`` (alive as long as the entry holds it)."""


class ModelCache:
    """An LRU of loaded models bounded by bytes: ``budget_bytes``, or when that is None the runtime
    configuration's ``model_cache_bytes`` (``loom --model-cache-bytes``), and by the device's free memory."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.budget_bytes = budget_bytes

    @property
    def budget(self) -> int | None:
        """The byte budget in force now (None: only memory bounds the cache)."""
        if self.budget_bytes is not None:
            return self.budget_bytes
        from loom.nodes.kernel import config
        return config.current().model_cache_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def total_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    def files(self) -> list[str]:
        """The real paths of the model files the cache holds something of (keys carry :func:`file_key`)."""
        found: set[str] = set()
        with self._lock:
            for key in self._entries:
                for part in key if isinstance(key, tuple) else (key,):
                    if isinstance(part, tuple) and len(part) == 3 and isinstance(part[0], str) \
                            and isinstance(part[1], int) and isinstance(part[2], int):
                        found.add(part[0])
        return sorted(found)

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.value

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> None:
        modules = _reachable_modules(value)
        nbytes = _module_bytes(modules) if nbytes is None else nbytes
        with self._lock:
            self._entries[key] = _Entry(value, nbytes, frozenset(map(id, modules)))
            self._entries.move_to_end(key)
            self._evict_over_budget(keep=key)

    def add_companion_bytes(self, module: torch.nn.Module, nbytes: int) -> None:
        """Count ``nbytes`` more against the entries that hold ``module``, for memory that lives as long as
        the module (the fast path's bfloat16 copy of a network), and evict others if that passes the budget."""
        with self._lock:
            holders = [key for key, entry in self._entries.items() if id(module) in entry.modules]
            for key in holders:
                self._entries[key].nbytes += nbytes
                self._entries.move_to_end(key)
            if holders:
                self._evict_over_budget(keep=holders[-1])

    def get_or_load(self, key: Hashable, load: Callable[[], Any], *, expected_bytes: int = 0,
                    device: torch.device | None = None) -> Any:
        """The cached value for ``key``, or ``load()``'s result after making room for ``expected_bytes``."""
        value = self.get(key)
        if value is not None:
            return value
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # two prompts asking for the same file load it once
            value = self.get(key)
            if value is not None:
                return value
            self.make_room(expected_bytes, device)
            value = load()
            self.put(key, value)
        with self._lock:
            self._loading.pop(key, None)
        return value

    def make_room(self, nbytes: int, device: torch.device | None = None) -> None:
        """Evict least-recently-used entries until ``nbytes`` more fit the budget and the device."""
        from loom.nodes.runtime import devices

        with self._lock:
            budget = self.budget
            if budget is not None:
                while self._entries and self.total_bytes + nbytes > budget:
                    self._evict_oldest()
            while self._entries and devices.free_memory(device) < nbytes + MEMORY_HEADROOM:
                self._evict_oldest()

    def evict(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            for key in list(keys):
                self._entries.pop(key, None)
        _collect()

    def free(self) -> int:
        """Drop every entry; returns how many were dropped."""
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
        _collect()
        return count

    def _evict_oldest(self) -> None:
        key, entry = self._entries.popitem(last=False)
        log.info("evicting %s (%.1f MB) from the model cache", key, entry.nbytes / 1e6)
        _collect()

    def _evict_over_budget(self, keep: Hashable) -> None:
        budget = self.budget
        if budget is None:
            return
        while len(self._entries) > 1 and self.total_bytes > budget:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            self._evict_oldest()


def _collect() -> None:
    gc.collect()
    from loom.nodes.runtime import devices
    devices.empty_cache()


models = ModelCache()
"""The process-wide cache of loaded checkpoints, VAEs, LoRAs, ControlNets."""


def free() -> int:
    """Unload every cached model (``POST /free``)."""
    return models.free()


def loaded_files() -> list[str]:
    """The real paths of the model files the process-wide cache holds something of."""
    return models.files()


services.register_model_cache(free=free, loaded_files=loaded_files)
