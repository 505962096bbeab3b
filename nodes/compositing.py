"""Compositing: ComfyUI's ``composite`` helper and the nodes built on it (``ImageCompositeMasked``),
alpha channels in and out of images (``JoinImageWithAlpha``, ``SplitImageWithAlpha``) and
``ImageCropToMask`` (crop to the mask's bounding box over a background colour, then resize).

:func:`composite` is ComfyUI's exactly: the source is optionally resized (bilinear) to the
destination, repeated or cut to the destination's batch, placed at ``x // multiplier, y // multiplier``
(clamped so that it can hang off the edges), the mask resized (bilinear) to the source and repeated or
cut to its batch, and ``mask * source + (1 - mask) * destination`` written into the visible region.
``LatentCompositeMasked`` uses it with ``multiplier=8`` on latents.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from loom.nodes.runtime.resample import common_upscale
from loom.nodes.kernel.schema import MAX_RESOLUTION, Boolean, Float, Int, Node, Output, Schema, Socket, String, register

log = logging.getLogger(__name__)

__all__ = ["composite", "repeat_to_batch_size", "image_alpha_fix", "resize_mask", "ImageCompositeMasked",
           "JoinImageWithAlpha", "SplitImageWithAlpha", "ImageCropToMask", "Color"]


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Cut ``tensor`` to ``batch_size`` along ``dim``, or repeat it whole and cut (ComfyUI's rule)."""
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / tensor.shape[dim])
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's channel reconciliation: a source with more channels loses the extra ones; a destination
    with more channels gets one more, filled with 1.0 (ComfyUI's rule as written, so RGBA onto RGB works
    and RGB onto RGBA fails in both)."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = F.pad(destination, (0, 1))
        destination[..., -1] = 1.0
    return destination, source


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None = None,
              multiplier: int = 8, resize_source: bool = False) -> torch.Tensor:
    """Paste channels-first ``source`` into ``destination`` (``[B, C, H, W]``, modified in place and returned)."""
    source = source.to(destination.device)
    if resize_source:
        source = F.interpolate(source, size=(destination.shape[-2], destination.shape[-1]), mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])

    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]

    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True)
        mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                             size=(source.shape[-2], source.shape[-1]), mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])

    visible_width = destination.shape[-1] - left + min(0, x)
    visible_height = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_height, :visible_width]
    if mask.ndim < source.ndim:
        mask = mask.unsqueeze(1)
    inverse = torch.ones_like(mask) - mask
    source_part = mask * source[..., :visible_height, :visible_width]
    destination_part = inverse * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = source_part + destination_part
    return destination


@register
class ImageCompositeMasked(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageCompositeMasked", display_name="Image Composite Masked", category="image/compositing",
            description="Composites a source image into a destination image using an optional mask and offset "
                        "coordinates.",
            inputs=[Socket("destination", "IMAGE",
                           tooltip="The background image into which the source image will be composited."),
                    Socket("source", "IMAGE", tooltip="The foreground image to composite onto the destination image."),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1,
                        tooltip="Horizontal pixel offset for positioning the source image."),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1,
                        tooltip="Vertical pixel offset for positioning the source image."),
                    Boolean("resize_source", default=False,
                            tooltip="If enabled, resizes the source image to match the dimensions of the destination "
                                    "image."),
                    Socket("mask", "MASK", optional=True,
                           tooltip="Optional mask specifying blending intensity (1.0 = source, 0.0 = destination).")],
            outputs=[Output("IMAGE", tooltip="The composited image output.")])

    @classmethod
    def execute(cls, destination: torch.Tensor, source: torch.Tensor, x: int, y: int, resize_source: bool,
                mask: torch.Tensor | None = None) -> tuple:
        destination, source = image_alpha_fix(destination, source)
        if destination.shape[-1] != source.shape[-1]:
            raise ValueError(f"ImageCompositeMasked: the destination has {destination.shape[-1] - 1} channels and "
                             f"the source {source.shape[-1]}; ComfyUI cannot composite an image without alpha "
                             f"onto one with alpha either (add an alpha channel to the source)")
        destination = destination.clone().movedim(-1, 1)
        output = composite(destination, source.movedim(-1, 1), x, y, mask, 1, resize_source).movedim(1, -1)
        return (output,)


