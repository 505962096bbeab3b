"""The full-size random-weight SD1.5 conformance checkpoint loads with the standard SD1.5 architecture.

Uses the file that ``tests/test_conformance.py`` builds into ``$LOOM_CONFORMANCE_CACHE`` (default
``~/.cache/loom-conformance``); skipped when it is not there.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.conformance

CHECKPOINT = "sd15-conformance-s0.safetensors"

# The SD1.5 UNet as published (diffusers' stable-diffusion-v1-5 unet/config.json), the fields that matter.
SD15_UNET = dict(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False, norm_num_groups=32,
                 addition_embed_type=None, class_embed_type=None)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32)
SD15_CLIP = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")


def _path() -> Path:
    cache = Path(os.environ.get("LOOM_CONFORMANCE_CACHE") or Path.home() / ".cache" / "loom-conformance")
    path = cache / CHECKPOINT
    if not path.is_file():
        pytest.skip(f"{path} not built yet (tests/test_conformance.py builds it)")
    return path


def test_conformance_checkpoint_builds_the_standard_sd15_parts():
    from loom.nodes.runtime import checkpoint
    from loom.nodes.runtime.text_encoding import encode_text

    path = _path()
    started = time.perf_counter()
    model, clip, vae = checkpoint.load_checkpoint(path, use_cache=False, device="cpu")
    print(f"loaded {path.name} in {time.perf_counter() - started:.1f}s")
    assert model.family == "sd1" and model.sampling.prediction == "eps"
    config = model.unet.config
    for key, value in SD15_UNET.items():
        got = getattr(config, key)
        assert (tuple(got) if isinstance(got, list) else got) == value, key
    for key, value in SD15_VAE.items():
        got = getattr(vae.vae.config, key)
        assert (tuple(got) if isinstance(got, list) else got) == value, key
    text_model = clip.encoders["l"][1]
    for key, value in SD15_CLIP.items():
        assert getattr(text_model.config, key) == value, key

    # every tensor of the file is in exactly one module, none missing (the loader checks key by key)
    with checkpoint.StateDictFile(path) as file:
        counts = {prefix: sum(k.startswith(prefix) for k in file.keys())
                  for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")}
        assert sum(counts.values()) == len(file.keys())
        probe = file.read("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                          torch.float32)
    assert counts["model.diffusion_model."] == len(model.unet.state_dict())
    assert counts["first_stage_model."] == len(vae.vae.state_dict())
    assert counts["cond_stage_model."] == len(text_model.state_dict())
    assert torch.equal(model.unet.state_dict()["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"],
                       probe)
    cond = encode_text(clip, "a photo of a cat")
    assert cond[0][0].shape == (1, 77, 768) and torch.isfinite(cond[0][0]).all()
