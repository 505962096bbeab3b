"""Diff ControlNets: files that hold a ControlNet's weights as differences to its base model's UNet weights.

    control_net = load_controlnet(path, model=model)   # DiffControlNetLoader: UNet weights + the file's diffs

As ComfyUI's ``load_controlnet_state_dict`` tells them apart and builds them: a file in the original layout
(``control_model.*``) with a ``difference`` tensor is one; every ControlNet tensor whose name the UNet also has
(``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``) gets the MODEL's weight added, the rest
(hint encoder, zero convolutions, middle output) is used as stored. ComfyUI reads the model's weights with its
patches (LoRA, merges) applied, so this does too. Loom compares the names after both are in diffusers' layout,
where the ControlNet's shared part has the UNet's own names (``conv_in``, ``time_embedding``,
``add_embedding``, ``down_blocks``, ``mid_block``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DIFF_KEY = "difference"  # the marker tensor diff files carry next to control_model.*


def is_diff(names: set[str] | list[str], layout: str) -> bool:
    """ComfyUI only looks for the marker in ``control_model.``-prefixed files."""
    return layout == "ldm" and DIFF_KEY in names


def file_is_diff(path: str | Path) -> bool:
    from loom.nodes.runtime import checkpoint
    from loom.nodes.runtime.controlnet import LDM_PREFIX

    with checkpoint.StateDictFile(path) as file:
        names = set(file.keys())
    return DIFF_KEY in names and LDM_PREFIX + "zero_convs.0.0.weight" in names


def add_unet_weights(tensors: dict[str, torch.Tensor], model: Any, source: str) -> dict[str, torch.Tensor]:
    """The diffusers-layout diff tensors with the MODEL's UNet weight added wherever the UNet has the name."""
    from loom.nodes.runtime.checkpoint_save import _patched
    from loom.nodes.runtime.controlnet import ControlNetError, model_kind

    if model_kind(model) != "unet":
        raise ControlNetError(f"{source} is a diff ControlNet for a UNet model (SD1/SD2/SDXL); the MODEL is "
                              f"{model.family}")
    out = dict(tensors)
    with _patched(model), torch.no_grad():
        unet = model.unet.state_dict()
        for name, diff in tensors.items():
            base = unet.get(name)
            if base is None:
                continue
            if tuple(base.shape) != tuple(diff.shape):
                raise ControlNetError(f"{source}: the diff ControlNet's {name} has shape {tuple(diff.shape)}, the "
                                      f"MODEL's {tuple(base.shape)}; connect the model the diff was made for")
            out[name] = diff + base.to(device=diff.device, dtype=diff.dtype)
    return out
