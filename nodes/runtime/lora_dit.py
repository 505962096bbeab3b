"""LoRA key maps of the diffusion transformers (SD3/SD3.5 and FLUX.1), as ComfyUI's ``model_lora_keys_unet``
names their modules, onto the diffusers networks Loom builds.

Both families accept two kinds of names:

* the network's original layout, the names ComfyUI's own model has: ``lora_unet_<key with _>`` (kohya,
  e.g. ``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_single_blocks_0_linear1``,
  ``lora_unet_joint_blocks_0_x_block_attn_qkv``) and ``diffusion_model.<key>``;
* diffusers' names: ``transformer.<module>`` (diffusers, ai-toolkit, SimpleTuner), ``lora_transformer_<module
  with _>`` (OneTrainer) and ``lycoris_<module with _>``; SD3 also ``base_model.model.<module>``.

Loom's networks are diffusers': BFL's fused ``qkv`` (and a single block's ``linear1``: q, k, v and the MLP
input) and the MMDiT's ``qkv`` are split into ``to_q``/``to_k``/``to_v`` (``proj_mlp``). A LoRA on a fused
weight changes it by ``up @ down``; the rows of that change that belong to one split weight are the same rows
of ``up`` times ``down``, so each split weight gets those rows (``LoraTarget.rows``), which is exactly what
patching the fused weight and splitting it afterwards gives. The final adaLN modulation (and SD3's last
context block's) is stored (shift, scale) in the original layout and (scale, shift) in diffusers', so its
rows are swapped.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from loom.nodes.runtime import flux_layout
from loom.nodes.runtime.lora import KeyMap, LoraTarget

Rows = tuple[tuple[int, int], ...] | None


def _linear_paths(module: torch.nn.Module) -> Iterator[str]:
    for name, child in module.named_modules():
        if name and isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
            yield name


def _has(module: torch.nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _swap(width: int) -> Rows:
    """(shift, scale) rows → (scale, shift): each half of a ``2 * width`` modulation takes the other's rows."""
    return ((width, 2 * width), (0, width))


def _split(widths: list[int]) -> list[Rows]:
    bounds, start = [], 0
    for width in widths:
        bounds.append(((start, start + width),))
        start += width
    return bounds


def _add_original(key_map: KeyMap, original: dict[str, list[tuple[str, Rows]]], component: str,
                  prefix: str) -> None:
    """``lora_unet_<name with _>`` and ``diffusion_model.<name>`` for each original-layout module."""
    for name, parts in original.items():
        targets = tuple(LoraTarget(component, prefix + path, rows) for path, rows in parts)
        key_map[f"lora_unet_{name.replace('.', '_')}"] = targets
        key_map[f"diffusion_model.{name}"] = targets


def _add_diffusers(key_map: KeyMap, network: torch.nn.Module, component: str, prefix: str,
                   styles: tuple[str, ...]) -> None:
    for path in _linear_paths(network):
        target = (LoraTarget(component, prefix + path),)
        flat = path.replace(".", "_")
        for style in styles:
            key_map[style.format(path=path, flat=flat)] = target


# ---------------------------------------------------------------------------------------------
# FLUX.1
# ---------------------------------------------------------------------------------------------

