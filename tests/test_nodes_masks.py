"""MASK nodes and compositing: ComfyUI's schemas (as read in comfy_extras/nodes_mask.py,
nodes_compositing.py, nodes_post_processing.py and nodes_images.py) and their arithmetic on small tensors."""
from __future__ import annotations

import math

import pytest
import torch

from loom.nodes.compositing import (ImageCompositeMasked, ImageCropToMask, JoinImageWithAlpha, SplitImageWithAlpha,
                                    composite, parse_hex_colour)
from loom.nodes.mask import (BatchMasksNode, CropMask, FeatherMask, GrowMask, ImageColorToMask, ImageToMask,
                             InvertMask, MaskComposite, MaskPreview, MaskToImage, SolidMask, ThresholdMask)
from loom.nodes.resize_image_mask import ResizeImageMaskNode
from loom.nodes.kernel.schema import MAX_RESOLUTION

R = MAX_RESOLUTION

# name -> (display_name, category, {input: (type, options)}, outputs, output_names)
SCHEMAS = {
    "MaskToImage": ("Convert Mask to Image", "image/mask", {"mask": ("MASK", {})}, ["IMAGE"], ["IMAGE"]),
    "ImageToMask": ("Convert Image to Mask", "image/mask",
                    {"image": ("IMAGE", {}), "channel": (["red", "green", "blue", "alpha"], {})}, ["MASK"], ["MASK"]),
    "ImageColorToMask": ("Convert Image Color to Mask", "image/mask",
                         {"image": ("IMAGE", {}),
                          "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "number"})},
                         ["MASK"], ["MASK"]),
    "SolidMask": ("Create Solid Mask", "image/mask",
                  {"value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                   "width": ("INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                   "height": ("INT", {"default": 512, "min": 1, "max": R, "step": 1})}, ["MASK"], ["MASK"]),
    "InvertMask": ("Invert Mask", "image/mask", {"mask": ("MASK", {})}, ["MASK"], ["MASK"]),
    "CropMask": ("Crop Mask", "image/mask",
                 {"mask": ("MASK", {}), "x": ("INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                  "y": ("INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                  "width": ("INT", {"default": 512, "min": 1, "max": R, "step": 1}),
                  "height": ("INT", {"default": 512, "min": 1, "max": R, "step": 1})}, ["MASK"], ["MASK"]),
    "MaskComposite": ("Combine Masks", "image/mask",
                      {"destination": ("MASK", {}), "source": ("MASK", {}),
                       "x": ("INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                       "y": ("INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                       "operation": (["multiply", "add", "subtract", "and", "or", "xor"], {})}, ["MASK"], ["MASK"]),
    "FeatherMask": ("Feather Mask", "image/mask",
                    {"mask": ("MASK", {}), **{side: ("INT", {"default": 0, "min": 0, "max": R, "step": 1})
                                              for side in ("left", "top", "right", "bottom")}}, ["MASK"], ["MASK"]),
    "GrowMask": ("Grow Mask", "image/mask",
                 {"mask": ("MASK", {}), "expand": ("INT", {"default": 0, "min": -R, "max": R, "step": 1}),
                  "tapered_corners": ("BOOLEAN", {"default": True, "advanced": True})}, ["MASK"], ["MASK"]),
    "ThresholdMask": ("Threshold Mask", "image/mask",
                      {"mask": ("MASK", {}), "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})},
                      ["MASK"], ["MASK"]),
    "MaskPreview": ("Preview Mask", "image/mask", {"mask": ("MASK", {})}, [], []),
    "ImageCompositeMasked": ("Image Composite Masked", "image/compositing",
                             {"destination": ("IMAGE", {}), "source": ("IMAGE", {}),
                              "x": ("INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                              "y": ("INT", {"default": 0, "min": 0, "max": R, "step": 1}),
                              "resize_source": ("BOOLEAN", {"default": False}), "mask": ("MASK", {})},
                             ["IMAGE"], ["IMAGE"]),
    "JoinImageWithAlpha": ("Join Image with Alpha", "mask/compositing",
                           {"image": ("IMAGE", {}), "alpha": ("MASK", {})}, ["IMAGE"], ["IMAGE"]),
    "SplitImageWithAlpha": ("Split Image with Alpha", "mask/compositing", {"image": ("IMAGE", {})},
                            ["IMAGE", "MASK"], ["IMAGE", "MASK"]),
    "ImageCropToMask": ("Crop Image to Mask", "image/transform",
                        {"images": ("IMAGE", {}), "masks": ("MASK", {}),
                         "width": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 8}),
                         "height": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 8}),
                         "pad_factor": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 2.0, "step": 0.01}),
                         "grow_mask": ("INT", {"default": 0, "min": -32, "max": 32, "step": 1}),
                         "background": ("COLOR", {"default": "#000000", "socketless": True})},
                        ["IMAGE"], ["images"]),
}
OPTIONAL = {("ImageCompositeMasked", "mask")}


