"""IMAGE ⇄ LATENT through a VAE, in ComfyUI's conventions.

* ``IMAGE`` is float ``[B, H, W, 3]`` in 0..1; the VAE sees ``image * 2 - 1`` channels-first.
* Latents are stored in the VAE's own space (no scale factor; the sampler applies the model's).
* Encoding takes the mean of the latent distribution (no sampling), after centre-cropping the image
  to a multiple of the VAE's downscale factor; decoding clamps ``(x + 1) / 2`` to 0..1.
* Work runs in batches sized to the memory at hand, reporting progress per batch.
"""
from __future__ import annotations

import logging
import math

import torch

from loom.nodes.kernel.progress import ProgressBar, check_interrupted
from loom.nodes.runtime import devices
from loom.nodes.runtime.model_types import VAEModel

logger = logging.getLogger(__name__)


def crop_to_multiple(pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop ``[B, H, W, C]`` pixels to the largest multiple of ``multiple`` (ComfyUI's offsets)."""
    height = (pixels.shape[1] // multiple) * multiple
    width = (pixels.shape[2] // multiple) * multiple
    if height == pixels.shape[1] and width == pixels.shape[2]:
        return pixels
    y = (pixels.shape[1] % multiple) // 2
    x = (pixels.shape[2] % multiple) // 2
    return pixels[:, y:y + height, x:x + width, :]


def _batch_size(vae: VAEModel, pixels_per_item: int) -> int:
    # Memory per item grows with the pixel count: about 2 KB per output pixel in float32 for the
    # SD VAE's largest activations; keep well below what the device has free.
    per_item = pixels_per_item * 2048 * (2 if devices.vae_dtype() == torch.float32 else 1)
    free = devices.free_memory(_device(vae))
    return max(1, min(64, int(free * 0.5) // max(per_item, 1)))


def _device(vae: VAEModel) -> torch.device:
    return next(vae.vae.parameters()).device


def _dtype(vae: VAEModel) -> torch.dtype:
    return next(vae.vae.parameters()).dtype


def decode(vae: VAEModel, samples: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` latents → ``[B, h*f, w*f, 3]`` images in 0..1 on the intermediate device.

    Out of memory, it retries tiled as ComfyUI does (:func:`decode_tiled` with 64-pixel latent tiles
    overlapping by 16), once the failed attempt's tensors are released.
    """
    samples = _flatten_frames(samples)
    try:
        return _decode_whole(vae, samples)
    except torch.OutOfMemoryError:
        pass  # leave the except block first, so the failed attempt's tensors can be freed
    logger.warning("Ran out of memory when regular VAE decoding, retrying with tiled VAE decoding.")
    devices.empty_cache()
    return decode_tiled(vae, samples)


def _decode_whole(vae: VAEModel, samples: torch.Tensor) -> torch.Tensor:
    channels = vae.vae.config.latent_channels
    if samples.shape[1] != channels:
        raise ValueError(f"this VAE decodes {channels}-channel latents; the latent has {samples.shape[1]} channels "
                         "(is it from a different model family?)")
    device, dtype = _device(vae), _dtype(vae)
    step = _batch_size(vae, samples.shape[2] * samples.shape[3] * vae.downscale ** 2)
    progress = ProgressBar(math.ceil(samples.shape[0] / step))
    images = []
    with torch.no_grad():
        for start in range(0, samples.shape[0], step):
            check_interrupted()
            chunk = samples[start:start + step].to(device=device, dtype=dtype)
            decoded = vae.vae.decode(chunk).sample
            images.append(torch.clamp((decoded.float() + 1.0) / 2.0, 0.0, 1.0)
                          .movedim(1, -1).to(devices.intermediate_device()))
            progress.update(1)
    return torch.cat(images)


def encode(vae: VAEModel, pixels: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C]`` images in 0..1 → ``[B, latent_channels, H/f, W/f]`` latents (distribution mean)."""
    if pixels.ndim != 4:
        raise ValueError(f"an IMAGE must be [batch, height, width, channels], got shape {tuple(pixels.shape)}")
    pixels = crop_to_multiple(pixels[..., :3], vae.downscale)
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise ValueError(f"the image is smaller than the VAE's {vae.downscale}-pixel block")
    device, dtype = _device(vae), _dtype(vae)
    step = _batch_size(vae, pixels.shape[1] * pixels.shape[2])
    progress = ProgressBar(math.ceil(pixels.shape[0] / step))
    latents = []
    with torch.no_grad():
        for start in range(0, pixels.shape[0], step):
            check_interrupted()
            chunk = (pixels[start:start + step].movedim(-1, 1).float() * 2.0 - 1.0).to(device=device, dtype=dtype)
            posterior = vae.vae.encode(chunk).latent_dist
            latents.append(posterior.mode().float().to(devices.intermediate_device()))
            progress.update(1)
    return torch.cat(latents)


# --------------------------------------------------------------------------------------------
# Tiled decode and encode (ComfyUI's comfy.utils.tiled_scale blending)
# --------------------------------------------------------------------------------------------

def tiled_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    """How many tiles :func:`tiled_scale` visits for one item (ComfyUI's ``get_tiled_scale_steps``)."""
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / max(1, tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / max(1, tile_x - overlap))
    return rows * cols


def _feather(weights: torch.Tensor, dim: int, feather: int) -> None:
    """Ramp the first and last ``feather`` slices of ``dim`` by (t + 1) / feather, in place."""
    if feather >= weights.shape[dim]:
        return
    for t in range(feather):
        ramp = (t + 1) / feather
        weights.narrow(dim, t, 1).mul_(ramp)
        weights.narrow(dim, weights.shape[dim] - 1 - t, 1).mul_(ramp)


def tiled_scale(samples: torch.Tensor, function, tile_x: int, tile_y: int, overlap: int, scale: float,
                out_channels: int, on_tile=None) -> torch.Tensor:
    """Apply ``function`` to overlapping ``tile_y`` x ``tile_x`` tiles of ``[B, C, H, W]`` and blend.

    ``function`` maps a tile to one ``scale`` times its size with ``out_channels`` channels. Each tile's
    result is weighted by a mask that ramps linearly over ``overlap * scale`` pixels at every edge
    (ComfyUI's feathering, applied at image borders too), and the weighted sum is divided by the
    summed weights. An item that fits in one tile is passed to ``function`` whole.
    """
    tile = (tile_y, tile_x)
    out_size = [round(size * scale) for size in samples.shape[2:]]
    output = torch.empty([samples.shape[0], out_channels] + out_size)
    for b in range(samples.shape[0]):
        item = samples[b:b + 1]
        sizes = item.shape[2:]
        if all(sizes[d] <= tile[d] for d in range(2)):
            output[b:b + 1] = function(item).float().cpu()
            if on_tile:
                on_tile()
            continue
        total = torch.zeros([1, out_channels] + out_size)
        weight = torch.zeros([1, out_channels] + out_size)
        if any(sizes[d] > tile[d] and tile[d] <= overlap for d in range(2)):
            raise ValueError(f"the tile overlap ({overlap}) must be smaller than the tile ({tile_x}x{tile_y})")
        starts = [range(0, sizes[d] - overlap, tile[d] - overlap) if sizes[d] > tile[d] else [0]
                  for d in range(2)]
        for y0 in starts[0]:
            for x0 in starts[1]:
                check_interrupted()
                piece, origin = item, []
                for d, start in enumerate((y0, x0)):
                    start = max(0, min(sizes[d] - overlap, start))
                    piece = piece.narrow(d + 2, start, min(tile[d], sizes[d] - start))
                    origin.append(round(start * scale))
                result = function(piece).float().cpu()
                mask = torch.ones_like(result)
                for d in (2, 3):
                    _feather(mask, d, round(overlap * scale))
                region = total.narrow(2, origin[0], mask.shape[2]).narrow(3, origin[1], mask.shape[3])
                region.add_(result * mask)
                weight.narrow(2, origin[0], mask.shape[2]).narrow(3, origin[1], mask.shape[3]).add_(mask)
                if on_tile:
                    on_tile()
        output[b:b + 1] = total / weight
    return output


def _flatten_frames(samples: torch.Tensor) -> torch.Tensor:
    if samples.ndim == 5:  # video latents [B, C, T, h, w]: frame by frame
        samples = samples.movedim(2, 1).reshape(-1, samples.shape[1], samples.shape[3], samples.shape[4])
    if samples.ndim != 4:
        raise ValueError(f"latent samples must be [batch, channels, height, width], got shape {tuple(samples.shape)}")
    return samples


def decode_tiled(vae: VAEModel, samples: torch.Tensor, tile_x: int = 64, tile_y: int = 64,
                 overlap: int = 16) -> torch.Tensor:
    """Tiled decode (tile and overlap in latent pixels), as ComfyUI's ``VAE.decode_tiled_``.

    Three passes with tiles of ``(x/2, y*2)``, ``(x*2, y/2)`` and ``(x, y)`` are averaged, then mapped
    from -1..1 to 0..1 and clamped; returns ``[B, H, W, 3]`` on the intermediate device.
    """
    samples = _flatten_frames(samples)
    channels = vae.vae.config.latent_channels
    if samples.shape[1] != channels:
        raise ValueError(f"this VAE decodes {channels}-channel latents; the latent has {samples.shape[1]} channels "
                         "(is it from a different model family?)")
    device, dtype = _device(vae), _dtype(vae)
    height, width = samples.shape[2], samples.shape[3]
    passes = ((tile_x // 2, tile_y * 2), (tile_x * 2, tile_y // 2), (tile_x, tile_y))
    progress = ProgressBar(samples.shape[0] * sum(tiled_steps(width, height, x, y, overlap) for x, y in passes))

    def run(piece: torch.Tensor) -> torch.Tensor:
        return vae.vae.decode(piece.to(device=device, dtype=dtype)).sample.float()

    with torch.no_grad():
        total = None
        for x, y in passes:
            part = tiled_scale(samples, run, x, y, overlap, vae.downscale, 3, on_tile=lambda: progress.update(1))
            total = part if total is None else total + part
    images = torch.clamp((total / 3.0 + 1.0) / 2.0, 0.0, 1.0)
    return images.movedim(1, -1).to(devices.intermediate_device())


def encode_tiled(vae: VAEModel, pixels: torch.Tensor, tile_x: int = 512, tile_y: int = 512,
                 overlap: int = 64) -> torch.Tensor:
    """Tiled encode (tile and overlap in image pixels), as ComfyUI's ``VAE.encode_tiled_``.

    The image is centre-cropped to the VAE's block like :func:`encode`; passes with tiles of
    ``(x, y)``, ``(x*2, y/2)`` and ``(x/2, y*2)`` are summed and divided by 3.
    """
    if pixels.ndim != 4:
        raise ValueError(f"an IMAGE must be [batch, height, width, channels], got shape {tuple(pixels.shape)}")
    pixels = crop_to_multiple(pixels[..., :3], vae.downscale)
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise ValueError(f"the image is smaller than the VAE's {vae.downscale}-pixel block")
    device, dtype = _device(vae), _dtype(vae)
    pixels = pixels.movedim(-1, 1)
    height, width = pixels.shape[2], pixels.shape[3]
    passes = ((tile_x, tile_y), (tile_x * 2, tile_y // 2), (tile_x // 2, tile_y * 2))
    progress = ProgressBar(pixels.shape[0] * sum(tiled_steps(width, height, x, y, overlap) for x, y in passes))
    channels = vae.vae.config.latent_channels

    def run(piece: torch.Tensor) -> torch.Tensor:
        chunk = (piece.float() * 2.0 - 1.0).to(device=device, dtype=dtype)
        return vae.vae.encode(chunk).latent_dist.mode().float()

    with torch.no_grad():
        total = None
        for x, y in passes:
            part = tiled_scale(pixels, run, x, y, overlap, 1 / vae.downscale, channels,
                               on_tile=lambda: progress.update(1))
            total = part if total is None else total + part
    return (total / 3.0).to(devices.intermediate_device())
