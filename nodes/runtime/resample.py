"""Pixel and latent resampling as ComfyUI does it: the one resize of the node library and the model runtime.

``common_upscale`` is the resize every image and latent node uses (``ImageScale``, ``LatentUpscale``,
``ImageBatch``, ...) and the runtime resizes ControlNet hints and masks with: an optional centre crop to the
target aspect ratio, then ``nearest-exact``/``bilinear``/``area``/``bicubic`` through
``torch.nn.functional.interpolate``, ``lanczos`` through Pillow on 8-bit pixels, or ``bislerp`` (spherical
interpolation between neighbouring latent vectors, separably along width then height). Keeping these
numerically identical to ComfyUI is what lets a shared hires-fix workflow give the same picture.

Resampling works on channels-first ``[B, C, H, W]`` tensors; :func:`scale_image` takes ComfyUI's
channels-last ``IMAGE`` (``[B, H, W, C]``, float in 0..1).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
"""Methods offered by the image nodes (``ImageScale``, ``ImageScaleBy``)."""

LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
"""Methods offered by the latent nodes (``LatentUpscale``, ``LatentUpscaleBy``)."""

CROP_METHODS = ("disabled", "center")

_INTERPOLATE_MODES = ("nearest-exact", "bilinear", "area", "bicubic", "nearest", "trilinear")


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop ``[..., H, W]`` symmetrically so that its aspect ratio matches ``width / height``."""
    old_width = samples.shape[-1]
    old_height = samples.shape[-2]
    old_aspect = old_width / old_height
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)


def _slerp(low: torch.Tensor, high: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the rows of ``low`` and ``high`` (``[N, C]``), ``ratio`` ``[N, 1]``.

    Directions are slerped and lengths lerped; nearly equal directions keep ``low``, opposite
    directions fall back to a linear blend (ComfyUI's edge cases, kept so results match).
    """
    channels = low.shape[-1]
    low_norms = torch.norm(low, dim=-1, keepdim=True)
    high_norms = torch.norm(high, dim=-1, keepdim=True)
    low_unit = low / low_norms
    high_unit = high / high_norms
    low_unit[low_norms.expand(-1, channels) == 0.0] = 0.0
    high_unit[high_norms.expand(-1, channels) == 0.0] = 0.0

    dot = (low_unit * high_unit).sum(1)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    r = ratio.squeeze(1)
    result = ((torch.sin((1.0 - r) * omega) / sin_omega).unsqueeze(1) * low_unit
              + (torch.sin(r * omega) / sin_omega).unsqueeze(1) * high_unit)
    result *= (low_norms * (1.0 - ratio) + high_norms * ratio).expand(-1, channels)

    same = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    result[same] = low[same]
    result[opposite] = (low * (1.0 - ratio) + high * ratio)[opposite]
    return result


def _bilinear_taps(length_old: int, length_new: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """For each output position: the two source indices bilinear resizing would blend, and the ratio."""
    positions = torch.arange(length_old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1))
    positions = torch.nn.functional.interpolate(positions, size=(1, length_new), mode="bilinear")
    ratios = positions - positions.floor()
    first = positions.to(torch.int64)

    shifted = torch.arange(length_old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1)) + 1
    shifted[:, :, :, -1] -= 1
    second = torch.nn.functional.interpolate(shifted, size=(1, length_new), mode="bilinear").to(torch.int64)
    return ratios, first, second


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` by slerping channel vectors, first along width, then along height."""
    original_dtype = samples.dtype
    samples = samples.float()
    n, c, h, w = samples.shape

    ratios, first, second = _bilinear_taps(w, width, samples.device)
    first = first.expand((n, c, h, -1))
    second = second.expand((n, c, h, -1))
    ratios = ratios.expand((n, 1, h, -1))
    low = samples.gather(-1, first).movedim(1, -1).reshape((-1, c))
    high = samples.gather(-1, second).movedim(1, -1).reshape((-1, c))
    result = _slerp(low, high, ratios.movedim(1, -1).reshape((-1, 1)))
    result = result.reshape(n, h, width, c).movedim(-1, 1)

    ratios, first, second = _bilinear_taps(h, height, samples.device)
    first = first.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    second = second.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    ratios = ratios.reshape((1, 1, -1, 1)).expand((n, 1, -1, width))
    low = result.gather(-2, first).movedim(1, -1).reshape((-1, c))
    high = result.gather(-2, second).movedim(1, -1).reshape((-1, c))
    result = _slerp(low, high, ratios.movedim(1, -1).reshape((-1, 1)))
    result = result.reshape(n, height, width, c).movedim(-1, 1)
    return result.to(original_dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` pixels (C = 1, 3 or 4) with Pillow's Lanczos filter on 8-bit values."""
    if samples.shape[1] == 1:
        channels_last = samples.squeeze(1)
    else:
        channels_last = samples.movedim(1, -1)
    resized = []
    for frame in channels_last:
        pixels = np.clip(255.0 * frame.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((width, height), resample=Image.Resampling.LANCZOS)
        array = np.array(image).astype(np.float32) / 255.0
        tensor = torch.from_numpy(array)
        resized.append(tensor.movedim(-1, 0) if array.ndim == 3 else tensor.unsqueeze(0))
    return torch.stack(resized).to(samples.device, samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str,
                   crop: str = "disabled") -> torch.Tensor:
    """Resize channels-first ``samples`` (``[N, C, H, W]``, or ``[N, C, T, H, W]`` frame by frame)."""
    if upscale_method not in UPSCALE_METHODS + LATENT_UPSCALE_METHODS + _INTERPOLATE_MODES:
        raise ValueError(f"unknown upscale method {upscale_method!r}")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop method {crop!r}; expected one of {', '.join(CROP_METHODS)}")
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    original_shape = tuple(samples.shape)
    if len(original_shape) > 4:
        samples = samples.reshape(original_shape[0], original_shape[1], -1, original_shape[-2],
                                  original_shape[-1])
        samples = samples.movedim(2, 1).reshape(-1, original_shape[1], original_shape[-2], original_shape[-1])

    source = center_crop_to_aspect(samples, width, height) if crop == "center" else samples

    if upscale_method == "bislerp":
        out = bislerp(source, width, height)
    elif upscale_method == "lanczos":
        out = lanczos(source, width, height)
    else:
        out = torch.nn.functional.interpolate(source, size=(height, width), mode=upscale_method)

    if len(original_shape) == 4:
        return out
    out = out.reshape((original_shape[0], -1, original_shape[1]) + (height, width))
    return out.movedim(2, 1).reshape(original_shape[:-2] + (height, width))


def scale_image(image: torch.Tensor, width: int, height: int, upscale_method: str,
                crop: str = "disabled") -> torch.Tensor:
    """``common_upscale`` for a channels-last ``IMAGE``."""
    return common_upscale(image.movedim(-1, 1), width, height, upscale_method, crop).movedim(1, -1)
