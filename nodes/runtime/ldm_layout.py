"""diffusers/transformers state dicts in the original single-file (LDM) key layout: the inverse of loading.

Diffusers converts original checkpoints to its own names but has no converter back that handles reduced
sizes; Loom needs one to write checkpoints of its own (the test fixtures' tiny models, and the demo model
that ``tools/train_demo_model.py`` trains). Generic over levels and blocks per level.

    state = unet_to_ldm(unet.state_dict(), unet.config)        # model.diffusion_model.*
    state |= vae_to_ldm(vae.state_dict(), vae.config)          # first_stage_model.*
    state |= clip_to_hf_ldm(clip.state_dict(), "cond_stage_model.transformer.")
"""
from __future__ import annotations

from typing import Any

import torch


_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _resnet_to_ldm(rest: str) -> str:
    for old, new in _RESNET_TO_LDM:
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    raise KeyError(rest)


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in the original ``model.diffusion_model`` layout."""
    per_level = config.layers_per_block
    has_attention_up = ["CrossAttn" in t for t in config.up_block_types]
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, tensor in state.items():
        parts = key.split(".")
        module, leaf = ".".join(parts[:-1]), parts[-1]
        if module in fixed:
            new = f"{fixed[module]}.{leaf}"
        elif parts[0] == "down_blocks":
            level, kind, index = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            block = 1 + level * (per_level + 1) + index
            if kind == "resnets":
                new = f"input_blocks.{block}.0.{_resnet_to_ldm(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{block}.1.{rest}"
            else:  # downsamplers.0.conv
                new = f"input_blocks.{(level + 1) * (per_level + 1)}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = (f"middle_block.{2 * index}.{_resnet_to_ldm(rest)}" if kind == "resnets"
                   else f"middle_block.1.{rest}")
        elif parts[0] == "up_blocks":
            level, kind, index = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            block = level * (per_level + 1) + index
            if kind == "resnets":
                new = f"output_blocks.{block}.0.{_resnet_to_ldm(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{block}.1.{rest}"
            else:  # upsamplers.0.conv sits after the last resnet (and its attention, if any)
                last = level * (per_level + 1) + per_level
                new = f"output_blocks.{last}.{2 if has_attention_up[level] else 1}.conv.{parts[-1]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = tensor
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the original ``first_stage_model`` layout."""
    levels = len(config.block_out_channels)
    attention_names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, tensor in state.items():
        parts = key.split(".")
        side = parts[0]
        rest = parts[1:]
        name = ".".join(rest)
        if rest[0] in ("conv_in", "conv_out"):
            new = f"{side}.{name}"
        elif rest[0] == "conv_norm_out":
            new = f"{side}.norm_out.{rest[-1]}"
        elif side in ("quant_conv", "post_quant_conv"):
            new = key
        elif rest[0] in ("down_blocks", "up_blocks"):
            level = int(rest[1])
            ldm_level = level if rest[0] == "down_blocks" else levels - 1 - level
            group = "down" if rest[0] == "down_blocks" else "up"
            if rest[2] == "resnets":
                inner = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.{group}.{ldm_level}.block.{rest[3]}.{inner}"
            else:  # downsamplers / upsamplers
                sampler = "downsample" if group == "down" else "upsample"
                new = f"{side}.{group}.{ldm_level}.{sampler}.conv.{rest[-1]}"
        elif rest[0] == "mid_block" and rest[1] == "resnets":
            inner = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            new = f"{side}.mid.block_{int(rest[2]) + 1}.{inner}"
        elif rest[0] == "mid_block" and rest[1] == "attentions":
            module = ".".join(rest[3:-1])
            new = f"{side}.mid.attn_1.{attention_names[module]}.{rest[-1]}"
            if tensor.ndim == 2:  # the original stores these as 1x1 convolutions
                tensor = tensor[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out["first_stage_model." + new] = tensor
    return out


def clip_to_hf_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` under ``prefix`` + ``text_model.`` (the SD1/SDXL CLIP-L layout)."""
    return {prefix + "text_model." + key.removeprefix("text_model."): tensor for key, tensor in state.items()
            if not key.endswith("position_ids")}


def clip_to_openclip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModelWithProjection`` in OpenCLIP's layout under ``prefix``."""
    state = {key.removeprefix("text_model."): tensor for key, tensor in state.items()}
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
        prefix + "text_projection": state.pop("text_projection.weight").T.contiguous(),
        prefix + "logit_scale": torch.tensor(4.6052),
    }
    state.pop("embeddings.position_ids", None)
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(len(layers)):
        source = f"encoder.layers.{i}."
        target = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[target + f"attn.in_proj_{kind}"] = torch.cat(
                [state.pop(source + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
            for old, new in renames.items():
                out[target + f"{new}.{kind}"] = state.pop(source + f"{old}.{kind}")
    if state:
        raise KeyError(f"CLIP keys left unconverted: {sorted(state)[:5]}")
    return out


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """SD3's final adaLN (and the last context block's) holds (shift, scale); diffusers' (scale, shift)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def mmdit_to_sd3(state: dict[str, torch.Tensor], num_layers: int, prefix: str = "model.diffusion_model."
                 ) -> dict[str, torch.Tensor]:
    """A diffusers ``SD3Transformer2DModel`` state dict in SD3's original MMDiT layout under ``prefix`` (the
    inverse of diffusers' single-file converter, for blocks without dual attention or q/k norms)."""
    s = dict(state)
    out = {
        "pos_embed": s.pop("pos_embed.pos_embed"),
        "x_embedder.proj.weight": s.pop("pos_embed.proj.weight"),
        "x_embedder.proj.bias": s.pop("pos_embed.proj.bias"),
        "context_embedder.weight": s.pop("context_embedder.weight"),
        "context_embedder.bias": s.pop("context_embedder.bias"),
        "final_layer.linear.weight": s.pop("proj_out.weight"),
        "final_layer.linear.bias": s.pop("proj_out.bias"),
        "final_layer.adaLN_modulation.1.weight": _swap_halves(s.pop("norm_out.linear.weight")),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(s.pop("norm_out.linear.bias")),
    }
    for ours, theirs in (("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
                         ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
                         ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
                         ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")):
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = s.pop(f"{theirs}.{kind}")
    for i in range(num_layers):
        b, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == num_layers - 1
        for kind in ("weight", "bias"):
            out[f"{j}x_block.attn.qkv.{kind}"] = torch.cat([s.pop(f"{b}attn.to_{n}.{kind}") for n in "qkv"])
            out[f"{j}context_block.attn.qkv.{kind}"] = torch.cat(
                [s.pop(f"{b}attn.add_{n}_proj.{kind}") for n in "qkv"])
            out[f"{j}x_block.attn.proj.{kind}"] = s.pop(f"{b}attn.to_out.0.{kind}")
            out[f"{j}x_block.adaLN_modulation.1.{kind}"] = s.pop(f"{b}norm1.linear.{kind}")
            context_norm = s.pop(f"{b}norm1_context.linear.{kind}")
            out[f"{j}context_block.adaLN_modulation.1.{kind}"] = _swap_halves(context_norm) if last else context_norm
            out[f"{j}x_block.mlp.fc1.{kind}"] = s.pop(f"{b}ff.net.0.proj.{kind}")
            out[f"{j}x_block.mlp.fc2.{kind}"] = s.pop(f"{b}ff.net.2.{kind}")
            if not last:
                out[f"{j}context_block.attn.proj.{kind}"] = s.pop(f"{b}attn.to_add_out.{kind}")
                out[f"{j}context_block.mlp.fc1.{kind}"] = s.pop(f"{b}ff_context.net.0.proj.{kind}")
                out[f"{j}context_block.mlp.fc2.{kind}"] = s.pop(f"{b}ff_context.net.2.{kind}")
    if s:
        raise ValueError(f"mmdit_to_sd3: {len(s)} tensors have no SD3 name (e.g. {', '.join(sorted(s)[:5])})")
    return {prefix + key: tensor for key, tensor in out.items()}
