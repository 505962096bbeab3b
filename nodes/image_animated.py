"""ComfyUI's animated saves: a whole IMAGE batch as one animated WEBP or one animated PNG (APNG).

Files are named like every save (``{prefix}_{counter:05}_.webp``/``.png``, see
:mod:`loom.nodes.output_files`), one frame per image, each shown ``int(1000 / fps)`` ms. The workflow
travels as ComfyUI writes it: in a WEBP's EXIF (tag 0x0110 ``"prompt:{json}"``, then 0x010F, 0x010E,
... ``"{key}:{json}"`` for each ``extra_pnginfo`` key), in an APNG's ``comf`` chunks after the image
data (``key\\0json``; the frontend reads both). The ``ui`` entry is ``{"images": [file], "animated":
[more than one frame]}``; the images pass through to the ``images`` output.
"""
from __future__ import annotations

import io
import json
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from loom.nodes.image_ops import tensor_to_pil
from loom.nodes.output_files import save_target
from loom.nodes.kernel.schema import (HIDDEN_EXTRA_PNGINFO, HIDDEN_PROMPT, Boolean, Combo, Float, Int, Node, NodeOutput,
                               Output, Schema, Socket, String, register)

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _check_batch(images: torch.Tensor) -> None:
    if images.shape[0] == 0:
        raise ValueError(f"input 'images': an animation needs at least one frame, got {tuple(images.shape)}")


def webp_exif(frame: Image.Image, prompt: Any, extra_pnginfo: Any) -> Image.Exif:
    exif = frame.getexif()
    if prompt is not None:
        exif[0x0110] = f"prompt:{json.dumps(prompt)}"  # EXIF Model
    if isinstance(extra_pnginfo, dict):
        tag = 0x010F  # EXIF Make, then downwards
        for key, value in extra_pnginfo.items():
            exif[tag] = f"{key}:{json.dumps(value)}"
            tag -= 1
    return exif


def apng_info(prompt: Any, extra_pnginfo: Any) -> PngInfo:
    info = PngInfo()
    if prompt is not None:
        info.add(b"comf", b"prompt\0" + json.dumps(prompt).encode("latin-1", "strict"), after_idat=True)
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            info.add(b"comf", key.encode("latin-1", "strict") + b"\0"
                     + json.dumps(value).encode("latin-1", "strict"), after_idat=True)
    return info


def _save_animation(images: torch.Tensor, filename_prefix: str, extension: str, **save_options: Any) -> NodeOutput:
    _check_batch(images)
    target = save_target(filename_prefix, "output", width=images.shape[2], height=images.shape[1])
    frames = [tensor_to_pil(image) for image in images]
    encoded = io.BytesIO()
    frames[0].save(encoded, save_all=True, append_images=frames[1:], **save_options)
    name, _ = target.write_next(target.counter, extension, encoded.getvalue())
    ui = {"images": [{"filename": name, "subfolder": target.subfolder, "type": "output"}],
          "animated": (len(images) > 1,)}
    return NodeOutput(images, ui=ui)


@register
class SaveAnimatedWEBP(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SaveAnimatedWEBP", display_name="Save Animated WEBP", category="image", output_node=True,
            inputs=[Socket("images", "IMAGE"),
                    String("filename_prefix", default="ComfyUI"),
                    Float("fps", default=6.0, min=0.01, max=1000.0, step=0.01),
                    Boolean("lossless", default=True),
                    Int("quality", default=80, min=0, max=100),
                    Combo("method", options_source=tuple(WEBP_METHODS))],
            hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
            outputs=[Output("IMAGE", "images")])

    @classmethod
    def execute(cls, images: torch.Tensor, fps: float, filename_prefix: str = "ComfyUI", lossless: bool = True,
                quality: int = 80, method: str = "default", prompt: Any = None,
                extra_pnginfo: Any = None) -> NodeOutput:
        _check_batch(images)
        exif = webp_exif(tensor_to_pil(images[0]), prompt, extra_pnginfo)
        return _save_animation(images, filename_prefix, ".webp", format="WEBP", duration=int(1000.0 / fps),
                               exif=exif, lossless=lossless, quality=quality, method=WEBP_METHODS.get(method))


@register
class SaveAnimatedPNG(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SaveAnimatedPNG", display_name="Save Animated PNG", category="image", output_node=True,
            inputs=[Socket("images", "IMAGE"),
                    String("filename_prefix", default="ComfyUI"),
                    Float("fps", default=6.0, min=0.01, max=1000.0, step=0.01),
                    Int("compress_level", default=4, min=0, max=9, advanced=True)],
            hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
            outputs=[Output("IMAGE", "images")])

    @classmethod
    def execute(cls, images: torch.Tensor, fps: float, compress_level: int = 4, filename_prefix: str = "ComfyUI",
                prompt: Any = None, extra_pnginfo: Any = None) -> NodeOutput:
        return _save_animation(images, filename_prefix, ".png", format="PNG", pnginfo=apng_info(prompt, extra_pnginfo),
                               compress_level=compress_level, duration=int(1000.0 / fps))
