"""The resource budget a server applies to prompts before queueing them (``loom serve --max-...``).

A prompt can be valid for its node schemas and still ask for far more than the machine has:
EmptyLatentImage at 16384x16384 with a batch of 4096 is about 275 GB of latents. Such a prompt is refused
at validation, with an error on the node and input that asks for too much, instead of being accepted into
the durable queue and failing (or taking the machine down) later.

The rule reads the literal inputs ComfyUI's nodes share by name: ``width`` x ``height`` times every
``batch_size`` / ``length`` (video frames) is the number of pixels a node makes; ``steps`` is a sampler's
step count. Values that arrive through links are not known before the prompt runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SIZE_INPUTS = ("width", "height")
MULTIPLIER_INPUTS = ("batch_size", "length")
STEP_INPUTS = ("steps",)
IMAGE_BYTES_PER_PIXEL = 3 * 4  # a decoded RGB image in float32: the smallest thing such a node leads to


@dataclass(frozen=True)
class ResourceBudget:
    """Limits per node; 0 turns a limit off."""

    max_pixels: int = 8192 * 8192  # width x height x batch (x frames) one node may ask for
    max_batch: int = 4096
    max_steps: int = 10_000
    memory_fraction: float = 0.5  # the pixels' float32 image must fit in this share of free memory

    def problems(self, values: dict[str, Any], available_memory: int | None) -> list[tuple[str, str, str]]:
        """``(input_name, message, details)`` for each limit the literal ``values`` of one node break."""
        found: list[tuple[str, str, str]] = []
        for name in STEP_INPUTS:
            steps = _int(values.get(name))
            if self.max_steps and steps is not None and steps > self.max_steps:
                found.append((name, "Too many steps", f"{steps} steps; this server allows at most {self.max_steps} "
                                                      "(loom serve --max-steps)"))
        multipliers = {name: _int(values.get(name)) for name in MULTIPLIER_INPUTS}
        for name, count in multipliers.items():
            if self.max_batch and name == "batch_size" and count is not None and count > self.max_batch:
                found.append((name, "Batch too large", f"a batch of {count}; this server allows at most "
                                                       f"{self.max_batch} (loom serve --max-batch)"))
        width, height = (_int(values.get(name)) for name in SIZE_INPUTS)
        if width is None or height is None:
            return found
        pixels = width * height * math.prod(count for count in multipliers.values() if count is not None and count > 0)
        shape = f"{width}x{height}" + "".join(f" x {count} ({name})" for name, count in multipliers.items()
                                             if count is not None and count > 1)
        blamed = next((name for name, count in multipliers.items() if count is not None and count > 1), "width")
        if self.max_pixels and pixels > self.max_pixels:
            found.append((blamed, "Image too large for this server",
                          f"{shape} is {pixels:,} pixels; the limit is {self.max_pixels:,} (loom serve --max-pixels)"))
        elif available_memory is not None and self.memory_fraction:
            needed = pixels * IMAGE_BYTES_PER_PIXEL
            allowed = int(available_memory * self.memory_fraction)
            if needed > allowed:
                found.append((blamed, "Image too large for the free memory",
                              f"{shape} needs at least {_gib(needed)} as an image; {_gib(allowed)} of the "
                              f"{_gib(available_memory)} free may be used"))
        return found


def available_memory() -> int | None:
    """Bytes of memory free for new allocations now (None when it cannot be read)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