def resize_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``[.., h, w]`` → ``[B, shape[0], shape[1]]`` bilinear (ComfyUI's ``nodes_compositing.resize_mask``)."""
    return F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])), size=(shape[0], shape[1]),
                         mode="bilinear").squeeze(1)


@register
class SplitImageWithAlpha(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SplitImageWithAlpha", display_name="Split Image with Alpha", category="mask/compositing",
                      inputs=[Socket("image", "IMAGE")],
                      outputs=[Output("IMAGE"), Output("MASK")])

    @classmethod
    def execute(cls, image: torch.Tensor) -> tuple:
        colours = torch.stack([frame[:, :, :3] for frame in image])
        alphas = torch.stack([frame[:, :, 3] if frame.shape[2] > 3 else torch.ones_like(frame[:, :, 0])
                              for frame in image])
        return (colours, 1.0 - alphas)


@register
class JoinImageWithAlpha(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("JoinImageWithAlpha", display_name="Join Image with Alpha", category="mask/compositing",
                      inputs=[Socket("image", "IMAGE"), Socket("alpha", "MASK")],
                      outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, alpha: torch.Tensor) -> tuple:
        count = min(len(image), len(alpha))
        alpha = 1.0 - resize_mask(alpha, image.shape[1:])
        return (torch.stack([torch.cat((image[i][:, :, :3], alpha[i].unsqueeze(2)), dim=2) for i in range(count)]),)


# --------------------------------------------------------------------------------------------
# ImageCropToMask
# --------------------------------------------------------------------------------------------

@dataclass
class Color(String):
    """ComfyUI's ``COLOR`` widget: a ``#rrggbb`` string, drawn without a socket."""

    type: str = "COLOR"
    default: str | None = "#000000"

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.default is not None:
            opts["default"] = self.default
        opts["socketless"] = True
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        return opts


def _crop_to_mask(image: torch.Tensor, mask: torch.Tensor, max_image_size: int, pad_factor: float,
                  mask_offset: int, background: tuple[float, float, float], aspect_ratio: float,
                  mask_threshold: float = 0.05) -> torch.Tensor:
    """One ``[H, W, C]`` image and ``[H, W]`` mask → the ``[1, 3, h, w]`` subject over ``background``."""
    img = image.permute(2, 0, 1).unsqueeze(0).cpu().float().clamp(0, 1)
    m = mask.unsqueeze(0).unsqueeze(0).cpu().float().clamp(0, 1)

    plane = m[0, 0]
    h, w = plane.shape
    border = torch.cat([plane[0, :], plane[-1, :], plane[:, 0], plane[:, -1]])
    centre = plane[h // 4:h - h // 4, w // 4:w - w // 4]
    if float(border.mean()) > 0.5 and float(centre.mean()) < 0.5:  # an inverted mask
        m = 1.0 - m

    if mask_offset > 0:
        r = mask_offset
        m = F.max_pool2d(m, kernel_size=2 * r + 1, stride=1, padding=r)
    elif mask_offset < 0:
        r = -mask_offset
        m = 1.0 - F.max_pool2d(1.0 - m, kernel_size=2 * r + 1, stride=1, padding=r)
    if mask_threshold > 0.0:
        m = torch.where(m < mask_threshold, torch.zeros_like(m), m)

    height, width = img.shape[-2:]
    if max(height, width) > max_image_size:
        scale = max_image_size / max(height, width)
        new_w, new_h = int(width * scale), int(height * scale)
        img = common_upscale(img, new_w, new_h, "lanczos", "disabled")
        m = common_upscale(m, new_w, new_h, "lanczos", "disabled")
        if m.ndim == 3:
            m = m.unsqueeze(1)
        height, width = new_h, new_w

    alpha = (m[0, 0].clamp(0, 1) * 255.0).to(torch.uint8)
    foreground = (alpha > 204).nonzero()
    if foreground.numel() == 0:
        inverted = ((255 - alpha) > 204).nonzero()
        if inverted.numel() > 0:
            log.info("ImageCropToMask: the mask's bounding box is empty; using the inverted mask")
            m = 1.0 - m
            foreground = inverted
    if foreground.numel() > 0:
        y_min, x_min = foreground.min(dim=0).values.tolist()
        y_max, x_max = foreground.max(dim=0).values.tolist()
        centre_y, centre_x = (y_min + y_max) / 2.0, (x_min + x_max) / 2.0
        box_w, box_h = x_max - x_min + 1, y_max - y_min + 1
        if box_w / max(box_h, 1) >= aspect_ratio:
            crop_w, crop_h = int(box_w * pad_factor), int(box_w / aspect_ratio * pad_factor)
        else:
            crop_h, crop_w = int(box_h * pad_factor), int(box_h * aspect_ratio * pad_factor)
        half_w, half_h = math.ceil(crop_w / 2), math.ceil(crop_h / 2)
        x1, y1 = int(centre_x - half_w), int(centre_y - half_h)
        x2, y2 = x1 + 2 * half_w, y1 + 2 * half_h
    else:
        log.warning("ImageCropToMask: the mask is empty; a clean foreground mask is required for best quality")
        x1, y1, x2, y2 = 0, 0, width, height

    pad_l, pad_t = max(0, -x1), max(0, -y1)
    pad_r, pad_b = max(0, x2 - width), max(0, y2 - height)
    if pad_l or pad_t or pad_r or pad_b:
        img = F.pad(img, (pad_l, pad_r, pad_t, pad_b), value=0.0)
        m = F.pad(m, (pad_l, pad_r, pad_t, pad_b), value=0.0)
        x1, x2, y1, y2 = x1 + pad_l, x2 + pad_l, y1 + pad_t, y2 + pad_t
    img = img[..., y1:y2, x1:x2]
    m = m[..., y1:y2, x1:x2]
    bg = torch.tensor(background, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * m + bg * (1.0 - m)).clamp(0, 1)


def parse_hex_colour(text: str) -> tuple[float, float, float]:
    """``#rrggbb`` → three floats in 0..1; anything else is black (ComfyUI's rule)."""
    digits = text.lstrip("#")
    if len(digits) != 6:
        return (0.0, 0.0, 0.0)
    return tuple(int(digits[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


@register
class ImageCropToMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageCropToMask", display_name="Crop Image to Mask", category="image/transform",
            inputs=[Socket("images", "IMAGE"), Socket("masks", "MASK"),
                    Int("width", default=1024, min=64, max=4096, step=8, tooltip="Output width in pixels."),
                    Int("height", default=1024, min=64, max=4096, step=8, tooltip="Output height in pixels."),
                    Float("pad_factor", default=1.0, min=1.0, max=2.0, step=0.01,
                          tooltip="Extra margin around the mask bounding box as a multiplier."),
                    Int("grow_mask", default=0, min=-32, max=32, step=1,
                        tooltip="Grow or shrink the mask by this many pixels before cropping."),
                    Color("background", default="#000000", tooltip="Background color behind the masked subject.")],
            outputs=[Output("IMAGE", name="images")])

    @classmethod
    def execute(cls, images: torch.Tensor, masks: torch.Tensor, width: int, height: int, pad_factor: float,
                grow_mask: int, background: str) -> tuple:
        bg = parse_hex_colour(background)
        images = images[..., :3]
        batch = images.shape[0]
        if masks.shape[0] == 1 and batch > 1:
            masks = masks.expand(batch, -1, -1)
        elif masks.shape[0] != batch:
            raise ValueError(f"ImageCropToMask: mask batch {masks.shape[0]} does not match image batch {batch}")
        if masks.shape[-2:] != images.shape[1:3]:
            masks = common_upscale(masks.unsqueeze(1).float(), images.shape[2], images.shape[1], "bilinear",
                                   "disabled").squeeze(1)
        out = []
        for b in range(batch):
            subject = _crop_to_mask(images[b], masks[b], max(width, height), pad_factor, grow_mask, bg,
                                    width / height)
            subject = common_upscale(subject, width, height, "lanczos", "disabled")
            out.append(subject.movedim(-3, -1))
        return (torch.cat(out, dim=0),)
