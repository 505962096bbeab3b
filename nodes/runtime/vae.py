"""IMAGE ⇄ LATENT through a VAE, in ComfyUI's conventions.

* ``IMAGE`` is float ``[B, H, W, 3]`` in 0..1; the VAE sees ``image * 2 - 1`` channels-first.
* Latents are stored in the VAE's own space (no scale factor; the sampler applies the model's).
* Encoding takes the mean of the latent distribution (no sampling), after centre-cropping the image
  to a multiple of the VAE's downscale factor; decoding clamps ``(x + 1) / 2`` to 0..1.
* Work runs in batches sized to the memory at hand, reporting progress per batch.
"""
from __future__ import annotations

import math

import torch

from loom.nodes.progress import ProgressBar, check_interrupted
from loom.nodes.runtime import devices
from loom.nodes.runtime.model_types import VAEModel


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
    """``[B, C, h, w]`` latents → ``[B, h*f, w*f, 3]`` images in 0..1 on the intermediate device."""
    if samples.ndim == 5:  # video latents [B, C, T, h, w]: decode frame by frame
        samples = samples.movedim(2, 1).reshape(-1, samples.shape[1], samples.shape[3], samples.shape[4])
    if samples.ndim != 4:
        raise ValueError(f"latent samples must be [batch, channels, height, width], got shape {tuple(samples.shape)}")
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
