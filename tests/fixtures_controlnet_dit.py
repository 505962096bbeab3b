"""Tiny random-weight SD3 and FLUX ControlNets in their real single-file layouts, and base models wide enough
for them to matter, for tests.

    write_sd3_controlnet(path)     # diffusers SD3ControlNetModel names (InstantX SD3 ControlNets)
    write_flux_controlnet(path)    # diffusers FluxControlNetModel names (InstantX FLUX ControlNets)
    write_sd3_base(path); write_flux_base(path)   # all-in-one checkpoints matching them

ComfyUI uses an SD3 ControlNet block's output ``width / 64 // blocks`` times, so a ControlNet on the one-head
SD3 test model would add nothing: the SD3 pair here is 256 wide (ComfyUI's depth 4) with 3 joint blocks in the
model and 2 in the ControlNet (outputs c0, c0, c1: the model's last block takes one too). The FLUX pair keeps
the FLUX fixture's width (64, 2 heads of 32) with 2 double + 2 single blocks in the model and 2 double + 1
single in the ControlNet. diffusers zero-initialises the ControlNet output layers, so every weight gets noise.
"""
from __future__ import annotations

from pathlib import Path

import torch

from loom.nodes.runtime.ldm_layout import mmdit_to_sd3
from tests.fixtures_checkpoints import CLIP_WIDTH, SD3_POSITIONS, _perturb, build_sd3_state_dict
from tests.fixtures_flux import (FLUX_CONTEXT, FLUX_HEAD_DIM, FLUX_POOLED, FLUX_WIDTH, _save,
                                 flux_bfl_state_dict, flux_checkpoint_state_dict)

SD3_CN_WIDTH = 256
SD3_BASE_LAYERS = 3
SD3_CN_LAYERS = 2
FLUX_BASE_DOUBLES = 2
FLUX_BASE_SINGLES = 2
FLUX_CN_DOUBLES = 2
FLUX_CN_SINGLES = 1


def _sd3_kwargs(layers: int) -> dict:
    return dict(sample_size=32, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=64,
                num_attention_heads=SD3_CN_WIDTH // 64, joint_attention_dim=4096,
                caption_projection_dim=SD3_CN_WIDTH, pooled_projection_dim=2 * CLIP_WIDTH, out_channels=16,
                pos_embed_max_size=SD3_POSITIONS)


def sd3_base_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The SD3 test checkpoint with a 256-wide, 3-block MMDiT (original layout) in place of the one-head one."""
    from diffusers import SD3Transformer2DModel

    state = {k: v for k, v in build_sd3_state_dict(seed).items() if not k.startswith("model.diffusion_model.")}
    torch.manual_seed(seed + 10)
    mmdit = SD3Transformer2DModel(**_sd3_kwargs(SD3_BASE_LAYERS))
    generator = torch.Generator().manual_seed(seed + 11)
    _perturb(mmdit, generator)
    with torch.no_grad():
        mmdit.pos_embed.pos_embed.copy_(torch.randn(mmdit.pos_embed.pos_embed.shape, generator=generator))
    state.update(mmdit_to_sd3(mmdit.state_dict(), SD3_BASE_LAYERS))
    return state


def sd3_controlnet_state_dict(seed: int = 0, *, layers: int = SD3_CN_LAYERS, scale: float = 0.05
                              ) -> dict[str, torch.Tensor]:
    """An SD3 ControlNet in diffusers' ``SD3ControlNetModel`` names (InstantX files)."""
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed + 20)
    net = SD3ControlNetModel(**_sd3_kwargs(layers))
    generator = torch.Generator().manual_seed(seed + 21)
    _perturb(net, generator, scale)
    with torch.no_grad():
        net.pos_embed.pos_embed.copy_(torch.randn(net.pos_embed.pos_embed.shape, generator=generator))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def flux_base_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The FLUX dev test checkpoint with 2 double + 2 single blocks."""
    state = {k: v for k, v in flux_checkpoint_state_dict(seed).items() if not k.startswith("model.diffusion_model.")}
    state.update({"model.diffusion_model." + k: v for k, v in
                  flux_bfl_state_dict(seed, doubles=FLUX_BASE_DOUBLES, singles=FLUX_BASE_SINGLES).items()})
    return state


def flux_controlnet_state_dict(seed: int = 0, *, doubles: int = FLUX_CN_DOUBLES, singles: int = FLUX_CN_SINGLES,
                               scale: float = 0.05, modes: int | None = None) -> dict[str, torch.Tensor]:
    """A FLUX ControlNet in diffusers' ``FluxControlNetModel`` names (InstantX files), for the dev fixture;
    ``modes``: a union one (InstantX / Shakker-Labs Union: ``controlnet_mode_embedder``)."""
    from diffusers import FluxControlNetModel

    from loom.nodes.runtime.flux_layout import rope_axes

    torch.manual_seed(seed + 30)
    net = FluxControlNetModel(patch_size=1, in_channels=64, num_layers=doubles, num_single_layers=singles,
                              attention_head_dim=FLUX_HEAD_DIM, num_attention_heads=FLUX_WIDTH // FLUX_HEAD_DIM,
                              joint_attention_dim=FLUX_CONTEXT, pooled_projection_dim=FLUX_POOLED,
                              guidance_embeds=True, axes_dims_rope=rope_axes(FLUX_HEAD_DIM), num_mode=modes)
    _perturb(net, torch.Generator().manual_seed(seed + 31), scale)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def write_sd3_base(path: str | Path, seed: int = 0) -> Path:
    return _save(sd3_base_state_dict(seed), path, None, "tiny random SD3 checkpoint, 256 wide, 3 joint blocks")


def write_sd3_controlnet(path: str | Path, seed: int = 0, **options) -> Path:
    return _save(sd3_controlnet_state_dict(seed, **options), path, None, "tiny random SD3 ControlNet (diffusers)")


def write_flux_base(path: str | Path, seed: int = 0) -> Path:
    return _save(flux_base_state_dict(seed), path, None, "tiny random FLUX dev checkpoint, 2+2 blocks")


def write_flux_controlnet(path: str | Path, seed: int = 0, **options) -> Path:
    return _save(flux_controlnet_state_dict(seed, **options), path, None, "tiny random FLUX ControlNet (InstantX)")
