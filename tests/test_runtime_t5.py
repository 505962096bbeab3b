"""T5 v1.1 text encoding (nodes/runtime/t5.py): ComfyUI's token rules with the bundled vocabulary, the
encoder built from shapes, and its output against an independent T5 computation written here from the
T5 v1.1 equations (RMS norms, unscaled attention with bucketed relative position bias from block 0, gated
tanh-GELU feed-forward), as ComfyUI's ``comfy/text_encoders/t5.py`` computes them.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from loom.nodes.runtime import t5
from tests import fixtures_flux

torch.set_num_threads(2)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

def test_flux_tokens_have_no_start_token_end_1_and_pad_0_to_256():
    tokens = t5.tokenize("a photo of a cat")
    assert len(tokens) == 256
    assert [t for t, _ in tokens[:9]] == [3, 9, 1202, 13, 3, 9, 1712, 1, 0]
    assert all(t == 0 for t, _ in tokens[8:]) and all(w == 1.0 for _, w in tokens)


def test_sd3_pads_to_77_and_long_prompts_are_one_sequence():
    assert len(t5.tokenize("a cat", min_length=t5.SD3_MIN_LENGTH)) == 77
    long = t5.tokenize(" ".join(["forest"] * 300))
    assert len(long) == 301 and long[-1] == (1, 1.0)  # no 77-token chunks, no padding beyond the prompt
    assert t5.tokenize("", min_length=None) == [(1, 1.0)]


def test_weights_follow_comfyui_segments():
    tokens = t5.tokenize("a cozy cabin in a (pine:1.2) forest")
    ids = [t for t, _ in tokens[:10]]
    assert ids == [3, 9, 14384, 7788, 16, 3, 9, 15178, 5827, 1]
    assert [w for _, w in tokens[:10]] == [1.0] * 7 + [1.2, 1.0, 1.0]
    nested = t5.tokenize("((cat))", min_length=None)
    assert nested[0][1] == pytest.approx(1.21) and nested[-1] == (1, 1.0)


def test_prepend_scheme_first_as_comfyui():
    # with "always" the text after a special token would get a leading "▁": "▁blue" instead of "blu", "e"
    assert t5.tokenize_words("red<extra_id_0>blue") == [1131, 32099, 7060, 15]


def test_embedding_vectors_stand_in_for_tokens(tmp_path):
    from safetensors.torch import save_file

    vectors = torch.randn(2, 4096)
    save_file({"t5xxl": vectors}, str(tmp_path / "myemb.safetensors"))
    tokens = t5.tokenize("embedding:myemb cat", embedding_dirs=[tmp_path], min_length=None)
    assert torch.equal(tokens[0][0], vectors[0]) and torch.equal(tokens[1][0], vectors[1])
    assert [t for t, _ in tokens[2:]] == t5.tokenize_words(" cat") + [1]


# ---------------------------------------------------------------------------------------------
# An independent T5 encoder
# ---------------------------------------------------------------------------------------------

def _bucket(relative, num_buckets=32, max_distance=128):
    num_buckets //= 2
    out = (relative > 0).long() * num_buckets
    relative = relative.abs()
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (torch.log(relative.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return out + torch.where(is_small, relative, large)


def reference_t5(sd, ids, heads):
    sd = {k: v.float() for k, v in sd.items()}

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    x = sd["shared.weight"][ids]
    n = ids.shape[1]
    position = torch.arange(n)
    buckets = _bucket(position[None, :] - position[:, None])
    bias = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][buckets].permute(2, 0, 1)
    i = 0
    while f"encoder.block.{i}.layer.0.layer_norm.weight" in sd:
        p = f"encoder.block.{i}.layer."
        h = norm(x, sd[p + "0.layer_norm.weight"])
        q, k, v = (h @ sd[p + f"0.SelfAttention.{m}.weight"].T for m in "qkv")
        b = x.shape[0]
        q, k, v = (t.reshape(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) + bias
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        x = x + attn @ sd[p + "0.SelfAttention.o.weight"].T
        h = norm(x, sd[p + "1.layer_norm.weight"])
        gate = torch.nn.functional.gelu(h @ sd[p + "1.DenseReluDense.wi_0.weight"].T, approximate="tanh")
        x = x + (gate * (h @ sd[p + "1.DenseReluDense.wi_1.weight"].T)) @ sd[p + "1.DenseReluDense.wo.weight"].T
        i += 1
    return norm(x, sd["encoder.final_layer_norm.weight"])


def test_config_from_shapes():
    config = t5.config_from_shapes(fixtures_flux.t5_shapes(layers=3, heads=4, d_kv=8, ff=48))
    assert {k: config[k] for k in ("num_layers", "d_model", "d_kv", "d_ff", "num_heads", "vocab_size",
                                   "relative_attention_num_buckets", "feed_forward_proj")} == \
        dict(num_layers=3, d_model=32, d_kv=8, d_ff=48, num_heads=4, vocab_size=32128,
             relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_encoder_matches_the_reference(tmp_path, file_dtype):
    path = fixtures_flux.write_t5(tmp_path / "t5.safetensors", dtype=file_dtype)
    model = t5.load_encoder(path)
    assert model.shared.weight.dtype == file_dtype  # stored as in the file, computed in float32
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert model.config.dense_act_fn == "gelu_pytorch_tanh" and model.config.is_gated_act
    sd = {k: v.to(file_dtype) for k, v in fixtures_flux.t5_state_dict().items()}
    ids = torch.tensor([[3, 9, 1202, 13, 3, 9, 1712, 1] + [0] * 12, [3, 9, 1712, 1] + [0] * 16])
    got = t5.run_t5(model, ids.tolist())
    want = reference_t5(sd, ids, heads=4)
    assert got.dtype == torch.float32
    assert float((got - want).norm() / want.norm()) < 1e-5


def test_storage_dtype_does_not_change_the_result(tmp_path):
    """float16 weights computed in float32 equal the same weights converted to float32."""
    path = fixtures_flux.write_t5(tmp_path / "t5.safetensors", dtype=torch.float16)
    ids = [[3, 9, 1712, 1] + [0] * 8]
    stored = t5.run_t5(t5.load_encoder(path), ids)
    widened = t5.run_t5(t5.load_encoder(path, storage_dtype=torch.float32), ids)
    assert torch.allclose(stored, widened, rtol=0, atol=1e-6)


def test_weighted_prompt_interpolates_against_the_empty_prompt(tmp_path):
    model = t5.load_encoder(fixtures_flux.write_t5(tmp_path / "t5.safetensors"))
    tokens = t5.tokenize("a (cat:1.5)", min_length=16)
    out = t5.encode_weighted(model, tokens)
    ids = [t for t, _ in tokens]
    z = t5.run_t5(model, [ids])
    z_empty = t5.run_t5(model, [t5.empty_tokens(len(ids))])
    weights = torch.tensor([w for _, w in tokens])
    assert weights.tolist().count(1.5) == len(t5.tokenize_words("cat"))
    expected = torch.where(weights[None, :, None] != 1.0, (z - z_empty) * weights[None, :, None] + z_empty, z)
    assert out.shape == (1, 16, fixtures_flux.T5_WIDTH)
    assert torch.allclose(out, expected, atol=1e-6)
    plain = t5.encode_weighted(model, t5.tokenize("a cat", min_length=16))
    assert torch.allclose(plain, t5.run_t5(model, [[t for t, _ in t5.tokenize("a cat", min_length=16)]]))


def test_bad_files_are_clear_errors(tmp_path):
    sd = fixtures_flux.t5_state_dict()
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    with pytest.raises(ValueError, match="T5 text encoder.*missing.*encoder.block.1.layer.1.DenseReluDense.wo"):
        t5.build_encoder(sd, source="bad.safetensors")
    sd = fixtures_flux.t5_state_dict()
    sd["scaled_fp8"] = torch.zeros(0)
    with pytest.raises(t5.T5LoadError, match="its scaled_fp8 marker is torch.float32, not an fp8 type"):
        t5.build_encoder(sd, source="bad.safetensors")
    from safetensors.torch import save_file
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(t5.T5LoadError, match="x.safetensors is not a T5 encoder"):
        t5.load_encoder(tmp_path / "x.safetensors")


def test_conformance_t5_loads_with_every_key_accounted_for(conformance_file):
    path = conformance_file("t5xxl-2layer-conformance-s8.safetensors")
    started = time.perf_counter()
    model = t5.load_encoder(path)
    load_s = time.perf_counter() - started
    config = model.config
    assert (config.num_layers, config.num_heads, config.d_kv, config.d_model, config.d_ff, config.vocab_size) == \
        (2, 64, 64, 4096, 10240, 32128)
    assert model.shared.weight.dtype == torch.float16
    started = time.perf_counter()
    out = t5.encode_weighted(model, t5.tokenize("a cozy cabin in a pine forest, warm light in the windows"))
    encode_s = time.perf_counter() - started
    assert out.shape == (1, 256, 4096) and torch.isfinite(out).all()
    print(f"T5 2-layer conformance: load {load_s:.2f}s, encode 256 tokens {encode_s:.2f}s")


def test_clip_handle_seam(tmp_path):
    """What a CLIP handle's encoders dict holds for T5: ComfyUI's batch list in, ``(hidden, None)`` out; no
    sequence at all (CLIPTextEncodeSD3 with an empty t5xxl and no padding) is the end token alone."""
    from loom.nodes.runtime import checkpoint

    path = fixtures_flux.write_t5(tmp_path / "t5.safetensors")
    with checkpoint.StateDictFile(path) as file:
        tokenizer, encoder = t5.load_t5_from_file(file, "", device="cpu", min_length=t5.SD3_MIN_LENGTH)
    [sequence] = tokenizer.tokenize_with_weights("a (cat:1.3)")
    assert len(sequence) == 77
    hidden, pooled = encoder.encode_token_weights([sequence])
    assert pooled is None and torch.allclose(hidden, t5.encode_weighted(encoder.model, sequence))
    alone, _ = encoder.encode_token_weights([])
    assert alone.shape == (1, 1, fixtures_flux.T5_WIDTH)
    assert torch.allclose(alone, t5.run_t5(encoder.model, [[t5.EOS_TOKEN]]))


def test_the_encoder_object_counts_in_the_model_cache(tmp_path):
    from loom.nodes.runtime import checkpoint, model_cache

    path = fixtures_flux.write_t5(tmp_path / "t5.safetensors")
    with checkpoint.StateDictFile(path) as file:
        _tokenizer, encoder = t5.load_t5_from_file(file, "", device="cpu")
    expected = sum(p.numel() * p.element_size() for p in encoder.model.parameters())
    assert model_cache.tensor_bytes({"t5xxl": (_tokenizer, encoder)}) == expected > 0


def test_scaled_fp8_t5_multiplies_each_weight_by_its_scale(tmp_path):
    """ComfyUI's ``t5xxl_fp8_e4m3fn_scaled`` layout: fp8 Linear weights with a scalar ``scale_weight`` each and a
    ``scaled_fp8`` marker; the effective weight is ``fp8 value * scale``, computed in float32."""
    from safetensors.torch import save_file

    original = fixtures_flux.t5_state_dict()
    stored: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    effective = {}
    for key, value in original.items():
        if value.ndim == 2 and key != "shared.weight" and "relative_attention_bias" not in key:
            scale = value.abs().max() / 448.0
            quantized = (value / scale).to(torch.float8_e4m3fn)
            stored[key] = quantized
            stored[key[:-len(".weight")] + ".scale_weight"] = scale.reshape(())
            stored[key[:-len(".weight")] + ".scale_input"] = torch.ones(())
            effective[key] = quantized.float() * scale
        else:
            stored[key] = value.half()
            effective[key] = value.half().float()
    save_file(stored, str(tmp_path / "t5_scaled.safetensors"))
    model = t5.load_encoder(tmp_path / "t5_scaled.safetensors")
    q = model.encoder.block[0].layer[0].SelfAttention.q
    assert q.weight.dtype == torch.float8_e4m3fn and model.shared.weight.dtype == torch.float16
    ids = torch.tensor([[3, 9, 1202, 13, 3, 9, 1712, 1] + [0] * 8])
    got = t5.run_t5(model, ids.tolist())
    want = reference_t5(effective, ids, heads=4)
    assert float((got - want).norm() / want.norm()) < 1e-5
