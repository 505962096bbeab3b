"""Tiny random-weight single-file checkpoints in the real original (LDM) key layouts, for tests.

    path = checkpoint_path("sd1")                  # built once, then reused from the cache folder
    write_checkpoint("sdxl", models / "checkpoints" / "sd_xl_base_1.0.safetensors")

Families: ``sd1`` (CLIP-L ``cond_stage_model.transformer.*``), ``sd2_v`` (OpenCLIP-H
``cond_stage_model.model.*``, v-prediction by ComfyUI's norm-statistics rule), ``sd2`` (the same,
epsilon), ``sdxl`` (``conditioner.embedders.0.transformer.*`` + ``conditioner.embedders.1.model.*``)
and ``sdxl_refiner`` (``conditioner.embedders.0.model.*``). Each is built with diffusers/transformers
at small width (UNet levels of 32 and 64 channels, one block per level; text encoders 32 wide with
3 layers, but the real 49,408-token vocabulary and 77 positions so the real tokenizer works; a
VAE with four 32-channel levels, so the real 8x downscale), converted to the LDM layout by
``loom.nodes.runtime.ldm_layout`` (diffusers has no converters back that handle reduced sizes) and
stored as float16, like most published checkpoints. The weights follow the head-count conventions the loader assumes (SD1 UNet
8 heads, others 64 channels per head, at least one), so nothing in the loader is test-specific.

Deterministic: the same family and seed give the same tensors. Files are cached under
``$LOOM_TEST_CACHE`` (default: a folder in the system temp dir) keyed by a format version.

Pytest fixtures (import them into a test module to use, ``from tests.fixtures_checkpoints import
tiny_checkpoints``): ``tiny_checkpoints`` (session; family → path) and ``tiny_models_dir`` (the test
base dir with all of them hard-linked into ``models/checkpoints`` under ``FILE_NAMES``). Change
``FORMAT_VERSION`` whenever the builder changes, so stale cached files are not reused.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from loom.nodes.runtime.ldm_layout import clip_to_hf_ldm, clip_to_openclip, mmdit_to_sd3, unet_to_ldm, vae_to_ldm

FORMAT_VERSION = 1
FAMILIES = ("sd1", "sd2", "sd2_v", "sdxl", "sdxl_refiner")
FILE_NAMES = {
    "sd1": "tiny-sd1.safetensors",
    "sd2": "tiny-sd2.safetensors",
    "sd2_v": "tiny-sd2-v.safetensors",
    "sdxl": "tiny-sdxl.safetensors",
    "sdxl_refiner": "tiny-sdxl-refiner.safetensors",
    "sd3": "tiny-sd3.safetensors",
}
DIT_FAMILIES = ("sd3",)
"""Built on request only (not by ``tiny_checkpoints``/``tiny_models_dir``): ``checkpoint_path("sd3")``."""
SD3_HIDDEN = 64  # one 64-wide head, ComfyUI's depth 1
SD3_LAYERS = 2
SD3_POSITIONS = 16  # a 16x16 patch grid: latents up to 32x32 (256x256 pixels)

CLIP_WIDTH = 32
CLIP_LAYERS = 3
SDXL_TIME_EMBED_DIM = 8


# ---------------------------------------------------------------------------------------------
# Tiny modules
# ---------------------------------------------------------------------------------------------

def _perturb(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.02) -> None:
    """diffusers zero-initialises output convolutions; give every weight some signal."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def tiny_unet(family: str, context_dim: int, pooled_dim: int = 0):
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                  cross_attention_dim=context_dim, norm_num_groups=32)
    if family == "sd1":
        return UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    attention_head_dim=8, **common)
    if family in ("sd2", "sd2_v"):
        return UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    attention_head_dim=(1, 1), use_linear_projection=True, upcast_attention=True,
                                    **common)
    time_ids = 6 if family == "sdxl" else 5
    return UNet2DConditionModel(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                transformer_layers_per_block=(2, 2), attention_head_dim=(1, 1),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                                projection_class_embeddings_input_dim=pooled_dim + time_ids * SDXL_TIME_EMBED_DIM,
                                **common)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                         layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64)


def tiny_clip(kind: str):
    """``"l"``: CLIPTextModel (quick_gelu); ``"h"``/``"g"``: CLIPTextModelWithProjection (gelu)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH,
                            num_hidden_layers=CLIP_LAYERS, num_attention_heads=1, max_position_embeddings=77,
                            hidden_act="quick_gelu" if kind == "l" else "gelu", projection_dim=CLIP_WIDTH,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    return CLIPTextModel(config) if kind == "l" else CLIPTextModelWithProjection(config)


def tiny_mmdit():
    """An SD3 MMDiT at the smallest width (64, one head), 2 joint blocks, CLIP-L+G pooled width 2x32."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=SD3_LAYERS,
                                 attention_head_dim=64, num_attention_heads=SD3_HIDDEN // 64,
                                 joint_attention_dim=4096, caption_projection_dim=SD3_HIDDEN,
                                 pooled_projection_dim=2 * CLIP_WIDTH, out_channels=16,
                                 pos_embed_max_size=SD3_POSITIONS)


