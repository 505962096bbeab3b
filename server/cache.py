"""The output cache: node outputs by cache key, bounded in entries and bytes, least recently used first out.

A cache key is a hash of the node's type, its literal inputs, the keys of its upstream nodes (with the
slot used) and its fingerprint, so the same sub-chain anywhere hits the same entry and a changed widget
invalidates exactly its downstream closure. Entries a running prompt uses are protected from eviction.

A fingerprint of :data:`~loom.nodes.kernel.schema.ALWAYS_RERUN` (or a NaN anywhere in the key material:
ComfyUI's ``IS_CHANGED`` convention, ``float("nan")``, which a custom node's ``fingerprint`` may return) gives
a key never seen before, so the node runs on every prompt.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from loom.nodes.kernel.schema import ALWAYS_RERUN


@dataclass
class CacheEntry:
    outputs: tuple[list[Any], ...]  # one list per output slot (one value per call of the node)
    ui: dict[str, Any] | None
    nbytes: int


def default_max_bytes() -> int:
    """Half of the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class OutputCache:
    def __init__(self, max_entries: int = 4096, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, outputs: tuple[list[Any], ...], ui: dict[str, Any] | None,
            protected: set[str] | frozenset[str] = frozenset()) -> None:
        """Store an entry, then evict least recently used ones (never ``key`` or ``protected``)."""
        entry = CacheEntry(outputs, ui, estimate_bytes(outputs))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            if len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._evict(key, protected)

    def _evict(self, key: str, protected: set[str] | frozenset[str]) -> None:
        # A running prompt reads its cached entries first and stores new ones after, so its protected
        # entries sit at the recent end: stop at the first one instead of scanning past them each time.
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            candidate = next(iter(self._entries))
            if candidate == key or candidate in protected:
                return
            self._bytes -= self._entries.pop(candidate).nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "max_entries": self.max_entries,
                "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses}


def estimate_bytes(value: Any, _seen: set[int] | None = None) -> int:
    """Memory held by a value: tensors and arrays by their buffers, modules by parameters, the rest small."""
    seen = _seen if _seen is not None else set()
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if value is None or isinstance(value, (bool, int, float)):
        return 16
    if isinstance(value, (str, bytes)):
        return len(value) + 48
    counter = getattr(value, "loom_nbytes", None)
    if callable(counter):
        return int(counter())
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # torch.Tensor
        return int(value.element_size() * value.nelement())
    if hasattr(value, "nbytes") and isinstance(getattr(value, "nbytes"), int):  # numpy
        return int(value.nbytes)
    if hasattr(value, "parameters") and hasattr(value, "buffers"):  # torch.nn.Module
        return sum(estimate_bytes(t, seen) for t in list(value.parameters()) + list(value.buffers()))
    if isinstance(value, dict):
        return 64 + sum(estimate_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 64 + sum(estimate_bytes(v, seen) for v in value)
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):
        return 64 + sum(estimate_bytes(v, seen) for v in fields.values())
    return 64


def cache_key(class_type: str, literals: dict[str, Any], links: dict[str, tuple[str, int]],
              fingerprint: Any = None, node_id: str | None = None, variant: str | None = None) -> str:
    """The key of a node: type, literal inputs, ``(upstream key, slot)`` per linked input, fingerprint, and
    the variant of the runtime that computes it (``"fast"``; None: the exact one)."""
    material = [class_type, sorted((k, _canonical(v)) for k, v in literals.items()),
                sorted((k, list(v)) for k, v in links.items()), _canonical(fingerprint), node_id]
    if variant is not None:
        material.append(variant)
    blob = json.dumps(material, separators=(",", ":"), default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if value is ALWAYS_RERUN or (isinstance(value, float) and value != value):  # never equal, never cached
        return os.urandom(16).hex()
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return repr(value)
    return repr(value)
