"""Tiny random-weight FLUX.1 model files in the real key layouts, for tests.

    write_flux_transformer(path)                   # BFL layout (flux1-dev.safetensors' names), bare keys
    write_flux_transformer(path, prefix="model.diffusion_model.", guidance=False)   # schnell, prefixed
    write_t5(path); write_clip_l(path); write_flux_vae(path)

The transformer is written straight from a manifest of BFL's names and shapes at a tiny width
(:func:`flux_bfl_shapes`: width 64, 2 heads of 32, 1 double + 1 single block, context 32, pooled 16,
16 latent channels packed 2x2 to 64), initialised like ``shared/conformance/make_checkpoint.py`` does
(matrices ~ N(0, 1/fan_in), RMSNorm scales ~ 1 + N(0, 0.1), biases ~ N(0, 0.1)), so nothing in it comes
from the code under test. The T5 encoder (2 blocks, d_model 32, the real 32,128-token vocabulary) is written
the same way in transformers' names. CLIP-L is a tiny transformers ``CLIPTextModelWithProjection`` saved
under ``text_model.*`` + ``text_projection.weight`` (the stand-alone ``clip_l.safetensors`` layout); the VAE
is a diffusers ``AutoencoderKL`` with z 16 and no quant convs, converted to the ``ae.safetensors`` layout
(bare ``encoder.*``/``decoder.*``) by ``ldm_layout.vae_to_ldm``. Files are float16 unless asked otherwise.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

FLUX_WIDTH = 64
FLUX_HEAD_DIM = 32
FLUX_CONTEXT = 32
FLUX_POOLED = 16
T5_WIDTH = 32
T5_VOCAB = 32128
CLIP_WIDTH = 32


def flux_bfl_shapes(*, width: int = FLUX_WIDTH, head_dim: int = FLUX_HEAD_DIM, doubles: int = 1, singles: int = 1,
                    context: int = FLUX_CONTEXT, pooled: int = FLUX_POOLED, in_channels: int = 64,
                    guidance: bool = True, out_channels: int | None = None) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a BFL-layout FLUX transformer (as in ``flux1-dev.safetensors``; ``in_channels`` 384
    and ``out_channels`` 64 as in ``flux1-fill-dev.safetensors``)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int) -> None:
        shapes[name + ".weight"] = (out, inp)
        shapes[name + ".bias"] = (out,)

    linear("img_in", width, in_channels)
    linear("txt_in", width, context)
    for name, inp in (("time_in", 256), ("vector_in", pooled)) + ((("guidance_in", 256),) if guidance else ()):
        linear(name + ".in_layer", width, inp)
        linear(name + ".out_layer", width, width)
    for i in range(doubles):
        for side in ("img", "txt"):
            b = f"double_blocks.{i}.{side}_"
            linear(b + "mod.lin", 6 * width, width)
            linear(b + "attn.qkv", 3 * width, width)
            shapes[b + "attn.norm.query_norm.scale"] = (head_dim,)
            shapes[b + "attn.norm.key_norm.scale"] = (head_dim,)
            linear(b + "attn.proj", width, width)
            linear(b + "mlp.0", 4 * width, width)
            linear(b + "mlp.2", width, 4 * width)
    for i in range(singles):
        b = f"single_blocks.{i}."
        linear(b + "linear1", 3 * width + 4 * width, width)
        linear(b + "linear2", width, width + 4 * width)
        shapes[b + "norm.query_norm.scale"] = (head_dim,)
        shapes[b + "norm.key_norm.scale"] = (head_dim,)
        linear(b + "modulation.lin", 3 * width, width)
    linear("final_layer.adaLN_modulation.1", 2 * width, width)
    linear("final_layer.linear", out_channels or in_channels, width)
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """make_checkpoint.py's initialisation, one seeded stream per tensor (float32)."""
    out = {}
    for name, shape in shapes.items():
        generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
        if len(shape) >= 2:
            values = values / (torch.tensor(shape[1:]).prod().item() ** 0.5)
        elif name.endswith(("weight", ".scale")):
            values = 1.0 + 0.1 * values
        else:
            values = 0.1 * values
        out[name] = values.float()
    return out


def flux_bfl_state_dict(seed: int = 0, **shape_options: Any) -> dict[str, torch.Tensor]:
    return random_tensors(flux_bfl_shapes(**shape_options), seed)


