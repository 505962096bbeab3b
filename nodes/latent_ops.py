"""ComfyUI's latent arithmetic and batch nodes (its ``nodes_latent``): add, subtract, multiply,
interpolate, concatenate, cut, cut-to-batch, batch and the batch seed behaviour.

Binary operations bring ``samples2`` to ``samples1``'s shape first as ComfyUI does: a different
size is resized bilinearly with a centre crop, and the batch is repeated or cut to ``samples1``'s.
The result keeps ``samples1``'s other keys (noise mask, batch indices). Dimensions are counted from
the end, so the same nodes work on image ``[B, C, H, W]`` and video ``[B, C, T, H, W]`` latents.
"""
from __future__ import annotations

import math

import torch

from loom.nodes.runtime.resample import common_upscale
from loom.nodes.kernel.schema import MAX_RESOLUTION, Combo, Float, Int, Node, Output, Schema, Socket, register

CATEGORY = "model/latent/advanced"


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Cut or repeat ``tensor`` along ``dim`` to ``batch_size`` items (ComfyUI's helper)."""
    size = tensor.shape[dim]
    if size > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if size < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / size)
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


def reshape_latent_to(shape: torch.Size, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """``latent`` resized (bilinear, centre crop) to ``shape``'s trailing size, its batch matched."""
    if latent.shape[1:] != shape[1:]:
        latent = common_upscale(latent, shape[-1], shape[-2], "bilinear", "center")
    return repeat_to_batch_size(latent, shape[0]) if repeat_batch else latent


def _axis(tensor: torch.Tensor, dim: str) -> int:
    """The tensor axis of ``x`` (width), ``y`` (height) or ``t`` (frames), counted from the end."""
    if "x" in dim:
        return tensor.ndim - 1
    if "y" in dim:
        return tensor.ndim - 2
    return tensor.ndim - 3


def _pair() -> list:
    return [Socket("samples1", "LATENT"), Socket("samples2", "LATENT")]


@register
class LatentAdd(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentAdd", category=CATEGORY, inputs=_pair(), outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples1: dict, samples2: dict) -> tuple:
        first = samples1["samples"]
        second = reshape_latent_to(first.shape, samples2["samples"])
        return (samples1 | {"samples": first + second},)


@register
class LatentSubtract(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentSubtract", category=CATEGORY, inputs=_pair(),
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples1: dict, samples2: dict) -> tuple:
        first = samples1["samples"]
        second = reshape_latent_to(first.shape, samples2["samples"])
        return (samples1 | {"samples": first - second},)


@register
class LatentMultiply(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentMultiply", category=CATEGORY,
                      inputs=[Socket("samples", "LATENT"),
                              Float("multiplier", default=1.0, min=-10.0, max=10.0, step=0.01)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, multiplier: float) -> tuple:
        return (samples | {"samples": samples["samples"] * multiplier},)


@register
class LatentInterpolate(Node):
    """Interpolate directions and magnitudes separately: each latent pixel's channel vector is
    normalised, the unit vectors are mixed and renormalised, then scaled by the mixed norms."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentInterpolate", category=CATEGORY,
                      inputs=_pair() + [Float("ratio", default=1.0, min=0.0, max=1.0, step=0.01)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples1: dict, samples2: dict, ratio: float) -> tuple:
        first = samples1["samples"]
        second = reshape_latent_to(first.shape, samples2["samples"])
        norm1 = torch.linalg.vector_norm(first, dim=1, keepdim=True)
        norm2 = torch.linalg.vector_norm(second, dim=1, keepdim=True)
        mixed = torch.nan_to_num(first / norm1) * ratio + torch.nan_to_num(second / norm2) * (1.0 - ratio)
        direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1, keepdim=True))
        return (samples1 | {"samples": direction * (norm1 * ratio + norm2 * (1.0 - ratio))},)


@register
class LatentConcat(Node):
    DIMS = ("x", "-x", "y", "-y", "t", "-t")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentConcat", category=CATEGORY,
                      inputs=_pair() + [Combo("dim", options_source=cls.DIMS)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples1: dict, samples2: dict, dim: str) -> tuple:
        first = samples1["samples"]
        second = repeat_to_batch_size(samples2["samples"], first.shape[0])
        parts = (second, first) if dim.startswith("-") else (first, second)
        axis = {"x": -1, "y": -2, "t": -3}[dim.lstrip("-")]
        try:
            joined = torch.cat(parts, dim=axis)
        except RuntimeError as error:
            raise ValueError(f"LatentConcat: cannot join {tuple(first.shape)} and {tuple(second.shape)} "
                             f"along {dim!r}: {error}") from None
        return (samples1 | {"samples": joined},)


@register
class LatentCut(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentCut", category=CATEGORY,
                      inputs=[Socket("samples", "LATENT"), Combo("dim", options_source=("x", "y", "t")),
                              Int("index", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                              Int("amount", default=1, min=1, max=MAX_RESOLUTION, step=1)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, dim: str, index: int, amount: int) -> tuple:
        tensor = samples["samples"]
        axis = _axis(tensor, dim)
        size = tensor.shape[axis]
        if index >= 0:
            index = min(index, size - 1)
            amount = min(size - index, amount)
        else:  # counts from the end
            index = max(index, -size)
            amount = min(-index, amount)
        return (samples | {"samples": torch.narrow(tensor, axis, index, amount)},)


@register
class LatentCutToBatch(Node):
    """Cut ``dim`` into ``slice_size`` pieces and stack them on the batch (a remainder is dropped)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentCutToBatch", category=CATEGORY,
                      inputs=[Socket("samples", "LATENT"), Combo("dim", options_source=("t", "x", "y")),
                              Int("slice_size", default=1, min=1, max=MAX_RESOLUTION, step=1)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, dim: str, slice_size: int) -> tuple:
        tensor = samples["samples"]
        axis = _axis(tensor, dim)
        if axis < 2:  # a 't' cut of an image latent: nothing to cut
            return (samples,)
        moved = tensor.movedim(axis, 1)
        if moved.shape[1] < slice_size:
            slice_size = moved.shape[1]
        elif moved.shape[1] % slice_size:
            moved = moved[:, :(moved.shape[1] // slice_size) * slice_size]
        pieces = moved.reshape([-1, slice_size] + list(moved.shape[2:])).movedim(1, axis)
        return (samples | {"samples": pieces},)


@register
class LatentBatch(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentBatch", display_name="Batch Latents (DEPRECATED)", category="model/latent/batch",
                      deprecated=True, inputs=_pair(), outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples1: dict, samples2: dict) -> tuple:
        first = samples1["samples"]
        second = reshape_latent_to(first.shape, samples2["samples"], repeat_batch=False)
        indices = (list(samples1.get("batch_index", range(first.shape[0])))
                   + list(samples2.get("batch_index", range(second.shape[0]))))
        return (samples1 | {"samples": torch.cat((first, second), dim=0), "batch_index": indices},)


@register
class LatentBatchSeedBehavior(Node):
    """``fixed``: every item gets the first item's batch index (so the same noise); ``random``: the
    batch indices are dropped (each item its own noise)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentBatchSeedBehavior", category=CATEGORY,
                      inputs=[Socket("samples", "LATENT"),
                              Combo("seed_behavior", options_source=("random", "fixed"), default="fixed")],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, seed_behavior: str) -> tuple:
        tensor = samples["samples"]
        out = samples.copy()
        if seed_behavior == "random":
            out.pop("batch_index", None)
        elif seed_behavior == "fixed":
            out["batch_index"] = [out.get("batch_index", [0])[0]] * tensor.shape[0]
        return (out,)
