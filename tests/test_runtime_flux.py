"""The FLUX.1 transformer from BFL's layout (nodes/runtime/flux_layout.py).

The tiny fixture's outputs are checked against an independent computation written here straight from
BFL's reference math on the BFL-named tensors (fused qkv, ``(shift, scale)`` final modulation, RoPE on
(index, row, column) ids, 2x2 patches), so the key conversion, the config read from shapes and the input
packing are all under test. The conformance FLUX dev file must load with no missing or unexpected key.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from loom.nodes.runtime import flux_layout
from tests import fixtures_flux

torch.set_num_threads(2)


# ---------------------------------------------------------------------------------------------
# An independent FLUX forward on BFL-named tensors
# ---------------------------------------------------------------------------------------------

def _lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _timestep_embedding(t, dim=256, max_period=10000.0, factor=1000.0):
    t = t * factor
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _mlp_embedder(sd, name, x):
    return _lin(sd, name + ".out_layer", torch.nn.functional.silu(_lin(sd, name + ".in_layer", x)))


def _rope(pos, dim, theta=10000):
    scale = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    omega = 1.0 / (theta ** scale)
    angles = pos.double()[..., None] * omega  # [n, dim/2]
    return torch.cos(angles).float(), torch.sin(angles).float()


def _apply_rope(x, cos, sin):  # x [B, H, L, D]; pairs (2i, 2i+1) rotate
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.flatten(-2)


def _rms(x, scale):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def _ln(x):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)


def _heads(t, heads):
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def reference_flux(sd, x, sigma, context, y, guidance, heads, axes):
    sd = {k: v.float() for k, v in sd.items()}
    b, c, h, w = x.shape
    rows, cols = h // 2, w // 2
    img = torch.zeros(b, rows * cols, c * 4)
    for r in range(rows):
        for q in range(cols):
            img[:, r * cols + q] = x[:, :, 2 * r:2 * r + 2, 2 * q:2 * q + 2].reshape(b, c * 4)
    img = _lin(sd, "img_in", img)
    vec = _mlp_embedder(sd, "time_in", _timestep_embedding(sigma))
    if "guidance_in.in_layer.weight" in sd and guidance is not None:
        vec = vec + _mlp_embedder(sd, "guidance_in", _timestep_embedding(guidance))
    vec = vec + _mlp_embedder(sd, "vector_in", y)
    txt = _lin(sd, "txt_in", context)
    ids = torch.zeros(context.shape[1] + rows * cols, 3)
    for r in range(rows):
        for q in range(cols):
            ids[context.shape[1] + r * cols + q] = torch.tensor([0.0, r, q])
    parts = [_rope(ids[:, i], axes[i]) for i in range(3)]
    cos = torch.cat([p[0] for p in parts], dim=-1)
    sin = torch.cat([p[1] for p in parts], dim=-1)

    def attention(q, k, v):
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, q.shape[2], -1)

    silu_vec = torch.nn.functional.silu(vec)[:, None]
    i = 0
    while f"double_blocks.{i}.img_mod.lin.weight" in sd:
        p = f"double_blocks.{i}."
        mods = {}
        qkv = {}
        for side, stream in (("img", img), ("txt", txt)):
            m = _lin(sd, p + side + "_mod.lin", silu_vec).chunk(6, dim=-1)
            mods[side] = m
            modulated = (1 + m[1]) * _ln(stream) + m[0]
            q_, k_, v_ = _lin(sd, p + side + "_attn.qkv", modulated).chunk(3, dim=-1)
            q_ = _rms(_heads(q_, heads), sd[p + side + "_attn.norm.query_norm.scale"])
            k_ = _rms(_heads(k_, heads), sd[p + side + "_attn.norm.key_norm.scale"])
            qkv[side] = (q_, k_, _heads(v_, heads))
        q = torch.cat([qkv["txt"][0], qkv["img"][0]], dim=2)
        k = torch.cat([qkv["txt"][1], qkv["img"][1]], dim=2)
        v = torch.cat([qkv["txt"][2], qkv["img"][2]], dim=2)
        attn = attention(q, k, v)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        new = {}
        for side, stream, out in (("img", img, img_attn), ("txt", txt, txt_attn)):
            m = mods[side]
            stream = stream + m[2] * _lin(sd, p + side + "_attn.proj", out)
            hidden = (1 + m[4]) * _ln(stream) + m[3]
            hidden = _lin(sd, p + side + "_mlp.2",
                          torch.nn.functional.gelu(_lin(sd, p + side + "_mlp.0", hidden), approximate="tanh"))
            new[side] = stream + m[5] * hidden
        img, txt = new["img"], new["txt"]
        i += 1
    seq = torch.cat([txt, img], dim=1)
    width = seq.shape[-1]
    i = 0
    while f"single_blocks.{i}.linear1.weight" in sd:
        p = f"single_blocks.{i}."
        shift, scale, gate = _lin(sd, p + "modulation.lin", silu_vec).chunk(3, dim=-1)
        modulated = (1 + scale) * _ln(seq) + shift
        fused = _lin(sd, p + "linear1", modulated)
        q, k, v, mlp = torch.split(fused, [width, width, width, 4 * width], dim=-1)
        q = _rms(_heads(q, heads), sd[p + "norm.query_norm.scale"])
        k = _rms(_heads(k, heads), sd[p + "norm.key_norm.scale"])
        attn = attention(q, k, _heads(v, heads))
        out = _lin(sd, p + "linear2", torch.cat([attn, torch.nn.functional.gelu(mlp, approximate="tanh")], dim=-1))
        seq = seq + gate * out
        i += 1
    img = seq[:, txt.shape[1]:]
    shift, scale = _lin(sd, "final_layer.adaLN_modulation.1", silu_vec).chunk(2, dim=-1)
    img = _lin(sd, "final_layer.linear", (1 + scale) * _ln(img) + shift)
    out = torch.zeros(b, c, h, w)
    for r in range(rows):
        for q in range(cols):
            out[:, :, 2 * r:2 * r + 2, 2 * q:2 * q + 2] = img[:, r * cols + q].reshape(b, c, 2, 2)
    return out


def _inputs(batch=2, h=6, w=8, tokens=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 16, h, w, generator=g), sigma=torch.tensor([0.9, 0.35])[:batch],
                context=torch.randn(batch, tokens, fixtures_flux.FLUX_CONTEXT, generator=g),
                y=torch.randn(batch, fixtures_flux.FLUX_POOLED, generator=g))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------
# Patches and ids
# ---------------------------------------------------------------------------------------------

def test_patchify_is_exact_and_in_comfyui_order():
    x = torch.randn(2, 16, 6, 10)
    tokens = flux_layout.patchify(x)
    assert tokens.shape == (2, 15, 64)
    for r in range(3):
        for q in range(5):
            for ch in range(16):
                for i in range(2):
                    for j in range(2):
                        assert tokens[1, r * 5 + q, ch * 4 + i * 2 + j] == x[1, ch, 2 * r + i, 2 * q + j]
    assert torch.equal(flux_layout.unpatchify(tokens, 3, 5), x)


def test_odd_sides_pad_circularly():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    padded = flux_layout.pad_to_patch(x)
    assert padded.shape == (1, 2, 4, 6)
    assert torch.equal(padded[..., 3, :5], x[..., 0, :])  # bottom row wraps to the top one
    assert torch.equal(padded[..., :3, 5], x[..., :, 0])
    assert flux_layout.pad_to_patch(torch.zeros(1, 1, 4, 4)).shape == (1, 1, 4, 4)


def test_image_ids_are_index_row_column():
    ids = flux_layout.image_ids(2, 3)
    assert ids.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]


# ---------------------------------------------------------------------------------------------
# Config, conversion and the call on the tiny fixture
# ---------------------------------------------------------------------------------------------

def test_config_from_bfl_shapes():
    config = flux_layout.config_from_bfl(fixtures_flux.flux_bfl_shapes(doubles=2, singles=3))
    assert config == dict(patch_size=1, in_channels=64, out_channels=64, num_layers=2, num_single_layers=3,
                          attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                          pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 14, 14))
    schnell = flux_layout.config_from_bfl(fixtures_flux.flux_bfl_shapes(guidance=False))
    assert schnell["guidance_embeds"] is False
    assert flux_layout.rope_axes(128) == (16, 56, 56)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("guidance", [True, False])
def test_tiny_flux_matches_the_reference(tmp_path, prefix, guidance):
    path = fixtures_flux.write_flux_transformer(tmp_path / "flux.safetensors", prefix=prefix, guidance=guidance,
                                                dtype=torch.float32)
    call, config = flux_layout.load_transformer(path, device="cpu", compute_dtype=torch.float32)
    assert config["layout"] == "bfl" and config["guidance_embeds"] is guidance
    sd = fixtures_flux.flux_bfl_state_dict(guidance=guidance)
    inputs = _inputs()
    g = torch.tensor([3.5, 2.0])
    got = call(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], g if guidance else None)
    want = reference_flux(sd, inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], g if guidance else None,
                          heads=2, axes=(4, 14, 14))
    assert got.shape == inputs["x"].shape and got.dtype == torch.float32
    assert _rel(got, want) < 1e-5


def test_dev_model_without_guidance_skips_the_guidance_embedding(tmp_path):
    """FluxDisableGuidance passes no guidance: ComfyUI then adds no guidance term at all."""
    path = fixtures_flux.write_flux_transformer(tmp_path / "flux.safetensors", dtype=torch.float32)
    call, _ = flux_layout.load_transformer(path, device="cpu", compute_dtype=torch.float32)
    inputs = _inputs(batch=1)
    got = call(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], None)
    want = reference_flux(fixtures_flux.flux_bfl_state_dict(), inputs["x"], inputs["sigma"], inputs["context"],
                          inputs["y"], None, heads=2, axes=(4, 14, 14))
    assert _rel(got, want) < 1e-5
    with_guidance = call(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], 3.5)
    assert _rel(with_guidance, want) > 1e-3


def test_odd_latent_is_padded_and_cropped(tmp_path):
    path = fixtures_flux.write_flux_transformer(tmp_path / "flux.safetensors", dtype=torch.float32)
    call, _ = flux_layout.load_transformer(path, device="cpu", compute_dtype=torch.float32)
    inputs = _inputs(batch=1, h=5, w=7)
    got = call(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], 3.5)
    assert got.shape == (1, 16, 5, 7)
    padded = flux_layout.pad_to_patch(inputs["x"])
    want = reference_flux(fixtures_flux.flux_bfl_state_dict(), padded, inputs["sigma"], inputs["context"],
                          inputs["y"], torch.tensor([3.5]), heads=2, axes=(4, 14, 14))[:, :, :5, :7]
    assert _rel(got, want) < 1e-5


def test_diffusers_layout_round_trips(tmp_path):
    """BFL → diffusers names, saved as a diffusers-layout file, loads as-is and computes the same."""
    from safetensors.torch import save_file

    sd = fixtures_flux.flux_bfl_state_dict()
    config = flux_layout.config_from_bfl({k: tuple(v.shape) for k, v in sd.items()})
    converted = flux_layout.convert_bfl(sd, config)
    save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp_path / "diffusers.safetensors"))
    call, loaded_config = flux_layout.load_transformer(tmp_path / "diffusers.safetensors", device="cpu",
                                                       compute_dtype=torch.float32)
    assert loaded_config["layout"] == "diffusers"
    assert {k: v for k, v in loaded_config.items() if k not in ("layout", "storage_dtype")} == config
    inputs = _inputs()
    want = reference_flux(sd, inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], torch.tensor([3.5, 1.0]),
                          heads=2, axes=(4, 14, 14))
    got = call(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], torch.tensor([3.5, 1.0]))
    assert _rel(got, want) < 1e-5


@pytest.mark.parametrize("weight_dtype,fp8", [("fp8_e4m3fn", torch.float8_e4m3fn),
                                              ("fp8_e4m3fn_fast", torch.float8_e4m3fn),
                                              ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_weight_dtypes_store_fp8_and_compute_in_float32(tmp_path, weight_dtype, fp8):
    path = fixtures_flux.write_flux_transformer(tmp_path / "flux.safetensors")  # float16 file
    call, config = flux_layout.load_transformer(path, device="cpu", compute_dtype=torch.float32,
                                                weight_dtype=weight_dtype)
    assert config["storage_dtype"] == str(fp8).removeprefix("torch.")
    assert {p.dtype for p in call.transformer.parameters()} == {fp8}
    sd = {k: v.half().to(fp8).float() for k, v in fixtures_flux.flux_bfl_state_dict().items()}
    inputs = _inputs(batch=1)
    got = call(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], 3.5)
    assert got.dtype == torch.float32
    want = reference_flux(sd, inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], torch.tensor([3.5]),
                          heads=2, axes=(4, 14, 14))
    assert _rel(got, want) < 1e-5


def test_default_keeps_fp8_files_in_fp8(tmp_path):
    path = fixtures_flux.write_flux_transformer(tmp_path / "flux.safetensors", dtype=torch.float8_e4m3fn)
    call, config = flux_layout.load_transformer(path, device="cpu", compute_dtype=torch.float32)
    assert config["storage_dtype"] == "float8_e4m3fn"
    sd = {k: v.to(torch.float8_e4m3fn).float() for k, v in fixtures_flux.flux_bfl_state_dict().items()}
    inputs = _inputs(batch=1)
    want = reference_flux(sd, inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], torch.tensor([3.5]),
                          heads=2, axes=(4, 14, 14))
    assert _rel(call(inputs["x"], inputs["sigma"], inputs["context"], inputs["y"], 3.5), want) < 1e-5


def test_bad_weight_dtype_and_bad_files_are_clear_errors(tmp_path):
    path = fixtures_flux.write_flux_transformer(tmp_path / "flux.safetensors")
    with pytest.raises(ValueError, match="weight_dtype must be one of default, fp8_e4m3fn"):
        flux_layout.load_transformer(path, device="cpu", weight_dtype="fp4")
    sd = fixtures_flux.flux_bfl_state_dict()
    sd["double_blocks.0.extra.weight"] = torch.zeros(2, 2)
    with pytest.raises(flux_layout.FluxLoadError, match="not understood by the converter.*double_blocks.0.extra"):
        flux_layout.build_transformer(sd, source="x.safetensors")
    sd = fixtures_flux.flux_bfl_state_dict()
    del sd["double_blocks.0.txt_attn.proj.weight"]
    with pytest.raises(flux_layout.FluxLoadError, match="lacks double_blocks.0.txt_attn.proj.weight"):
        flux_layout.build_transformer(sd, source="x.safetensors")
    with pytest.raises(flux_layout.FluxLoadError, match="not a FLUX transformer"):
        flux_layout.build_transformer({"foo.weight": torch.zeros(1)}, source="x.safetensors")
    call, _ = flux_layout.load_transformer(path, device="cpu", compute_dtype=torch.float32)
    with pytest.raises(ValueError, match="takes 16-channel latents; the latent has 4"):
        call(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 3, 32), None, 3.5)
    with pytest.raises(ValueError, match="takes a 32-wide text context"):
        call(torch.zeros(1, 16, 8, 8), torch.tensor([1.0]), torch.zeros(1, 3, 768), None, 3.5)


# ---------------------------------------------------------------------------------------------
# The conformance FLUX dev file
# ---------------------------------------------------------------------------------------------

def test_conformance_flux_dev_loads_with_every_key_accounted_for(conformance_file):
    path = conformance_file("flux-dev-conformance-s5.safetensors")
    started = time.perf_counter()
    call, config = flux_layout.load_transformer(path, device="cpu", compute_dtype=torch.float32)
    load_s = time.perf_counter() - started
    assert (config["num_layers"], config["num_single_layers"], config["num_attention_heads"],
            config["attention_head_dim"], config["in_channels"], config["joint_attention_dim"],
            config["pooled_projection_dim"], config["guidance_embeds"]) == (1, 1, 24, 128, 64, 4096, 768, True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=g)
    context = torch.randn(1, 256, 4096, generator=g)
    started = time.perf_counter()
    out = call(x, torch.tensor([0.8]), context, torch.randn(1, 768, generator=g), 3.5)
    step_s = time.perf_counter() - started
    assert out.shape == x.shape and torch.isfinite(out).all()
    print(f"flux dev conformance: load {load_s:.2f}s, one model call (64x64 image, 256 T5 tokens) {step_s:.2f}s")