def _strip_tooltips(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "tooltip"}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_object_info_is_comfyuis(registry, name):
    display, category, inputs, outputs, output_names = SCHEMAS[name]
    info = registry.object_info(name)[name]
    assert info["display_name"] == display
    assert info["category"] == category
    assert info["output"] == outputs
    assert info["output_name"] == output_names
    listed = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert list(listed) == list(inputs)
    for input_name, (kind, options) in inputs.items():
        section = "optional" if (name, input_name) in OPTIONAL else "required"
        assert input_name in info["input"][section]
        got_kind, got_options = listed[input_name]
        assert got_kind == kind, input_name
        assert _strip_tooltips(got_options) == options, input_name
    assert info["output_node"] is (name == "MaskPreview")
    if name == "MaskPreview":
        assert info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def test_tooltips_and_descriptions_are_comfyuis(registry):
    grow = registry.object_info("GrowMask")["GrowMask"]
    assert grow["description"] == "Expands (dilates) or shrinks (erodes) mask boundaries by a specified pixel distance."
    assert grow["input"]["required"]["tapered_corners"][1]["tooltip"].startswith("If enabled, uses a cross/diamond")
    assert grow["output_tooltips"] == ["The expanded or contracted mask output."]
    composite_info = registry.object_info("ImageCompositeMasked")["ImageCompositeMasked"]
    assert composite_info["input"]["optional"]["mask"][1]["tooltip"] == (
        "Optional mask specifying blending intensity (1.0 = source, 0.0 = destination).")


def test_batch_masks_lists_comfyuis_autogrow_input(registry):
    info = registry.object_info("BatchMasksNode")["BatchMasksNode"]
    assert info["display_name"] == "Batch Masks" and info["category"] == "image/mask"
    assert info["input"] == {"required": {"masks": ["COMFY_AUTOGROW_V3", {"template": {
        "input": {"required": {"mask": ["MASK", {}]}}, "prefix": "mask", "min": 2, "max": 50}}]}}
    assert info["input_order"] == {"required": ["masks"]}
    assert info["output"] == ["MASK"]


def test_resize_image_mask_lists_comfyuis_dynamic_combo(registry):
    info = registry.object_info("ResizeImageMaskNode")["ResizeImageMaskNode"]
    assert (info["display_name"], info["category"]) == ("Resize Image/Mask", "image/transform")
    assert info["description"] == "Resize an image or mask using various scaling methods."
    required = info["input"]["required"]
    assert list(required) == ["input", "resize_type", "scale_method"]
    assert required["input"] == ["COMFY_MATCHTYPE_V3", {"template": {"template_id": "input_type",
                                                                      "allowed_types": "IMAGE,MASK"}}]
    kind, combo = required["resize_type"]
    assert kind == "COMFY_DYNAMICCOMBO_V3"
    assert [o["key"] for o in combo["options"]] == [
        "scale dimensions", "scale by multiplier", "scale longer dimension", "scale shorter dimension",
        "scale width", "scale height", "scale total pixels", "match size", "scale to multiple"]
    options = {o["key"]: o["inputs"]["required"] for o in combo["options"]}
    strip = {key: {n: [spec[0], _strip_tooltips(spec[1])] for n, spec in inputs.items()}
             for key, inputs in options.items()}
    size = ["INT", {"default": 512, "min": 0, "max": R, "step": 1}]
    crop = [["disabled", "center"], {"default": "center"}]
    assert strip == {
        "scale dimensions": {"width": size, "height": size, "crop": crop},
        "scale by multiplier": {"multiplier": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}]},
        "scale longer dimension": {"longer_size": size},
        "scale shorter dimension": {"shorter_size": size},
        "scale width": {"width": size},
        "scale height": {"height": size},
        "scale total pixels": {"megapixels": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}]},
        "match size": {"match": ["IMAGE,MASK", {}], "crop": crop},
        "scale to multiple": {"multiple": ["INT", {"default": 8, "min": 1, "max": R, "step": 1}]},
    }
    assert required["scale_method"][0] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert required["scale_method"][1]["default"] == "area"
    assert info["output"] == ["COMFY_MATCHTYPE_V3"] and info["output_name"] == ["resized"]
    assert info["output_matchtypes"] == ["input_type"]


