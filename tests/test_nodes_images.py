"""The everyday IMAGE nodes (issue 12): each one's /object_info entry against ComfyUI's source, and its
behaviour on small tensors (exact values where ComfyUI's maths is simple, independent references for
the filters)."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from loom.nodes import image_ops
from loom.nodes.image_animated import SaveAnimatedPNG, SaveAnimatedWEBP
from loom.nodes.image_batch import BatchImagesNode, ImageFromBatch, RepeatImageBatch
from loom.nodes.image_compare import ImageCompare
from loom.nodes.image_filters import ImageBlend, ImageBlur, ImageQuantize, ImageSharpen, _normalized_bayer
from loom.nodes.image_transform import (GetImageSize, ImageCrop, ImageFlip, ImageRotate, ImageScaleToMaxDimension,
                                        ImageScaleToTotalPixels, ImageStitch, ResizeAndPadImage)

MAX = 16384
UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
IMG = ["IMAGE", {}]

# What ComfyUI's current source declares (comfy_extras/nodes_images.py, nodes_post_processing.py,
# nodes_image_compare.py; display names of nodes that set none from nodes.py's NODE_DISPLAY_NAME_MAPPINGS):
# name -> (display_name, category, required, optional, hidden, outputs, output_names, output_node, extra flags)
COMFY = {
    "GetImageSize": ("Get Image Size", "image", {"image": IMG}, {}, {"unique_id": "UNIQUE_ID"},
                     ["INT", "INT", "INT"], ["width", "height", "batch_size"], False, {}),
    "ImageScaleToTotalPixels": (
        "Scale Image to Total Pixels", "image/upscaling",
        {"image": IMG, "upscale_method": [UPSCALE, {}],
         "megapixels": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}],
         "resolution_steps": ["INT", {"default": 1, "min": 1, "max": 256, "advanced": True}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageScaleToMaxDimension": (
        "Scale Image to Max Dimension", "image/upscaling",
        {"image": IMG,
         "upscale_method": [["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"], {}],
         "largest_size": ["INT", {"default": 512, "min": 0, "max": MAX, "step": 1}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ResizeAndPadImage": (
        "Resize And Pad Image", "image/transform",
        {"image": IMG,
         "target_width": ["INT", {"default": 512, "min": 1, "max": MAX, "step": 1}],
         "target_height": ["INT", {"default": 512, "min": 1, "max": MAX, "step": 1}],
         "padding_color": [["white", "black"], {"advanced": True}],
         "interpolation": [["area", "bicubic", "nearest-exact", "bilinear", "lanczos"], {"advanced": True}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageCrop": (
        "Crop Image (DEPRECATED)", "image/transform",
        {"image": IMG,
         "width": ["INT", {"default": 512, "min": 1, "max": MAX, "step": 1}],
         "height": ["INT", {"default": 512, "min": 1, "max": MAX, "step": 1}],
         "x": ["INT", {"default": 0, "min": 0, "max": MAX, "step": 1}],
         "y": ["INT", {"default": 0, "min": 0, "max": MAX, "step": 1}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {"deprecated": True}),
    "ImageStitch": (
        "Stitch Images", "image/transform",
        {"image1": IMG,
         "direction": [["right", "down", "left", "up"], {"default": "right"}],
         "match_image_size": ["BOOLEAN", {"default": True}],
         "spacing_width": ["INT", {"default": 0, "min": 0, "max": 1024, "step": 2, "advanced": True}],
         "spacing_color": [["white", "black", "red", "green", "blue"], {"default": "white", "advanced": True}]},
        {"image2": IMG}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageFlip": ("Flip Image", "image/transform",
                  {"image": IMG, "flip_method": [["x-axis: vertically", "y-axis: horizontally"], {}]},
                  {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageRotate": ("Rotate Image", "image/transform",
                    {"image": IMG, "rotation": [["none", "90 degrees", "180 degrees", "270 degrees"], {}]},
                    {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageBlend": (
        "Blend Images", "image/filters",
        {"image1": IMG, "image2": IMG,
         "blend_factor": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}],
         "blend_mode": [["normal", "multiply", "screen", "overlay", "soft_light", "difference"], {}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageBlur": (
        "Blur Image", "image/filters",
        {"image": IMG, "blur_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1}],
         "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageSharpen": (
        "Sharpen Image", "image/filters",
        {"image": IMG,
         "sharpen_radius": ["INT", {"default": 1, "min": 1, "max": 31, "step": 1, "advanced": True}],
         "sigma": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01, "advanced": True}],
         "alpha": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01, "advanced": True}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageQuantize": (
        "Quantize Image", "image/filters",
        {"image": IMG, "colors": ["INT", {"default": 256, "min": 1, "max": 256, "step": 1}],
         "dither": [["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"], {}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "BatchImagesNode": (
        "Batch Images", "image/batch",
        {"images": ["COMFY_AUTOGROW_V3", {"template": {"input": {"required": {"image": IMG}},
                                                       "prefix": "image", "min": 2, "max": 50}}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageFromBatch": (
        "Get Image from Batch", "image/batch",
        {"image": IMG, "batch_index": ["INT", {"default": 0, "min": -MAX, "max": MAX}],
         "length": ["INT", {"default": 1, "min": 1, "max": 4096}]},
        {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "RepeatImageBatch": ("Repeat Image Batch", "image/batch",
                         {"image": IMG, "amount": ["INT", {"default": 1, "min": 1, "max": 4096}]},
                         {}, {}, ["IMAGE"], ["IMAGE"], False, {}),
    "ImageCompare": (
        "Image Compare", "image", {"compare_view": ["IMAGECOMPARE", {"socketless": True}]},
        {"image_a": IMG, "image_b": IMG}, {"prompt": "PROMPT"}, [], [], True, {"experimental": True}),
    "SaveAnimatedWEBP": (
        "Save Animated WEBP", "image",
        {"images": IMG, "filename_prefix": ["STRING", {"default": "ComfyUI"}],
         "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
         "lossless": ["BOOLEAN", {"default": True}],
         "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
         "method": [["default", "fastest", "slowest"], {}]},
        {}, {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, ["IMAGE"], ["images"], True, {}),
    "SaveAnimatedPNG": (
        "Save Animated PNG", "image",
        {"images": IMG, "filename_prefix": ["STRING", {"default": "ComfyUI"}],
         "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
         "compress_level": ["INT", {"default": 4, "min": 0, "max": 9, "advanced": True}]},
        {}, {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, ["IMAGE"], ["images"], True, {}),
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_matches_comfyui(registry, name):
    display, category, required, optional, hidden, outputs, names, output_node, flags = COMFY[name]
    info = json.loads(json.dumps(registry.object_info(name)[name]))  # as served: tuples become lists
    assert info["display_name"] == display and info["category"] == category
    assert info["input"]["required"] == required
    assert info["input"].get("optional", {}) == optional
    assert info["input"].get("hidden", {}) == hidden
    assert info["input_order"]["required"] == list(required)
    assert info["output"] == outputs and info["output_name"] == names
    assert info["output_is_list"] == [False] * len(outputs)
    assert info["output_node"] is output_node
    for flag in ("deprecated", "experimental"):
        assert info.get(flag, False) is flags.get(flag, False)


def ramp(b=1, h=4, w=4, c=3) -> torch.Tensor:
    return torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h, w, c) / (b * h * w * c)


# ---------------------------------------------------------------- geometry


def test_get_image_size():
    assert GetImageSize.execute(torch.zeros(3, 5, 7, 3), unique_id="4") == (7, 5, 3)


def test_scale_to_total_pixels_rounds_to_steps():
    image = torch.rand(1, 4, 8, 3)
    (out,) = ImageScaleToTotalPixels.execute(image, "bilinear", 0.01, 1)
    assert out.shape == (1, 72, 145, 3)  # sqrt(0.01 * 2**20 / 32) = 18.1
    (out,) = ImageScaleToTotalPixels.execute(image, "nearest-exact", 0.01, 8)
    assert out.shape == (1, 72, 144, 3)


def test_scale_to_max_dimension():
    (out,) = ImageScaleToMaxDimension.execute(torch.rand(1, 4, 8, 3), "area", 16)
    assert out.shape == (1, 8, 16, 3)
    (out,) = ImageScaleToMaxDimension.execute(torch.rand(1, 9, 3, 3), "bilinear", 4)
    assert out.shape == (1, 4, 1, 3)  # round(3/9 * 4) = 1
    (out,) = ImageScaleToMaxDimension.execute(torch.rand(2, 5, 5, 3), "nearest-exact", 10)
    assert out.shape == (2, 10, 10, 3)


def test_resize_and_pad_centres_the_resized_image():
    image = torch.tensor([[[[0.2, 0.2, 0.2], [0.4, 0.4, 0.4]]]])  # 1x2, H=1, W=2
    (out,) = ResizeAndPadImage.execute(image, 4, 4, "black", "nearest-exact")
    assert out.shape == (1, 4, 4, 3)
    # scale 2: 2x4 pasted at row (4 - 2) // 2 = 1
    assert torch.equal(out[0, 0], torch.zeros(4, 3)) and torch.equal(out[0, 3], torch.zeros(4, 3))
    assert torch.allclose(out[0, 1:3, :, 0], torch.tensor([[0.2, 0.2, 0.4, 0.4]] * 2))
    (white,) = ResizeAndPadImage.execute(image, 3, 5, "white", "area")
    # scale min(3/2, 5/1) = 1.5: int(2 * 1.5) = 3 wide, int(1.5) = 1 high, at row 2
    assert torch.equal(white[0, 0], torch.ones(3, 3)) and torch.equal(white[0, 4], torch.ones(3, 3))


def test_crop_clamps_the_origin():
    image = ramp(1, 4, 4, 3)
    (out,) = ImageCrop.execute(image, 2, 3, 1, 1)
    assert torch.equal(out, image[:, 1:4, 1:3])
    (out,) = ImageCrop.execute(image, 512, 512, 100, 100)
    assert torch.equal(out, image[:, 3:, 3:])


def test_stitch_directions_and_spacing():
    a = torch.full((1, 2, 2, 3), 0.25)
    b = torch.full((1, 2, 3, 3), 0.75)
    (right,) = ImageStitch.execute(a, "right", False, 0, "white", b)
    assert right.shape == (1, 2, 5, 3) and torch.equal(right[:, :, :2], a) and torch.equal(right[:, :, 2:], b)
    (left,) = ImageStitch.execute(a, "left", False, 0, "white", b)
    assert torch.equal(left[:, :, :3], b)
    # width 3 vertical: a is padded to 3 columns with the spacing colour (white), 0 left, 1 right
    (down,) = ImageStitch.execute(a, "down", False, 1, "red", b)
    assert down.shape == (1, 2 + 2 + 2, 3, 3)  # spacing 1 becomes 2
    assert torch.equal(down[0, :2, 2], torch.zeros(2, 3))  # a tuple colour pads with 0
    assert down[0, 2:4, :].tolist() == [[[1.0, 0.0, 0.0]] * 3] * 2
    (plain,) = ImageStitch.execute(a, "up", True, 0, "white")
    assert plain is a
    (none,) = ImageStitch.execute(a, "right", True, 0, "white", None)
    assert none is a


def test_stitch_matches_size_and_batch_and_channels():
    a = torch.full((2, 4, 4, 3), 0.5)
    b = torch.full((1, 2, 4, 4), 1.0)  # RGBA, aspect 2
    (out,) = ImageStitch.execute(a, "right", True, 2, "black", b)
    # b resized (lanczos) to 4 x int(4 * 2) = 8, a gets an opaque alpha, a black opaque spacer of 2
    assert out.shape == (2, 4, 4 + 2 + 8, 4)
    assert torch.equal(out[:, :, :4, 3], torch.ones(2, 4, 4))
    assert out[0, 0, 4].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert torch.allclose(out[1, :, 6:], torch.ones(4, 8, 4))


def test_flip_and_rotate():
    image = ramp(1, 2, 3, 1)
    (x,) = ImageFlip.execute(image, "x-axis: vertically")
    assert torch.equal(x, image.flip(1))
    (y,) = ImageFlip.execute(image, "y-axis: horizontally")
    assert torch.equal(y, image.flip(2))
    grid = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(1, 2, 3, 1)
    (r90,) = ImageRotate.execute(grid, "90 degrees")
    assert r90[0, :, :, 0].tolist() == [[4.0, 1.0], [5.0, 2.0], [6.0, 3.0]]  # clockwise
    (r180,) = ImageRotate.execute(grid, "180 degrees")
    assert r180[0, :, :, 0].tolist() == [[6.0, 5.0, 4.0], [3.0, 2.0, 1.0]]
    (r270,) = ImageRotate.execute(grid, "270 degrees")
    assert r270[0, :, :, 0].tolist() == [[3.0, 6.0], [2.0, 5.0], [1.0, 4.0]]
    (same,) = ImageRotate.execute(grid, "none")
    assert torch.equal(same, grid)


# ---------------------------------------------------------------- filters


def test_blend_modes():
    a = torch.tensor([0.2, 0.6]).reshape(1, 1, 2, 1).expand(1, 1, 2, 3).clone()
    b = torch.tensor([0.5, 0.3]).reshape(1, 1, 2, 1).expand(1, 1, 2, 3).clone()
    expected = {
        "normal": [0.5, 0.3], "multiply": [0.1, 0.18], "screen": [0.6, 0.72],
        "overlay": [2 * 0.2 * 0.5, 1 - 2 * 0.4 * 0.7],
        "soft_light": [0.2 - 0.0 * 0.2 * 0.8, 0.6 - 0.4 * 0.6 * 0.4],
        "difference": [0.0, 0.3],  # 0.2 - 0.5 clamps to 0
    }
    for mode, values in expected.items():
        (out,) = ImageBlend.execute(a, b, 1.0, mode)
        assert out[0, 0, :, 0].tolist() == pytest.approx(values, abs=1e-6), mode
    (half,) = ImageBlend.execute(a, b, 0.5, "multiply")
    assert half[0, 0, :, 0].tolist() == pytest.approx([0.15, 0.39])
    soft = image_ops.blend(torch.tensor([0.16, 0.64]), torch.tensor([0.75, 0.75]), "soft_light")
    g = [((16 * 0.16 - 12) * 0.16 + 4) * 0.16, 0.8]
    assert soft.tolist() == pytest.approx([0.16 + 0.5 * (g[0] - 0.16), 0.64 + 0.5 * (g[1] - 0.64)])


def test_blend_resizes_and_fixes_alpha():
    a = torch.full((1, 4, 4, 4), 0.5)
    b = torch.full((1, 2, 2, 3), 1.0)
    (out,) = ImageBlend.execute(a, b, 1.0, "multiply")
    assert out.shape == (1, 4, 4, 4) and torch.allclose(out, torch.full_like(out, 0.5))


def _reference_kernel(size: int, sigma: float) -> np.ndarray:
    axis = np.linspace(-1.0, 1.0, size)
    g = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma * sigma))
    return g / g.sum()


def _reference_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Direct sum over the kernel with reflected borders, one channel at a time (``[H, W, C]``)."""
    r = kernel.shape[0] // 2
    height, width, _ = image.shape
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(image)
    for y in range(height):
        for x in range(width):
            window = padded[y:y + 2 * r + 1, x:x + 2 * r + 1]
            out[y, x] = (window * kernel[:, :, None]).sum(axis=(0, 1))
    return out


