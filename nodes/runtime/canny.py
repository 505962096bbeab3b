"""Canny edge detection in plain torch, with the steps and constants ComfyUI's ``Canny`` node uses (kornia's):

1. RGB → gray (0.299, 0.587, 0.114);
2. a 5×5 Gaussian blur, sigma 1, separable, reflected borders;
3. unnormalised Sobel gradients with replicated borders; magnitude ``sqrt(gx² + gy² + 1e-6)``;
4. non-maximum suppression along the gradient direction rounded to 45°, with OpenCV's tie rule: a pixel
   must be strictly above its left and upper neighbours but only at least equal to its right and lower
   ones, and strictly above both neighbours along a diagonal. Released kornia is strict on every side, so
   of the two pixels that tie across a sharp step it drops both, and whether they tie at all depends on how
   the CPU's convolution kernels round (on some CPUs a white square on black has no edges). Here exactly
   one of the pair, the left or upper one, is kept, and differences within a few float steps
   (:func:`tie_tolerance`) count as ties, so rounding cannot decide which;
5. double threshold (weak > low, strong > high) and hysteresis: weak pixels touching strong ones become
   strong, repeated until nothing changes; what is left weak is dropped.

Images are ``[B, C, H, W]`` in 0..1; the result is ``[B, 1, H, W]`` with 1 on edges and 0 elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# neighbour offsets (dy, dx) for the gradient directions 0°, 45°, ..., 315° (y pointing down)
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
# whether a pixel must be strictly above that neighbour to be a maximum: not for the right (0) and lower (2)
# neighbours, where a tie keeps the pixel; always along the diagonals
_STRICT = (False, True, False, True, True, True, True, True)
# magnitude differences up to this many float steps (machine epsilons of the image's scale) are ties
_TIE_STEPS = 64


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    kernel = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    kernel = _gaussian_kernel(size, sigma, image.dtype, image.device)
    channels = image.shape[1]
    pad = size // 2
    out = F.pad(image, (pad, pad, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, size).repeat(channels, 1, 1, 1), groups=channels)
    out = F.pad(out, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, size, 1).repeat(channels, 1, 1, 1), groups=channels)


def sobel(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gx, gy)`` of a one-channel image: right minus left and bottom minus top, weights 1-2-1."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=image.dtype,
                      device=image.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels)
    return gradients[:, 0:1], gradients[:, 1:2]


def _neighbour_kernels(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Eight 3×3 kernels, each 1 at one neighbour (for hysteresis)."""
    kernels = torch.zeros(len(_DIRECTIONS), 1, 3, 3, dtype=dtype, device=device)
    for index, (dy, dx) in enumerate(_DIRECTIONS):
        kernels[index, 0, 1 + dy, 1 + dx] = 1.0
    return kernels


def tie_tolerance(image: torch.Tensor) -> float:
    """The largest magnitude difference that :func:`non_maximum_suppression` treats as a tie for ``image``.

    ``_TIE_STEPS`` machine epsilons of the image's scale (its largest absolute value, at least 1): far above the
    rounding of the blur and Sobel sums (a few epsilons), far below any difference an 8-bit picture makes.
    """
    scale = max(1.0, float(image.detach().abs().max())) if image.numel() else 1.0
    return _TIE_STEPS * torch.finfo(image.dtype).eps * scale


def non_maximum_suppression(magnitude: torch.Tensor, direction: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Where ``magnitude`` (``[B, 1, H, W]``) is a maximum along its gradient, as a bool map of the same shape.

    ``direction`` holds the gradient direction in steps of 45° (any integer; taken modulo 8, 0 pointing right,
    2 down). A pixel is compared with its neighbour along the gradient and the one opposite; outside the image
    the magnitude is 0 (as in kornia). It must be above a neighbour by more than ``tolerance``, except its right
    and lower neighbours, which it may trail by up to ``tolerance`` (a tie keeps the left or upper pixel).
    """
    height, width = magnitude.shape[-2:]
    padded = F.pad(magnitude, (1, 1, 1, 1))
    differences = torch.cat([magnitude - padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                             for dy, dx in _DIRECTIONS], dim=1)
    strict = torch.tensor(_STRICT, device=magnitude.device)
    is_max = torch.ones_like(magnitude, dtype=torch.bool)
    for index in (direction.long() % 8, (direction.long() + 4) % 8):
        difference = differences.gather(1, index)
        is_max &= torch.where(strict[index], difference > tolerance, difference >= -tolerance)
    return is_max


def canny(image: torch.Tensor, low_threshold: float, high_threshold: float) -> torch.Tensor:
    """Edges of ``image`` (``[B, C, H, W]``, C = 1 or 3) as a ``[B, 1, H, W]`` map of 0/1."""
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
    dtype, device = image.dtype, image.device
    if image.shape[1] == 3:
        r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
        image = 0.299 * r + 0.587 * g + 0.114 * b
    elif image.shape[1] != 1:
        raise ValueError(f"canny needs a gray or RGB image, got {image.shape[1]} channels")

    gx, gy = sobel(gaussian_blur(image))
    magnitude = torch.sqrt(gx * gx + gy * gy + 1e-6)
    direction = torch.round(torch.rad2deg(torch.atan2(gy, gx)) / 45)
    magnitude = magnitude * non_maximum_suppression(magnitude, direction, tie_tolerance(image))

    edges = ((magnitude > low_threshold) * 0.5 + (magnitude > high_threshold) * 0.5).to(dtype)
    neighbours = _neighbour_kernels(dtype, device)
    while True:
        weak = (edges == 0.5).to(dtype)
        strong = (edges == 1).to(dtype)
        touches_strong = (F.conv2d(edges, neighbours, padding=1) == 1).any(dim=1, keepdim=True).to(dtype)
        grown = touches_strong * weak + strong
        updated = grown + (grown == 0) * weak * 0.5
        if torch.equal(updated, edges):
            return grown
        edges = updated
