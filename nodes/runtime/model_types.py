"""The values that flow between generation nodes: MODEL, CLIP, VAE, CONDITIONING and LATENT.

Their shapes follow ComfyUI's so workflows keep their meaning:

* ``CONDITIONING`` is a list of ``[cond, options]`` pairs: ``cond`` is a ``[B, tokens, dim]`` tensor and
  ``options`` a dict (``pooled_output``, ``area``, ``strength``, ``start_percent``, ``end_percent``,
  ``control``, ...). Combining conditionings concatenates the lists.
* ``LATENT`` is a dict ``{"samples": [B, C, H/8, W/8], "noise_mask"?: [B, 1, H, W], "batch_index"?: [int]}``
  holding latents in the VAE's space (before the model's scale factor), as ComfyUI stores them.
* ``IMAGE`` is a float32 ``[B, H, W, 3]`` tensor in 0..1; ``MASK`` a float ``[B, H, W]`` tensor in 0..1.

CONDITIONING options the runtime reads (ComfyUI's names):

* ``pooled_output`` ``[1, dim]``: set by CLIPTextEncode (SD1: the unprojected pooled CLIP-L output;
  SD2/SDXL: the projected pooled output of the OpenCLIP encoder; SD3: CLIP-L's unprojected and CLIP-G's
  projected pooled outputs joined, 2048). SDXL UNets take it as ``added_cond_kwargs["text_embeds"]``, the SD3
  MMDiT as ``pooled_projections``.
* SDXL ``time_ids`` come from ``height, width, crop_h, crop_w, target_height, target_width`` (base) or
  ``height, width, crop_h, crop_w, aesthetic_score`` (refiner), in that order. Defaults when the options do
  not set them: ``width``/``height`` = the latent's size in pixels, crops 0, targets = width/height,
  ``aesthetic_score`` 6.0 for the positive and 2.5 for the negative conditioning.
* ``area`` ``(h, w, y, x)`` in latent pixels or ``("percentage", h, w, y, x)`` in fractions of the latent,
  ``strength`` (the weight of the entry's prediction), ``set_area_to_bounds`` (ConditioningSetArea/SetMask),
  ``mask`` ``[B, H, W]`` (any resolution; resized to the latent) with ``mask_strength``,
  ``start_percent``/``end_percent``, ``control`` (ControlNet).
* ``concat_latent_image`` (a VAE latent) and ``concat_mask`` ``[B, 1, H, W]``: the extra input channels of
  InstructPix2Pix (8-channel) and inpainting (9-channel) UNets; models without them ignore both.

``DiffusionModel.options`` from the checkpoint loader: ``source`` (file), ``adm`` (``None``, ``"sdxl"`` or
``"sdxl_refiner"``), ``prediction_source``, ``unet_config`` (the diffusers config it was built with).
Model patches add ComfyUI's ``model_options`` keys there, e.g. ``denoise_mask_function``
(DifferentialDiffusion): ``fn(sigma, mask, extra_options={"model", "sigmas"})`` returns the noise mask to use
at that model call.
``TextEncoderModel.encoders`` maps ``"l"`` (CLIP-L), ``"h"`` (OpenCLIP-H, SD2), ``"g"`` (OpenCLIP bigG,
SDXL/SD3) and ``"t5xxl"`` (T5, SD3) to ``(tokenizer, model)``; a text-encoder patch provides ``applied(clip)``, a context
manager active while prompts are encoded.

Handles are immutable from a node's point of view: a node that changes a model (a LoRA, CLIP skip)
returns a new handle sharing the weights and recording the change, never modifying the one it got.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from loom.nodes.kernel import sockets
from loom.nodes.runtime.model_sampling import ModelSampling  # noqa: F401  (re-exported: MODEL.sampling's type)


@dataclass(frozen=True)
class LatentFormat:
    """How a family's latents relate to the VAE's: ``model_latent = (vae_latent - shift) * scale``."""

    channels: int = 4
    scale_factor: float = 0.18215
    shift_factor: float = 0.0
    rgb_factors: tuple[tuple[float, ...], ...] | None = None  # [channels][3] latent → RGB preview projection
    rgb_bias: tuple[float, float, float] | None = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


@dataclass
class DiffusionModel:
    """``MODEL``: a denoising network with what the sampler needs to drive it."""

    unet: torch.nn.Module
    family: str  # a registered family's name (nodes.runtime.families): "sd1" | "sd2" | "sdxl" | "sd3" | ...
    sampling: Any  # a model-sampling object (nodes.runtime.model_sampling): discrete, flow or FLUX
    latent_format: LatentFormat
    patches: tuple[Any, ...] = ()  # weight patches (LoRA, ...) applied while sampling; never baked into `unet`
    options: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "DiffusionModel":
        return dataclasses.replace(self, **changes)


@dataclass
class TextEncoderModel:
    """``CLIP``: tokenizer(s) and text encoder(s) of a family, with CLIP-skip and patches.

    The runtime's text-encoding module gives ``encode(text) -> CONDITIONING``; this handle carries the
    parts. ``encoders`` maps a name (``"l"``, ``"g"``) to a ``(tokenizer, transformers model)`` pair.
    """

    encoders: dict[str, Any]
    family: str
    layer_idx: int | None = None  # CLIPSetLastLayer: -1 = last layer, -2 = penultimate, ...
    patches: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "TextEncoderModel":
        return dataclasses.replace(self, **changes)


@dataclass
class VAEModel:
    """``VAE``: an autoencoder; ``encode``/``decode`` live in the runtime's VAE module."""

    vae: torch.nn.Module
    latent_format: LatentFormat
    downscale: int = 8
    options: dict[str, Any] = field(default_factory=dict)


sockets.MODEL.register(DiffusionModel)
sockets.CLIP.register(TextEncoderModel)
sockets.VAE.register(VAEModel)