@pytest.mark.parametrize("radius,sigma", [(1, 1.0), (2, 0.5), (3, 3.0)])
def test_blur_is_comfyuis_gaussian_with_reflected_borders(radius, sigma):
    torch.manual_seed(radius)
    image = torch.rand(2, 7, 9, 3)
    (out,) = ImageBlur.execute(image, radius, sigma)
    kernel = _reference_kernel(radius * 2 + 1, sigma)
    for b in range(2):
        reference = _reference_filter(image[b].double().numpy(), kernel)
        assert np.allclose(out[b].numpy(), reference, atol=1e-5)


@pytest.mark.parametrize("radius,sigma,alpha", [(1, 1.0, 1.0), (2, 0.7, 0.3), (1, 2.0, 0.0)])
def test_sharpen_is_an_unsharp_mask(radius, sigma, alpha):
    torch.manual_seed(7)
    image = torch.rand(1, 6, 8, 3)
    (out,) = ImageSharpen.execute(image, radius, sigma, alpha)
    x = image[0].double().numpy()
    blurred = _reference_filter(x, _reference_kernel(radius * 2 + 1, sigma))
    reference = np.clip(x + 10 * alpha * (x - blurred), 0, 1)  # the kernel: (1 + 10a) delta - 10a gaussian
    assert np.allclose(out[0].numpy(), reference, atol=1e-5)


