"""Model and CLIP merging (issue 12): /object_info against ComfyUI's source (comfy_extras/nodes_model_merging.py,
nodes_model_merging_model_specific.py), and merged weights of two tiny SD1 checkpoints (different seeds) against
ComfyUI's add_patches arithmetic (``w1 * strength_model + strength_patch * w2`` in float32) computed here from
the files' own LDM keys."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from loom.nodes.model_merging import (CLIPMergeAdd, CLIPMergeSimple, CLIPMergeSubtract, ModelMergeAdd,
                                      ModelMergeBlocks, ModelMergeSDXL, ModelMergeSimple, ModelMergeSubtract)
from loom.nodes.runtime.checkpoint import load_checkpoint, read_state_dict
from loom.nodes.runtime.denoiser import GuidedDenoiser
from loom.nodes.runtime.ldm_layout import unet_to_ldm
from loom.nodes.runtime.lora import LoraStack
from loom.nodes.runtime.merging import MergePatch
from loom.nodes.runtime.text_encoding import encode_text
from tests.fixtures_checkpoints import checkpoint_path

RATIO = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]
MULTIPLIER = ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]
M1, M2 = {"model1": ["MODEL", {}], "model2": ["MODEL", {}]}, None
C1 = {"clip1": ["CLIP", {}], "clip2": ["CLIP", {}]}
SDXL_INPUTS = (["time_embed.", "label_emb."] + [f"input_blocks.{i}" for i in range(9)]
               + [f"middle_block.{i}" for i in range(3)] + [f"output_blocks.{i}" for i in range(9)] + ["out."])

# name -> (category, required inputs, output type)
COMFY = {
    "ModelMergeSimple": ("advanced/model_merging", {**M1, "ratio": RATIO}, "MODEL"),
    "ModelMergeSubtract": ("advanced/model_merging", {**M1, "multiplier": MULTIPLIER}, "MODEL"),
    "ModelMergeAdd": ("advanced/model_merging", M1, "MODEL"),
    "ModelMergeBlocks": ("advanced/model_merging", {**M1, "input": RATIO, "middle": RATIO, "out": RATIO}, "MODEL"),
    "ModelMergeSDXL": ("advanced/model_merging/model_specific", {**M1, **{k: RATIO for k in SDXL_INPUTS}}, "MODEL"),
    "CLIPMergeSimple": ("advanced/model_merging", {**C1, "ratio": RATIO}, "CLIP"),
    "CLIPMergeSubtract": ("advanced/model_merging", {**C1, "multiplier": MULTIPLIER}, "CLIP"),
    "CLIPMergeAdd": ("advanced/model_merging", C1, "CLIP"),
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_matches_comfyui(registry, name):
    category, required, output = COMFY[name]
    info = json.loads(json.dumps(registry.object_info(name)[name]))
    assert info["display_name"] == name and info["category"] == category
    assert info["input"]["required"] == required and "optional" not in info["input"]
    assert info["input_order"]["required"] == list(required)
    assert info["output"] == [output] and info["output_name"] == [output] and info["output_node"] is False


@pytest.fixture(scope="module")
def pair():
    a = load_checkpoint(checkpoint_path("sd1", seed=0), device="cpu")
    b = load_checkpoint(checkpoint_path("sd1", seed=1), device="cpu")
    return a, b


@pytest.fixture(scope="module")
def files():
    """The two checkpoints' own tensors (float16 in the files) by ComfyUI key."""
    return (read_state_dict(checkpoint_path("sd1", seed=0)), read_state_dict(checkpoint_path("sd1", seed=1)))


@contextlib.contextmanager
def applied(handle):
    with contextlib.ExitStack() as stack:
        for patch in handle.patches:
            stack.enter_context(patch.applied(handle))
        yield


def _unet_by_ldm(model) -> dict[str, torch.Tensor]:
    with applied(model):
        state = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
    return unet_to_ldm(state, model.unet.config)


def _check_unet(merged, files, formula) -> int:
    """Every merged UNet weight equals ``formula(ldm key, w1, w2)`` on the files' float32 values."""
    w1s, w2s = files
    got = _unet_by_ldm(merged)
    assert got.keys() <= w1s.keys()
    for key, value in got.items():
        expected = formula(key.removeprefix("model.diffusion_model."), w1s[key].float(), w2s[key].float())
        assert torch.equal(value, expected), key
    return len(got)


def _simple(ratio):
    def formula(_key, w1, w2):
        out = w1.clone()
        if ratio != 1.0:
            out *= ratio
        if 1.0 - ratio != 0.0:
            out += (1.0 - ratio) * w2
        return out
    return formula


def test_model_merge_simple_is_comfyuis_weighted_sum(pair, files):
    (m1, _c1, _v1), (m2, _c2, _v2) = pair
    (merged,) = ModelMergeSimple.execute(m1, m2, 0.3)
    assert isinstance(merged.patches[-1], MergePatch) and merged.unet is m1.unet
    assert _check_unet(merged, files, _simple(0.3)) == len(list(m1.unet.parameters()))


def test_model_merge_add_and_subtract(pair, files):
    (m1, _c1, _v1), (m2, _c2, _v2) = pair
    (added,) = ModelMergeAdd.execute(m1, m2)
    _check_unet(added, files, lambda _k, w1, w2: w1.clone().add_(1.0 * w2))
    (subtracted,) = ModelMergeSubtract.execute(m1, m2, 0.6)
    _check_unet(subtracted, files, lambda _k, w1, w2: (w1 * 0.6).add_(-0.6 * w2))


