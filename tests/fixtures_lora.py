"""Tiny generated LoRAs that fit the tiny checkpoints of :mod:`tests.fixtures_checkpoints`.

    write_lora("kohya_sd1", path, seed=1)     # kohya SD1, diffusers-style UNet names
    write_lora("kohya_sd1_ldm", path)         # kohya SD1, original (LDM) UNet names
    write_lora("kohya_sdxl", path)            # kohya SDXL: LDM UNet names, lora_te1_ / lora_te2_
    write_lora("peft_sd1", path)              # diffusers/peft: unet.*.lora_A/lora_B, text_encoder.*

Module names come from the tiny models themselves; LDM names from the checkpoint fixtures' own
diffusers→LDM converter (independent of the runtime's key map, which is what the tests check).
Each LoRA covers attention projections, feed-forward layers, 1x1 and 3x3 convolutions (kohya: one
3x3 as a Tucker LoCon with ``lora_mid``) and the text encoders' attention and MLP layers.
Values are random (rank 4, alpha 2; peft files carry no alpha), stored as float16.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from tests.fixtures_checkpoints import checkpoint_path, unet_to_ldm

KINDS = ("kohya_sd1", "kohya_sd1_ldm", "kohya_sdxl", "peft_sd1")
RANK = 4
ALPHA = 2.0

_UNET_PATTERNS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                  "attn2.to_v", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "resnets.0.conv1",
                  "resnets.0.conv2", "time_emb_proj")
_TE_PATTERNS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                "mlp.fc2")


def _modules(model: torch.nn.Module, patterns: tuple[str, ...]) -> dict[str, torch.Size]:
    return {name: module.weight.shape for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.endswith(patterns)}


def _ldm_names(unet: torch.nn.Module, paths: list[str]) -> dict[str, str]:
    config = SimpleNamespace(layers_per_block=unet.config.layers_per_block,
                             up_block_types=unet.config.up_block_types)
    fake = {f"{path}.weight": torch.empty(0) for path in paths}
    converted = unet_to_ldm(fake, config)
    by_tensor = {id(t): key for key, t in converted.items()}
    return {path: by_tensor[id(fake[f"{path}.weight"])].removeprefix("model.diffusion_model.")
            .removesuffix(".weight") for path in paths}


def _te_path(path: str) -> str:
    return path if path.startswith("text_model.") else "text_model." + path


def _low_rank(name: str, shape: torch.Size, generator: torch.Generator, *, tucker: bool = False
              ) -> dict[str, torch.Tensor]:
    out_ch, in_ch, kernel = shape[0], shape[1], tuple(shape[2:])
    if tucker and kernel and kernel != (1, 1):
        return {"down": torch.randn((RANK, in_ch, 1, 1), generator=generator) * 0.3,
                "mid": torch.randn((RANK, RANK, *kernel), generator=generator) * 0.3,
                "up": torch.randn((out_ch, RANK, 1, 1), generator=generator) * 0.3}
    return {"down": torch.randn((RANK, in_ch, *kernel), generator=generator) * 0.3,
            "up": torch.randn((out_ch, RANK, *([1, 1] if kernel else [])), generator=generator) * 0.3}


def build_lora(kind: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """The state dict of a tiny LoRA of ``kind`` (float32, before saving)."""
    from loom.nodes.runtime.checkpoint import load_checkpoint

    if kind not in KINDS:
        raise ValueError(f"unknown tiny LoRA kind {kind!r}; known: {KINDS}")
    family = "sdxl" if kind == "kohya_sdxl" else "sd1"
    model, clip, _vae = load_checkpoint(checkpoint_path(family), device="cpu")
    generator = torch.Generator().manual_seed(seed)
    unet_modules = _modules(model.unet, _UNET_PATTERNS)
    ldm = _ldm_names(model.unet, list(unet_modules))
    state: dict[str, torch.Tensor] = {}

    def add(name: str, shape: torch.Size, tucker: bool = False) -> None:
        factors = _low_rank(name, shape, generator, tucker=tucker)
        if kind.startswith("peft"):
            state[f"{name}.lora_A.weight"] = factors["down"]
            state[f"{name}.lora_B.weight"] = factors["up"]
            return
        state[f"{name}.lora_down.weight"] = factors["down"]
        state[f"{name}.lora_up.weight"] = factors["up"]
        if "mid" in factors:
            state[f"{name}.lora_mid.weight"] = factors["mid"]
        state[f"{name}.alpha"] = torch.tensor(ALPHA)

    first_conv = True
    for path, shape in unet_modules.items():
        tucker = len(shape) == 4 and shape[2] == 3 and first_conv
        first_conv = first_conv and not tucker
        if kind == "kohya_sd1":
            add("lora_unet_" + path.replace(".", "_"), shape, tucker)
        elif kind in ("kohya_sd1_ldm", "kohya_sdxl"):
            add("lora_unet_" + ldm[path].replace(".", "_"), shape, tucker)
        else:
            add("unet." + path, shape)
    for name, (_tokenizer, encoder) in clip.encoders.items():
        for path, shape in _modules(encoder, _TE_PATTERNS).items():
            full = _te_path(path)
            if kind == "kohya_sdxl":
                add(("lora_te1_" if name == "l" else "lora_te2_") + full.replace(".", "_"), shape)
            elif kind.startswith("kohya"):
                add("lora_te_" + full.replace(".", "_"), shape)
            else:
                add("text_encoder." + full, shape)
    return state


def write_lora(kind: str, path: str | Path, seed: int = 1) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half().contiguous() for k, v in build_lora(kind, seed).items()}
    save_file(state, str(path), metadata={"ss_network_dim": str(RANK), "note": "tiny random test LoRA"})
    return path


def manual_delta(state: dict[str, Any], name: str, shape: torch.Size) -> torch.Tensor:
    """``(alpha / rank) * up @ down`` of one kohya module, computed independently in float64."""
    up = state[f"{name}.lora_up.weight"].double()
    down = state[f"{name}.lora_down.weight"].double()
    if f"{name}.lora_mid.weight" in state:
        mid = state[f"{name}.lora_mid.weight"].double()
        # W[o, i, h, w] = sum_r,s up[o, r] * mid[r, s, h, w] * down[s, i]
        delta = torch.einsum("or,rshw,si->oihw", up.flatten(1), mid, down.flatten(1))
    else:
        delta = (up.flatten(1) @ down.flatten(1)).reshape(shape)
    alpha = float(state[f"{name}.alpha"])
    return delta * (alpha / down.shape[0])