def _save(tensors: dict[str, torch.Tensor], path: str | Path, dtype: torch.dtype | None, note: str) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in tensors.items()}
    save_file(state, str(path), metadata={"note": note})
    return path


def write_flux_transformer(path: str | Path, *, seed: int = 0, prefix: str = "", dtype: torch.dtype = torch.float16,
                           **shape_options: Any) -> Path:
    tensors = flux_bfl_state_dict(seed, **shape_options)
    return _save({prefix + k: v for k, v in tensors.items()}, path, dtype, "tiny random FLUX transformer (BFL layout)")


def t5_shapes(*, layers: int = 2, width: int = T5_WIDTH, ff: int = 2 * T5_WIDTH, heads: int = 4, d_kv: int = 8,
              vocab: int = T5_VOCAB, buckets: int = 32) -> dict[str, tuple[int, ...]]:
    """A T5 v1.1 encoder (gated-GELU) in transformers' names, as in ``t5xxl_fp16.safetensors``."""
    inner = heads * d_kv
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (vocab, width)}
    for i in range(layers):
        b = f"encoder.block.{i}.layer."
        for name in ("q", "k", "v"):
            shapes[b + f"0.SelfAttention.{name}.weight"] = (inner, width)
        shapes[b + "0.SelfAttention.o.weight"] = (width, inner)
        if i == 0:
            shapes[b + "0.SelfAttention.relative_attention_bias.weight"] = (buckets, heads)
        shapes[b + "0.layer_norm.weight"] = (width,)
        shapes[b + "1.DenseReluDense.wi_0.weight"] = (ff, width)
        shapes[b + "1.DenseReluDense.wi_1.weight"] = (ff, width)
        shapes[b + "1.DenseReluDense.wo.weight"] = (width, ff)
        shapes[b + "1.layer_norm.weight"] = (width,)
    shapes["encoder.final_layer_norm.weight"] = (width,)
    return shapes


def t5_state_dict(seed: int = 0, **shape_options: Any) -> dict[str, torch.Tensor]:
    tensors = random_tensors(t5_shapes(**shape_options), seed)
    # the relative attention bias and token embeddings of a trained T5 are O(1), not O(1/fan_in)
    for key in tensors:
        if key.endswith("relative_attention_bias.weight") or key == "shared.weight":
            tensors[key] = tensors[key] * (tensors[key].shape[1] ** 0.5)
    return tensors


def write_t5(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float16, **shape_options: Any) -> Path:
    return _save(t5_state_dict(seed, **shape_options), path, dtype, "tiny random T5 v1.1 encoder")


def clip_l_state_dict(seed: int = 0, width: int = CLIP_WIDTH, layers: int = 2, *,
                      hidden_act: str = "quick_gelu") -> dict[str, torch.Tensor]:
    """A stand-alone CLIP-L text encoder: ``text_model.*`` and ``text_projection.weight`` (quick_gelu)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                            num_attention_heads=max(1, width // 64), max_position_embeddings=77,
                            hidden_act=hidden_act, projection_dim=width, bos_token_id=49406, eos_token_id=49407,
                            pad_token_id=1)
    model = CLIPTextModelWithProjection(config)
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[key] = value + 0.02 * torch.randn(value.shape) if value.is_floating_point() else value
    return out


def write_clip_l(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    return _save(clip_l_state_dict(seed), path, dtype, "tiny random CLIP-L text encoder")


def clip_g_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-alone CLIP-G in the transformers layout: 32 layers (ComfyUI tells CLIP-G by its 31st), gelu."""
    return clip_l_state_dict(seed, layers=32, hidden_act="gelu")


