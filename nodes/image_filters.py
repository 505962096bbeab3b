"""ComfyUI's image post-processing nodes: blend, blur, sharpen, quantize.

Blur and sharpen are ComfyUI's own kernels (a gaussian whose taps span -1..1 across the kernel,
over a reflect-padded image; see :mod:`loom.nodes.image_ops`). Quantize goes through Pillow's
median-cut palette exactly as ComfyUI does, with its ordered (Bayer) dithers done on the 8-bit pixels
before mapping to the palette.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from loom.nodes.image_ops import BLEND_MODES, blend, gaussian_blur, image_alpha_fix, sharpen
from loom.nodes.runtime.resample import common_upscale
from loom.nodes.kernel.schema import Combo, Float, Int, Node, Output, Schema, Socket, register


@register
class ImageBlend(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageBlend", display_name="Blend Images", category="image/filters",
            inputs=[Socket("image1", "IMAGE"), Socket("image2", "IMAGE"),
                    Float("blend_factor", default=0.5, min=0.0, max=1.0, step=0.01),
                    Combo("blend_mode", options_source=BLEND_MODES)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float, blend_mode: str) -> tuple:
        image1, image2 = image_alpha_fix(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:
            image2 = common_upscale(image2.permute(0, 3, 1, 2), image1.shape[2], image1.shape[1],
                                    "bicubic", "center").permute(0, 2, 3, 1)
        blended = blend(image1, image2, blend_mode)
        return (torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1),)


@register
class ImageBlur(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageBlur", display_name="Blur Image", category="image/filters",
            inputs=[Socket("image", "IMAGE"),
                    Int("blur_radius", default=1, min=1, max=31, step=1),
                    Float("sigma", default=1.0, min=0.1, max=10.0, step=0.1)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple:
        return (gaussian_blur(image, blur_radius, sigma),)


@register
class ImageSharpen(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageSharpen", display_name="Sharpen Image", category="image/filters",
            inputs=[Socket("image", "IMAGE"),
                    Int("sharpen_radius", default=1, min=1, max=31, step=1, advanced=True),
                    Float("sigma", default=1.0, min=0.1, max=10.0, step=0.01, advanced=True),
                    Float("alpha", default=1.0, min=0.0, max=5.0, step=0.01, advanced=True)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, sharpen_radius: int, sigma: float, alpha: float) -> tuple:
        return (sharpen(image, sharpen_radius, sigma, alpha),)


def _normalized_bayer(level: int) -> np.ndarray:
    if level == 0:
        return np.zeros((1, 1), "float32")
    q = 4 ** level
    m = q * _normalized_bayer(level - 1)
    return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q


def bayer_quantize(picture: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    """Ordered dithering: add a tiled Bayer threshold map (spread 2·256/colours) to the 8-bit pixels,
    then map to ``palette`` without dithering."""
    colors = len(palette.getpalette()) // 3
    spread = 2 * 256 / colors
    matrix = torch.from_numpy(spread * _normalized_bayer(int(math.log2(order))) + 0.5)
    pixels = torch.from_numpy(np.array(picture).astype(np.float32))
    tiles_h = math.ceil(pixels.shape[0] / matrix.shape[0])
    tiles_w = math.ceil(pixels.shape[1] / matrix.shape[1])
    tiled = matrix.tile(tiles_h, tiles_w).unsqueeze(-1)
    pixels.add_(tiled[:pixels.shape[0], :pixels.shape[1]]).clamp_(0, 255)
    dithered = Image.fromarray(pixels.to(dtype=torch.uint8).numpy())
    return dithered.quantize(palette=palette, dither=Image.Dither.NONE)


@register
class ImageQuantize(Node):
    DITHERS = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageQuantize", display_name="Quantize Image", category="image/filters",
            inputs=[Socket("image", "IMAGE"),
                    Int("colors", default=256, min=1, max=256, step=1),
                    Combo("dither", options_source=cls.DITHERS)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, colors: int, dither: str) -> tuple:
        result = torch.zeros_like(image)
        for index in range(image.shape[0]):
            picture = Image.fromarray((image[index] * 255).to(torch.uint8).cpu().numpy(), mode="RGB")
            palette = picture.quantize(colors=colors)  # a palette first: Pillow issue 5836
            if dither == "none":
                quantized = picture.quantize(palette=palette, dither=Image.Dither.NONE)
            elif dither == "floyd-steinberg":
                quantized = picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
            elif dither.startswith("bayer-"):
                quantized = bayer_quantize(picture, palette, int(dither.split("-")[-1]))
            else:
                raise ValueError(f"unknown dither {dither!r}; expected one of {', '.join(cls.DITHERS)}")
            result[index] = torch.tensor(np.array(quantized.convert("RGB"))).float() / 255
        return (result,)
