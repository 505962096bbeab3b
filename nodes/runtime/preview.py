"""Cheap latent → RGB previews for sampler progress: a linear projection of the latent channels.

Each family has a ``[channels][3]`` matrix (and optional bias) fitted to its VAE; the preview is one
pixel per latent pixel, ``((latent @ factors + bias) + 1) / 2`` clamped to 0..1. A family's
:class:`~nodes.runtime.model_types.LatentFormat` may carry its own factors; otherwise the table here is used.
"""
from __future__ import annotations

from typing import Any

import torch

# ComfyUI's published factors (comfy/latent_formats.py), rows = latent channels, columns = R, G, B
SD15_RGB_FACTORS = ((0.3512, 0.2297, 0.3227),
                    (0.3250, 0.4974, 0.2350),
                    (-0.2829, 0.1762, 0.2721),
                    (-0.2120, -0.2616, -0.7177))
SDXL_RGB_FACTORS = ((0.3651, 0.4232, 0.4341),
                    (-0.2533, -0.0042, 0.1068),
                    (0.1076, 0.1111, -0.0362),
                    (-0.3165, -0.2492, -0.2188))
SDXL_RGB_BIAS = (0.1084, -0.0175, -0.0011)

FAMILY_FACTORS: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, float, float] | None]] = {
    "sd1": (SD15_RGB_FACTORS, None),
    "sd2": (SD15_RGB_FACTORS, None),
    "sdxl": (SDXL_RGB_FACTORS, SDXL_RGB_BIAS),
    "sdxl_refiner": (SDXL_RGB_FACTORS, SDXL_RGB_BIAS),
}


def rgb_projection(family: str, latent_format: Any = None, channels: int = 4):
    """``(factors [C, 3], bias [3] | None)`` for a family, or ``None`` if no projection is known."""
    factors = getattr(latent_format, "rgb_factors", None)
    bias = getattr(latent_format, "rgb_bias", None)
    if factors is None:
        factors, bias = FAMILY_FACTORS.get(family, (None, None))
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
