"""``ResizeImageMaskNode`` ("Resize Image/Mask"): ComfyUI's resize of an IMAGE or a MASK chosen by a
dynamic combo, ``resize_type``, whose selected option brings its own inputs.

ComfyUI's prompt names those inputs ``resize_type.<name>`` (``"resize_type": "scale dimensions",
"resize_type.width": 512, ...``), so the schema here declares them flat under those names, optional,
and :meth:`ResizeImageMaskNode.execute` checks that the selected option's inputs arrived;
``/object_info`` shows ComfyUI's ``COMFY_DYNAMICCOMBO_V3`` entry with every option's inputs, the
``COMFY_MATCHTYPE_V3`` input (IMAGE or MASK) and the output that takes the input's type.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from loom.nodes.runtime.resample import CROP_METHODS, UPSCALE_METHODS, common_upscale
from loom.nodes.kernel.schema import MAX_RESOLUTION, Combo, Float, InputSpec, Int, Node, Output, Schema, Socket, register

__all__ = ["ResizeImageMaskNode", "RESIZE_TYPES"]

MATCHTYPE = "COMFY_MATCHTYPE_V3"
DYNAMICCOMBO = "COMFY_DYNAMICCOMBO_V3"
TEMPLATE = {"template_id": "input_type", "allowed_types": "IMAGE,MASK"}

SCALE_BY = "scale by multiplier"
SCALE_DIMENSIONS = "scale dimensions"
SCALE_LONGER = "scale longer dimension"
SCALE_SHORTER = "scale shorter dimension"
SCALE_WIDTH = "scale width"
SCALE_HEIGHT = "scale height"
SCALE_TOTAL_PIXELS = "scale total pixels"
MATCH_SIZE = "match size"
SCALE_TO_MULTIPLE = "scale to multiple"


def _crop() -> Combo:
    return Combo("crop", options_source=CROP_METHODS, default="center",
                 tooltip="How to handle aspect ratio mismatch: 'disabled' stretches to fit, 'center' crops to "
                         "maintain aspect ratio.")


def _size(name: str, tooltip: str) -> Int:
    return Int(name, default=512, min=0, max=MAX_RESOLUTION, step=1, tooltip=tooltip)


RESIZE_TYPES: dict[str, list[InputSpec]] = {
    SCALE_DIMENSIONS: [
        _size("width", "Target width in pixels. Set to 0 to auto-calculate from height while preserving aspect ratio."),
        _size("height", "Target height in pixels. Set to 0 to auto-calculate from width while preserving aspect "
                        "ratio."),
        _crop()],
    SCALE_BY: [Float("multiplier", default=1.00, min=0.01, max=8.0, step=0.01,
                     tooltip="Scale factor (e.g., 2.0 doubles size, 0.5 halves size).")],
    SCALE_LONGER: [_size("longer_size", "The longer edge will be resized to this value. Aspect ratio is preserved.")],
    SCALE_SHORTER: [_size("shorter_size", "The shorter edge will be resized to this value. Aspect ratio is "
                                          "preserved.")],
    SCALE_WIDTH: [_size("width", "Target width in pixels. Height auto-adjusts to preserve aspect ratio.")],
    SCALE_HEIGHT: [_size("height", "Target height in pixels. Width auto-adjusts to preserve aspect ratio.")],
    SCALE_TOTAL_PIXELS: [Float("megapixels", default=1.0, min=0.01, max=16.0, step=0.01,
                               tooltip="Target total megapixels (e.g., 1.0 ≈ 1024×1024). Aspect ratio is preserved.")],
    MATCH_SIZE: [Socket("match", "IMAGE,MASK",
                        tooltip="Resize input to match the dimensions of this reference image or mask."),
                 _crop()],
    SCALE_TO_MULTIPLE: [Int("multiple", default=8, min=1, max=MAX_RESOLUTION, step=1,
                            tooltip="Resize so width and height are divisible by this number. Useful for latent "
                                    "alignment (e.g., 8 or 64).")],
}
"""ComfyUI's options of ``resize_type``, in its order, each with the inputs it reveals."""

