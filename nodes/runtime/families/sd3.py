"""SD3 / SD3.5: the MMDiT (``model.diffusion_model.joint_blocks.*``, 16 input channels) as diffusers'
``SD3Transformer2DModel``, CLIP-L + CLIP-G in transformers names under ``text_encoders.clip_{l,g}.transformer.``,
optional T5-XXL under ``text_encoders.t5xxl.transformer.``, and the 16-channel VAE without quant convolutions.

As ComfyUI's ``supported_models.SD3`` / ``model_base.SD3``:

* model sampling: flow (``CONST``) with shift 3.0 and multiplier 1000 (ModelSamplingSD3 changes the shift);
* latent format: scale 1.5305, shift 0.0609, 16 channels, with ComfyUI's preview factors and bias;
* conditioning: CLIP-L's and CLIP-G's penultimate hidden states (not layer-normed) joined to 2048 features,
  zero-padded to 4096, T5's tokens appended along the token axis when there is a T5; pooled = CLIP-L's
  unprojected pooled output and CLIP-G's projected one (2048); the MMDiT gets the pooled vector as ``y``;
* conditionings whose shapes differ are not batched together (joint attention over the tokens).

Config from shapes: hidden width = ``x_embedder`` width, 64 channels per head, blocks = ``joint_blocks``
count, context width from ``context_embedder``, pooled width from ``y_embedder``, the position grid from
``pos_embed``, SD3.5's dual-attention blocks (``attn2``) and RMS q/k norms (``ln_q``) when present.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from loom.nodes.runtime.families.base import (Detected, EncoderConvention, Family, Reader, Shapes,
                                              TextEncoderSlot, UnknownModelError)
from loom.nodes.runtime.families.parts import clip_hf_prefix, count
from loom.nodes.runtime.families.sd1 import CLIP_EOS
from loom.nodes.runtime.families.unet import UNET_PREFIX, vae_prefix
from loom.nodes.runtime.model_sampling import FlowSampling
from loom.nodes.runtime.model_types import LatentFormat

if TYPE_CHECKING:
    from loom.nodes.runtime.checkpoint import StateDictFile
    from loom.nodes.runtime.model_types import DiffusionModel

SD3_LATENT = LatentFormat(
    channels=16, scale_factor=1.5305, shift_factor=0.0609,
    rgb_factors=((-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
                 (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
                 (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
                 (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
                 (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
                 (-0.1448, -0.1463, -0.1189)),
    rgb_bias=(0.2394, 0.2135, 0.1925),
)

MARKER = "joint_blocks.0.x_block.attn.qkv.weight"
TEXT_PREFIX = "text_encoders."
CONTEXT_WIDTH = 4096
CLIP_L_WIDTH, CLIP_G_WIDTH = 768, 1280
SHIFT = 3.0
MULTIPLIER = 1000


class SD3(Family):
    name = "sd3"
    display_name = "SD3"
    latent_format = SD3_LATENT
    detection_order = 5
    batch_repeat_context = False
    controlnet_kind = "sd3"  # which ControlNets it takes (nodes.runtime.controlnet_dit)

    # -- detection ---------------------------------------------------------------------------------

    def detect(self, shapes: Shapes, read: Reader | None, *, prediction: str | None, source: str,
               loose: bool) -> Detected | None:
        if loose or UNET_PREFIX + MARKER not in shapes:
            return None
        channels = shapes[UNET_PREFIX + "x_embedder.proj.weight"][1]
        if channels != 16:
            raise UnknownModelError(f"{source} has an MMDiT with {channels} input channels; SD3/SD3.5 models "
                                    "have 16")
        if prediction is not None:
            raise ValueError(f"{source} is an SD3 model (flow matching); it has no {prediction!r} prediction to "
                             "choose")
        return Detected(family=self, prediction="flow", prediction_source="family default",
                        unet_prefix=UNET_PREFIX, vae_prefix=vae_prefix(shapes),
                        text_encoders=self.text_encoders(shapes))

    @staticmethod
    def text_encoders(shapes: Shapes, prefix: str = TEXT_PREFIX) -> list[TextEncoderSlot]:
        """CLIP-L, CLIP-G and T5-XXL, each only when the file has it (ComfyUI's rules: T5 counts only with
        its final layer norm)."""
        slots = []
        for name in ("l", "g"):
            base = f"{prefix}clip_{name}.transformer."
            if clip_hf_prefix(shapes, base):
                slots.append(TextEncoderSlot(name, base, "hf"))
        t5 = f"{prefix}t5xxl.transformer."
        if t5 + "encoder.final_layer_norm.weight" in shapes:
            slots.append(TextEncoderSlot("t5xxl", t5, "t5"))
        return slots

    def model_sampling(self, detected: Detected) -> FlowSampling:
        return FlowSampling(shift=SHIFT, multiplier=MULTIPLIER)

    # -- building ------------------------------------------------------------------------------------

    def import_code(self) -> None:
        from diffusers import AutoencoderKL, SD3Transformer2DModel  # noqa: F401
        from diffusers.loaders import single_file_utils  # noqa: F401
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: F401

    def build_diffusion(self, file: "StateDictFile", detected: Detected, *, dtype: torch.dtype,
                        device: torch.device, pooled_dim: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
        from diffusers import SD3Transformer2DModel
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        from loom.nodes.runtime.checkpoint import CheckpointError, _architecture_errors, _instantiate, _load_exact

        prefix = detected.unet_prefix
        assert prefix is not None
        with _architecture_errors(file, "MMDiT"):
            config = mmdit_config(file.shapes, prefix)
        network = _instantiate(SD3Transformer2DModel, **config)
        tensors = file.read_prefixed(prefix, dtype, rename="")
        remaining = dict(tensors)  # the converter pops what it uses
        try:
            converted = convert_sd3_transformer_checkpoint_to_diffusers(remaining)
        except KeyError as exc:
            raise CheckpointError(f"{file.path.name}: the MMDiT lacks tensor {exc}") from None
        if remaining:
            left = sorted(remaining)
            raise CheckpointError(f"{file.path.name}: {len(left)} MMDiT tensors were not understood by the "
                                  f"converter (e.g. {', '.join(left[:5])})")
        _load_exact(network, converted, "MMDiT", file.path.name)
        return network.to(device), config

    def lora_key_map(self, model: "DiffusionModel") -> dict[str, tuple[Any, ...]]:
        """diffusers names (``transformer.``, ``base_model.model.``, OneTrainer ``lora_transformer_``, LyCORIS)
        and MMDiT names (``lora_unet_joint_blocks_N_...``, ``diffusion_model.``) onto the SD3 network."""
        from loom.nodes.runtime.lora_dit import sd3_key_map

        return sd3_key_map(model.unet)

    # -- text encoders -------------------------------------------------------------------------------

    def text_encoder(self, file: "StateDictFile", slot: TextEncoderSlot, *, dtype: torch.dtype,
                     device: torch.device) -> tuple[Any, Any]:
        if slot.layout != "t5":
            return super().text_encoder(file, slot, dtype=dtype, device=device)
        return t5_encoder(file, slot, dtype=dtype, device=device)

    def text_convention(self, encoder: str) -> EncoderConvention:
        if encoder == "l":  # penultimate, not layer-normed; unprojected pooled output
            return EncoderConvention(CLIP_EOS, -2, False, False, "clip_l")
        if encoder == "g":  # penultimate, not layer-normed; projected pooled output
            return EncoderConvention(0, -2, False, True, "clip_g")
        return super().text_convention(encoder)

    def combine_text(self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """ComfyUI's ``SD3ClipModel.encode_token_weights``."""
        from loom.nodes.runtime import devices

        where = devices.intermediate_device()
        lg_out = None
        out = None
        l_pooled = outputs["l"][1] if "l" in outputs else torch.zeros((1, CLIP_L_WIDTH), device=where)
        if "l" in outputs:
            lg_out = outputs["l"][0]
        if "g" in outputs:
            g_out, g_pooled = outputs["g"]
            if lg_out is not None:
                cut = min(lg_out.shape[1], g_out.shape[1])
                lg_out = torch.cat([lg_out[:, :cut], g_out[:, :cut]], dim=-1)
            else:
                lg_out = F.pad(g_out, (CLIP_L_WIDTH, 0))
        else:
            g_pooled = torch.zeros((1, CLIP_G_WIDTH), device=where)
        if lg_out is not None:
            lg_out = F.pad(lg_out, (0, CONTEXT_WIDTH - lg_out.shape[-1]))
            out = lg_out
        pooled = torch.cat((l_pooled, g_pooled), dim=-1)
        if "t5xxl" in outputs:
            t5_out = outputs["t5xxl"][0]
            out = t5_out if lg_out is None else torch.cat([lg_out, t5_out], dim=-2)
        if out is None:
            out = torch.zeros((1, 77, CONTEXT_WIDTH), device=where)
        return out, pooled, {}

    # -- sampling ------------------------------------------------------------------------------------

    def extra_conds(self, model: "DiffusionModel", options: Mapping[str, Any], latent_shape: Sequence[int],
                    prompt_type: str) -> dict[str, torch.Tensor]:
        pooled = options.get("pooled_output")
        if pooled is None:
            raise ValueError("this SD3 model needs a pooled text embedding ('pooled_output') in its conditioning; "
                             "encode the prompt with an SD3 CLIP (CLIP-L + CLIP-G)")
        return {"pooled_projections": pooled.float()}

    def apply_network(self, model: "DiffusionModel", xc: torch.Tensor, timestep: torch.Tensor,
                      sigma: torch.Tensor, context: torch.Tensor, extra: Mapping[str, torch.Tensor] | None,
                      control: Any = None, concat: torch.Tensor | None = None) -> torch.Tensor:
        """The MMDiT on ``xc`` (padded circularly to whole 2x2 patches and cropped back, as ComfyUI's)."""
        network = model.unet
        parameter = next(network.parameters())
        dtype, device = parameter.dtype, parameter.device
        if not extra or "pooled_projections" not in extra:
            raise ValueError("the SD3 model was called without its pooled text embedding")
        height, width = xc.shape[-2:]
        patch = network.config.patch_size
        pad_h, pad_w = (patch - height % patch) % patch, (patch - width % patch) % patch
        x_in = xc.to(device=device, dtype=dtype)
        if pad_h or pad_w:
            x_in = F.pad(x_in, (0, pad_w, 0, pad_h), mode="circular")
        context_in = context.to(device=device, dtype=dtype)
        pooled = extra["pooled_projections"].to(device=device, dtype=dtype)
        time_in = timestep.to(device=device)  # float32: the MMDiT's sinusoidal embedding reads it unrounded
        from loom.nodes.runtime.dit_patches import sd3_skip_layers

        skip_layers = sd3_skip_layers(network, model.options)  # SkipLayerGuidance's pass
        with sd3_controlnets(model, x_in, sigma, time_in, context_in, pooled, control) as control_kwargs:
            out = network(hidden_states=x_in, encoder_hidden_states=context_in, pooled_projections=pooled,
                          timestep=time_in, return_dict=False, skip_layers=skip_layers, **control_kwargs)[0]
        return out[:, :, :height, :width]