# ---------------------------------------------------------------- conversions


def test_mask_to_image_and_back():
    mask = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    (image,) = MaskToImage.execute(mask)
    assert image.shape == (1, 2, 2, 3)
    assert torch.equal(image[..., 0], mask) and torch.equal(image[..., 2], mask)
    assert MaskToImage.execute(mask[0])[0].shape == (1, 2, 2, 3)  # an [H, W] mask too
    rgba = torch.rand(2, 3, 4, 4)
    for index, channel in enumerate(("red", "green", "blue", "alpha")):
        assert torch.equal(ImageToMask.execute(rgba, channel)[0], rgba[..., index])
    with pytest.raises(ValueError, match="no alpha channel"):
        ImageToMask.execute(rgba[..., :3], "alpha")


def test_image_color_to_mask_matches_exact_8bit_colour():
    image = torch.tensor([[[[1.0, 0.0, 0.0], [254.6 / 255, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]]])
    (mask,) = ImageColorToMask.execute(image, 0xFF0000)
    assert torch.equal(mask, torch.tensor([[[1.0, 1.0, 0.0, 0.0]]]))  # 254.6 rounds to 255
    assert mask.dtype == torch.float32
    assert torch.equal(ImageColorToMask.execute(image, 0xFFFFFF)[0], torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]))