def test_bayer_matrices_are_the_classic_index_matrices():
    m2 = np.array([[0, 2], [3, 1]])
    m4 = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])
    assert np.allclose(_normalized_bayer(1), (m2 - 1.5) / 4)
    assert np.allclose(_normalized_bayer(2), (m4 - 7.5) / 16)
    assert _normalized_bayer(4).shape == (16, 16)


def _palette_quantize(array: np.ndarray, colors: int, dither) -> np.ndarray:
    picture = Image.fromarray(array)
    palette = picture.quantize(colors=colors)
    return np.array(picture.quantize(palette=palette, dither=dither).convert("RGB"))


def test_quantize_uses_pillows_median_cut_palette():
    rng = np.random.default_rng(3)
    array = rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    image = torch.from_numpy(array.astype(np.float32) / 255.0)
    for dither, pil in (("none", Image.Dither.NONE), ("floyd-steinberg", Image.Dither.FLOYDSTEINBERG)):
        (out,) = ImageQuantize.execute(image, 4, dither)
        for b in range(2):
            # the node converts with (x * 255).to(uint8), a truncation: the same bytes here
            reference = _palette_quantize((image[b] * 255).to(torch.uint8).numpy(), 4, pil)
            assert np.array_equal((out[b].numpy() * 255).round().astype(np.uint8), reference), dither
    for order in ("bayer-2", "bayer-4", "bayer-8", "bayer-16"):
        (out,) = ImageQuantize.execute(image, 3, order)
        for b in range(2):
            picture = Image.fromarray((image[b] * 255).to(torch.uint8).numpy())
            allowed = {tuple(c) for c in np.array(picture.quantize(colors=3).convert("RGB")).reshape(-1, 3)}
            used = {tuple(c) for c in (out[b].numpy() * 255).round().astype(np.uint8).reshape(-1, 3)}
            assert used <= allowed, order


