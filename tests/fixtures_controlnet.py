"""Tiny generated ControlNets that fit the tiny checkpoints of :mod:`tests.fixtures_checkpoints`.

    write_controlnet("sd1", path, layout="ldm")        # control_model.input_blocks.*, zero_convs.*, ...
    write_controlnet("sd1", path, layout="ldm_bare")   # the same names without control_model. (.pth era)
    write_controlnet("sd1", path, layout="diffusers")  # controlnet_down_blocks.*, controlnet_cond_embedding.*
    write_controlnet("sdxl", path, layout="diffusers")

Each is diffusers' ``ControlNetModel.from_unet`` of the tiny checkpoint's UNet (the default hint encoder
16-32-96-256, so a 64×64 hint for an 8×8 latent), every weight perturbed so that the zero convolutions
carry signal, stored as float16. The LDM names come from the checkpoint fixtures' converter plus the
ControlNet-specific renames (hint encoder, zero convolutions, middle output).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from tests.fixtures_checkpoints import checkpoint_path, unet_to_ldm

LAYOUTS = ("ldm", "ldm_bare", "diffusers")


def build_controlnet(family: str = "sd1", seed: int = 3) -> dict[str, torch.Tensor]:
    """The diffusers-layout state dict of a tiny ControlNet for the tiny ``family`` checkpoint."""
    from diffusers import ControlNetModel

    from loom.nodes.runtime.checkpoint import load_checkpoint

    model, _clip, _vae = load_checkpoint(checkpoint_path(family), device="cpu")
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(model.unet, conditioning_channels=3)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return {k: v.detach().clone() for k, v in controlnet.state_dict().items()}


def controlnet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet state dict under the original names (without the ``control_model.`` prefix)."""
    shared = {k: v for k, v in state.items()
              if k.startswith(("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block."))}
    config = SimpleNamespace(layers_per_block=layers_per_block, up_block_types=())
    out = {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(shared, config).items()}
    blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    for key, tensor in state.items():
        parts = key.split(".")
        if key.startswith("controlnet_cond_embedding.conv_in."):
            out[f"input_hint_block.0.{parts[-1]}"] = tensor
        elif key.startswith("controlnet_cond_embedding.blocks."):
            out[f"input_hint_block.{2 * (int(parts[2]) + 1)}.{parts[-1]}"] = tensor
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            out[f"input_hint_block.{2 * (blocks + 1)}.{parts[-1]}"] = tensor
        elif key.startswith("controlnet_down_blocks."):
            out[f"zero_convs.{parts[1]}.0.{parts[-1]}"] = tensor
        elif key.startswith("controlnet_mid_block."):
            out[f"middle_block_out.0.{parts[-1]}"] = tensor
    assert len(out) == len(state), "every ControlNet tensor gets an original name"
    return out


def write_controlnet(family: str, path: str | Path, *, layout: str = "ldm", seed: int = 3) -> Path:
    from safetensors.torch import save_file

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {LAYOUTS}")
    state = build_controlnet(family, seed)
    if layout != "diffusers":
        from loom.nodes.runtime.checkpoint import load_checkpoint

        model, _clip, _vae = load_checkpoint(checkpoint_path(family), device="cpu")
        state = controlnet_to_ldm(state, model.unet.config.layers_per_block)
        if layout == "ldm":
            state = {"control_model." + k: v for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path),
              metadata={"note": "tiny random test ControlNet"})
    return path


UNION_TYPES = 8  # ProMax: the eight UNION_CONTROLNET_TYPES


def union_parts(width: int, time_width: int, *, types: int = UNION_TYPES, seed: int = 5) -> dict[str, torch.Tensor]:
    """The union tensors of an SDXL ControlNet++ Union / ProMax file (xinsir), under the names and shapes of
    diffusers' ``ControlNetUnionModel`` parts: ``width`` is the hint encoder's output (SDXL: 320)."""
    from diffusers.models.controlnets.controlnet_union import ResidualAttentionBlock
    from diffusers.models.embeddings import TimestepEmbedding

    torch.manual_seed(seed)
    parts = {"task_embedding": torch.nn.Parameter(torch.randn(types, width)),
             "transformer_layes.0": ResidualAttentionBlock(width, 8),
             "control_add_embedding": TimestepEmbedding(256 * types, time_width),
             "spatial_ch_projs": torch.nn.Linear(width, width)}
    state: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(seed)
    for prefix, part in parts.items():
        named = {"": part} if isinstance(part, torch.nn.Parameter) else part.state_dict()
        for key, tensor in named.items():
            noisy = tensor.detach() + torch.randn(tensor.shape, generator=generator) * 0.05
            state[f"{prefix}.{key}" if key else prefix] = noisy
    return state


def write_union_controlnet(path: str | Path, *, types: int = UNION_TYPES, seed: int = 3) -> Path:
    """A tiny SDXL union ControlNet (diffusers layout + the union parts), float32."""
    from safetensors.torch import save_file

    state = build_controlnet("sdxl", seed)
    width = state["controlnet_cond_embedding.conv_out.weight"].shape[0]
    time_width = state["time_embedding.linear_2.weight"].shape[0]
    state.update(union_parts(width, time_width, types=types, seed=seed + 2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(path),
              metadata={"note": "tiny random test union ControlNet"})
    return path
