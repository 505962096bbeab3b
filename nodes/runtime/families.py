"""Model families: detecting SD1.x / SD2.x / SDXL base / SDXL refiner from a single-file checkpoint,
and building the diffusers/transformers architecture configs from the family plus the tensor shapes.

Detection reads only key names and shapes (the safetensors header), plus one small tensor for the
SD2 v-prediction guess. The family decides what the shapes cannot tell (ComfyUI's conventions):

* attention heads — SD1 UNets use 8 heads; SD2/SDXL UNets 64 channels per head; CLIP text encoders
  64 channels per head (at least one, so reduced-width test checkpoints follow the same rule);
* the text encoders and their prefixes (CLIP-L ``cond_stage_model.transformer``, OpenCLIP-H
  ``cond_stage_model.model``, SDXL ``conditioner.embedders.{0,1}``), their activation and padding;
* the latent format and the prediction type (SD2 768-v models are v-prediction, guessed as ComfyUI
  does from the spread of one norm bias; an explicit override wins).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from loom.nodes.runtime.model_types import LatentFormat, ModelSampling

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")

SD15_LATENT = LatentFormat(
    channels=4, scale_factor=0.18215,
    rgb_factors=((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                 (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
)
SDXL_LATENT = LatentFormat(
    channels=4, scale_factor=0.13025,
    rgb_factors=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                 (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    rgb_bias=(0.1084, -0.0175, -0.0011),
)


class UnknownModelError(ValueError):
    """The state dict is not a model family Loom knows; the message says what was found."""


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder inside a checkpoint."""

    name: str          # "l" (CLIP-L), "h" (OpenCLIP ViT-H), "g" (OpenCLIP bigG)
    prefix: str        # key prefix in the checkpoint, ending with "."
    layout: str        # "hf" (transformers names) | "openclip"


@dataclass(frozen=True)
class Family:
    name: str                          # "sd1" | "sd2" | "sdxl" | "sdxl_refiner"
    display_name: str
    latent_format: LatentFormat
    heads_rule: str                    # "8_heads" | "64_per_head"
    adm: str | None = None             # SDXL added conditioning: "sdxl" | "sdxl_refiner"
    time_ids: int = 0                  # how many SDXL micro-conditioning numbers the UNet embeds


FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", "SD1.x", SD15_LATENT, "8_heads"),
    "sd2": Family("sd2", "SD2.x", SD15_LATENT, "64_per_head"),
    "sdxl": Family("sdxl", "SDXL", SDXL_LATENT, "64_per_head", adm="sdxl", time_ids=6),
    "sdxl_refiner": Family("sdxl_refiner", "SDXL refiner", SDXL_LATENT, "64_per_head", adm="sdxl_refiner",
                           time_ids=5),
}

PREDICTIONS = ("eps", "v")


@dataclass
class Detected:
    """What :func:`detect` found in a checkpoint."""

    family: Family
    prediction: str
    prediction_source: str             # "override" | "marker key" | "norm statistics" | "family default"
    unet_prefix: str | None
    vae_prefix: str | None
    text_encoders: list[TextEncoderSlot] = field(default_factory=list)
    zero_terminal_snr: bool = False    # a ``ztsnr`` marker key: sigmas rescaled to zero terminal SNR


Shapes = Mapping[str, tuple[int, ...]]


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _clip_hf_prefix(shapes: Shapes, base: str) -> str | None:
    """``base`` if it holds a transformers-layout CLIP (with or without ``text_model.``)."""
    for candidate in (base + "text_model.", base):
        if candidate + "embeddings.token_embedding.weight" in shapes:
            return base
    return None


def _key_groups(shapes: Shapes) -> str:
    groups: dict[str, int] = {}
    for key in shapes:
        parts = key.split(".")
        group = ".".join(parts[:3] if parts[0] in ("conditioner", "cond_stage_model") else parts[:2])
        groups[group] = groups.get(group, 0) + 1
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:8]
    return ", ".join(f"{g}.* ({n})" for g, n in top) or "no tensors"


