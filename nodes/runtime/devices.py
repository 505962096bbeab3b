"""Which device the models compute on and in which precision.

CUDA when present (the diffusion model and text encoders in float16, the VAE in bfloat16 where the
GPU supports it, else float32 — ComfyUI's defaults), otherwise the CPU in float32. The runtime
configuration (:mod:`loom.nodes.kernel.config`: ``loom --device``, ``--force-fp32``) can pin a device or force
float32. Tensors passed between nodes (latents, images,
conditionings) live on the CPU, like ComfyUI's ``intermediate_device``.
"""
from __future__ import annotations

import torch

from loom.nodes.kernel import config


def compute_device() -> torch.device:
    pinned = config.current().device
    if pinned:
        return torch.device(pinned)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where node outputs (latents, images, conditionings) are kept between nodes."""
    return torch.device("cpu")


def _fp32_only(device: torch.device) -> bool:
    return config.current().force_fp32 or device.type != "cuda"


def diffusion_dtype(device: torch.device | None = None) -> torch.dtype:
    device = device or compute_device()
    return torch.float32 if _fp32_only(device) else torch.float16


def text_encoder_dtype(device: torch.device | None = None) -> torch.dtype:
    device = device or compute_device()
    return torch.float32 if _fp32_only(device) else torch.float16


def vae_dtype(device: torch.device | None = None) -> torch.dtype:
    device = device or compute_device()
    if _fp32_only(device):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32


def free_memory(device: torch.device | None = None) -> int:
    """Bytes available for new models on ``device`` (system RAM for the CPU)."""
    device = device or compute_device()
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil
    return int(psutil.virtual_memory().available)


def total_memory(device: torch.device | None = None) -> int:
    device = device or compute_device()
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil
    return int(psutil.virtual_memory().total)


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