def sd3_controlnets(model: "DiffusionModel", x: torch.Tensor, sigma: torch.Tensor, timestep: torch.Tensor,
                    context: torch.Tensor, pooled: torch.Tensor, control: Any) -> Any:
    """A context giving the MMDiT call's ControlNet kwargs (:mod:`nodes.runtime.controlnet_dit`)."""
    if control is None:
        import contextlib

        return contextlib.nullcontext({})
    from loom.nodes.runtime import controlnet_dit

    return controlnet_dit.sd3_control(control, model, x, sigma, timestep, context, pooled)


def t5_encoder(file: "StateDictFile", slot: TextEncoderSlot, *, dtype: torch.dtype,
               device: torch.device) -> tuple[Any, Any]:
    """The seam for a T5-XXL inside an SD3 checkpoint: ``(tokenizer, encoder)`` from :mod:`nodes.runtime.t5`
    (``load_t5_from_file(file, prefix, dtype=, device=, min_length=77)``), whose encoder gives
    ``encode_token_weights(chunks) -> (hidden [1, n, 4096], pooled)`` and whose tokenizer gives
    ``tokenize_with_weights(text)``; see :mod:`nodes.runtime.text_encoding`."""
    from loom.nodes.runtime.checkpoint import CheckpointError

    try:
        from loom.nodes.runtime import t5
        loader = t5.load_t5_from_file
    except (ImportError, AttributeError):
        raise CheckpointError(f"{file.path.name} holds a T5-XXL text encoder ({slot.prefix}*); Loom cannot load "
                              "T5 from inside a checkpoint yet. Use a file without T5 (CLIP-L + CLIP-G only)") from None
    return loader(file, slot.prefix, dtype=dtype, device=device, min_length=77)