def test_quantize_keeps_an_image_with_few_colours():
    array = np.zeros((4, 4, 3), dtype=np.uint8)
    array[:2] = (255, 0, 0)
    array[2:] = (0, 0, 255)
    image = torch.from_numpy(array.astype(np.float32) / 255.0)[None]
    for dither in ImageQuantize.DITHERS:
        (out,) = ImageQuantize.execute(image, 256, dither)
        assert torch.equal(out, image), dither


# ---------------------------------------------------------------- batches


def test_batch_images_node_pads_channels_and_resizes_to_the_first():
    a = torch.full((1, 4, 4, 3), 0.5)
    b = torch.full((2, 2, 2, 4), 0.25)
    (out,) = BatchImagesNode.execute(**{"images.image0": a, "images.image1": b})
    assert out.shape == (3, 4, 4, 4)
    assert torch.equal(out[0, ..., 3], torch.ones(4, 4)) and torch.allclose(out[1:], torch.full((2, 4, 4, 4), 0.25))
    (three,) = BatchImagesNode.execute(**{"images.image0": b[:1], "images.image1": b[1:], "images.image2": b})
    assert three.shape == (4, 2, 2, 4)


def test_batch_images_node_prompt_keys(registry):
    graph = pytest.importorskip("loom.server.validation")
    executor_module = pytest.importorskip("loom.server.executor")
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 255}},
              "2": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 2, "color": 0}},
              "3": {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0], "images.image1": ["2", 0],
                                                                "images.image2": ["1", 0]}},
              "4": {"class_type": "GetImageSize", "inputs": {"image": ["3", 0]}},
              "5": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["3", 0], "filename_prefix": "batch",
                                                                "fps": 6.0, "compress_level": 1}}}
    assert graph.validate_prompt(prompt, registry).ok
    missing = json.loads(json.dumps(prompt))
    del missing["3"]["inputs"]["images.image1"]
    result = graph.validate_prompt(missing, registry)
    assert not result.ok and "images.image1" in json.dumps(result.node_errors["3"])
    executed = executor_module.Executor(registry).execute(prompt, "b1")
    assert executed.status == "success", executed.error
    assert executed.outputs["5"]["animated"] in ([True], (True,))


