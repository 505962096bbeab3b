"""``SaveImageAdvanced`` ("Save Image (Advanced)", ComfyUI's ``comfy_extras/nodes_images.py``): images saved as
16-bit PNG or 32-bit float EXR besides ComfyUI's ordinary 8-bit PNG, chosen by a dynamic combo ``format``.

As in ComfyUI: the prompt names the chosen option's inputs ``format.<name>`` (``"format": "exr",
"format.bit_depth": "32-bit float", "format.input_color_space": "linear"``), declared here flat and optional as
:mod:`nodes.resize_image_mask` does; files are named ``{prefix}_{counter:05}.{png|exr}`` (no trailing underscore,
unlike SaveImage's); the IMAGE goes out unchanged with the files in the ``ui``.

* PNG: 8 or 16 bits per channel, grayscale / RGB / RGBA after the image's 1, 3 or 4 channels, each value
  ``x * (2**bits - 1)`` clamped and truncated; the prompt and each ``extra_pnginfo`` entry as ``tEXt`` chunks
  (JSON) right after ``IHDR``; pixels as they are (``input_color_space`` offers only sRGB).
* EXR: 32-bit float scanlines (Y, or B G R [A] in the file's alphabetical order), written scene-linear:
  "sRGB" input through the inverse sRGB EOTF, "HDR" (HLG Rec.2020) through the inverse HLG OETF, "linear" as is
  (alpha never transformed); header ``string`` attributes for the prompt and ``extra_pnginfo``, and
  ``chromaticities`` Rec.709 (sRGB, linear) or Rec.2020 (HDR). Loom writes the scanlines uncompressed.
* AVIF (8/10-bit YUV420, HDR, animated) is listed as ComfyUI lists it but refused when chosen: ComfyUI encodes it
  with PyAV's SVT-AV1, and Loom has no AV1 encoder.
"""
from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import torch

from loom.nodes.kernel import folders
from loom.nodes.kernel.schema import (HIDDEN_EXTRA_PNGINFO, HIDDEN_PROMPT, Combo, Float, InputSpec, Int, Node,
                                      NodeOutput, Output, Schema, Socket, String, register)
from loom.nodes.output_files import metadata_texts, save_target

NODE = "SaveImageAdvanced"
DYNAMICCOMBO = "COMFY_DYNAMICCOMBO_V3"

_EXR_SPACES_TOOLTIP = (
    "Colorspace of the input tensor. The EXR is always written as scene-linear in the matching gamut.\n"
    "sRGB — input is sRGB-encoded Rec.709; the inverse sRGB EOTF is applied.\n"
    "HDR — input is HLG-encoded Rec.2020 (BT.2100); the inverse HLG OETF is applied to get scene-linear light.\n"
    "linear — input is already scene-linear (Rec.709 primaries); written through unchanged. Use this for "
    "renderer/compositor output.")

SAVE_MODES: dict[str, list[InputSpec]] = {
    "still images": [],
    "animated": [Float("fps", default=6.0, min=0.01, max=1000.0, step=0.01),
                 Int("loop_count", default=0, min=0, max=1000, advanced=True,
                     tooltip="Number of times to loop the animation. 0 loops forever.")],
}

FORMATS: dict[str, list[InputSpec]] = {
    "png": [Combo("bit_depth", options_source=("8-bit", "16-bit"), default="8-bit", advanced=True),
            Combo("input_color_space", options_source=("sRGB",), default="sRGB", advanced=True)],
    "exr": [Combo("bit_depth", options_source=("32-bit float",), default="32-bit float", advanced=True),
            Combo("input_color_space", options_source=("sRGB", "HDR", "linear"), default="sRGB", advanced=True,
                  tooltip=_EXR_SPACES_TOOLTIP)],
    "avif": [Combo("bit_depth", options_source=("auto", "8-bit YUV420", "10-bit YUV420"), default="auto",
                   advanced=True, tooltip="Auto uses 8-bit YUV420 for sRGB and 10-bit YUV420 for HDR."),
             Combo("input_color_space", options_source=("sRGB", "HDR", "HDR PQ"), default="sRGB", advanced=True,
                   tooltip="Colorspace of the input images. HDR selects BT.2020/HLG and HDR PQ selects BT.2020/PQ."),
             Int("crf", default=18, min=1, max=63, advanced=True,
                 tooltip="Lower values produce higher quality and larger files.")],
}
SAVE_MODE = "save_mode"  # avif's nested dynamic combo

