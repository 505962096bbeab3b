"""Latent arithmetic/batch nodes (nodes/latent_ops.py) and fixes to nodes/latent.py, against ComfyUI's
comfy_extras/nodes_latent.py and nodes.py (schemas copied from its source; behaviour on small tensors)."""
from __future__ import annotations

import pytest
import torch


def _latent(*shape, start=0.0):
    return {"samples": torch.arange(start, start + torch.tensor(shape).prod().item()).reshape(shape).float()}


SCHEMAS = {  # name: (category, [(input, type, options)])
    "LatentAdd": ("model/latent/advanced", [("samples1", "LATENT", {}), ("samples2", "LATENT", {})]),
    "LatentSubtract": ("model/latent/advanced", [("samples1", "LATENT", {}), ("samples2", "LATENT", {})]),
    "LatentMultiply": ("model/latent/advanced", [("samples", "LATENT", {}), ("multiplier", "FLOAT",
                       {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})]),
    "LatentInterpolate": ("model/latent/advanced", [("samples1", "LATENT", {}), ("samples2", "LATENT", {}),
                          ("ratio", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})]),
    "LatentConcat": ("model/latent/advanced", [("samples1", "LATENT", {}), ("samples2", "LATENT", {}),
                     ("dim", ["x", "-x", "y", "-y", "t", "-t"], {})]),
    "LatentCut": ("model/latent/advanced", [("samples", "LATENT", {}), ("dim", ["x", "y", "t"], {}),
                  ("index", "INT", {"default": 0, "min": -16384, "max": 16384, "step": 1}),
                  ("amount", "INT", {"default": 1, "min": 1, "max": 16384, "step": 1})]),
    "LatentCutToBatch": ("model/latent/advanced", [("samples", "LATENT", {}), ("dim", ["t", "x", "y"], {}),
                         ("slice_size", "INT", {"default": 1, "min": 1, "max": 16384, "step": 1})]),
    "LatentBatch": ("model/latent/batch", [("samples1", "LATENT", {}), ("samples2", "LATENT", {})]),
    "LatentBatchSeedBehavior": ("model/latent/advanced", [("samples", "LATENT", {}),
                                ("seed_behavior", ["random", "fixed"], {"default": "fixed"})]),
    "LatentFromBatch": ("model/latent/batch", [("samples", "LATENT", {}),
                        ("batch_index", "INT", {"default": 0, "min": -16384, "max": 16384}),
                        ("length", "INT", {"default": 1, "min": 1, "max": 64})]),
    "RepeatLatentBatch": ("model/latent/batch", [("samples", "LATENT", {}),
                          ("amount", "INT", {"default": 1, "min": 1, "max": 64})]),
    "LatentBlend": ("experimental", [("samples1", "LATENT", {}), ("samples2", "LATENT", {}),
                    ("blend_factor", "FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01})]),
    "LatentCrop": ("model/latent/transform", [("samples", "LATENT", {})] + [
        (n, "INT", {"default": d, "min": m, "max": 16384, "step": 8})
        for n, d, m in (("width", 512, 64), ("height", 512, 64), ("x", 0, 0), ("y", 0, 0))]),
    "LatentFlip": ("model/latent/transform", [("samples", "LATENT", {}),
                   ("flip_method", ["x-axis: vertically", "y-axis: horizontally"], {})]),
    "LatentRotate": ("model/latent/transform", [("samples", "LATENT", {}),
                     ("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"], {})]),
    "LatentComposite": ("model/latent", [("samples_to", "LATENT", {}), ("samples_from", "LATENT", {})] + [
        (n, "INT", {"default": 0, "min": 0, "max": 16384, "step": 8}) for n in ("x", "y", "feather")]),
    "LatentUpscale": ("model/latent", [("samples", "LATENT", {}),
                      ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"], {}),
                      ("width", "INT", {"default": 512, "min": 0, "max": 16384, "step": 8}),
                      ("height", "INT", {"default": 512, "min": 0, "max": 16384, "step": 8}),
                      ("crop", ["disabled", "center"], {})]),
    "LatentUpscaleBy": ("model/latent", [("samples", "LATENT", {}),
                        ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"], {}),
                        ("scale_by", "FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01})]),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_matches_comfyui(registry, name):
    category, inputs = SCHEMAS[name]
    info = registry.object_info(name)[name]
    assert info["category"] == category
    assert info["input_order"] == {"required": [n for n, _, _ in inputs]}
    assert info["input"]["required"] == {n: [t, o] for n, t, o in inputs}
    assert info["output"] == ["LATENT"]
    assert info.get("deprecated", False) == (name == "LatentBatch")
    if name == "LatentBatch":
        assert info["display_name"] == "Batch Latents (DEPRECATED)"


def test_add_subtract_multiply_keep_other_keys(registry):
    a = _latent(1, 2, 2, 2) | {"batch_index": [3]}
    b = _latent(1, 2, 2, 2, start=1.0)
    added = registry.get("LatentAdd").execute(a, b)[0]
    assert added["batch_index"] == [3]
    assert torch.equal(added["samples"], a["samples"] * 2 + 1)
    assert torch.equal(registry.get("LatentSubtract").execute(a, b)[0]["samples"], torch.full((1, 2, 2, 2), -1.0))
    assert torch.equal(registry.get("LatentMultiply").execute(a, -0.5)[0]["samples"], a["samples"] * -0.5)


def test_binary_ops_repeat_and_resize_samples2(registry):
    a = {"samples": torch.zeros(3, 1, 2, 2)}
    b = {"samples": torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1).expand(2, 1, 4, 4).clone()}
    out = registry.get("LatentAdd").execute(a, b)[0]["samples"]
    # resized bilinearly to 2x2 (constant stays constant), batch repeated then cut: 1, 2, 1
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([1.0, 2.0, 1.0])) and out.shape == (3, 1, 2, 2)


def test_interpolate_mixes_direction_and_norm(registry):
    s1 = {"samples": torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)}  # norm 5, direction (0.6, 0.8)
    s2 = {"samples": torch.tensor([0.0, 2.0]).reshape(1, 2, 1, 1)}  # norm 2, direction (0, 1)
    node = registry.get("LatentInterpolate")
    assert torch.allclose(node.execute(s1, s2, 1.0)[0]["samples"], s1["samples"])
    assert torch.allclose(node.execute(s1, s2, 0.0)[0]["samples"], s2["samples"])
    mixed = torch.tensor([0.3, 0.9])
    expected = mixed / mixed.norm() * 3.5
    assert torch.allclose(node.execute(s1, s2, 0.5)[0]["samples"].flatten(), expected)
    zero = {"samples": torch.zeros(1, 2, 1, 1)}
    assert torch.equal(node.execute(zero, zero, 0.5)[0]["samples"], torch.zeros(1, 2, 1, 1))  # nan_to_num


def test_concat_along_each_dim(registry):
    a, b = _latent(1, 1, 2, 2), _latent(1, 1, 2, 2, start=10.0)
    node = registry.get("LatentConcat")
    assert torch.equal(node.execute(a, b, "x")[0]["samples"], torch.cat((a["samples"], b["samples"]), -1))
    assert torch.equal(node.execute(a, b, "-y")[0]["samples"], torch.cat((b["samples"], a["samples"]), -2))
    v1, v2 = _latent(2, 1, 3, 1, 1), _latent(1, 1, 2, 1, 1, start=100.0)
    out = node.execute(v1, v2, "t")[0]["samples"]
    assert out.shape == (2, 1, 5, 1, 1) and out[1, 0, 3:].flatten().tolist() == [100.0, 101.0]


def test_cut_clamps_index_and_amount(registry):
    lat = _latent(1, 1, 1, 5)
    node = registry.get("LatentCut")
    assert node.execute(lat, "x", 1, 2)[0]["samples"].flatten().tolist() == [1.0, 2.0]
    assert node.execute(lat, "x", 9, 3)[0]["samples"].flatten().tolist() == [4.0]  # index clamped to 4
    assert node.execute(lat, "x", -2, 5)[0]["samples"].flatten().tolist() == [3.0, 4.0]
    assert node.execute(lat, "x", -9, 2)[0]["samples"].flatten().tolist() == [0.0, 1.0]
    video = _latent(1, 1, 4, 1, 1)
    assert node.execute(video, "t", 1, 2)[0]["samples"].flatten().tolist() == [1.0, 2.0]


def test_cut_to_batch(registry):
    video = _latent(1, 1, 5, 1, 1)
    out = registry.get("LatentCutToBatch").execute(video, "t", 2)[0]["samples"]
    assert out.shape == (2, 1, 2, 1, 1) and out.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]  # frame 4 dropped
    image = _latent(1, 1, 2, 4)
    out = registry.get("LatentCutToBatch").execute(image, "x", 2)[0]["samples"]
    assert torch.equal(out, torch.stack([image["samples"][0, :, :, :2], image["samples"][0, :, :, 2:]]))
    assert registry.get("LatentCutToBatch").execute(image, "t", 1)[0] is image  # no time axis: unchanged
    assert registry.get("LatentCutToBatch").execute(image, "x", 9)[0]["samples"].shape == (1, 1, 2, 4)


def test_batch_and_seed_behaviour(registry):
    a = _latent(2, 1, 2, 2)
    b = {"samples": torch.ones(1, 1, 4, 4), "batch_index": [7]}
    out = registry.get("LatentBatch").execute(a, b)[0]
    assert out["samples"].shape == (3, 1, 2, 2) and out["batch_index"] == [0, 1, 7]
    seeded = registry.get("LatentBatchSeedBehavior")
    assert seeded.execute(out, "fixed")[0]["batch_index"] == [0, 0, 0]
    assert seeded.execute({"samples": torch.zeros(2, 1, 1, 1), "batch_index": [5, 6]}, "fixed")[0]["batch_index"] == [5, 5]
    assert seeded.execute(a, "fixed")[0]["batch_index"] == [0, 0]
    assert "batch_index" not in seeded.execute(out, "random")[0]


def test_latent_from_batch_takes_negative_indices(registry):
    lat = _latent(4, 1, 1, 1)
    out = registry.get("LatentFromBatch").execute(lat, -1, 2)[0]
    assert out["samples"].flatten().tolist() == [3.0] and out["batch_index"] == [3]
    out = registry.get("LatentFromBatch").execute(lat, -9, 2)[0]
    assert out["samples"].flatten().tolist() == [0.0, 1.0]


def test_repeat_latent_batch_repeats_mask_as_comfyui(registry):
    lat = {"samples": torch.zeros(3, 1, 1, 1), "noise_mask": torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)}
    out = registry.get("RepeatLatentBatch").execute(lat, 2)[0]
    assert out["samples"].shape == (6, 1, 1, 1)
    # ComfyUI repeats the 2-mask batch itself (the batch-extended copy it computes is unused)
    assert out["noise_mask"].flatten().tolist() == [1.0, 2.0, 1.0, 2.0]
    video = registry.get("RepeatLatentBatch").execute({"samples": torch.zeros(1, 1, 2, 1, 1)}, 3)[0]
    assert video["samples"].shape == (3, 1, 2, 1, 1)


def test_save_latent_has_comfyui_samples_output(registry):
    info = registry.object_info("SaveLatent")["SaveLatent"]
    assert info["output"] == ["LATENT"] and info["output_name"] == ["samples"] and info["category"] == "model/latent"