def test_image_from_batch_counts_from_the_end_and_clamps():
    image = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1)
    take = lambda index, length: ImageFromBatch.execute(image, index, length)[0].flatten().tolist()  # noqa: E731
    assert take(1, 2) == [1.0, 2.0]
    assert take(-1, 3) == [4.0]
    assert take(-2, 1) == [3.0]
    assert take(9, 2) == [4.0]
    assert take(-9, 2) == [0.0, 1.0]
    (out,) = ImageFromBatch.execute(image, 0, 5)
    assert out.data_ptr() != image.data_ptr()


def test_repeat_image_batch():
    image = ramp(2, 1, 1, 3)
    (out,) = RepeatImageBatch.execute(image, 3)
    assert out.shape == (6, 1, 1, 3) and torch.equal(out[4:], image)


# ---------------------------------------------------------------- output nodes


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        assert struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def test_save_animated_png(base_dir):
    frames = torch.stack([torch.full((3, 5, 3), v) for v in (0.0, 0.5, 1.0)])
    prompt = {"1": {"class_type": "X"}}
    workflow = {"nodes": []}
    result = SaveAnimatedPNG.execute(frames, 4.0, 9, "anim/clip", prompt=prompt,
                                     extra_pnginfo={"workflow": workflow})
    assert result.values == (frames,)
    (entry,) = result.ui["images"]
    assert entry == {"filename": "clip_00001_.png", "subfolder": "anim", "type": "output"}
    assert result.ui["animated"] == (True,)
    path = base_dir / "output" / "anim" / entry["filename"]
    with Image.open(path) as picture:
        assert picture.n_frames == 3 and picture.size == (5, 3)
        assert picture.info["duration"] == 250
        picture.seek(1)
        assert np.array(picture.convert("RGB"))[0, 0].tolist() == [127, 127, 127]
    chunks = _png_chunks(path.read_bytes())
    kinds = [kind for kind, _ in chunks]
    comf = [body for kind, body in chunks if kind == b"comf"]
    assert comf == [b"prompt\0" + json.dumps(prompt).encode(), b"workflow\0" + json.dumps(workflow).encode()]
    assert kinds.index(b"comf") > kinds.index(b"IDAT")
    single = SaveAnimatedPNG.execute(frames[:1], 6.0, 4, "anim/clip")
    assert single.ui["images"][0]["filename"] == "clip_00002_.png" and single.ui["animated"] == (False,)


