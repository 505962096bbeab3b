"""Prompt encoding: ComfyUI's weight syntax, chunking, CLIP skip, SDXL concatenation, textual inversions."""
from __future__ import annotations

import pytest
import torch


from loom.nodes.runtime import checkpoint, text_encoding
from loom.nodes.runtime.text_encoding import encode_text, parse_prompt_weights, run_clip
from loom.nodes.runtime.tokenizer import BOS_TOKEN, EOS_TOKEN, tokenize_words
from tests.fixtures_sockets import run_node


@pytest.fixture(scope="module")
def clips(tiny_checkpoints):
    return {family: checkpoint.load_checkpoint(tiny_checkpoints[family], output_vae=False, use_cache=False)[1]
            for family in ("sd1", "sd2", "sdxl", "sdxl_refiner")}


def test_tokenizer_matches_the_reference_ids():
    assert tokenize_words("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tokenize_words("café über naïve") == [15304, 6522, 1516, 1097, 35689, 563]
    assert tokenize_words("Hello, world!") == [3306, 267, 1002, 256]


@pytest.mark.parametrize("text, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a (red) fox", [("a ", 1.0), ("red", 1.1), (" fox", 1.0)]),
    ("((red))", [("red", pytest.approx(1.21))]),
    ("(red:1.3) fox", [("red", 1.3), (" fox", 1.0)]),
    ("(a (b:0.5) c:1.5)", [("a ", 1.5), ("b", 0.5), (" c", 1.5)]),
    ("(time: noon)", [("time: noon", pytest.approx(1.1))]),  # not a number after the last colon
    ("(time: 12:30)", [("time: 12", 30.0)]),  # ... but this one is
    (r"\(escaped\) (x)", [("(escaped) ", 1.0), ("x", pytest.approx(1.1))]),
    ("[not weighted]", [("[not weighted]", 1.0)]),
    ("(unclosed", [("(unclosed", 1.0)]),
])
def test_prompt_weight_syntax(text, expected):
    assert parse_prompt_weights(text) == expected