def test_solid_invert_threshold():
    (solid,) = SolidMask.execute(0.25, 3, 2)
    assert solid.shape == (1, 2, 3) and solid.dtype == torch.float32 and torch.all(solid == 0.25)
    assert torch.equal(InvertMask.execute(solid)[0], torch.full((1, 2, 3), 0.75))
    mask = torch.tensor([[0.2, 0.5, 0.51, 1.0]])
    assert torch.equal(ThresholdMask.execute(mask, 0.5)[0], torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_crop_mask():
    mask = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    (out,) = CropMask.execute(mask, 1, 2, 3, 5)
    assert torch.equal(out, torch.tensor([[[11.0, 12.0, 13.0], [16.0, 17.0, 18.0]]]))


# ---------------------------------------------------------------- MaskComposite


def _composite_reference(dst, src, x, y, op):
    out = dst.clone()
    for b in range(out.shape[0]):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                si, sj = i - y, j - x
                if 0 <= si < src.shape[1] and 0 <= sj < src.shape[2]:
                    d, s = float(dst[b, i, j]), float(src[min(b, src.shape[0] - 1), si, sj])
                    bd, bs = round(d) != 0, round(s) != 0
                    value = {"multiply": d * s, "add": d + s, "subtract": d - s, "and": float(bd and bs),
                             "or": float(bd or bs), "xor": float(bd != bs)}[op]
                    out[b, i, j] = value
    return out.clamp(0, 1)


@pytest.mark.parametrize("op", ["multiply", "add", "subtract", "and", "or", "xor"])
def test_mask_composite_operations(op):
    torch.manual_seed(0)
    dst = torch.rand(1, 4, 5)
    src = torch.rand(1, 3, 3)
    (out,) = MaskComposite.execute(dst, src, 3, 2, op)  # the source hangs off the right and bottom
    assert out.shape == (1, 4, 5)
    assert torch.allclose(out, _composite_reference(dst, src, 3, 2, op), atol=1e-6)


def test_mask_composite_logic_rounds_half_to_even():
    dst = torch.tensor([[[0.5, 0.6]]])
    src = torch.tensor([[[1.0, 1.0]]])
    assert torch.equal(MaskComposite.execute(dst, src, 0, 0, "and")[0], torch.tensor([[[0.0, 1.0]]]))


# ---------------------------------------------------------------- FeatherMask


def test_feather_mask_left_and_top_ramps():
    (out,) = FeatherMask.execute(torch.ones(1, 3, 4), 2, 1, 0, 0)
    col = torch.tensor([0.5, 1.0, 1.0, 1.0])
    assert torch.allclose(out[0], torch.stack([col * 1.0, col, col]))


def test_feather_mask_right_ramp_keeps_comfyuis_index_quirk():
    # ComfyUI multiplies column -x by (x+1)/right for x = 0..right-1: column 0 (= -0) gets 1/right,
    # the last column 2/right, the one before it 3/right.
    (out,) = FeatherMask.execute(torch.ones(1, 1, 5), 0, 0, 3, 0)
    assert torch.allclose(out, torch.tensor([[[1 / 3, 1.0, 1.0, 1.0, 2 / 3]]]))
    (out,) = FeatherMask.execute(torch.ones(1, 4, 1), 0, 0, 0, 2)
    assert torch.allclose(out[0, :, 0], torch.tensor([0.5, 1.0, 1.0, 1.0]))


def test_feather_mask_clamps_to_size():
    (out,) = FeatherMask.execute(torch.ones(2, 2, 2), 10, 0, 0, 0)
    assert torch.allclose(out, torch.tensor([[0.5, 1.0], [0.5, 1.0]]).expand(2, 2, 2))


# ---------------------------------------------------------------- GrowMask


def _grey_morphology(mask, expand, tapered):
    """scipy.ndimage.grey_dilation/erosion with a 3x3 footprint and mode='reflect', written out."""
    out = mask.clone()
    h, w = mask.shape
    for _ in range(abs(expand)):
        prev = out.clone()
        for i in range(h):
            for j in range(w):
                values = []
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if tapered and di and dj:
                            continue
                        ii, jj = i + di, j + dj
                        ii = -ii - 1 if ii < 0 else (2 * h - ii - 1 if ii >= h else ii)  # reflect
                        jj = -jj - 1 if jj < 0 else (2 * w - jj - 1 if jj >= w else jj)
                        values.append(float(prev[ii, jj]))
                out[i, j] = max(values) if expand > 0 else min(values)
    return out


@pytest.mark.parametrize("expand", [-2, -1, 0, 1, 2, 3])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_is_grey_morphology(expand, tapered):
    torch.manual_seed(1)
    masks = torch.rand(2, 5, 6)
    masks[0] = 0
    masks[0, 2, 3] = 1.0
    (out,) = GrowMask.execute(masks, expand, tapered)
    assert out.shape == (2, 5, 6)
    for b in range(2):
        assert torch.equal(out[b], _grey_morphology(masks[b], expand, tapered))


def test_grow_mask_shapes_of_a_point():
    point = torch.zeros(1, 5, 5)
    point[0, 2, 2] = 1
    diamond = GrowMask.execute(point, 2, True)[0][0]
    assert torch.equal(diamond, torch.tensor([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1],
                                              [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.float32))
    square = GrowMask.execute(point, 1, False)[0][0]
    assert square.sum() == 9 and square[1:4, 1:4].min() == 1


# ---------------------------------------------------------------- BatchMasksNode


def test_batch_masks_resizes_to_the_first():
    a = torch.zeros(1, 2, 2)
    b = torch.ones(2, 4, 4)
    (out,) = BatchMasksNode.execute(**{"masks.mask0": a, "masks.mask1": b, "masks.mask2": None})
    assert out.shape == (3, 2, 2)
    assert torch.equal(out[0], a[0]) and torch.allclose(out[1:], torch.ones(2, 2, 2))
    # slots gather in numeric order, not name order
    masks = {f"masks.mask{i}": torch.full((1, 1, 1), float(i)) for i in (10, 2, 0, 1)}
    assert BatchMasksNode.execute(**masks)[0].flatten().tolist() == [0.0, 1.0, 2.0, 10.0]


def test_batch_masks_through_the_engine(registry):
    from loom.server import validation as graph
    prompt = {"1": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 4, "height": 4}},
              "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 2, "height": 2}},
              "3": {"class_type": "BatchMasksNode", "inputs": {"masks.mask0": ["1", 0], "masks.mask1": ["2", 0]}},
              "4": {"class_type": "MaskPreview", "inputs": {"mask": ["3", 0]}}}
    assert graph.validate_prompt(prompt, registry).ok
    del prompt["3"]["inputs"]["masks.mask1"]
    result = graph.validate_prompt(prompt, registry)
    assert not result.ok
    assert "masks.mask1" in str(result.node_errors)


# ---------------------------------------------------------------- compositing