def detect(shapes: Shapes, read: Callable[[str], Any] | None = None, *, prediction: str | None = None,
           source: str = "checkpoint") -> Detected:
    """Detect the family of a single-file checkpoint from its key names and shapes.

    ``read(key)`` returns one tensor (used only for the SD2 v-prediction guess). ``prediction``
    ("eps" or "v") overrides the guess. Raises :class:`UnknownModelError` naming what was found.
    """
    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
    unet_prefix = UNET_PREFIX if UNET_PREFIX + "input_blocks.0.0.weight" in shapes else None
    vae_prefix = next((p for p in VAE_PREFIXES if p + "decoder.conv_in.weight" in shapes), None)

    encoders: list[TextEncoderSlot] = []
    family_name: str | None = None
    if _clip_hf_prefix(shapes, "conditioner.embedders.0.transformer.") and \
            _has_prefix(shapes, "conditioner.embedders.1.model."):
        family_name = "sdxl"
        encoders = [TextEncoderSlot("l", "conditioner.embedders.0.transformer.", "hf"),
                    TextEncoderSlot("g", "conditioner.embedders.1.model.", "openclip")]
    elif _has_prefix(shapes, "conditioner.embedders.0.model.") and \
            not _has_prefix(shapes, "conditioner.embedders.1."):
        family_name = "sdxl_refiner"
        encoders = [TextEncoderSlot("g", "conditioner.embedders.0.model.", "openclip")]
    elif _clip_hf_prefix(shapes, "cond_stage_model.transformer."):
        family_name = "sd1"
        encoders = [TextEncoderSlot("l", "cond_stage_model.transformer.", "hf")]
    elif _has_prefix(shapes, "cond_stage_model.model.transformer."):
        family_name = "sd2"
        encoders = [TextEncoderSlot("h", "cond_stage_model.model.", "openclip")]
    elif unet_prefix is not None:
        family_name = _family_from_unet_shapes(shapes, unet_prefix)

    if family_name is None or unet_prefix is None:
        what = "no diffusion model (model.diffusion_model.*)" if unet_prefix is None else \
            "a diffusion model whose text encoder and shapes match no known family"
        raise UnknownModelError(
            f"Could not detect the model type of {source}: found {what}. Key groups: {_key_groups(shapes)}. "
            "Loom loads single-file SD1.x, SD2.x (incl. v-prediction), SDXL base and SDXL refiner checkpoints "
            "in the original layout (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* or "
            "conditioner.embedders.*).")

    family = FAMILIES[family_name]
    _check_context_dim(shapes, unet_prefix, family, encoders, source)
    chosen, why = _prediction(shapes, read, unet_prefix, family, prediction)
    return Detected(family=family, prediction=chosen, prediction_source=why, unet_prefix=unet_prefix,
                    vae_prefix=vae_prefix, text_encoders=encoders, zero_terminal_snr="ztsnr" in shapes)


def model_sampling(detected: Detected) -> ModelSampling:
    """The noise schedule: SD's scaled-linear betas, rescaled to zero terminal SNR when the file says so."""
    if not detected.zero_terminal_snr:
        return ModelSampling.scaled_linear(prediction=detected.prediction)
    import torch

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_bar = root ** 2
    alphas_bar[-1] = 4.8973451890853435e-08  # ComfyUI's floor: keeps the last sigma finite
    sigmas = ((1 - alphas_bar) / alphas_bar) ** 0.5
    return ModelSampling(sigmas=sigmas.float(), prediction=detected.prediction)


def _family_from_unet_shapes(shapes: Shapes, prefix: str) -> str | None:
    """Full-size families recognised from the UNet alone (a checkpoint without its text encoder)."""
    context = _context_dim(shapes, prefix)
    adm = shapes.get(prefix + "label_emb.0.0.weight")
    channels = shapes[prefix + "input_blocks.0.0.weight"][0]
    if adm is None and context == 768:
        return "sd1"
    if adm is None and context == 1024:
        return "sd2"
    if adm is not None and context == 2048 and adm[1] == 2816:
        return "sdxl"
    if adm is not None and context == 1280 and adm[1] == 2560 and channels == 384:
        return "sdxl_refiner"
    return None


def _context_dim(shapes: Shapes, prefix: str) -> int | None:
    for key, shape in shapes.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight"):
            return shape[1]
    return None


def _check_context_dim(shapes: Shapes, prefix: str, family: Family, encoders: list[TextEncoderSlot],
                       source: str) -> None:
    if not encoders:
        return
    widths = [clip_width(shapes, slot) for slot in encoders]
    expected = sum(widths)
    context = _context_dim(shapes, prefix)
    has_adm = prefix + "label_emb.0.0.weight" in shapes
    if context is not None and context != expected:
        raise UnknownModelError(
            f"{source} looks like {family.display_name} (text encoder keys), but its UNet cross-attention width "
            f"{context} does not match the text encoder width {expected}")
    if bool(family.adm) != has_adm:
        raise UnknownModelError(
            f"{source} looks like {family.display_name} (text encoder keys), but its UNet "
            f"{'lacks' if family.adm else 'has'} the SDXL added-conditioning embedding (label_emb)")


def _prediction(shapes: Shapes, read: Callable[[str], Any] | None, prefix: str, family: Family,
                override: str | None) -> tuple[str, str]:
    if override is not None:
        return override, "override"
    if "v_pred" in shapes:
        return "v", "marker key"
    if family.name == "sd2" and read is not None and shapes[prefix + "input_blocks.0.0.weight"][1] == 4:
        key = _last_output_norm_bias(shapes, prefix)
        if key is not None:
            import torch
            bias = read(key).float()
            if torch.std(bias, unbiased=False) > 0.09:
                return "v", "norm statistics"
            return "eps", "norm statistics"
    return "eps", "family default"


