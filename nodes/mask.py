"""ComfyUI's MASK nodes: conversions to and from images, solid/inverted/cropped masks, compositing of
two masks, feathering, growing/shrinking, thresholding, previewing and batching.

A ``MASK`` is a float tensor ``[B, H, W]`` (ComfyUI also passes ``[H, W]`` around; every node here
reshapes to ``[-1, H, W]`` where ComfyUI does, and leaves the shape alone where ComfyUI does).
Schemas, defaults, ranges, tooltips and the arithmetic are ComfyUI's (``comfy_extras/nodes_mask.py``
and ``BatchMasksNode`` of ``comfy_extras/nodes_post_processing.py``), including its quirks, so shared
workflows give the same pixels:

* ``FeatherMask``'s right and bottom ramps index ``-x`` for ``x = 0..n-1``, so the first column
  (row) is scaled by ``1/n`` and the last by ``2/n``;
* ``MaskComposite``'s logical operations round both operands to 0/1 first, and the result is clamped;
* ``GrowMask`` is ``scipy.ndimage.grey_dilation``/``grey_erosion`` with a 3×3 cross (tapered) or
  square footprint, ``|expand|`` times; here it is the same morphology in torch (edges replicated,
  which is what scipy's default ``reflect`` mode gives for a 3×3 footprint).
"""
from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F

from loom.nodes.image import save_images
from loom.nodes.runtime.resample import common_upscale
from loom.nodes.kernel.schema import (HIDDEN_EXTRA_PNGINFO, HIDDEN_PROMPT, MAX_RESOLUTION, Boolean, Combo, Float, Int,
                               Node, NodeOutput, Output, Schema, Socket, register)