def test_weighted_prompt_equals_the_interpolation_formula(clips):
    clip = clips["sd1"]
    model = clip.encoders["l"][1]
    weighted = encode_text(clip, "a (red:1.5) fox")[0][0]
    tokens = [BOS_TOKEN] + tokenize_words("a red fox") + [EOS_TOKEN]
    tokens += [EOS_TOKEN] * (77 - len(tokens))
    empty = [BOS_TOKEN, EOS_TOKEN] + [EOS_TOKEN] * 75
    with torch.no_grad():
        z, _ = run_clip(model, [tokens, empty], None, True, False)
    z_plain, z_empty = z[0], z[1]
    weights = torch.ones(77, 1)
    weights[2] = 1.5  # "red" is the second word token, after the start token
    expected = z_empty + (z_plain - z_empty) * weights
    torch.testing.assert_close(weighted[0], torch.where(weights != 1.0, expected, z_plain), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(weighted[0, 2], z_plain[2])
    unweighted = encode_text(clip, "a red fox")[0][0]
    torch.testing.assert_close(unweighted[0], z_plain, rtol=1e-5, atol=1e-5)


def test_long_prompts_are_encoded_in_77_token_chunks(clips):
    chunks = text_encoding.tokenize(" ".join(["cat"] * 100), pad_token=EOS_TOKEN, embedding_size=32,
                                    embedding_key="clip_l", embedding_dirs=[])
    assert [len(c) for c in chunks] == [77, 77]
    assert chunks[0][0][0] == BOS_TOKEN and chunks[0][76][0] == EOS_TOKEN
    assert [t for t, _ in chunks[0][1:76]] == [2368] * 75
    assert [t for t, _ in chunks[1][1:26]] == [2368] * 25 and chunks[1][26][0] == EOS_TOKEN
    cond = encode_text(clips["sd1"], " ".join(["cat"] * 100))[0][0]
    assert cond.shape == (1, 154, 32)
    # each chunk is encoded on its own: the second equals a prompt of the 25 remaining words
    alone = encode_text(clips["sd1"], " ".join(["cat"] * 25))[0][0]
    torch.testing.assert_close(cond[:, 77:], alone, rtol=1e-5, atol=1e-5)


def test_a_short_segment_moves_whole_to_the_next_chunk():
    groups = [[(1, 1.0)] * 70, [(2, 1.3)] * 7]  # 7 tokens < 8: not split
    chunks = text_encoding._chunk(groups, pad_token=0)
    assert [t for t, _ in chunks[0][71:]] == [EOS_TOKEN] + [0] * 5
    assert [t for t, _ in chunks[1][:9]] == [BOS_TOKEN] + [2] * 7 + [EOS_TOKEN]
    groups = [[(1, 1.0)] * 70, [(2, 1.3)] * 8]  # 8 tokens: split across the chunks
    chunks = text_encoding._chunk(groups, pad_token=0)
    assert [t for t, _ in chunks[0][71:]] == [2] * 5 + [EOS_TOKEN]
    assert [t for t, _ in chunks[1][:5]] == [BOS_TOKEN, 2, 2, 2, EOS_TOKEN]


def test_clip_skip_selects_the_layer(clips):
    clip = clips["sd1"]
    last = encode_text(clip, "a fox")[0][0]
    torch.testing.assert_close(encode_text(clip.replace(layer_idx=-1), "a fox")[0][0], last)
    penultimate = encode_text(clip.replace(layer_idx=-2), "a fox")[0][0]
    assert not torch.allclose(penultimate, last)
    # beyond the depth (3 layers) means the last layer, like ComfyUI
    torch.testing.assert_close(encode_text(clip.replace(layer_idx=-24), "a fox")[0][0], last)
    # the hand-written forward agrees with transformers' own: the last layer, and the final layer norm
    # applied to the penultimate hidden state (ComfyUI's SD1 convention)
    model = clip.encoders["l"][1]
    ids = [BOS_TOKEN] + tokenize_words("a fox") + [EOS_TOKEN] * (77 - 3)
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    torch.testing.assert_close(last[0], reference.last_hidden_state[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(penultimate[0], model.final_layer_norm(reference.hidden_states[-2][0]),
                               rtol=1e-5, atol=1e-5)


def test_sdxl_concatenates_l_and_g_and_pools_g(clips):
    clip = clips["sdxl"]
    cond = encode_text(clip, "a fox")
    tensor, pooled = cond[0][0], cond[0][1]["pooled_output"]
    assert tensor.shape == (1, 77, 64) and pooled.shape == (1, 32)
    g_model = clip.encoders["g"][1]
    tokens = [BOS_TOKEN] + tokenize_words("a fox") + [EOS_TOKEN]
    g_tokens = tokens + [0] * (77 - len(tokens))  # OpenCLIP pads with 0
    with torch.no_grad():
        g_hidden, g_pooled = run_clip(g_model, [g_tokens], -2, False, True)
    torch.testing.assert_close(tensor[0, :, 32:], g_hidden[0])
    torch.testing.assert_close(pooled, g_pooled)
    refiner = encode_text(clips["sdxl_refiner"], "a fox")[0][0]
    assert refiner.shape == (1, 77, 32)


def test_sd2_uses_the_penultimate_layer_by_default(clips):
    clip = clips["sd2"]
    default = encode_text(clip, "a fox")[0][0]
    torch.testing.assert_close(encode_text(clip.replace(layer_idx=-2), "a fox")[0][0], default)
    assert not torch.allclose(encode_text(clip.replace(layer_idx=-1), "a fox")[0][0], default)


def test_textual_inversion_embedding(clips, base_dir):
    from safetensors.torch import save_file

    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    save_file({"emb_params": vectors}, str(base_dir / "models" / "embeddings" / "mystyle.safetensors"))
    chunks = text_encoding.tokenize_for(clips["sd1"], "a embedding:mystyle fox")["l"]
    tokens = [t for t, _ in chunks[0]]
    assert tokens[1] == 320 and torch.equal(tokens[2], vectors[0]) and torch.equal(tokens[3], vectors[1])
    assert tokens[4] == 3240 and tokens[5] == EOS_TOKEN  # "fox"
    with_embedding = encode_text(clips["sd1"], "a embedding:mystyle fox")[0][0]
    without = encode_text(clips["sd1"], "a fox")[0][0]
    assert with_embedding.shape == without.shape and not torch.allclose(with_embedding, without)
    # unknown names and wrong widths are dropped with a warning, as ComfyUI does
    missing = text_encoding.tokenize_for(clips["sd1"], "a embedding:nothere fox")["l"][0]
    assert [t for t, _ in missing[:4]] == [BOS_TOKEN, 320, 3240, EOS_TOKEN]
    save_file({"clip_g": torch.randn(1, 32), "clip_l": torch.randn(3, 32)},
              str(base_dir / "models" / "embeddings" / "xl.safetensors"))
    sdxl_tokens = text_encoding.tokenize_for(clips["sdxl"], "embedding:xl")
    assert sum(not isinstance(t, int) for t, _ in sdxl_tokens["l"][0]) == 3
    assert sum(not isinstance(t, int) for t, _ in sdxl_tokens["g"][0]) == 1


def test_clip_text_encode_node_errors_name_the_input(registry):
    with pytest.raises(ValueError, match="CLIPTextEncode: input 'clip' is None, not a CLIP: if it comes from a "
                                         "checkpoint loader, the checkpoint has no valid CLIP/text encoder model"):
        run_node("CLIPTextEncode", text="x", clip=None)


def test_conditioning_nodes(registry, clips):
    cond = registry.get("CLIPTextEncode").execute(text="a fox", clip=clips["sdxl"])[0]
    combined = registry.get("ConditioningCombine").execute(conditioning_1=cond, conditioning_2=cond)[0]
    assert len(combined) == 2 and combined[0][0] is cond[0][0]
    area = registry.get("ConditioningSetArea").execute(conditioning=cond, width=256, height=128, x=64, y=8,
                                                        strength=0.5)[0]
    assert area[0][1]["area"] == (16, 32, 1, 8) and area[0][1]["strength"] == 0.5
    assert "area" not in cond[0][1]  # the input is not modified
    zero = registry.get("ConditioningZeroOut").execute(conditioning=cond)[0]
    assert not zero[0][0].any() and not zero[0][1]["pooled_output"].any()
    assert cond[0][0].any()
    skipped = registry.get("CLIPSetLastLayer").execute(clip=clips["sdxl"], stop_at_clip_layer=-1)[0]
    assert skipped.layer_idx == -1 and clips["sdxl"].layer_idx is None