def _last_output_norm_bias(shapes: Shapes, prefix: str) -> str | None:
    """ComfyUI looks at ``output_blocks.11.1.transformer_blocks.0.norm1.bias``: the last output block."""
    pattern = re.compile(re.escape(prefix) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")
    found = [(int(m.group(1)), key) for key in shapes if (m := pattern.match(key))]
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------
# Architecture configs from shapes
# ---------------------------------------------------------------------------------------------

def _count(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in shapes if (m := regex.match(key))})


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
    n_input = _count(shapes, p + r"input_blocks\.(\d+)\.")
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
        depth = _count(shapes, p + rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depths.append(depth)
        down_types.append("CrossAttnDownBlock2D" if depth else "DownBlock2D")

    mid_depth = _count(shapes, p + r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    up_types: list[str] = []
    up_depths: list[int] = []
    for up_index in range(len(levels)):
        first = up_index * (layers_per_block + 1)
        depth = _count(shapes, p + rf"output_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        up_depths.append(depth)
        up_types.append("CrossAttnUpBlock2D" if depth else "UpBlock2D")

    # diffusers gives the middle block the depth of the last level; blocks without attention ignore theirs.
    layers = [d if d else mid_depth or 1 for d in depths]
    if mid_depth and layers[-1] != mid_depth:
        raise UnknownModelError(f"the middle block depth {mid_depth} differs from the last level's {layers[-1]}")
    reverse_layers = [d if d else 1 for d in up_depths]

    linear = any(len(shape) == 2 for key, shape in shapes.items()
                 if key.startswith(prefix) and key.endswith(".proj_in.weight"))
    context = _context_dim(shapes, prefix) or 768

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


def vae_config(shapes: Shapes, prefix: str) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.AutoencoderKL`` read off an LDM-layout VAE."""
    p = re.escape(prefix)
    levels = _count(shapes, p + r"encoder\.down\.(\d+)\.")
    blocks = _count(shapes, p + r"encoder\.down\.0\.block\.(\d+)\.")
    channels = tuple(shapes[prefix + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels))
    latent = shapes[prefix + "decoder.conv_in.weight"][1]
    return dict(
        in_channels=shapes[prefix + "encoder.conv_in.weight"][1],
        out_channels=shapes[prefix + "decoder.conv_out.weight"][0],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=channels,
        layers_per_block=blocks,
        latent_channels=latent,
        norm_num_groups=32,
        use_quant_conv=prefix + "quant_conv.weight" in shapes,
        use_post_quant_conv=prefix + "post_quant_conv.weight" in shapes,
        mid_block_add_attention=prefix + "encoder.mid.attn_1.q.weight" in shapes,
    )


def clip_width(shapes: Shapes, slot: TextEncoderSlot) -> int:
    return _clip_token_embedding(shapes, slot)[1]


def _clip_token_embedding(shapes: Shapes, slot: TextEncoderSlot) -> tuple[int, ...]:
    if slot.layout == "openclip":
        return shapes[slot.prefix + "token_embedding.weight"]
    for base in (slot.prefix + "text_model.", slot.prefix):
        if base + "embeddings.token_embedding.weight" in shapes:
            return shapes[base + "embeddings.token_embedding.weight"]
    raise UnknownModelError(f"no token embedding under {slot.prefix}")


def clip_config(shapes: Shapes, slot: TextEncoderSlot) -> dict[str, Any]:
    """Keyword arguments for ``transformers.CLIPTextConfig`` of one text encoder."""
    vocab, width = _clip_token_embedding(shapes, slot)
    if slot.layout == "openclip":
        p = re.escape(slot.prefix)
        layers = _count(shapes, p + r"transformer\.resblocks\.(\d+)\.")
        positions = shapes[slot.prefix + "positional_embedding"][0]
        intermediate = shapes[slot.prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes.get(slot.prefix + "text_projection")
        projection_dim = projection[1] if projection is not None else width
        act = "gelu"
    else:
        base = slot.prefix + "text_model." if _has_prefix(shapes, slot.prefix + "text_model.") else slot.prefix
        p = re.escape(base)
        layers = _count(shapes, p + r"encoder\.layers\.(\d+)\.")
        positions = shapes[base + "embeddings.position_embedding.weight"][0]
        intermediate = shapes[base + "encoder.layers.0.mlp.fc1.weight"][0]
        projection_dim = width
        act = "quick_gelu"
    return dict(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=positions,
        hidden_act=act,
        projection_dim=projection_dim,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