def mmdit_config(shapes: Shapes, prefix: str) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.SD3Transformer2DModel`` read off an MMDiT in SD3's original layout."""
    p = re.escape(prefix)
    embed = shapes[prefix + "x_embedder.proj.weight"]
    hidden, in_channels, patch = embed[0], embed[1], embed[2]
    layers = count(shapes, p + r"joint_blocks\.(\d+)\.")
    positions = shapes[prefix + "pos_embed"][1]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise UnknownModelError(f"the MMDiT's position table has {positions} entries, not a square grid")
    dual = tuple(sorted({int(m.group(1)) for key in shapes
                         if (m := re.match(p + r"joint_blocks\.(\d+)\.x_block\.attn2\.", key))}))
    qk_norm = "rms_norm" if prefix + "joint_blocks.0.x_block.attn.ln_q.weight" in shapes else None
    context = shapes[prefix + "context_embedder.weight"]
    return dict(
        sample_size=128,
        patch_size=patch,
        in_channels=in_channels,
        num_layers=layers,
        attention_head_dim=64,
        num_attention_heads=max(1, hidden // 64),
        joint_attention_dim=context[1],
        caption_projection_dim=context[0],
        pooled_projection_dim=shapes[prefix + "y_embedder.mlp.0.weight"][1],
        out_channels=shapes[prefix + "final_layer.linear.weight"][0] // (patch * patch),
        pos_embed_max_size=grid,
        dual_attention_layers=dual,
        qk_norm=qk_norm,
    )


FAMILY = SD3()
