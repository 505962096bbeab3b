"""ComfyUI's image geometry nodes: size, scale to a pixel count or a longest side, resize-and-pad,
crop, stitch, flip and rotate.

Each keeps ComfyUI's arithmetic exactly (``int`` truncation where it truncates, ``round`` where it
rounds), since a shared workflow's later nodes depend on the sizes these produce. Resampling goes
through :func:`loom.nodes.runtime.resample.common_upscale`, the one ComfyUI resize.
"""
from __future__ import annotations

import math

import torch

from loom.nodes.runtime.resample import UPSCALE_METHODS, common_upscale
from loom.nodes.kernel.schema import (HIDDEN_UNIQUE_ID, MAX_RESOLUTION, Boolean, Combo, Float, Int, Node, Output,
                               Schema, Socket, register)


def _resize(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    return common_upscale(image.movedim(-1, 1), width, height, method, "disabled").movedim(1, -1)


@register
class GetImageSize(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "GetImageSize", display_name="Get Image Size", category="image",
            description="Returns the width, height, and batch size of the image.",
            inputs=[Socket("image", "IMAGE")],
            outputs=[Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size")],
            hidden=[HIDDEN_UNIQUE_ID])

    @classmethod
    def execute(cls, image: torch.Tensor, unique_id: str | None = None) -> tuple:
        # ComfyUI also shows "width: W, height: H / batch size: B" on the node (a progress text);
        # Loom has no per-node text channel, so only the outputs carry the size.
        return (int(image.shape[2]), int(image.shape[1]), int(image.shape[0]))


@register
class ImageScaleToTotalPixels(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageScaleToTotalPixels", display_name="Scale Image to Total Pixels", category="image/upscaling",
            inputs=[Socket("image", "IMAGE"),
                    Combo("upscale_method", options_source=UPSCALE_METHODS),
                    Float("megapixels", default=1.0, min=0.01, max=16.0, step=0.01),
                    Int("resolution_steps", default=1, min=1, max=256, advanced=True)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, upscale_method: str, megapixels: float,
                resolution_steps: int = 1) -> tuple:
        total = megapixels * 1024 * 1024
        scale_by = math.sqrt(total / (image.shape[2] * image.shape[1]))
        width = round(image.shape[2] * scale_by / resolution_steps) * resolution_steps
        height = round(image.shape[1] * scale_by / resolution_steps) * resolution_steps
        return (_resize(image, int(width), int(height), upscale_method),)


@register
class ImageScaleToMaxDimension(Node):
    # ComfyUI lists "bilinear" twice; kept so the options match exactly.
    METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageScaleToMaxDimension", display_name="Scale Image to Max Dimension", category="image/upscaling",
            inputs=[Socket("image", "IMAGE"),
                    Combo("upscale_method", options_source=cls.METHODS),
                    Int("largest_size", default=512, min=0, max=MAX_RESOLUTION, step=1)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, upscale_method: str, largest_size: int) -> tuple:
        height, width = image.shape[1], image.shape[2]
        if height > width:
            width, height = round((width / height) * largest_size), largest_size
        elif width > height:
            width, height = largest_size, round((height / width) * largest_size)
        else:
            width = height = largest_size
        return (_resize(image, width, height, upscale_method),)


@register
class ResizeAndPadImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ResizeAndPadImage", display_name="Resize And Pad Image", category="image/transform",
            inputs=[Socket("image", "IMAGE"),
                    Int("target_width", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    Int("target_height", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    Combo("padding_color", options_source=("white", "black"), advanced=True),
                    Combo("interpolation", options_source=("area", "bicubic", "nearest-exact", "bilinear",
                                                           "lanczos"), advanced=True)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, target_width: int, target_height: int, padding_color: str,
                interpolation: str) -> tuple:
        batch, height, width, channels = image.shape
        scale = min(target_width / width, target_height / height)
        new_width, new_height = int(width * scale), int(height * scale)
        resized = common_upscale(image.permute(0, 3, 1, 2), new_width, new_height, interpolation, "disabled")
        padded = torch.full((batch, channels, target_height, target_width),
                            0.0 if padding_color == "black" else 1.0, dtype=image.dtype, device=image.device)
        top = (target_height - new_height) // 2
        left = (target_width - new_width) // 2
        padded[:, :, top:top + new_height, left:left + new_width] = resized
        return (padded.permute(0, 2, 3, 1),)


@register
class ImageCrop(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        # Deprecated in ComfyUI in favour of ImageCropV2 (a bounding-box widget); still in every older graph.
        return Schema(
            "ImageCrop", display_name="Crop Image (DEPRECATED)", category="image/transform", deprecated=True,
            inputs=[Socket("image", "IMAGE"),
                    Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, width: int, height: int, x: int, y: int) -> tuple:
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y:y + height, x:x + width, :],)


_SPACING_COLORS: dict[str, float | tuple[float, float, float]] = {
    "white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _repeat_last(image: torch.Tensor, batch: int) -> torch.Tensor:
    if image.shape[0] >= batch:
        return image
    return torch.cat([image, image[-1:].repeat(batch - image.shape[0], 1, 1, 1)])


def _center_pad(image: torch.Tensor, dim: int, size: int, value: float) -> torch.Tensor:
    """Pad dimension ``dim`` (1: height, 2: width) of ``[B, H, W, C]`` to ``size``, centred."""
    missing = size - image.shape[dim]
    if missing <= 0:
        return image
    before, after = missing // 2, missing - missing // 2
    pad = (0, 0, 0, 0, before, after) if dim == 1 else (0, 0, before, after)
    return torch.nn.functional.pad(image, pad, mode="constant", value=value)


def _add_ones_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[-1] >= channels:
        return image
    ones = torch.ones(*image.shape[:-1], channels - image.shape[-1], device=image.device)
    return torch.cat([image, ones], dim=-1)


def stitch(image1: torch.Tensor, image2: torch.Tensor, direction: str, match_image_size: bool,
           spacing_width: int, spacing_color: str) -> torch.Tensor:
    """``ImageStitch``'s arithmetic: batches evened by repeating the last image, image2 resized
    (lanczos) to image1's height/width or the narrower one centre-padded, channels evened with ones,
    an even-width spacer between, then concatenated."""
    horizontal = direction in ("left", "right")
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = _repeat_last(image1, batch), _repeat_last(image2, batch)
    color = _SPACING_COLORS[spacing_color]

    if match_image_size:
        h1, w1 = image1.shape[1:3]
        h2, w2 = image2.shape[1:3]
        aspect = w2 / h2
        if horizontal:
            target_w, target_h = int(h1 * aspect), h1
        else:
            target_w, target_h = w1, int(w1 / aspect)
        image2 = common_upscale(image2.movedim(-1, 1), target_w, target_h, "lanczos", "disabled").movedim(1, -1)
    else:
        pad_value = 0.0 if isinstance(color, tuple) else color
        dim = 1 if horizontal else 2
        size = max(image1.shape[dim], image2.shape[dim])
        image1 = _center_pad(image1, dim, size, pad_value)
        image2 = _center_pad(image2, dim, size, pad_value)

    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = _add_ones_channels(image1, channels), _add_ones_channels(image2, channels)

    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing_width > 0:
        spacing_width += spacing_width % 2
        if horizontal:
            shape = (image1.shape[0], max(image1.shape[1], image2.shape[1]), spacing_width, image1.shape[-1])
        else:
            shape = (image1.shape[0], spacing_width, max(image1.shape[2], image2.shape[2]), image1.shape[-1])
        spacing = torch.full(shape, 0.0, device=image1.device)
        if isinstance(color, tuple):
            for index, value in enumerate(color):
                if index < spacing.shape[-1]:
                    spacing[..., index] = value
        else:
            spacing[..., :min(3, spacing.shape[-1])] = color
        if spacing.shape[-1] == 4:
            spacing[..., 3] = 1.0
        parts.insert(1, spacing)
    return torch.cat(parts, dim=2 if horizontal else 1)


@register
class ImageStitch(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageStitch", display_name="Stitch Images", category="image/transform",
            description="Stitches image2 to image1 in the specified direction.\n"
                        "If image2 is not provided, returns image1 unchanged.\n"
                        "Optional spacing can be added between images.",
            inputs=[Socket("image1", "IMAGE"),
                    Combo("direction", options_source=("right", "down", "left", "up"), default="right"),
                    Boolean("match_image_size", default=True),
                    Int("spacing_width", default=0, min=0, max=1024, step=2, advanced=True),
                    Combo("spacing_color", options_source=tuple(_SPACING_COLORS), default="white", advanced=True),
                    Socket("image2", "IMAGE", optional=True)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image1: torch.Tensor, direction: str, match_image_size: bool, spacing_width: int,
                spacing_color: str, image2: torch.Tensor | None = None) -> tuple:
        if image2 is None:
            return (image1,)
        return (stitch(image1, image2, direction, match_image_size, spacing_width, spacing_color),)


@register
class ImageFlip(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageFlip", display_name="Flip Image", category="image/transform",
            inputs=[Socket("image", "IMAGE"),
                    Combo("flip_method", options_source=("x-axis: vertically", "y-axis: horizontally"))],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, flip_method: str) -> tuple:
        if flip_method.startswith("x"):
            image = torch.flip(image, dims=[1])
        elif flip_method.startswith("y"):
            image = torch.flip(image, dims=[2])
        return (image,)


@register
class ImageRotate(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageRotate", display_name="Rotate Image", category="image/transform",
            inputs=[Socket("image", "IMAGE"),
                    Combo("rotation", options_source=("none", "90 degrees", "180 degrees", "270 degrees"))],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, rotation: str) -> tuple:
        turns = next((k for k, prefix in ((1, "90"), (2, "180"), (3, "270")) if rotation.startswith(prefix)), 0)
        return (torch.rot90(image, k=turns, dims=[2, 1]),)  # clockwise
