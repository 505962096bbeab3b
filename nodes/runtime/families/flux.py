"""FLUX.1 (dev and schnell) as a model family: ComfyUI's ``supported_models.Flux``/``FluxSchnell`` and
``model_base.Flux``.

* Network: the BFL-layout transformer (:mod:`nodes.runtime.flux_layout`) under ``model.diffusion_model.`` in
  an all-in-one checkpoint, or alone in a ``diffusion_models/`` file (UNETLoader).
* Model sampling: dev (``guidance_in`` present) uses ComfyUI's FLUX time shift (mu 1.15 until
  ModelSamplingFlux sets it from the image size), schnell the flow schedule with shift 1 and multiplier 1.
  The network's time input is sigma.
* Latent format: 16 channels, scale 0.3611, shift 0.1159, ComfyUI's preview factors and bias; 2x2 patches.
* Text: CLIP-L (sd1-style: last layer, pooled output not projected) and T5-XXL (256 tokens minimum). The
  conditioning is T5's hidden states; ``pooled_output`` is CLIP-L's pooled vector; ``guidance`` comes from the
  conditioning (FluxGuidance, CLIPTextEncodeFlux) and defaults to 3.5; ``guidance: None`` (FluxDisableGuidance)
  leaves the guidance embedding out.
* Conditionings of different shapes are never batched together (joint attention over the tokens).
* FLUX.1 Fill (384 input features) and Canny/Depth (128) take extra input channels after the latent's
  (:meth:`Flux.concat_input`): the conditioning's image latent, and for Fill the mask in 8x8 patches.
* Reference latents (ReferenceLatent, FLUX.1 Kontext) join the image tokens, each with its own position ids
  (:meth:`nodes.runtime.flux_layout.FluxNetwork.forward`); the prediction is read from the latent's tokens.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from loom.nodes.runtime import flux_layout
from loom.nodes.runtime.families.base import (Detected, EncoderConvention, Family, Reader, Shapes,
                                              TextEncoderSlot, UnknownModelError)
from loom.nodes.runtime.families.parts import clip_hf_prefix
from loom.nodes.runtime.families.sd1 import CLIP_EOS
from loom.nodes.runtime.families.unet import UNET_PREFIX, vae_prefix
from loom.nodes.runtime.model_sampling import FlowSampling, FluxSampling
from loom.nodes.runtime.model_types import LatentFormat

if TYPE_CHECKING:
    from loom.nodes.runtime.checkpoint import StateDictFile
    from loom.nodes.runtime.model_types import DiffusionModel

FLUX_LATENT = LatentFormat(
    channels=16, scale_factor=0.3611, shift_factor=0.1159,
    rgb_factors=((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
                 (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
                 (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
                 (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
                 (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
                 (-0.1262, -0.0982, -0.0778)),
    rgb_bias=(-0.0329, -0.0718, -0.0851),
)

INPUT_FEATURES = {64: "dev and schnell: 16 latent channels in 2x2 patches",
                  128: "Canny and Depth: the latent and the control image's latent",
                  384: "Fill: the latent, the image's latent and the mask in 8x8 patches"}
"""The FLUX.1 transformers' ``img_in`` widths (ComfyUI's ``in_channels``) and what each takes."""
MASK_PATCH = 8  # Fill's mask: each latent pixel's 8x8 pixel-space mask as 64 channels

REFERENCE_KEY = "ref_latent."  # extra inputs ref_latent.0, .1, ...: ReferenceLatent's latents, in order
REFERENCE_METHOD_KEY = "ref_latents_method"
REFERENCE_METHODS = ("offset", "index", "uxo")  # FluxKontextMultiReferenceLatentMethod; FLUX.1's default first

DEV_SHIFT = 1.15
DEFAULT_GUIDANCE = 3.5
TEXT_PREFIX = "text_encoders."
CLIP_L_POOLED = 768


def is_dev(shapes: Shapes, prefix: str) -> bool:
    return prefix + "guidance_in.in_layer.weight" in shapes or \
        prefix + "time_text_embed.guidance_embedder.linear_1.weight" in shapes


class Flux(Family):
    name = "flux"
    display_name = "FLUX.1"
    latent_format = FLUX_LATENT
    detection_order = 6
    batch_repeat_context = False
    controlnet_kind = "flux"  # which ControlNets it takes (nodes.runtime.controlnet_dit)

    # -- detection ---------------------------------------------------------------------------------

    def detect(self, shapes: Shapes, read: Reader | None, *, prediction: str | None, source: str,
               loose: bool) -> Detected | None:
        found = flux_layout.detect_layout(shapes)
        if found is None or found[1] != UNET_PREFIX:
            return None
        channels = shapes[UNET_PREFIX + ("img_in.weight" if found[0] == "bfl" else "x_embedder.weight")][1]
        if channels not in INPUT_FEATURES:
            raise UnknownModelError(f"{source} has a FLUX transformer with {channels} input features; FLUX.1 takes "
                                    + ", ".join(f"{n} ({what})" for n, what in INPUT_FEATURES.items()))
        if prediction is not None:
            raise ValueError(f"{source} is a FLUX model (flow matching); it has no {prediction!r} prediction to "
                             "choose")
        dev = is_dev(shapes, UNET_PREFIX)
        return Detected(family=self, prediction="flow", prediction_source="dev" if dev else "schnell",
                        unet_prefix=UNET_PREFIX, vae_prefix=vae_prefix(shapes),
                        text_encoders=self.text_encoders(shapes))

    @staticmethod
    def text_encoders(shapes: Shapes, prefix: str = TEXT_PREFIX) -> list[TextEncoderSlot]:
        slots = []
        base = f"{prefix}clip_l.transformer."
        if clip_hf_prefix(shapes, base):
            slots.append(TextEncoderSlot("l", base, "hf"))
        t5 = f"{prefix}t5xxl.transformer."
        if t5 + "encoder.final_layer_norm.weight" in shapes:
            slots.append(TextEncoderSlot("t5xxl", t5, "t5"))
        return slots

    def model_sampling(self, detected: Detected) -> Any:
        return sampling_for(detected.prediction_source == "dev")

    # -- building ------------------------------------------------------------------------------------

    def import_code(self) -> None:
        from diffusers import AutoencoderKL, FluxTransformer2DModel  # noqa: F401
        from transformers import CLIPTextModel, T5EncoderModel  # noqa: F401

    def build_diffusion(self, file: "StateDictFile", detected: Detected, *, dtype: torch.dtype,
                        device: torch.device, pooled_dim: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
        prefix = detected.unet_prefix or ""
        tensors = file.read_prefixed(prefix, dtype, rename="")  # the dtype the loader's reader converts to
        compute = dtype if dtype == torch.float32 else flux_layout.default_compute_dtype(device)
        module, config = flux_layout.build_transformer(tensors, source=file.path.name, device=device,
                                                       compute_dtype=compute)
        return flux_layout.FluxNetwork(module, compute), dict(config, compute_dtype=str(compute).removeprefix("torch."))

    def lora_key_map(self, model: "DiffusionModel") -> dict[str, tuple[Any, ...]]:
        """BFL names (kohya ``lora_unet_double_blocks_N_...``, ``diffusion_model.``) and diffusers names
        (``transformer.``, OneTrainer, LyCORIS) onto the diffusers FLUX network; fused weights by row ranges."""
        from loom.nodes.runtime.lora_dit import flux_key_map

        return flux_key_map(model.unet)

    # -- text encoders -------------------------------------------------------------------------------

    def text_encoder(self, file: "StateDictFile", slot: TextEncoderSlot, *, dtype: torch.dtype,
                     device: torch.device) -> tuple[Any, Any]:
        if slot.layout != "t5":
            return super().text_encoder(file, slot, dtype=dtype, device=device)
        from loom.nodes.runtime import t5

        return t5.load_t5_from_file(file, slot.prefix, dtype=dtype, device=device, min_length=t5.FLUX_MIN_LENGTH)

    def text_convention(self, encoder: str) -> EncoderConvention:
        if encoder == "l":  # as SD1: the last layer, layer-normed; the pooled output is not projected
            return EncoderConvention(CLIP_EOS, None, True, False, "clip_l")
        return super().text_convention(encoder)

    def combine_text(self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """ComfyUI's ``FluxClipModel.encode_token_weights``: T5's hidden states, CLIP-L's pooled output."""
        missing = [name for name, what in (("t5xxl", "T5-XXL"), ("l", "CLIP-L")) if name not in outputs]
        if missing:
            raise ValueError("a FLUX text encoder needs CLIP-L and T5-XXL (DualCLIPLoader type flux); this one "
                             f"lacks {', '.join(missing)}")
        return outputs["t5xxl"][0], outputs["l"][1], {}

    # -- sampling ------------------------------------------------------------------------------------

    def extra_conds(self, model: "DiffusionModel", options: Mapping[str, Any], latent_shape: Sequence[int],
                    prompt_type: str) -> dict[str, torch.Tensor]:
        pooled = options.get("pooled_output")
        out: dict[str, torch.Tensor] = {}
        if pooled is not None:
            out["y"] = pooled.float()
        guidance = options.get("guidance", DEFAULT_GUIDANCE)
        if guidance is not None:
            out["guidance"] = torch.tensor([float(guidance)])
        references = options.get("reference_latents") or ()
        for index, latent in enumerate(references):  # ReferenceLatent (Kontext); ComfyUI's process_latent_in
            out[f"{REFERENCE_KEY}{index}"] = self.latent_format.process_in(latent.float())
        if references:
            method = options.get("reference_latents_method", "offset")
            if method not in REFERENCE_METHODS:
                raise ValueError(f"unknown reference_latents_method {method!r}; expected one of "
                                 f"{', '.join(REFERENCE_METHODS)}")
            out[REFERENCE_METHOD_KEY] = torch.tensor([[float(REFERENCE_METHODS.index(method))]])
        return out

    def apply_network(self, model: "DiffusionModel", xc: torch.Tensor, timestep: torch.Tensor,
                      sigma: torch.Tensor, context: torch.Tensor, extra: Mapping[str, torch.Tensor] | None,
                      control: Any = None, concat: torch.Tensor | None = None) -> torch.Tensor:
        extra = extra or {}
        network = model.unet
        if not isinstance(network, flux_layout.FluxNetwork):
            raise TypeError(f"a FLUX MODEL's network must be a FluxNetwork, not {type(network).__name__}")
        references = [extra[f"{REFERENCE_KEY}{i}"] for i in range(len(extra)) if f"{REFERENCE_KEY}{i}" in extra]
        if references and control is not None:
            raise ValueError("a ControlNet together with reference latents (ReferenceLatent) is not supported yet "
                             "on FLUX")
        method = REFERENCE_METHODS[int(extra[REFERENCE_METHOD_KEY].flatten()[0])] if references else "offset"
        from loom.nodes.runtime.dit_patches import flux_blocks_skipped

        with flux_blocks_skipped(network.transformer, model.options):  # SkipLayerGuidance's pass
            return network(xc, timestep, context, extra.get("y"), extra.get("guidance"),
                           control=flux_controlnets(model, xc, sigma, control), references=references,
                           reference_method=method, concat=concat)

    def concat_input(self, model: "DiffusionModel", options: Mapping[str, Any], shape: Sequence[int],
                     latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> torch.Tensor | None:
        """ComfyUI's ``model_base.Flux.concat_cond``: nothing for dev/schnell; the conditioning's
        ``concat_latent_image`` (InstructPixToPixConditioning, InpaintModelConditioning; zeros without one) in
        the model's latent space for Canny/Depth; for Fill also the mask (``concat_mask``, else the latent's
        noise mask, else all ones), each latent pixel's 8x8 pixel-space patch as 64 channels."""
        from loom.nodes.runtime.resample import common_upscale
        from loom.nodes.runtime.denoiser import resize_to_batch_size

        network = model.unet
        extra = network.input_channels - network.latent_channels
        if extra <= 0:
            return None
        batch, _, height, width = (int(v) for v in shape)
        image = options.get("concat_latent_image")
        image = torch.zeros(tuple(int(v) for v in shape)) if image is None else image.float()
        image = common_upscale(image, width, height, "bilinear", "center")
        image = self.latent_format.process_in(resize_to_batch_size(image, batch))
        if extra <= network.latent_channels:
            return image
        mask = options.get("concat_mask", denoise_mask)
        mask = torch.ones((batch, 1, height, width)) if mask is None else mask.float()
        if mask.ndim < 4:  # [H, W] or [B, H, W]
            mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
        mask = mask.mean(dim=1, keepdim=True)
        mask = common_upscale(mask, width * MASK_PATCH, height * MASK_PATCH, "bilinear", "center")
        mask = mask.view(mask.shape[0], height, MASK_PATCH, width, MASK_PATCH).permute(0, 2, 4, 1, 3)
        mask = resize_to_batch_size(mask.reshape(mask.shape[0], MASK_PATCH * MASK_PATCH, height, width), batch)
        return torch.cat([image, mask], dim=1)


def flux_controlnets(model: "DiffusionModel", xc: torch.Tensor, sigma: torch.Tensor, control: Any) -> Any:
    """The ControlNets' residuals for the FLUX call (:mod:`nodes.runtime.controlnet_dit`), or ``None``."""
    if control is None:
        return None
    from loom.nodes.runtime import controlnet_dit

    return controlnet_dit.flux_control(control, model, xc, sigma)


def sampling_for(dev: bool) -> Any:
    """dev: FLUX time shift with mu 1.15; schnell: flow with shift 1 and multiplier 1 (ComfyUI's configs)."""
    return FluxSampling(shift=DEV_SHIFT) if dev else FlowSampling(shift=1.0, multiplier=1.0)


FAMILY = Flux()