def tiny_sd3_clip(kind: str):
    """SD3's CLIP-L / CLIP-G in transformers names, both with their ``text_projection`` as in SD3 files."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH,
                            num_hidden_layers=CLIP_LAYERS, num_attention_heads=1, max_position_embeddings=77,
                            hidden_act="quick_gelu" if kind == "l" else "gelu", projection_dim=CLIP_WIDTH,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    return CLIPTextModelWithProjection(config)


def build_sd3_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """An SD3-medium-style all-in-one file at tiny widths: the MMDiT under ``model.diffusion_model.`` in the
    original layout, CLIP-L and CLIP-G under ``text_encoders.clip_{l,g}.transformer.`` (no T5) and a
    16-channel VAE without quant convolutions under ``first_stage_model.``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    state: dict[str, torch.Tensor] = {}
    for kind in ("l", "g"):
        clip = tiny_sd3_clip(kind)
        _perturb(clip, generator)
        state.update({f"text_encoders.clip_{kind}.transformer.{k}": v for k, v in clip.state_dict().items()
                      if not k.endswith("position_ids")})
    mmdit = tiny_mmdit()
    _perturb(mmdit, generator)
    with torch.no_grad():  # a unit-scale position table, like the real sin-cos one
        mmdit.pos_embed.pos_embed.copy_(torch.randn(mmdit.pos_embed.pos_embed.shape, generator=generator))
    state.update(mmdit_to_sd3(mmdit.state_dict(), SD3_LAYERS))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                        layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=64,
                        use_quant_conv=False, use_post_quant_conv=False)
    _perturb(vae, generator)
    state.update(vae_to_ldm(vae.state_dict(), vae.config))
    return state


def build_state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The full single-file state dict of a tiny checkpoint (float32, before saving)."""
    if family == "sd3":
        return build_sd3_state_dict(seed)
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny checkpoint family {family!r}; known: {FAMILIES + DIT_FAMILIES}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    state: dict[str, torch.Tensor] = {}
    if family == "sd1":
        clip = tiny_clip("l")
        _perturb(clip, generator)
        state.update(clip_to_hf_ldm(clip.state_dict(), "cond_stage_model.transformer."))
        unet = tiny_unet(family, CLIP_WIDTH)
    elif family in ("sd2", "sd2_v"):
        clip = tiny_clip("h")
        _perturb(clip, generator)
        state.update(clip_to_openclip(clip.state_dict(), "cond_stage_model.model."))
        unet = tiny_unet(family, CLIP_WIDTH)
    elif family == "sdxl":
        clip_l, clip_g = tiny_clip("l"), tiny_clip("g")
        _perturb(clip_l, generator)
        _perturb(clip_g, generator)
        state.update(clip_to_hf_ldm(clip_l.state_dict(), "conditioner.embedders.0.transformer."))
        state.update(clip_to_openclip(clip_g.state_dict(), "conditioner.embedders.1.model."))
        unet = tiny_unet(family, 2 * CLIP_WIDTH, pooled_dim=CLIP_WIDTH)
    else:
        clip_g = tiny_clip("g")
        _perturb(clip_g, generator)
        state.update(clip_to_openclip(clip_g.state_dict(), "conditioner.embedders.0.model."))
        unet = tiny_unet(family, CLIP_WIDTH, pooled_dim=CLIP_WIDTH)
    _perturb(unet, generator)
    unet_state = unet_to_ldm(unet.state_dict(), unet.config)
    if family.startswith("sd2"):
        # ComfyUI guesses v-prediction for SD2 from the spread of the last output block's norm bias.
        key = max((k for k in unet_state if k.endswith(".1.transformer_blocks.0.norm1.bias")
                   and ".output_blocks." in k), key=lambda k: int(k.split(".")[3]))
        spread = 0.3 if family == "sd2_v" else 0.01
        unet_state[key] = torch.randn(unet_state[key].shape, generator=generator) * spread
    state.update(unet_state)
    vae = tiny_vae()
    _perturb(vae, generator)
    state.update(vae_to_ldm(vae.state_dict(), vae.config))
    return state


# ---------------------------------------------------------------------------------------------
# Files and fixtures
# ---------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    folder = Path(os.environ.get("LOOM_TEST_CACHE") or Path(tempfile.gettempdir()) / "loom-test-cache")
    folder = folder / f"checkpoints-v{FORMAT_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_checkpoint(family: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny ``family`` checkpoint to ``path`` (a copy of the cached file)."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint_path(family, seed), path)
    return path


def checkpoint_path(family: str, seed: int = 0) -> Path:
    """The cached tiny checkpoint of ``family`` (built on first use)."""
    from safetensors.torch import save_file

    stem = FILE_NAMES[family].removesuffix(".safetensors") if family in FILE_NAMES else family
    path = cache_dir() / f"{stem}-s{seed}.safetensors"
    if not path.is_file():
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in
                 build_state_dict(family, seed).items()}
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(state, str(partial), metadata={"note": "tiny random-weight test checkpoint", "family": family})
        os.replace(partial, path)
    return path


def write_browser_test_checkpoint(folder: str | Path) -> str:
    """Put the tiny SD1 checkpoint into ``folder``; returns its file name."""
    name = FILE_NAMES["sd1"]
    write_checkpoint("sd1", Path(folder) / name)
    return name


@pytest.fixture(scope="session")
def tiny_checkpoints() -> dict[str, Path]:
    """Family → path of its cached tiny checkpoint."""
    return {family: checkpoint_path(family) for family in FAMILIES}


@pytest.fixture
def tiny_models_dir(base_dir, tiny_checkpoints) -> Path:
    """The test base dir with every tiny checkpoint in ``models/checkpoints`` (under ``FILE_NAMES``)."""
    folder = base_dir / "models" / "checkpoints"
    for family, source in tiny_checkpoints.items():
        target = folder / FILE_NAMES[family]
        if not target.exists():
            try:  # a hard link stays inside the folder (symlinks out of it are refused by design)
                os.link(source, target)
            except OSError:
                write_checkpoint(family, target)
    return base_dir

