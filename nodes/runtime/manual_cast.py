"""Weights stored in one dtype, computed in another (ComfyUI's ``manual_cast`` operations).

A T5-XXL stored in float16 is 9.5 GB; converted to float32 for a CPU it would be 19 GB. ComfyUI keeps
such weights in their storage dtype (float16, bfloat16, or fp8 for UNETLoader's ``weight_dtype``) and casts
each layer's weights to the compute dtype at the moment the layer runs. :func:`compute_in` does the same to
a torch module: every submodule that holds parameters of another dtype gets a subclass of its own class
whose ``forward`` sees its parameters cast to the compute dtype (state-dict keys, ``isinstance`` checks and
the stored tensors are unchanged). Casting float16/bfloat16 to float32 is exact, so the results equal those of
a float32 copy of the same weights.
"""
from __future__ import annotations

from typing import Any

import torch

_CAST_CLASSES: dict[type, type] = {}


class _CastParameters:
    """Mixed into a module's class: ``forward`` runs with the module's own parameters in the compute dtype."""

    loom_compute_dtype: torch.dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        params = self._parameters  # type: ignore[attr-defined]
        compute = self.loom_compute_dtype
        stored = {name: p for name, p in params.items() if p is not None and p.dtype != compute}
        for name, p in stored.items():
            params[name] = p.to(compute)
        try:
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        finally:
            params.update(stored)


def _cast_class(cls: type) -> type:
    if issubclass(cls, _CastParameters):
        return cls
    if cls not in _CAST_CLASSES:
        _CAST_CLASSES[cls] = type(f"Cast{cls.__name__}", (_CastParameters, cls), {"__module__": cls.__module__})
    return _CAST_CLASSES[cls]


def compute_in(module: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Make ``module`` compute in ``compute_dtype`` whatever its parameters' storage dtype; returns it.

    Only submodules with parameters in another dtype change; a module already stored in
    ``compute_dtype`` is left exactly as it was.
    """
    for sub in module.modules():
        own = [p for p in sub._parameters.values() if p is not None]
        if any(p.is_floating_point() and p.dtype != compute_dtype for p in own):
            sub.__class__ = _cast_class(type(sub))
            sub.loom_compute_dtype = compute_dtype  # type: ignore[attr-defined]
    return module


def storage_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype most of ``module``'s parameters are stored in (by element count)."""
    counts: dict[torch.dtype, int] = {}
    for p in module.parameters():
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


class _ScaledLinear(torch.nn.Linear):
    """ComfyUI's ``scaled_fp8_op.Linear``: an fp8 weight times a per-tensor ``scale_weight``, in the compute
    dtype; the scale goes on whichever of weight and input is smaller, as ComfyUI does."""

    loom_compute_dtype: torch.dtype

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        compute = self.loom_compute_dtype
        weight = self.weight.to(compute)
        bias = self.bias.to(compute) if self.bias is not None else None
        scale = self.loom_scale_weight.to(device=weight.device, dtype=compute)
        if weight.numel() < input.numel():
            return torch.nn.functional.linear(input, weight * scale, bias)
        return torch.nn.functional.linear(input * scale, weight, bias)


def scaled_linears(module: torch.nn.Module, scales: dict[str, torch.Tensor], compute_dtype: torch.dtype) -> None:
    """Give the ``torch.nn.Linear`` submodules named in ``scales`` (module path → scalar ``scale_weight``)
    ComfyUI's scaled-fp8 forward; a path that is not a plain Linear is an error."""
    for path, scale in scales.items():
        sub = module.get_submodule(path)
        if not isinstance(sub, torch.nn.Linear):
            raise TypeError(f"{path} has a scale_weight but is a {type(sub).__name__}, not a Linear layer")
        sub.__class__ = _ScaledLinear
        sub.loom_compute_dtype = compute_dtype  # type: ignore[attr-defined]
        sub.register_buffer("loom_scale_weight", scale.detach().float().reshape(()), persistent=False)
