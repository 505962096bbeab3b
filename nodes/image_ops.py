"""IMAGE/MASK <-> Pillow conversions, ComfyUI's image filters and batching, for the image nodes.

Tensors are ComfyUI's: ``IMAGE`` is ``[B, H, W, C]`` float in 0..1 (channels last), ``MASK`` is
``[B, H, W]``. Resizing is :mod:`loom.nodes.runtime.resample`'s (the model runtime resizes with it too).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from loom.nodes.runtime.resample import common_upscale


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------

def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One ``[H, W, C]`` image in 0..1 as an 8-bit Pillow image (truncating, as ComfyUI saves)."""
    pixels = 255.0 * image.detach().cpu().float().numpy()
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A Pillow image as a ``[1, H, W, 3]`` float ``IMAGE``."""
    array = np.array(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array)[None,]


# --------------------------------------------------------------------------------------------
# Filters and batching (ComfyUI's post-processing maths, on channels-last IMAGE tensors)
# --------------------------------------------------------------------------------------------

BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give ``source`` the channel count of ``destination``: extra channels dropped, a missing alpha
    added as 1.0 (opaque)."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = torch.nn.functional.pad(source, (0, 1))
        source[..., -1] = 1.0
    return destination, source


def blend(image1: torch.Tensor, image2: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend of two same-shaped images in one of :data:`BLEND_MODES` (before mixing by factor)."""
    if mode == "normal":
        return image2
    if mode == "multiply":
        return image1 * image2
    if mode == "screen":
        return 1 - (1 - image1) * (1 - image2)
    if mode == "overlay":
        return torch.where(image1 <= 0.5, 2 * image1 * image2, 1 - 2 * (1 - image1) * (1 - image2))
    if mode == "soft_light":
        g = torch.where(image1 <= 0.25, ((16 * image1 - 12) * image1 + 4) * image1, torch.sqrt(image1))
        return torch.where(image2 <= 0.5, image1 - (1 - 2 * image2) * image1 * (1 - image1),
                           image1 + (2 * image2 - 1) * (g - image1))
    if mode == "difference":
        return image1 - image2
    raise ValueError(f"unsupported blend mode {mode!r}; expected one of {', '.join(BLEND_MODES)}")


def gaussian_kernel(kernel_size: int, sigma: float, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ComfyUI's normalised 2-D gaussian: positions spread over -1..1 across the kernel (not pixels)."""
    axis = torch.linspace(-1, 1, kernel_size, device=device)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    d = torch.sqrt(x * x + y * y)
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype)


def _depthwise(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Convolve each channel of ``[B, H, W, C]`` with ``kernel`` after reflect-padding by ``radius``,
    the way ComfyUI does (a further zero padding inside the convolution, cropped off again)."""
    channels = image.shape[-1]
    size = kernel.shape[-1]
    weights = kernel.repeat(channels, 1, 1).unsqueeze(1)
    planar = image.permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(planar, (radius, radius, radius, radius), "reflect")
    out = torch.nn.functional.conv2d(padded, weights, padding=size // 2, groups=channels)
    return out[:, :, radius:-radius, radius:-radius].permute(0, 2, 3, 1)


def gaussian_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """``ImageBlur``: a ``(2r+1)²`` gaussian over a reflect-padded image."""
    if radius == 0:
        return image
    return _depthwise(image, gaussian_kernel(radius * 2 + 1, sigma, image.device, image.dtype), radius)


def sharpen(image: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """``ImageSharpen``: a negated gaussian scaled by ``alpha * 10`` whose centre makes the kernel sum
    to one, over a reflect-padded image, clamped to 0..1."""
    if radius == 0:
        return image
    size = radius * 2 + 1
    kernel = gaussian_kernel(size, sigma, image.device, image.dtype) * -(alpha * 10)
    center = size // 2
    kernel[center, center] = kernel[center, center] - kernel.sum() + 1.0
    return torch.clamp(_depthwise(image, kernel, radius), 0, 1)


def batch_images(images: list[torch.Tensor]) -> torch.Tensor | None:
    """One batch of several images: channels padded to the most (a 1.0 alpha), every image resized to
    the first's size (bilinear, centre crop), concatenated."""
    if not images:
        return None
    most = max(image.shape[-1] for image in images)
    padded = [torch.nn.functional.pad(image, (0, 1), mode="constant", value=1.0)
              if image.shape[-1] < most else image for image in images]
    first = padded[0].shape
    resized = [image if image.shape[1:] == first[1:]
               else common_upscale(image.movedim(-1, 1), first[2], first[1], "bilinear", "center").movedim(1, -1)
               for image in padded]
    return torch.cat(resized, dim=0)