def write_clip_g(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    return _save(clip_g_state_dict(seed), path, dtype, "tiny random CLIP-G text encoder")


def tiny_flux_vae(seed: int = 0) -> Any:
    """A diffusers ``AutoencoderKL`` shaped like FLUX's (z 16, no quant convs) at tiny width."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                        layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=64,
                        use_quant_conv=False, use_post_quant_conv=False)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return vae.eval()


def flux_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The FLUX autoencoder's layout (``ae.safetensors``: bare encoder./decoder., z 16, no quant convs)."""
    from loom.nodes.runtime.ldm_layout import vae_to_ldm

    vae = tiny_flux_vae(seed)
    state = vae_to_ldm(vae.state_dict(), vae.config)
    return {k.removeprefix("first_stage_model."): v for k, v in state.items()}


def write_flux_vae(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    return _save(flux_vae_state_dict(seed), path, dtype, "tiny random FLUX autoencoder")


def flux_checkpoint_state_dict(seed: int = 0, *, t5: bool = True, guidance: bool = True) -> dict[str, torch.Tensor]:
    """An all-in-one FLUX checkpoint as ComfyUI saves them (``flux1-dev-fp8.safetensors``' layout): the
    transformer under ``model.diffusion_model.``, CLIP-L under ``text_encoders.clip_l.transformer.``, T5 under
    ``text_encoders.t5xxl.transformer.`` (optional) and the autoencoder under ``vae.``."""
    state = {"model.diffusion_model." + k: v for k, v in flux_bfl_state_dict(seed, guidance=guidance).items()}
    state.update({"text_encoders.clip_l.transformer." + k: v for k, v in clip_l_state_dict(seed).items()})
    if t5:
        state.update({"text_encoders.t5xxl.transformer." + k: v
                      for k, v in t5_state_dict(seed, width=FLUX_CONTEXT).items()})
    state.update({"vae." + k: v for k, v in flux_vae_state_dict(seed).items()})
    return state


def write_flux_checkpoint(path: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float16, t5: bool = True,
                          guidance: bool = True) -> Path:
    return _save(flux_checkpoint_state_dict(seed, t5=t5, guidance=guidance), path, dtype,
                 "tiny random all-in-one FLUX checkpoint")


# ---------------------------------------------------------------------------------------------
# The shared conformance files of the FLUX cases (README: "SD3 and FLUX.1 files")
# ---------------------------------------------------------------------------------------------

CONFORMANCE_FILES = {  # file name -> (manifest, seed, sha256 from the README)
    "flux-dev-conformance-s5.safetensors":
        ("flux-dev-keys.json", 5, "14dd289688d9a0d746231fbc7cbdea351e4fd8ec41f1d81f59e95560ec733dea"),
    "flux-schnell-conformance-s5.safetensors":
        ("flux-schnell-keys.json", 5, "241ed1857a0f1b8fea7439ac760a987dac53b46354bb3184b3a2d641d5fa2d2d"),
    "clip-l-conformance-s7.safetensors":
        ("clip-l-keys.json", 7, "9b44c4764535396edad02a43f1c491af00f9ea42810d2080ac4abde2d8d15855"),
    "t5xxl-2layer-conformance-s8.safetensors":
        ("t5xxl-2layer-keys.json", 8, "1cb5f3b1c8a733a3046a399163c9d6765e590e5a2f6c0a0dd0e289300c214007"),
    "flux-vae-conformance-s9.safetensors":
        ("flux-vae-keys.json", 9, "896671467a92610d3600a81eec0cee520f3dbc09d95b5ef0cf3f6dd6abbb084c"),
}
_VERIFIED: dict[str, Path] = {}


def conformance_cache_dir() -> Path:
    import os

    return Path(os.environ.get("LOOM_CONFORMANCE_CACHE") or Path.home() / ".cache" / "loom-conformance")


def conformance_path(name: str) -> Path:
    """A conformance model file, built with the README's command on first use (as tests/test_conformance.py
    builds the SD1.5 one) and checked against the README's sha256."""
    import os
    import subprocess
    import sys

    from loom.nodes.kernel.folders import file_sha256
    from tests.conftest import CONFORMANCE, require_shared

    if name in _VERIFIED:
        return _VERIFIED[name]
    manifest, seed, digest = CONFORMANCE_FILES[name]
    require_shared(CONFORMANCE / manifest)
    cache = conformance_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / name
    if not path.is_file():
        partial = cache / f"{name}.{os.getpid()}.partial"
        subprocess.run([sys.executable, str(CONFORMANCE / "make_checkpoint.py"), str(CONFORMANCE / manifest),
                        str(partial), "--seed", str(seed)], check=True, timeout=1200)
        os.replace(partial, path)
    found = file_sha256(path)
    assert found == digest, f"{path} has sha256 {found}, not the README's {digest}: delete it to rebuild"
    _VERIFIED[name] = path
    return path


@pytest.fixture(scope="session")
def conformance_file():
    """``conformance_file(name)`` → the path of a FLUX conformance model file (built and verified once)."""
    return conformance_path