def test_save_animated_webp(base_dir):
    frames = torch.stack([torch.full((4, 6, 3), v) for v in (0.0, 1.0)])
    prompt = {"1": {"class_type": "X"}}
    result = SaveAnimatedWEBP.execute(frames, 2.0, "ComfyUI", True, 80, "fastest", prompt=prompt,
                                      extra_pnginfo={"workflow": {"a": 1}, "other": [2]})
    (entry,) = result.ui["images"]
    assert entry["filename"] == "ComfyUI_00001_.webp" and result.ui["animated"] == (True,)
    with Image.open(base_dir / "output" / entry["filename"]) as picture:
        assert picture.n_frames == 2 and picture.size == (6, 4)
        picture.load()
        assert picture.info["duration"] == 500
        exif = picture.getexif()
        assert exif[0x0110] == "prompt:" + json.dumps(prompt)
        assert exif[0x010F] == 'workflow:{"a": 1}' and exif[0x010E] == "other:[2]"
        picture.seek(1)
        assert np.array(picture.convert("RGB"))[0, 0].tolist() == [255, 255, 255]  # lossless


def test_image_compare_previews_both_sides(base_dir):
    a, b = torch.rand(2, 3, 3, 3), torch.rand(1, 3, 3, 3)
    result = ImageCompare.execute(image_a=a, image_b=b, compare_view={"x": 1})
    assert result.values == ()
    assert [e["type"] for e in result.ui["a_images"]] == ["temp", "temp"] and len(result.ui["b_images"]) == 1
    for entry in result.ui["a_images"] + result.ui["b_images"]:
        assert entry["filename"].startswith(("comfy.compare.a_temp_", "comfy.compare.b_temp_"))
        assert (base_dir / "temp" / entry["filename"]).is_file()
    empty = ImageCompare.execute(image_a=None, image_b=torch.zeros(0, 2, 2, 3), compare_view=None)
    assert empty.ui == {"a_images": [], "b_images": []}