__all__ = ["MaskToImage", "ImageToMask", "ImageColorToMask", "SolidMask", "InvertMask", "CropMask",
           "MaskComposite", "FeatherMask", "GrowMask", "ThresholdMask", "MaskPreview", "BatchMasksNode",
           "grow_mask", "batch_masks"]


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` → ``[B, H, W]``."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """A mask as a grey ``IMAGE`` ``[B, H, W, 3]`` (a broadcast view, as ComfyUI returns)."""
    return mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)


@register
class MaskToImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "MaskToImage", display_name="Convert Mask to Image", category="image/mask",
            description="Converts a 2D grayscale mask into an RGB image with identical channel values.",
            inputs=[Socket("mask", "MASK", tooltip="The input mask to convert into an RGB image.")],
            outputs=[Output("IMAGE", tooltip="The converted 3-channel RGB image.")])

    @classmethod
    def execute(cls, mask: torch.Tensor) -> tuple:
        return (mask_to_image(mask),)


@register
class ImageToMask(Node):
    CHANNELS = ("red", "green", "blue", "alpha")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageToMask", display_name="Convert Image to Mask", category="image/mask",
            description="Extracts a single color channel (red, green, blue, or alpha) from an image to create a mask.",
            inputs=[Socket("image", "IMAGE", tooltip="The source image from which to extract a channel."),
                    Combo("channel", options_source=cls.CHANNELS,
                          tooltip="The specific color or alpha channel to extract as a mask.")],
            outputs=[Output("MASK", tooltip="The extracted 1-channel mask.")])

    @classmethod
    def execute(cls, image: torch.Tensor, channel: str) -> tuple:
        index = cls.CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"ImageToMask: input 'channel': the image has {image.shape[-1]} channels, "
                             f"so it has no {channel} channel")
        return (image[:, :, :, index],)


@register
class ImageColorToMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageColorToMask", display_name="Convert Image Color to Mask", category="image/mask",
            description="Generates a binary mask isolating pixels that exactly match a specified RGB hex color value.",
            inputs=[Socket("image", "IMAGE", tooltip="The input image to evaluate for matching color pixels."),
                    Int("color", default=0, min=0, max=0xFFFFFF, step=1, display="number",
                        tooltip="The target RGB integer color value to mask (e.g. 0 for black, 16777215 for white).")],
            outputs=[Output("MASK", tooltip="The resulting binary mask with 1.0 at matching color pixels and 0.0 "
                                            "elsewhere.")])

    @classmethod
    def execute(cls, image: torch.Tensor, color: int) -> tuple:
        levels = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)
        packed = (torch.bitwise_left_shift(levels[:, :, :, 0], 16) + torch.bitwise_left_shift(levels[:, :, :, 1], 8)
                  + levels[:, :, :, 2])
        return (torch.where(packed == color, 1.0, 0).float(),)


@register
class SolidMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SolidMask", display_name="Create Solid Mask", category="image/mask",
            description="Creates a uniform, single-value mask of specified width and height.",
            inputs=[Float("value", default=1.0, min=0.0, max=1.0, step=0.01,
                          tooltip="The uniform fill value for the mask (0.0 = completely transparent/black, "
                                  "1.0 = completely opaque/white)."),
                    Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1,
                        tooltip="The width of the mask in pixels."),
                    Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1,
                        tooltip="The height of the mask in pixels.")],
            outputs=[Output("MASK", tooltip="The generated solid mask tensor.")])

    @classmethod
    def execute(cls, value: float, width: int, height: int) -> tuple:
        return (torch.full((1, height, width), value, dtype=torch.float32, device="cpu"),)


@register
class InvertMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "InvertMask", display_name="Invert Mask", category="image/mask",
            description="Inverts a mask by subtracting its values from 1.0 (black becomes white, white becomes black).",
            inputs=[Socket("mask", "MASK", tooltip="The input mask to invert.")],
            outputs=[Output("MASK", tooltip="The inverted mask output.")])

    @classmethod
    def execute(cls, mask: torch.Tensor) -> tuple:
        return (1.0 - mask,)


@register
class CropMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CropMask", display_name="Crop Mask", category="image/mask",
            description="Crops a rectangular sub-region from an input mask specified by offset and dimensions.",
            inputs=[Socket("mask", "MASK", tooltip="The input mask to crop."),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1,
                        tooltip="The top-left X horizontal pixel coordinate of the crop region."),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1,
                        tooltip="The top-left Y vertical pixel coordinate of the crop region."),
                    Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1,
                        tooltip="The width of the cropped region in pixels."),
                    Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1,
                        tooltip="The height of the cropped region in pixels.")],
            outputs=[Output("MASK", tooltip="The cropped mask region.")])

    @classmethod
    def execute(cls, mask: torch.Tensor, x: int, y: int, width: int, height: int) -> tuple:
        return (as_batch(mask)[:, y:y + height, x:x + width],)


MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


@register
class MaskComposite(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "MaskComposite", display_name="Combine Masks", category="image/mask",
            description="Combines two masks using mathematical or logical operations (multiply, add, subtract, "
                        "and, or, xor).",
            inputs=[Socket("destination", "MASK",
                           tooltip="The base destination mask onto which the source mask will be combined."),
                    Socket("source", "MASK", tooltip="The source mask to combine with the destination mask."),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1,
                        tooltip="Horizontal offset for positioning the source mask onto the destination mask."),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1,
                        tooltip="Vertical offset for positioning the source mask onto the destination mask."),
                    Combo("operation", options_source=MASK_OPERATIONS,
                          tooltip="The blending or boolean operation used to combine the source and destination "
                                  "masks.")],
            outputs=[Output("MASK", tooltip="The combined mask output.")])

    @classmethod
    def execute(cls, destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> tuple:
        output = as_batch(destination).clone()
        source = as_batch(source)
        right = min(x + source.shape[-1], destination.shape[-1])
        bottom = min(y + source.shape[-2], destination.shape[-2])
        src = source[:, :bottom - y, :right - x]
        dst = output[:, y:bottom, x:right]
        if operation == "multiply":
            combined = dst * src
        elif operation == "add":
            combined = dst + src
        elif operation == "subtract":
            combined = dst - src
        elif operation in ("and", "or", "xor"):
            logical = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}[operation]
            combined = logical(dst.round().bool(), src.round().bool()).float()
        else:
            raise ValueError(f"MaskComposite: input 'operation': unknown operation {operation!r}")
        output[:, y:bottom, x:right] = combined
        return (torch.clamp(output, 0.0, 1.0),)


@register
class FeatherMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        def side(name: str, where: str) -> Int:
            return Int(name, default=0, min=0, max=MAX_RESOLUTION, step=1,
                       tooltip=f"Number of pixels to feather inward from the {where} border.")

        return Schema(
            "FeatherMask", display_name="Feather Mask", category="image/mask",
            description="Applies linear gradient softening to the borders of a mask along specified edge distances.",
            inputs=[Socket("mask", "MASK", tooltip="The input mask to feather."),
                    side("left", "left"), side("top", "top"), side("right", "right"), side("bottom", "bottom")],
            outputs=[Output("MASK", tooltip="The edge-feathered mask output.")])

    @classmethod
    def execute(cls, mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> tuple:
        output = as_batch(mask).clone()
        height, width = output.shape[-2], output.shape[-1]
        left, right = min(left, width), min(right, width)
        top, bottom = min(top, height), min(bottom, height)
        # ComfyUI's order and indices, quirks included: the right/bottom ramps start at index -0 == 0.
        for i in range(left):
            output[:, :, i] *= (i + 1.0) / left
        for i in range(right):
            output[:, :, -i] *= (i + 1) / right
        for i in range(top):
            output[:, i, :] *= (i + 1) / top
        for i in range(bottom):
            output[:, -i, :] *= (i + 1) / bottom
        return (output,)


def grow_mask(mask: torch.Tensor, expand: int, tapered_corners: bool = True) -> torch.Tensor:
    """Grey dilation (``expand > 0``) or erosion (``expand < 0``), ``|expand|`` times, of ``[B, H, W]``.

    The footprint is 3×3: a cross when ``tapered_corners``, else the full square. The border is
    replicated, which for a 3×3 footprint is what scipy's default ``reflect`` mode amounts to.
    """
    out = as_batch(mask)
    if expand == 0:
        return out.clone()
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if not (tapered_corners and dy != 0 and dx != 0)]
    reduce = torch.amax if expand > 0 else torch.amin
    height, width = out.shape[-2], out.shape[-1]
    for _ in range(abs(expand)):
        padded = F.pad(out.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
        shifted = [padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] for dy, dx in offsets]
        out = reduce(torch.stack(shifted, dim=0), dim=0)
    return out


@register
class GrowMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "GrowMask", display_name="Grow Mask", category="image/mask",
            description="Expands (dilates) or shrinks (erodes) mask boundaries by a specified pixel distance.",
            inputs=[Socket("mask", "MASK", tooltip="The input mask to expand or shrink."),
                    Int("expand", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1,
                        tooltip="Number of pixels to grow (positive values expand/dilate, negative values "
                                "shrink/erode)."),
                    Boolean("tapered_corners", default=True, advanced=True,
                            tooltip="If enabled, uses a cross/diamond footprint for rounded corners; if disabled, "
                                    "uses a full 3x3 square kernel.")],
            outputs=[Output("MASK", tooltip="The expanded or contracted mask output.")])

    @classmethod
    def execute(cls, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple:
        return (grow_mask(mask, expand, tapered_corners),)


@register
class ThresholdMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ThresholdMask", display_name="Threshold Mask", category="image/mask",
            description="Converts a mask into a binary (0.0 or 1.0) mask based on a cutoff threshold value.",
            inputs=[Socket("mask", "MASK", tooltip="The input mask to threshold."),
                    Float("value", default=0.5, min=0.0, max=1.0, step=0.01,
                          tooltip="The threshold cutoff value. Mask pixels strictly greater than this value become "
                                  "1.0, others become 0.0.")],
            outputs=[Output("MASK", tooltip="The binary thresholded mask output.")])

    @classmethod
    def execute(cls, mask: torch.Tensor, value: float) -> tuple:
        return ((mask > value).float(),)


@register
class MaskPreview(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "MaskPreview", display_name="Preview Mask", category="image/mask", output_node=True,
            description="Previews the input mask in the UI and saves it as an image to the ComfyUI output directory.",
            inputs=[Socket("mask", "MASK", tooltip="The mask to preview and save.")],
            hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
            outputs=[])

    @classmethod
    def execute(cls, mask: torch.Tensor, prompt: Any = None,
                extra_pnginfo: dict[str, Any] | None = None) -> NodeOutput:
        # ComfyUI's UI.PreviewMask: the mask as a grey image, saved like PreviewImage (temp folder).
        suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        results = save_images(mask_to_image(mask), "ComfyUI_temp_" + suffix, kind="temp", compress_level=1,
                              prompt=prompt, extra_pnginfo=extra_pnginfo)
        return NodeOutput(ui={"images": results})


# --------------------------------------------------------------------------------------------
# BatchMasksNode: an Autogrow input (masks.mask0, masks.mask1, ... up to 50)
# --------------------------------------------------------------------------------------------

def batch_masks(masks: list[torch.Tensor]) -> torch.Tensor | None:
    """ComfyUI's ``batch_masks``: every mask resized (bilinear, centre crop) to the first one's size."""
    if not masks:
        return None
    first = masks[0].shape
    resized = []
    for mask in masks:
        if mask.shape[1:] != first[1:]:
            mask = common_upscale(mask.unsqueeze(1), first[2], first[1], "bilinear", "center").squeeze(1)
        resized.append(mask)
    return torch.cat(resized, dim=0)


AUTOGROW_TYPE = "COMFY_AUTOGROW_V3"


@register
class BatchMasksNode(Node):
    """The slots are declared flat (``masks.mask0`` ... ``masks.mask49``), which is how ComfyUI's prompt
    names them; ``/object_info`` shows ComfyUI's single Autogrow input instead."""

    GROUP = "masks"
    PREFIX = "mask"
    MIN = 2
    MAX = 50

    @classmethod
    def define_schema(cls) -> Schema:
        slots = [Socket(f"{cls.GROUP}.{cls.PREFIX}{i}", "MASK", optional=i >= cls.MIN) for i in range(cls.MAX)]
        return Schema("BatchMasksNode", display_name="Batch Masks", category="image/mask", inputs=slots,
                      outputs=[Output("MASK")])

    @classmethod
    def object_info(cls) -> dict[str, Any]:
        info = super().object_info()
        template = {"input": {"required": {cls.PREFIX: ["MASK", {}]}}, "prefix": cls.PREFIX,
                    "min": cls.MIN, "max": cls.MAX}
        info["input"] = {"required": {cls.GROUP: [AUTOGROW_TYPE, {"template": template}]}}
        info["input_order"] = {"required": [cls.GROUP]}
        return info

    @classmethod
    def execute(cls, **masks: torch.Tensor) -> tuple:
        prefix = f"{cls.GROUP}.{cls.PREFIX}"
        ordered = sorted(((int(name[len(prefix):]), value) for name, value in masks.items()
                          if name.startswith(prefix) and value is not None), key=lambda item: item[0])
        return (batch_masks([value for _, value in ordered]),)
