"""Cheap latent → RGB previews for sampler progress: a linear projection of the latent channels.

Each family's :class:`~nodes.runtime.model_types.LatentFormat` carries a ``[channels][3]`` matrix (and an
optional bias) fitted to its VAE (ComfyUI's ``latent_rgb_factors``: SD1.5 and SDXL 4 channels, SD3 16); the
preview is one pixel per latent pixel, ``((latent @ factors + bias) + 1) / 2`` clamped to 0..1. A latent
format without factors falls back to its family's.
"""
from __future__ import annotations

from typing import Any

import torch

from loom.nodes.runtime import families


def rgb_projection(family: str, latent_format: Any = None, channels: int = 4):
    """``(factors [C, 3], bias [3] | None)`` for a family, or ``None`` if no projection is known."""
    factors = getattr(latent_format, "rgb_factors", None)
    bias = getattr(latent_format, "rgb_bias", None)
    if factors is None:
        known = families.FAMILIES.get(family)
        if known is not None:
            factors, bias = known.latent_format.rgb_factors, known.latent_format.rgb_bias
    if factors is None or len(factors) != channels:
        return None
    return (torch.tensor(factors, dtype=torch.float32),
            None if bias is None else torch.tensor(bias, dtype=torch.float32))


def latent_preview(x0: torch.Tensor, family: str, latent_format: Any = None):
    """A small PIL image of the first latent of ``x0`` (``[B, C, H, W]``, in the model's latent space)."""
    from PIL import Image

    projection = rgb_projection(family, latent_format, x0.shape[1])
    if projection is None:
        return None
    factors, bias = projection
    latent = x0[0].detach().float().cpu().movedim(0, -1)
    rgb = latent @ factors
    if bias is not None:
        rgb = rgb + bias
    pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8)
    return Image.fromarray(pixels.numpy(), mode="RGB")