def test_composite_matches_a_hand_computed_blend():
    dst = torch.zeros(1, 3, 4, 4)
    src = torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[[1.0, 0.5], [0.0, 0.25]]])
    (out,) = ImageCompositeMasked.execute(dst.movedim(1, -1), src.movedim(1, -1), 1, 2, False, mask)
    expected = torch.zeros(4, 4)
    expected[2:4, 1:3] = torch.tensor([[1.0, 0.5], [0.0, 0.25]])
    assert out.shape == (1, 4, 4, 3)
    for c in range(3):
        assert torch.equal(out[0, :, :, c], expected)


def test_composite_off_the_edge_and_batch_broadcast():
    torch.manual_seed(2)
    dst = torch.rand(3, 5, 6, 3)
    src = torch.rand(1, 4, 4, 3)
    (out,) = ImageCompositeMasked.execute(dst, src, 4, 3, False, None)
    expected = dst.clone()
    expected[:, 3:5, 4:6] = src[:, :2, :2]
    assert torch.equal(out, expected)
    assert not torch.equal(out, dst)  # the destination input is not modified
    assert torch.equal(dst, dst.clone())


def test_composite_mask_is_resized_bilinear_and_repeated():
    dst = torch.zeros(2, 1, 4, 4)
    src = torch.ones(2, 1, 4, 4)
    mask = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    out = composite(dst.clone(), src, 0, 0, mask, 1)
    expected = torch.nn.functional.interpolate(mask[:, None], size=(4, 4), mode="bilinear")[0, 0]
    assert torch.allclose(out[0, 0], expected) and torch.allclose(out[1, 0], expected)


def test_composite_resize_source_and_latent_multiplier():
    dst = torch.zeros(1, 4, 4, 4)
    src = torch.ones(1, 4, 2, 2)
    out = composite(dst.clone(), src, 0, 0, None, 8, resize_source=True)
    assert torch.equal(out, torch.ones(1, 4, 4, 4))
    out = composite(dst.clone(), src, 17, 8, None, 8)  # 17 // 8 = 2, 8 // 8 = 1
    expected = torch.zeros(1, 4, 4, 4)
    expected[..., 1:3, 2:4] = 1
    assert torch.equal(out, expected)


def test_composite_alpha_fix():
    dst = torch.zeros(1, 2, 2, 3)
    src = torch.ones(1, 2, 2, 4)
    (out,) = ImageCompositeMasked.execute(dst, src, 0, 0, False, None)
    assert out.shape == (1, 2, 2, 3) and torch.all(out == 1)
    with pytest.raises(ValueError, match="alpha"):
        ImageCompositeMasked.execute(src, dst, 0, 0, False, None)


def test_split_and_join_alpha():
    rgba = torch.rand(2, 3, 3, 4)
    colours, mask = SplitImageWithAlpha.execute(rgba)
    assert torch.equal(colours, rgba[..., :3]) and torch.allclose(mask, 1.0 - rgba[..., 3])
    rgb = torch.rand(1, 2, 2, 3)
    assert torch.equal(SplitImageWithAlpha.execute(rgb)[1], torch.zeros(1, 2, 2))
    (joined,) = JoinImageWithAlpha.execute(colours, mask)
    assert joined.shape == (2, 3, 3, 4) and torch.allclose(joined, rgba, atol=1e-6)
    (small,) = JoinImageWithAlpha.execute(torch.zeros(3, 4, 4, 3), torch.zeros(1, 2, 2))
    assert small.shape == (1, 4, 4, 4) and torch.all(small[..., 3] == 1)  # min of the batches


def test_image_crop_to_mask_centres_the_subject():
    image = torch.zeros(1, 64, 64, 3)
    image[0, 24:40, 16:48] = torch.tensor([1.0, 0.5, 0.0])
    mask = torch.zeros(1, 64, 64)
    mask[0, 24:40, 16:48] = 1.0
    (out,) = ImageCropToMask.execute(image, mask, 64, 64, 1.0, 0, "#0000ff")
    assert out.shape == (1, 64, 64, 3)
    # a 32x16 box grows to a 32x32 square around its centre; resized x2: the subject fills rows 16..47
    assert torch.allclose(out[0, 32, 32], torch.tensor([1.0, 128 / 255, 0.0]), atol=1 / 255)
    assert torch.allclose(out[0, 4, 32], torch.tensor([0.0, 0.0, 1.0]), atol=1 / 255)
    assert parse_hex_colour("#ff8000") == (1.0, 128 / 255, 0.0) and parse_hex_colour("red") == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="does not match"):
        ImageCropToMask.execute(torch.zeros(2, 8, 8, 3), torch.zeros(3, 8, 8), 64, 64, 1.0, 0, "#000000")