SCALE_METHODS = UPSCALE_METHODS  # nearest-exact, bilinear, area, bicubic, lanczos


def _flat_option_inputs() -> list[InputSpec]:
    """Every option's inputs once, renamed ``resize_type.<name>`` and optional (the first spelling wins)."""
    seen: dict[str, InputSpec] = {}
    for inputs in RESIZE_TYPES.values():
        for spec in inputs:
            name = f"resize_type.{spec.name}"
            if name not in seen:
                flat = type(spec)(**{**spec.__dict__, "name": name, "optional": True})
                seen[name] = flat
    return list(seen.values())


# --------------------------------------------------------------------------------------------
# The resizes (ComfyUI's functions of comfy_extras/nodes_post_processing.py)
# --------------------------------------------------------------------------------------------

def _is_image(tensor: torch.Tensor) -> bool:
    return tensor.ndim == 4


def _channels_first(tensor: torch.Tensor, image: bool) -> torch.Tensor:
    return tensor.movedim(-1, 1) if image else tensor.unsqueeze(1)


def _channels_back(tensor: torch.Tensor, image: bool) -> torch.Tensor:
    return tensor.movedim(1, -1) if image else tensor.squeeze(1)


def _resize(tensor: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    image = _is_image(tensor)
    return _channels_back(common_upscale(_channels_first(tensor, image), width, height, method, crop), image)


def _hw(tensor: torch.Tensor) -> tuple[int, int]:
    return (tensor.shape[1], tensor.shape[2]) if _is_image(tensor) else (tensor.shape[-2], tensor.shape[-1])


def scale_by(tensor: torch.Tensor, multiplier: float, method: str) -> torch.Tensor:
    h, w = _hw(tensor)
    return _resize(tensor, round(w * multiplier), round(h * multiplier), method)


def scale_dimensions(tensor: torch.Tensor, width: int, height: int, method: str,
                     crop: str = "disabled") -> torch.Tensor:
    if width == 0 and height == 0:
        return tensor
    h, w = _hw(tensor)
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return _resize(tensor, width, height, method, crop)


def scale_longer_dimension(tensor: torch.Tensor, size: int, method: str) -> torch.Tensor:
    h, w = _hw(tensor)
    if h > w:
        width, height = round((w / h) * size), size
    elif w > h:
        width, height = size, round((h / w) * size)
    else:
        width = height = size
    return _resize(tensor, width, height, method)


def scale_shorter_dimension(tensor: torch.Tensor, size: int, method: str) -> torch.Tensor:
    h, w = _hw(tensor)
    if h < w:
        width, height = round((w / h) * size), size
    elif w < h:
        width, height = size, round((h / w) * size)
    else:
        width = height = size
    return _resize(tensor, width, height, method)


def scale_total_pixels(tensor: torch.Tensor, megapixels: float, method: str) -> torch.Tensor:
    h, w = _hw(tensor)
    factor = math.sqrt(int(megapixels * 1024 * 1024) / (w * h))
    return _resize(tensor, round(w * factor), round(h * factor), method)


def scale_match_size(tensor: torch.Tensor, match: torch.Tensor, method: str, crop: str) -> torch.Tensor:
    height, width = _hw(match)
    return _resize(tensor, width, height, method, crop)


def scale_to_multiple_cover(tensor: torch.Tensor, multiple: int, method: str) -> torch.Tensor:
    if multiple <= 1:
        return tensor
    height, width = _hw(tensor)
    target_w, target_h = (width // multiple) * multiple, (height // multiple) * multiple
    if target_w == 0 or target_h == 0 or (target_w == width and target_h == height):
        return tensor
    s_w, s_h = target_w / width, target_h / height
    if s_w >= s_h:
        scaled_w, scaled_h = target_w, max(int(math.ceil(height * s_w)), target_h)
    else:
        scaled_h, scaled_w = target_h, max(int(math.ceil(width * s_h)), target_w)
    out = _resize(tensor, scaled_w, scaled_h, method)
    x0, y0 = (scaled_w - target_w) // 2, (scaled_h - target_h) // 2
    if _is_image(tensor):
        return out[:, y0:y0 + target_h, x0:x0 + target_w, :]
    return out[:, y0:y0 + target_h, x0:x0 + target_w]


@register
class ResizeImageMaskNode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ResizeImageMaskNode", display_name="Resize Image/Mask", category="image/transform",
            description="Resize an image or mask using various scaling methods.",
            inputs=[Socket("input", "IMAGE,MASK"),
                    Combo("resize_type", options_source=tuple(RESIZE_TYPES),
                          tooltip="Select how to resize: by exact dimensions, scale factor, matching another image, "
                                  "etc."),
                    Combo("scale_method", options_source=SCALE_METHODS, default="area",
                          tooltip="Interpolation algorithm. 'area' is best for downscaling, 'lanczos' for upscaling, "
                                  "'nearest-exact' for pixel art."),
                    *_flat_option_inputs()],
            outputs=[Output("*", name="resized")])

    @classmethod
    def object_info(cls) -> dict[str, Any]:
        info = super().object_info()
        schema = cls.schema()
        options = [{"key": key, "inputs": {"required": {spec.name: spec.info() for spec in inputs}}}
                   for key, inputs in RESIZE_TYPES.items()]
        resize_type = schema.input("resize_type")
        assert resize_type is not None
        info["input"] = {"required": {
            "input": [MATCHTYPE, {"template": dict(TEMPLATE)}],
            "resize_type": [DYNAMICCOMBO, {"tooltip": resize_type.tooltip, "options": options}],
            "scale_method": schema.input("scale_method").info(),  # type: ignore[union-attr]
        }}
        info["input_order"] = {"required": ["input", "resize_type", "scale_method"]}
        info["output"] = [MATCHTYPE]
        info["output_matchtypes"] = [TEMPLATE["template_id"]]
        return info

    @classmethod
    def execute(cls, input: torch.Tensor, resize_type: str, scale_method: str, **chosen: Any) -> tuple:
        values = {name[len("resize_type."):]: value for name, value in chosen.items()
                  if name.startswith("resize_type.") and value is not None}
        if resize_type not in RESIZE_TYPES:
            raise ValueError(f"ResizeImageMaskNode: unsupported resize type {resize_type!r}")
        missing = [spec.name for spec in RESIZE_TYPES[resize_type] if spec.name not in values]
        if missing:
            raise ValueError(f"ResizeImageMaskNode: resize_type '{resize_type}' needs "
                             + ", ".join(f"'resize_type.{name}'" for name in missing))
        if resize_type == SCALE_BY:
            out = scale_by(input, values["multiplier"], scale_method)
        elif resize_type == SCALE_DIMENSIONS:
            out = scale_dimensions(input, values["width"], values["height"], scale_method, values["crop"])
        elif resize_type == SCALE_LONGER:
            out = scale_longer_dimension(input, values["longer_size"], scale_method)
        elif resize_type == SCALE_SHORTER:
            out = scale_shorter_dimension(input, values["shorter_size"], scale_method)
        elif resize_type == SCALE_WIDTH:
            out = scale_dimensions(input, values["width"], 0, scale_method)
        elif resize_type == SCALE_HEIGHT:
            out = scale_dimensions(input, 0, values["height"], scale_method)
        elif resize_type == SCALE_TOTAL_PIXELS:
            out = scale_total_pixels(input, values["megapixels"], scale_method)
        elif resize_type == MATCH_SIZE:
            out = scale_match_size(input, values["match"], scale_method, values["crop"])
        else:
            out = scale_to_multiple_cover(input, values["multiple"], scale_method)
        return (out,)
