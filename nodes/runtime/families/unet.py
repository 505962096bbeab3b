"""What the UNet families (SD1.x, SD2.x, SDXL base and refiner) share: the LDM-layout UNet's config from
shapes, building it as ``diffusers.UNet2DConditionModel``, the network call (ControlNet residuals and extra
input channels included), SDXL's added conditioning, discrete eps/v sampling (continuous EDM v-prediction for a file with ComfyUI's
``edm_vpred`` marks: CosXL) and the detection rules that need the UNet's cross-attention width.

The family subclasses (:mod:`.sd1`, :mod:`.sd2`, :mod:`.sdxl`) decide what the shapes cannot tell
(ComfyUI's conventions): attention heads (SD1 8 heads; SD2/SDXL 64 channels per head, at least one), the
text encoders and their prefixes, the latent format and the prediction type.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from loom.nodes.runtime.families.base import (Detected, Family, Reader, Shapes, TextEncoderSlot,
                                              UnknownModelError)
from loom.nodes.runtime.families.parts import clip_width, count
from loom.nodes.runtime.model_sampling import PREDICTIONS, ContinuousEDMSampling, ModelSampling

if TYPE_CHECKING:
    from loom.nodes.runtime.checkpoint import StateDictFile
    from loom.nodes.runtime.model_types import DiffusionModel

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
UNET_PREDICTIONS = ("eps", "v")


def context_dim(shapes: Shapes, prefix: str) -> int | None:
    for key, shape in shapes.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight"):
            return shape[1]
    return None


def vae_prefix(shapes: Shapes) -> str | None:
    return next((p for p in VAE_PREFIXES if p + "decoder.conv_in.weight" in shapes), None)


class UNetFamily(Family):
    """A family whose network is an LDM UNet (``model.diffusion_model.input_blocks...``)."""

    detection_order = 50

    def text_encoders(self, shapes: Shapes) -> list[TextEncoderSlot] | None:
        """This family's text encoder slots if the file has them, else ``None``."""
        return None

    def lora_key_map(self, model: "DiffusionModel") -> dict[str, tuple[Any, ...]]:
        """kohya (diffusers and LDM module names), diffusers/peft and LDM names → the UNet's modules."""
        from loom.nodes.runtime.lora import unet_key_map, whole

        return {name: whole(*target) for name, target in unet_key_map(model.unet).items()}

    def matches_unet(self, shapes: Shapes, prefix: str) -> bool:
        """Whether a UNet alone (no text encoder in the file) has this family's full-size shapes."""
        return False

    def detect(self, shapes: Shapes, read: Reader | None, *, prediction: str | None, source: str,
               loose: bool) -> Detected | None:
        unet_prefix = UNET_PREFIX if UNET_PREFIX + "input_blocks.0.0.weight" in shapes else None
        if loose:
            if unet_prefix is None or not self.matches_unet(shapes, unet_prefix):
                return None
            encoders: list[TextEncoderSlot] = []
        else:
            found = self.text_encoders(shapes)
            if found is None or unet_prefix is None:
                return None
            encoders = found
        if prediction is not None and prediction not in UNET_PREDICTIONS:
            raise ValueError(f"prediction must be one of {UNET_PREDICTIONS}, not {prediction!r}")
        self._check_context_dim(shapes, unet_prefix, encoders, source)
        edm = edm_vpred_sigmas(shapes, read) if prediction is None else None
        chosen, why = ("v", "marker key (EDM)") if edm else self._prediction(shapes, read, unet_prefix, prediction)
        return Detected(family=self, prediction=chosen, prediction_source=why, unet_prefix=unet_prefix,
                        vae_prefix=vae_prefix(shapes), text_encoders=encoders, zero_terminal_snr="ztsnr" in shapes,
                        edm_sigmas=edm)

    def _check_context_dim(self, shapes: Shapes, prefix: str, encoders: list[TextEncoderSlot], source: str) -> None:
        if not encoders:
            return
        expected = sum(clip_width(shapes, slot) for slot in encoders)
        context = context_dim(shapes, prefix)
        has_adm = prefix + "label_emb.0.0.weight" in shapes
        if context is not None and context != expected:
            raise UnknownModelError(
                f"{source} looks like {self.display_name} (text encoder keys), but its UNet cross-attention width "
                f"{context} does not match the text encoder width {expected}")
        if bool(self.adm) != has_adm:
            raise UnknownModelError(
                f"{source} looks like {self.display_name} (text encoder keys), but its UNet "
                f"{'lacks' if self.adm else 'has'} the SDXL added-conditioning embedding (label_emb)")

    def _prediction(self, shapes: Shapes, read: Reader | None, prefix: str, override: str | None
                    ) -> tuple[str, str]:
        if override is not None:
            return override, "override"
        if "v_pred" in shapes:
            return "v", "marker key"
        return "eps", "family default"

    def model_sampling(self, detected: Detected) -> ModelSampling | ContinuousEDMSampling:
        """SD's scaled-linear betas, rescaled to zero terminal SNR when the file says so; continuous EDM
        v-prediction for a file with ComfyUI's ``edm_vpred`` marks (CosXL)."""
        if detected.edm_sigmas is not None:
            return ContinuousEDMSampling("v", *detected.edm_sigmas)
        return ModelSampling.scaled_linear(prediction=detected.prediction,
                                           zero_terminal_snr=detected.zero_terminal_snr)

    # -- building ------------------------------------------------------------------------------------

    def import_code(self) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
        from diffusers.loaders import single_file_utils  # noqa: F401
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

    def build_diffusion(self, file: "StateDictFile", detected: Detected, *, dtype: torch.dtype,
                        device: torch.device, pooled_dim: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
        from diffusers import UNet2DConditionModel
        from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

        from loom.nodes.runtime.checkpoint import _architecture_errors, _check_all_used, _instantiate, _load_exact

        prefix = detected.unet_prefix
        assert prefix is not None
        with _architecture_errors(file, "UNet"):
            config = unet_config(file.shapes, prefix, self, pooled_dim=pooled_dim)
        unet = _instantiate(UNet2DConditionModel, **config)  # first: the file may still be being read
        tensors = file.read_prefixed(prefix, dtype, rename=LDM_UNET_KEY)
        converted = convert_ldm_unet_checkpoint(tensors, config)
        _check_all_used(tensors, converted, "UNet", file.path.name)
        _load_exact(unet, converted, "UNet", file.path.name)
        return unet.to(device), config

    # -- sampling ------------------------------------------------------------------------------------

    def extra_conds(self, model: "DiffusionModel", options: Mapping[str, Any], latent_shape: Sequence[int],
                    prompt_type: str) -> dict[str, torch.Tensor]:
        """``added_cond_kwargs`` for UNets with SDXL's ``text_time`` embedding; empty for other UNets."""
        config = getattr(model.unet, "config", None)
        if getattr(config, "addition_embed_type", None) != "text_time":
            return {}
        pooled = options.get("pooled_output")
        if pooled is None:
            raise ValueError(f"this {model.family} model needs a pooled text embedding ('pooled_output') in its "
                             "conditioning; encode the prompt with this model's CLIP")
        pooled = pooled.float()
        width = options.get("width", latent_shape[3] * 8)
        height = options.get("height", latent_shape[2] * 8)
        crop_w, crop_h = options.get("crop_w", 0), options.get("crop_h", 0)
        time_dim = config.addition_time_embed_dim
        n_time_ids = (config.projection_class_embeddings_input_dim - pooled.shape[-1]) // time_dim
        if n_time_ids == 5:  # the refiner: size, crop and an aesthetic score
            score = options.get("aesthetic_score", 2.5 if prompt_type == "negative" else 6.0)
            ids = [height, width, crop_h, crop_w, score]
        else:
            ids = [height, width, crop_h, crop_w, options.get("target_height", height),
                   options.get("target_width", width)]
        time_ids = torch.tensor([[float(v) for v in ids]], dtype=torch.float32).repeat(pooled.shape[0], 1)
        return {"text_embeds": pooled, "time_ids": time_ids}

    def apply_network(self, model: "DiffusionModel", xc: torch.Tensor, timestep: torch.Tensor,
                      sigma: torch.Tensor, context: torch.Tensor, extra: Mapping[str, torch.Tensor] | None,
                      control: Any = None, concat: torch.Tensor | None = None) -> torch.Tensor:
        """``unet(xc, t, encoder_hidden_states=..., added_cond_kwargs=..., ControlNet residuals)``; the
        ControlNet sees the scaled input without the extra channels, as ComfyUI's."""
        unet = model.unet
        parameter = next(unet.parameters())
        dtype, device = parameter.dtype, parameter.device
        kwargs: dict[str, Any] = {"encoder_hidden_states": context.to(device=device, dtype=dtype)}
        added = dict(extra) if extra else None
        if added:
            kwargs["added_cond_kwargs"] = {k: v.to(device=device, dtype=dtype) for k, v in added.items()}
        if control is not None:
            residuals = control.residuals(xc, sigma, timestep, context, added, model=model)
            if residuals is not None:
                down, mid = residuals  # in the ControlNet's dtype, which the fast path's UNet may not share
                kwargs["down_block_additional_residuals"] = [r.to(dtype) for r in down]
                kwargs["mid_block_additional_residual"] = mid.to(dtype)
        if concat is not None:
            xc = torch.cat([xc, concat.to(xc)], dim=1)
        from loom.nodes.runtime import unet_patches

        with unet_patches.applied(unet, model.options):  # FreeU's output-block patch, PAG's attention swap
            return unet(xc.to(device=device, dtype=dtype), timestep.to(device), **kwargs, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------
# The UNet's config from shapes
# ---------------------------------------------------------------------------------------------

def unet_config(shapes: Shapes, prefix: str, family: Family, *, pooled_dim: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.UNet2DConditionModel`` read off an LDM-layout UNet.

    ``pooled_dim`` is the width of the pooled text embedding (SDXL), used to split the added
    conditioning input into pooled text and time-id embeddings.
    """
    p = re.escape(prefix)
    conv_in = shapes[prefix + "input_blocks.0.0.weight"]
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = shapes[prefix + "out.2.weight"][0]

    # Walk input blocks: each level is num_res_blocks resnet(+attention) blocks, then a downsampler.
    n_input = count(shapes, p + r"input_blocks\.(\d+)\.")
    levels: list[list[int]] = [[]]
    for index in range(1, n_input):
        if prefix + f"input_blocks.{index}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(index)
    layers_per_block = len(levels[0])
    if any(len(level) != layers_per_block for level in levels):
        raise UnknownModelError(f"UNet levels have different block counts: {[len(lv) for lv in levels]}")

    block_out: list[int] = []
    down_types: list[str] = []
    depths: list[int] = []
    for level in levels:
        first = level[0]
        block_out.append(shapes[prefix + f"input_blocks.{first}.0.out_layers.3.weight"][0])
        depth = count(shapes, p + rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depths.append(depth)
        down_types.append("CrossAttnDownBlock2D" if depth else "DownBlock2D")

    mid_depth = count(shapes, p + r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    up_types: list[str] = []
    up_depths: list[int] = []
    for up_index in range(len(levels)):
        first = up_index * (layers_per_block + 1)
        depth = count(shapes, p + rf"output_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        up_depths.append(depth)
        up_types.append("CrossAttnUpBlock2D" if depth else "UpBlock2D")

    # diffusers gives the middle block the depth of the last level; blocks without attention ignore theirs.
    layers = [d if d else mid_depth or 1 for d in depths]
    if mid_depth and layers[-1] != mid_depth:
        raise UnknownModelError(f"the middle block depth {mid_depth} differs from the last level's {layers[-1]}")
    reverse_layers = [d if d else 1 for d in up_depths]

    linear = any(len(shape) == 2 for key, shape in shapes.items()
                 if key.startswith(prefix) and key.endswith(".proj_in.weight"))
    context = context_dim(shapes, prefix) or 768

    if family.heads_rule == "8_heads":
        heads: int | list[int] = 8
    else:
        heads = [max(1, ch // 64) for ch in block_out]

    config: dict[str, Any] = dict(
        sample_size=128 if family.adm else 64,
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=tuple(down_types),
        up_block_types=tuple(up_types),
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_depth else None,
        block_out_channels=tuple(block_out),
        layers_per_block=layers_per_block,
        transformer_layers_per_block=tuple(layers),
        reverse_transformer_layers_per_block=tuple(reverse_layers),
        cross_attention_dim=context,
        attention_head_dim=heads,  # diffusers' historical name for the number of heads
        use_linear_projection=linear,
        upcast_attention=family.name == "sd2",
        norm_num_groups=32,
    )
    if block_out[0] != model_channels:
        raise UnknownModelError(f"conv_in width {model_channels} differs from the first level's {block_out[0]}")
    adm = shapes.get(prefix + "label_emb.0.0.weight")
    if adm is not None:
        adm_in = adm[1]
        time_dim = 256
        if family.time_ids and pooled_dim is not None and (adm_in - pooled_dim) % family.time_ids == 0:
            time_dim = (adm_in - pooled_dim) // family.time_ids
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=adm_in)
    return config


__all__ = ["UNET_PREFIX", "VAE_PREFIXES", "UNetFamily", "unet_config", "context_dim", "vae_prefix", "PREDICTIONS"]


EDM_DEFAULT_SIGMAS = (0.002, 120.0)  # ModelSamplingContinuousEDM's range when the marks cannot be read


def edm_vpred_sigmas(shapes: Shapes, read: Reader | None) -> tuple[float, float] | None:
    """``(sigma_min, sigma_max)`` of a checkpoint marked as v-prediction EDM (ComfyUI's ``edm_vpred.sigma_max``
    and ``edm_vpred.sigma_min`` scalars, as CosXL and CheckpointSave write them), or None."""
    if "edm_vpred.sigma_max" not in shapes:
        return None
    if read is None:
        return EDM_DEFAULT_SIGMAS
    low = float(read("edm_vpred.sigma_min")) if "edm_vpred.sigma_min" in shapes else EDM_DEFAULT_SIGMAS[0]
    return low, float(read("edm_vpred.sigma_max"))
