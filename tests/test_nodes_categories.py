"""Menu categories and display names follow current mainline ComfyUI (Comfy-Org/ComfyUI), which moved
its core nodes to the model/... scheme: nodes.py CATEGORY = "model/sampling", "model/loaders",
"model/latent", "model/conditioning[/transform|/controlnet]"; comfy_extras/nodes_post_processing.py
"image/filters"; comfy_extras/nodes_mask.py "image/mask"; primitives "utilities/primitive". The
classic top-level names (sampling, loaders, latent, conditioning, mask, utils) must not come back."""
from __future__ import annotations

import json
import sys

import pytest

# name -> (category, display_name) as mainline ComfyUI serves them in /object_info
COMFY = {
    "KSampler": ("model/sampling", "KSampler"),
    "KSamplerAdvanced": ("model/sampling", "KSampler (Advanced)"),
    "CheckpointLoaderSimple": ("model/loaders", "Load Checkpoint"),
    "VAELoader": ("model/loaders", "Load VAE"),
    "LoraLoader": ("model/loaders", "Load LoRA (Model and CLIP)"),
    "LoraLoaderModelOnly": ("model/loaders", "Load LoRA"),
    "ControlNetLoader": ("model/loaders", "Load ControlNet Model"),
    "DiffControlNetLoader": ("model/loaders", "Load ControlNet Model (diff)"),
    "SetUnionControlNetType": ("model/conditioning/controlnet", "SetUnionControlNetType"),
    "ControlNetApply": ("model/conditioning/controlnet", "Apply ControlNet (DEPRECATED)"),
    "ControlNetApplyAdvanced": ("model/conditioning/controlnet", "Apply ControlNet"),
    "CLIPTextEncode": ("model/conditioning", "CLIP Text Encode (Prompt)"),
    "ConditioningCombine": ("model/conditioning/transform", "Conditioning (Combine)"),
    "EmptyLatentImage": ("model/latent", "Empty Latent Image"),
    "VAEDecode": ("model/latent", "VAE Decode"),
    "LatentFromBatch": ("model/latent/batch", "Get Latent From Batch"),
    "SaveLatent": ("model/latent", "Save Latent"),
    "LoadLatent": ("model/latent", "Load Latent"),
    "LoadImage": ("image", "Load Image"),
    "SaveImageAdvanced": ("image", "Save Image (Advanced)"),
    "LoadImageMask": ("image", "Load Image (as Mask)"),
    "EmptyImage": ("image", "Empty Image"),
    "ImageInvert": ("image/color", "Invert Image Colors"),
    "ImageBatch": ("image/batch", "Batch Images (DEPRECATED)"),
    "BatchImagesNode": ("image/batch", "Batch Images"),
    "ImagePadForOutpaint": ("image/transform", "Pad Image for Outpainting"),
    "ImageBlend": ("image/filters", "Blend Images"),
    "ImageBlur": ("image/filters", "Blur Image"),
    "ImageSharpen": ("image/filters", "Sharpen Image"),
    "ImageQuantize": ("image/filters", "Quantize Image"),
    "ResizeImageMaskNode": ("image/transform", "Resize Image/Mask"),
    "ImageCompositeMasked": ("image/compositing", "Image Composite Masked"),
    "MaskToImage": ("image/mask", "Convert Mask to Image"),
    "ImageColorToMask": ("image/mask", "Convert Image Color to Mask"),
    "SolidMask": ("image/mask", "Create Solid Mask"),
    "MaskComposite": ("image/mask", "Combine Masks"),
    "MaskPreview": ("image/mask", "Preview Mask"),
    "BatchMasksNode": ("image/mask", "Batch Masks"),
    "PrimitiveInt": ("utilities/primitive", "Int"),
    "PrimitiveFloat": ("utilities/primitive", "Float"),
    "PrimitiveString": ("utilities/primitive", "String"),
    "PrimitiveStringMultiline": ("utilities/primitive", "String (Multiline)"),
    "PrimitiveBoolean": ("utilities/primitive", "Boolean"),
    "PreviewAny": ("utilities", "Preview as Text"),
}


def info(registry, name):
    return json.loads(json.dumps(registry.object_info(name)[name]))  # as served


@pytest.mark.parametrize("name", sorted(COMFY))
def test_category_and_display_name_match_mainline(registry, name):
    got = info(registry, name)
    assert (got["category"], got["display_name"]) == COMFY[name]


def test_no_node_keeps_a_classic_top_level_category(registry):
    classic = {"sampling", "loaders", "latent", "conditioning/controlnet", "mask", "utils", "transform"}
    stale = {name: info(registry, name)["category"] for name in registry.names()
             if info(registry, name)["category"] in classic
             or info(registry, name)["category"].split("/")[0] in {"sampling", "loaders", "latent", "utils"}}
    assert stale == {}


def test_primitive_number_widgets_as_comfyui_serves_them(registry):
    value = info(registry, "PrimitiveInt")["input"]["required"]["value"]
    assert value[0] == "INT"
    # io.Int.Input("value", min=-sys.maxsize, max=sys.maxsize, control_after_generate=io.ControlAfterGenerate.fixed)
    assert value[1]["min"] == -sys.maxsize and value[1]["max"] == sys.maxsize == 9223372036854775807
    assert value[1]["control_after_generate"] == "fixed"
    value = info(registry, "PrimitiveFloat")["input"]["required"]["value"]
    assert value[0] == "FLOAT"
    assert (value[1]["min"], value[1]["max"], value[1]["step"]) == (-sys.maxsize, sys.maxsize, 0.1)
    assert registry.get("PrimitiveInt").execute(value=sys.maxsize) == (sys.maxsize,)


def test_seed_widgets_keep_control_after_generate_true(registry):
    # a bare control_after_generate=True is still served as True (the frontend's "randomize")
    assert info(registry, "KSampler")["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info(registry, "KSamplerAdvanced")["input"]["required"]["noise_seed"][1]["control_after_generate"] is True


def test_control_after_generate_mode_is_a_widget_control():
    from loom.nodes.kernel.schema import Int
    fixed, plain, none = Int("v", control_after_generate="fixed"), Int("v", control_after_generate=True), Int("v")
    assert fixed.has_control_after_generate and plain.has_control_after_generate
    assert not none.has_control_after_generate and "control_after_generate" not in none.options()


def test_empty_latent_image_defaults_to_mainlines_1024(registry):
    required = info(registry, "EmptyLatentImage")["input"]["required"]
    assert required["width"][1]["default"] == required["height"][1]["default"] == 1024
    assert (required["width"][1]["min"], required["width"][1]["step"]) == (16, 8)