def test_model_merge_blocks_picks_the_longest_matching_name(pair, files):
    (m1, _c1, _v1), (m2, _c2, _v2) = pair
    (merged,) = ModelMergeBlocks.execute(m1, m2, input=0.2, middle=0.5, out=0.9)
    ratios = {"input_blocks": 0.2, "middle_block": 0.5, "output_blocks": 0.9, "out.": 0.9, "time_embed": 0.2}
    seen = set()

    def formula(key, w1, w2):
        ratio = next(r for prefix, r in ratios.items() if key.startswith(prefix))  # time_embed: the first ratio
        seen.add(ratio)
        return _simple(ratio)(key, w1, w2)

    _check_unet(merged, files, formula)
    assert seen == {0.2, 0.5, 0.9}


def test_model_merge_sdxl_ratios_by_comfyui_key(pair, files):
    (m1, _c1, _v1), (m2, _c2, _v2) = pair
    ratios = {name: round(0.03 * i, 2) for i, name in enumerate(SDXL_INPUTS)}
    (merged,) = ModelMergeSDXL.execute(m1, m2, **ratios)

    def formula(key, w1, w2):
        matches = [name for name in SDXL_INPUTS if key.startswith(name)]
        return _simple(ratios[max(matches, key=len)])(key, w1, w2)

    _check_unet(merged, files, formula)


def test_ratio_one_is_the_first_model_and_zero_the_second(pair):
    (m1, c1, _v1), (m2, _c2, _v2) = pair
    positive, negative = encode_text(c1, "a cube"), encode_text(c1, "")
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([3.0])

    def run(model):
        with applied(model):
            return GuidedDenoiser(model, positive, negative, 5.0, x.shape)(x, sigma)

    (keep,) = ModelMergeSimple.execute(m1, m2, 1.0)
    (swap,) = ModelMergeSimple.execute(m1, m2, 0.0)
    assert torch.equal(run(keep), run(m1))
    assert torch.equal(run(swap), run(m2))
    assert not torch.equal(run(m1), run(m2))


def test_merging_changes_no_shared_weights(pair):
    (m1, _c1, _v1), (m2, _c2, _v2) = pair
    before = {n: (p, p.detach().clone()) for n, p in m1.unet.named_parameters()}
    (merged,) = ModelMergeSimple.execute(m1, m2, 0.5)
    with applied(merged):
        assert not torch.equal(dict(m1.unet.named_parameters())["conv_in.weight"], before["conv_in.weight"][1])
    for name, parameter in m1.unet.named_parameters():
        assert parameter is before[name][0] and torch.equal(parameter, before[name][1])


def test_clip_merges_round_through_float16(pair, files):
    (_m1, c1, _v1), (_m2, c2, _v2) = pair
    w1s, w2s = files
    prefix = "cond_stage_model.transformer."
    cases = [(CLIPMergeSimple.execute(c1, c2, 0.25)[0], _simple(0.25)),
             (CLIPMergeAdd.execute(c1, c2)[0], lambda _k, w1, w2: w1.clone().add_(1.0 * w2)),
             (CLIPMergeSubtract.execute(c1, c2, 2.0)[0], lambda _k, w1, w2: (w1 * 2.0).add_(-2.0 * w2))]
    for merged, formula in cases:
        module = merged.encoders["l"][1]
        with applied(merged):
            state = {k: v.detach().clone() for k, v in module.state_dict().items() if not k.endswith("position_ids")}
        assert state
        for key, value in state.items():
            file_key = prefix + "text_model." + key.removeprefix("text_model.")
            expected = formula(key, w1s[file_key].float(), w2s[file_key].float()).half().float()
            assert torch.equal(value, expected), key
    (merged, _f) = cases[0]
    assert encode_text(merged, "a cube")[0][0].shape == encode_text(c1, "a cube")[0][0].shape


def test_patches_keep_the_order_the_nodes_added_them(pair, tmp_path):
    from loom.nodes.runtime.lora import LoraPatch, with_lora

    (m1, _c1, _v1), (m2, _c2, _v2) = pair
    lora = LoraPatch("x", 1.0, {})
    first = m1.replace(patches=with_lora(m1.patches, lora))
    (merged,) = ModelMergeSimple.execute(first, m2, 0.5)
    after = merged.replace(patches=with_lora(merged.patches, lora))
    assert [type(p) for p in after.patches] == [LoraStack, MergePatch, LoraStack]
    twice = after.replace(patches=with_lora(after.patches, lora))
    assert len(twice.patches) == 3 and len(twice.patches[-1].loras) == 2


def test_the_second_models_own_patches_are_merged_in(pair, files):
    """ComfyUI merges model2's patched weights (get_key_patches): a merge onto a merge nests."""
    (m1, _c1, _v1), (m2, _c2, _v2) = pair
    (inner,) = ModelMergeSimple.execute(m2, m1, 0.5)  # 0.5 * w2 + 0.5 * w1
    (outer,) = ModelMergeSimple.execute(m1, inner, 0.25)

    def formula(key, w1, w2):
        inner_w = _simple(0.5)(key, w2, w1)
        out = w1 * 0.25
        return out.add_(0.75 * inner_w)

    _check_unet(outer, files, formula)