# ---------------------------------------------------------------- ResizeImageMaskNode


def _resize(input, kind, method="nearest-exact", **values):
    return ResizeImageMaskNode.execute(input, kind, method, **{f"resize_type.{k}": v for k, v in values.items()})[0]


def test_resize_image_mask_options():
    image = torch.rand(1, 4, 6, 3)
    mask = torch.rand(2, 4, 6)
    assert _resize(image, "scale dimensions", width=12, height=0, crop="disabled").shape == (1, 8, 12, 3)
    assert _resize(mask, "scale dimensions", width=3, height=3, crop="center").shape == (2, 3, 3)
    assert _resize(image, "scale dimensions", width=0, height=0, crop="center") is image
    assert _resize(image, "scale by multiplier", multiplier=1.5).shape == (1, 6, 9, 3)
    assert _resize(mask, "scale longer dimension", longer_size=12).shape == (2, 8, 12)
    assert _resize(mask, "scale shorter dimension", shorter_size=2).shape == (2, 2, 3)
    assert _resize(image, "scale width", width=3).shape == (1, 2, 3, 3)
    assert _resize(image, "scale height", height=2).shape == (1, 2, 3, 3)
    factor = math.sqrt(int(0.01 * 1024 * 1024) / 24)  # 10485 pixels over 4 x 6
    assert _resize(mask, "scale total pixels", megapixels=0.01).shape == (2, round(4 * factor), round(6 * factor))
    assert (round(4 * factor), round(6 * factor)) == (84, 125)
    assert _resize(image, "match size", match=torch.zeros(1, 5, 7), crop="disabled").shape == (1, 5, 7, 3)
    assert _resize(image, "scale to multiple", multiple=4).shape == (1, 4, 4, 3)
    exact = torch.nn.functional.interpolate(mask[:, None], size=(8, 12), mode="bilinear")[:, 0]
    assert torch.equal(_resize(mask, "scale by multiplier", "bilinear", multiplier=2.0), exact)


def test_resize_and_batch_masks_through_the_engine(base_dir, registry):
    import numpy as np
    from PIL import Image
    from loom.server import executor as executor_module, validation as graph
    prompt = {"1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 4}},
              "2": {"class_type": "ResizeImageMaskNode",
                    "inputs": {"input": ["1", 0], "resize_type": "scale dimensions", "resize_type.width": 4,
                               "resize_type.height": 2, "resize_type.crop": "center", "scale_method": "area"}},
              "3": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 4, "height": 2}},
              "4": {"class_type": "BatchMasksNode", "inputs": {"masks.mask0": ["2", 0], "masks.mask1": ["3", 0]}},
              "5": {"class_type": "MaskPreview", "inputs": {"mask": ["4", 0]}}}
    assert graph.validate_prompt(prompt, registry).ok
    bad = {**prompt, "2": {**prompt["2"], "inputs": {**prompt["2"]["inputs"], "resize_type": "scale everything"}}}
    assert not graph.validate_prompt(bad, registry).ok
    result = executor_module.Executor(registry).execute(prompt, "p1")
    assert result.status == "success", result.error
    first, second = result.outputs["5"]["images"]
    with Image.open(base_dir / "temp" / first["filename"]) as picture:
        assert picture.size == (4, 2) and np.array(picture).min() == 255
    with Image.open(base_dir / "temp" / second["filename"]) as picture:
        assert np.array(picture).max() == 0
    with pytest.raises(ValueError, match="resize_type.multiplier"):
        ResizeImageMaskNode.execute(torch.zeros(1, 2, 2), "scale by multiplier", "area")


def test_mask_preview_saves_a_grey_png(base_dir):
    import numpy as np
    from loom.nodes.kernel import folders
    mask = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    result = MaskPreview.execute(mask)
    (entry,) = result.ui["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    from PIL import Image
    path = folders.resolve_data("temp", entry["filename"])
    with Image.open(path) as picture:
        assert picture.mode == "RGB"
        assert np.array(picture).reshape(-1, 3).tolist() == [[0] * 3, [255] * 3, [127] * 3, [63] * 3]