# CIE 1931 xy of R, G, B and the D65 white point, as the EXR ``chromaticities`` attribute holds them
CHROMATICITIES = {
    "Rec.709": (0.6400, 0.3300, 0.3000, 0.6000, 0.1500, 0.0600, 0.3127, 0.3290),
    "Rec.2020": (0.7080, 0.2920, 0.1700, 0.7970, 0.1310, 0.0460, 0.3127, 0.3290),
}
_PRIMARIES = {"sRGB": "Rec.709", "linear": "Rec.709", "HDR": "Rec.2020"}
_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991072928  # BT.2100 Table 5


def _flat_inputs() -> list[InputSpec]:
    """Every option's inputs once as ``format.<name>`` (optional; any option's values pass, execute checks)."""
    seen: dict[str, InputSpec] = {}
    nested = {SAVE_MODE: [Combo(SAVE_MODE, options_source=tuple(SAVE_MODES), default="still images")],
              **{f"{SAVE_MODE}.{spec.name}": [spec] for specs in SAVE_MODES.values() for spec in specs}}
    specs = [spec for option in FORMATS.values() for spec in option]
    specs += [type(s)(**{**s.__dict__, "name": name}) for name, (s,) in nested.items()]
    for spec in specs:
        name = f"format.{spec.name}"
        if name not in seen:
            changes: dict[str, Any] = {"name": name, "optional": True}
            if isinstance(spec, Combo):
                changes["validate_membership"] = False
            seen[name] = type(spec)(**{**spec.__dict__, **changes})
    return list(seen.values())


def _option_info(key: str, specs: list[InputSpec], nested: dict[str, Any] | None = None) -> dict[str, Any]:
    required: dict[str, Any] = {spec.name: spec.info() for spec in specs}
    if nested is not None:
        required[SAVE_MODE] = nested
    return {"key": key, "inputs": {"required": required}}


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------

def _rgb_only(transform: Any, image: torch.Tensor) -> torch.Tensor:
    if image.shape[-1] == 4:
        return torch.cat([transform(image[..., :3]), image[..., 3:]], dim=-1)
    return transform(image)


def srgb_to_linear(image: torch.Tensor) -> torch.Tensor:
    """The inverse sRGB EOTF (IEC 61966-2-1) on the colour channels; alpha passes."""
    return _rgb_only(lambda t: torch.where(t <= 0.04045, t / 12.92, ((t.clamp(min=0.0) + 0.055) / 1.055) ** 2.4),
                     image)


def hlg_to_linear(image: torch.Tensor) -> torch.Tensor:
    """The inverse HLG OETF (BT.2100) to scene-linear light on the colour channels; alpha passes."""
    return _rgb_only(lambda t: torch.where(
        t <= 0.5, t ** 2 / 3.0, (torch.exp((t.clamp(min=0.5) - _HLG_C) / _HLG_A) + _HLG_B) / 12.0), image)


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: torch.Tensor, bits: int, texts: dict[str, str]) -> bytes:
    """One ``[H, W, C]`` image as a PNG of ``bits`` (8 or 16) per channel with ``texts`` as tEXt chunks."""
    height, width, channels = image.shape
    colour = {1: 0, 3: 2, 4: 6}[channels]
    top = float(2 ** bits - 1)
    values = (image.float() * top).clamp(0, top).to(torch.int32).cpu().numpy()
    values = values.astype(">u2" if bits == 16 else np.uint8)
    rows = np.concatenate([np.zeros((height, 1), np.uint8),  # filter type 0 before each row
                           values.reshape(height, width * channels).view(np.uint8)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    text = b"".join(_png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", errors="replace"))
                    for key, value in texts.items())
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + text
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes())) + _png_chunk(b"IEND", b""))


def _exr_attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\x00" + kind.encode() + b"\x00" + struct.pack("<i", len(value)) + value