def flux_original_modules(transformer: torch.nn.Module) -> dict[str, list[tuple[str, Rows]]]:
    """BFL module name → ``[(diffusers module path, rows of the BFL weight)]`` for a built
    ``FluxTransformer2DModel`` (the inverse of :func:`flux_layout.convert_bfl`, by module)."""
    config = transformer.config
    hidden = config.attention_head_dim * config.num_attention_heads
    out: dict[str, list[tuple[str, Rows]]] = {}
    for old, new in flux_layout._RENAMES.items():
        if _has(transformer, new):
            out[old] = [(new, None)]
    out["final_layer.adaLN_modulation.1"] = [("norm_out.linear", _swap(hidden))]
    for i in range(config.num_layers):
        old, new = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for a, b in flux_layout._DOUBLE_RENAMES.items():
            out[old + a] = [(new + b, None)]
        out[old + "img_attn.qkv"] = list(zip([new + f"attn.to_{n}" for n in "qkv"], _split([hidden] * 3)))
        out[old + "txt_attn.qkv"] = list(zip([new + f"attn.add_{n}_proj" for n in "qkv"], _split([hidden] * 3)))
    for i in range(config.num_single_layers):
        old, new = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        mlp = transformer.get_submodule(new + "proj_mlp").out_features
        out[old + "modulation.lin"] = [(new + "norm.linear", None)]
        out[old + "linear2"] = [(new + "proj_out", None)]
        out[old + "linear1"] = list(zip([new + f"attn.to_{n}" for n in "qkv"] + [new + "proj_mlp"],
                                        _split([hidden] * 3 + [mlp])))
    return out


def flux_key_map(network: Any) -> KeyMap:
    """Every LoRA name of a FLUX model's modules (``network``: a :class:`flux_layout.FluxNetwork`)."""
    transformer = network.transformer
    key_map: KeyMap = {}
    _add_original(key_map, flux_original_modules(transformer), "unet", "transformer.")
    _add_diffusers(key_map, transformer, "unet", "transformer.",
                   ("transformer.{path}", "lycoris_{flat}", "lora_transformer_{flat}"))
    return key_map


# ---------------------------------------------------------------------------------------------
# SD3 / SD3.5
# ---------------------------------------------------------------------------------------------

_SD3_FIXED = {
    "x_embedder.proj": "pos_embed.proj",
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_SD3_BLOCK = {
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
}


def sd3_original_modules(network: torch.nn.Module) -> dict[str, list[tuple[str, Rows]]]:
    """MMDiT module name → ``[(diffusers module path, rows of the MMDiT weight)]`` for a built
    ``SD3Transformer2DModel`` (the inverse of diffusers' single-file SD3 converter, by module)."""
    config = network.config
    hidden = config.attention_head_dim * config.num_attention_heads
    out: dict[str, list[tuple[str, Rows]]] = {old: [(new, None)] for old, new in _SD3_FIXED.items()}
    out["final_layer.adaLN_modulation.1"] = [("norm_out.linear", _swap(hidden))]
    for i in range(config.num_layers):
        old, new = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        for a, b in _SD3_BLOCK.items():
            if _has(network, new + b):
                out[old + a] = [(new + b, None)]
        out[old + "x_block.attn.qkv"] = list(zip([new + f"attn.to_{n}" for n in "qkv"], _split([hidden] * 3)))
        if _has(network, new + "attn2.to_q"):
            out[old + "x_block.attn2.qkv"] = list(zip([new + f"attn2.to_{n}" for n in "qkv"],
                                                      _split([hidden] * 3)))
        out[old + "context_block.attn.qkv"] = list(zip([new + f"attn.add_{n}_proj" for n in "qkv"],
                                                       _split([hidden] * 3)))
        context_norm = network.get_submodule(new + "norm1_context.linear")
        pre_only = getattr(network.transformer_blocks[i], "context_pre_only", False)
        rows = _swap(context_norm.out_features // 2) if pre_only else None
        out[old + "context_block.adaLN_modulation.1"] = [(new + "norm1_context.linear", rows)]
    return out


def sd3_key_map(network: torch.nn.Module) -> KeyMap:
    """Every LoRA name of an SD3 model's modules (``network``: diffusers' ``SD3Transformer2DModel``)."""
    key_map: KeyMap = {}
    _add_original(key_map, sd3_original_modules(network), "unet", "")
    _add_diffusers(key_map, network, "unet", "",
                   ("transformer.{path}", "base_model.model.{path}", "lora_transformer_{flat}", "lycoris_{flat}"))
    return key_map
