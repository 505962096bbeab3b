"""Configs from shapes for the parts families share: the LDM-layout VAE and CLIP text encoders (transformers
or OpenCLIP names), plus small helpers for reading a state dict's key names and shapes."""
from __future__ import annotations

import re
from typing import Any

from loom.nodes.runtime.families.base import Shapes, TextEncoderSlot, UnknownModelError


def count(shapes: Shapes, pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over the keys."""
    regex = re.compile(pattern)
    return len({m.group(1) for key in shapes if (m := regex.match(key))})


def has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def clip_hf_prefix(shapes: Shapes, base: str) -> str | None:
    """``base`` if it holds a transformers-layout CLIP (with or without ``text_model.``)."""
    for candidate in (base + "text_model.", base):
        if candidate + "embeddings.token_embedding.weight" in shapes:
            return base
    return None


def key_groups(shapes: Shapes) -> str:
    """The largest key groups, for error messages."""
    groups: dict[str, int] = {}
    for key in shapes:
        parts = key.split(".")
        group = ".".join(parts[:3] if parts[0] in ("conditioner", "cond_stage_model", "text_encoders")
                         else parts[:2])
        groups[group] = groups.get(group, 0) + 1
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:8]
    return ", ".join(f"{g}.* ({n})" for g, n in top) or "no tensors"


def vae_config(shapes: Shapes, prefix: str) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.AutoencoderKL`` read off an LDM-layout VAE (4 or 16 latent
    channels; the quant convolutions only when the file has them, as SD3's and FLUX's VAEs do not)."""
    p = re.escape(prefix)
    levels = count(shapes, p + r"encoder\.down\.(\d+)\.")
    blocks = count(shapes, p + r"encoder\.down\.0\.block\.(\d+)\.")
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
    """Keyword arguments for ``transformers.CLIPTextConfig`` of one text encoder.

    The activation follows ComfyUI's configs: CLIP-L (OpenAI) uses quick_gelu, OpenCLIP ViT-H and bigG
    use gelu, also when stored in transformers names (SD3's ``clip_g``)."""
    vocab, width = _clip_token_embedding(shapes, slot)
    if slot.layout == "openclip":
        p = re.escape(slot.prefix)
        layers = count(shapes, p + r"transformer\.resblocks\.(\d+)\.")
        positions = shapes[slot.prefix + "positional_embedding"][0]
        intermediate = shapes[slot.prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes.get(slot.prefix + "text_projection")
        projection_dim = projection[1] if projection is not None else width
        act = "gelu"
    else:
        base = slot.prefix + "text_model." if has_prefix(shapes, slot.prefix + "text_model.") else slot.prefix
        p = re.escape(base)
        layers = count(shapes, p + r"encoder\.layers\.(\d+)\.")
        positions = shapes[base + "embeddings.position_embedding.weight"][0]
        intermediate = shapes[base + "encoder.layers.0.mlp.fc1.weight"][0]
        projection = shapes.get(slot.prefix + "text_projection.weight")
        projection_dim = projection[0] if projection is not None else width
        act = "quick_gelu" if slot.name == "l" else "gelu"
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