def encode_exr(image: torch.Tensor, colour_space: str, texts: dict[str, str]) -> bytes:
    """One ``[H, W, C]`` image as an uncompressed 32-bit float scanline EXR, scene-linear."""
    if colour_space == "sRGB":
        image = srgb_to_linear(image.float())
    elif colour_space == "HDR":
        image = hlg_to_linear(image.float())
    height, width, channels = image.shape
    names = {1: ["Y"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}[channels]
    order = sorted(range(channels), key=lambda i: names[i])  # EXR keeps channels in alphabetical order
    pixels = image.float().cpu().numpy().astype("<f4")
    chlist = b"".join(names[i].encode() + b"\x00" + struct.pack("<iB3xii", 2, 0, 1, 1) for i in order) + b"\x00"
    box = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header = b"".join([
        _exr_attribute("channels", "chlist", chlist),
        _exr_attribute("compression", "compression", b"\x00"),
        _exr_attribute("dataWindow", "box2i", box),
        _exr_attribute("displayWindow", "box2i", box),
        _exr_attribute("lineOrder", "lineOrder", b"\x00"),
        _exr_attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
        _exr_attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0)),
        _exr_attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)),
        *(_exr_attribute(key, "string", value.encode()) for key, value in texts.items()),
        _exr_attribute("chromaticities", "chromaticities",
                       struct.pack("<8f", *CHROMATICITIES[_PRIMARIES[colour_space]])),
    ]) + b"\x00"
    line_bytes = width * channels * 4
    start = 8 + len(header) + 8 * height
    table = struct.pack(f"<{height}Q", *(start + y * (8 + line_bytes) for y in range(height)))
    lines = b"".join(struct.pack("<ii", y, line_bytes) + np.ascontiguousarray(pixels[y][:, order].T).tobytes()
                     for y in range(height))
    return b"\x76\x2f\x31\x01" + struct.pack("<I", 2) + header + table + lines


# --------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------

@register
class SaveImageAdvanced(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            NODE, display_name="Save Image (Advanced)", category="image", output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
            inputs=[Socket("images", "IMAGE", tooltip="The images to save."),
                    String("filename_prefix", default="ComfyUI",
                           tooltip="The prefix for the file to save. May include formatting tokens such as "
                                   "%date:yyyy-MM-dd% or %Empty Latent Image.width%."),
                    Combo("format", options_source=tuple(FORMATS), tooltip="The file format in which to save the "
                                                                            "image."),
                    *_flat_inputs()],
            hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
            outputs=[Output("IMAGE", "images")])

    @classmethod
    def object_info(cls) -> dict[str, Any]:
        info = super().object_info()
        schema = cls.schema()
        save_mode = [DYNAMICCOMBO, {"display_name": "save mode",
                                    "options": [_option_info(key, specs) for key, specs in SAVE_MODES.items()]}]
        options = [_option_info(key, specs, save_mode if key == "avif" else None) for key, specs in FORMATS.items()]
        required = {spec.name: spec.info() for spec in schema.inputs if spec.name in ("images", "filename_prefix")}
        required["format"] = [DYNAMICCOMBO, {"tooltip": schema.input("format").tooltip,  # type: ignore[union-attr]
                                             "options": options}]
        info["input"] = {"required": required,
                         **({"hidden": info["input"]["hidden"]} if "hidden" in info["input"] else {})}
        info["input_order"] = {"required": list(required),
                               **({"hidden": info["input_order"]["hidden"]} if "hidden" in info["input"] else {})}
        return info

    @classmethod
    def execute(cls, images: torch.Tensor, filename_prefix: str, format: str,  # noqa: A002 - ComfyUI's name
                prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None, **chosen: Any) -> NodeOutput:
        values = {name[len("format."):]: value for name, value in chosen.items()
                  if name.startswith("format.") and value is not None}
        if format not in FORMATS:
            raise ValueError(f"{NODE}: input 'format': {format!r} is not one of {', '.join(FORMATS)}")
        for spec in FORMATS[format]:
            value = values.setdefault(spec.name, getattr(spec, "default", None))
            if isinstance(spec, Combo) and value not in spec.choices():
                raise ValueError(f"{NODE}: input 'format.{spec.name}': {value!r} is not a {format} choice "
                                 f"({', '.join(spec.choices())})")
        if format == "avif":
            raise ValueError(f"{NODE}: input 'format': Loom cannot write AVIF (ComfyUI encodes it with PyAV's SVT-AV1 "
                             "encoder, which Loom does not have); choose png or exr")
        if images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{NODE}: input 'images' has {images.shape[-1]} channels; it saves 1, 3 or 4")
        target = save_target(filename_prefix, "output", width=images.shape[2], height=images.shape[1])
        texts = metadata_texts(prompt, extra_pnginfo)
        results = []
        counter = target.counter
        for batch_number, image in enumerate(images):
            if format == "png":
                data = encode_png(image, 16 if values["bit_depth"] == "16-bit" else 8, texts)
            else:
                data = encode_exr(image, values["input_color_space"], texts)
            name = target.filename.replace("%batch_num%", str(batch_number))
            while not folders.write_new(target.folder / f"{name}_{counter:05}.{format}", data):
                counter += 1
            results.append({"filename": f"{name}_{counter:05}.{format}", "subfolder": target.subfolder,
                            "type": "output"})
            counter += 1
        return NodeOutput(images, ui={"images": results})

