"""SaveImageAdvanced: ComfyUI's schema (a dynamic ``format`` combo), 8/16-bit PNG and scene-linear float EXR files
read back by independent decoders here, the metadata they carry, and AVIF refused clearly."""
from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

PROMPT = {"1": {"class_type": "SaveImageAdvanced", "inputs": {}}}
WORKFLOW = {"workflow": {"nodes": [], "links": []}}


def _images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 5, 7, 3, generator=generator)
    images[0, 0, 0] = torch.tensor([0.0, 1.0, 0.5])
    return images


def _save(images, format, **options):
    from loom.nodes.image_save_advanced import SaveImageAdvanced

    chosen = {f"format.{k}": v for k, v in options.items()}
    return SaveImageAdvanced.execute(images, "adv/test", format, prompt=PROMPT, extra_pnginfo=WORKFLOW, **chosen)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def _png_pixels(data: bytes) -> np.ndarray:
    chunks = _png_chunks(data)
    width, height, bits, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 2: 3, 6: 4}[colour]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, -1)
    assert (rows[:, 0] == 0).all()  # unfiltered rows
    return np.frombuffer(rows[:, 1:].tobytes(), ">u2" if bits == 16 else np.uint8).reshape(height, width, channels)


def _exr(data: bytes) -> tuple[dict, dict]:
    """A minimal reader of uncompressed scanline EXRs: the header attributes and the channels."""
    assert data[:4] == b"\x76\x2f\x31\x01" and struct.unpack("<I", data[4:8])[0] == 2
    attributes, pos = {}, 8
    while data[pos] != 0:
        name_end = data.index(b"\x00", pos)
        type_end = data.index(b"\x00", name_end + 1)
        (size,) = struct.unpack("<i", data[type_end + 1:type_end + 5])
        attributes[data[pos:name_end].decode()] = (data[name_end + 1:type_end].decode(),
                                                   data[type_end + 5:type_end + 5 + size])
        pos = type_end + 5 + size
    x0, y0, x1, y1 = struct.unpack("<iiii", attributes["dataWindow"][1])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    assert attributes["compression"][1] == b"\x00"
    chlist, names, cursor = attributes["channels"][1], [], 0
    while chlist[cursor] != 0:
        end = chlist.index(b"\x00", cursor)
        assert struct.unpack("<i", chlist[end + 1:end + 5])[0] == 2  # FLOAT
        names.append(chlist[cursor:end].decode())
        cursor = end + 17
    offsets = struct.unpack(f"<{height}Q", data[pos + 1:pos + 1 + 8 * height])
    channels = {name: np.zeros((height, width), np.float32) for name in names}
    for offset in offsets:
        y, size = struct.unpack("<ii", data[offset:offset + 8])
        line = np.frombuffer(data[offset + 8:offset + 8 + size], "<f4").reshape(len(names), width)
        for name, values in zip(names, line):
            channels[name][y] = values
    return attributes, channels


def test_schema_is_comfyuis_dynamic_format_combo(registry):
    info = registry.object_info("SaveImageAdvanced")["SaveImageAdvanced"]
    assert (info["category"], info["display_name"], info["output_node"]) == ("image", "Save Image (Advanced)", True)
    assert info["output"] == ["IMAGE"] and info["output_name"] == ["images"]
    required = info["input"]["required"]
    assert list(required) == ["images", "filename_prefix", "format"]
    assert required["filename_prefix"][1]["default"] == "ComfyUI"
    kind, options = required["format"]
    assert kind == "COMFY_DYNAMICCOMBO_V3"
    by_key = {o["key"]: o["inputs"]["required"] for o in options["options"]}
    assert list(by_key) == ["png", "exr", "avif"]
    assert by_key["png"]["bit_depth"] == [["8-bit", "16-bit"], {"default": "8-bit", "advanced": True}]
    assert by_key["exr"]["input_color_space"][0] == ["sRGB", "HDR", "linear"]
    assert list(by_key["avif"]) == ["bit_depth", "input_color_space", "crf", "save_mode"]
    assert by_key["avif"]["crf"][1]["default"] == 18
    modes = {o["key"]: list(o["inputs"]["required"]) for o in by_key["avif"]["save_mode"][1]["options"]}
    assert modes == {"still images": [], "animated": ["fps", "loop_count"]}
    assert set(info["input"]["hidden"]) == {"prompt", "extra_pnginfo"}


@pytest.mark.parametrize("bits", [8, 16])
def test_png_values_names_and_metadata(base_dir, bits):
    images = _images()
    out = _save(images, "png", bit_depth=f"{bits}-bit", input_color_space="sRGB")
    assert torch.equal(out.values[0], images)
    names = [entry["filename"] for entry in out.ui["images"]]
    assert names == ["test_00001.png", "test_00002.png"]  # ComfyUI's name: no trailing underscore
    assert out.ui["images"] == [{"filename": n, "subfolder": "adv", "type": "output"} for n in names]
    top = 2 ** bits - 1
    for index, name in enumerate(names):
        data = (base_dir / "output" / "adv" / name).read_bytes()
        want = np.floor(np.clip(images[index].numpy() * top, 0, top))
        np.testing.assert_array_equal(_png_pixels(data).astype(np.int64), want.astype(np.int64))
        chunks = _png_chunks(data)
        assert [k for k, _ in chunks[:3]] == [b"IHDR", b"tEXt", b"tEXt"]  # ComfyUI puts them right after IHDR
        texts = dict(body.split(b"\x00", 1) for kind, body in chunks if kind == b"tEXt")
        assert json.loads(texts[b"prompt"]) == PROMPT and json.loads(texts[b"workflow"]) == WORKFLOW["workflow"]
        with Image.open(base_dir / "output" / "adv" / name) as opened:  # a PNG other readers take
            assert opened.size == (7, 5) and opened.text["prompt"] == json.dumps(PROMPT)


def test_png_grayscale_and_rgba_keep_their_channels(base_dir):
    gray = torch.rand(1, 4, 4, 1)
    rgba = torch.rand(1, 4, 4, 4)
    for images, channels in ((gray, 1), (rgba, 4)):
        name = _save(images, "png", bit_depth="16-bit").ui["images"][0]["filename"]
        pixels = _png_pixels((base_dir / "output" / "adv" / name).read_bytes())
        assert pixels.shape[-1] == channels
        np.testing.assert_array_equal(pixels, np.floor(images[0].numpy() * 65535).astype(np.int64))


def _srgb(x: float) -> float:
    return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4


def _hlg(x: float) -> float:
    a, b, c = 0.17883277, 0.28466892, 0.55991072928
    return x * x / 3 if x <= 0.5 else (math.exp((x - c) / a) + b) / 12


@pytest.mark.parametrize("space, transfer, primaries", [
    ("sRGB", _srgb, (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)),
    ("HDR", _hlg, (0.708, 0.292, 0.170, 0.797, 0.131, 0.046, 0.3127, 0.3290)),
    ("linear", lambda x: x, (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290))])
def test_exr_is_scene_linear_float_with_chromaticities_and_metadata(base_dir, space, transfer, primaries):
    images = torch.rand(1, 3, 4, 4)
    images[0, 0, 0] = torch.tensor([0.02, 0.7, 1.3, 0.25])  # below the sRGB toe, HLG log branch, above 1
    out = _save(images, "exr", bit_depth="32-bit float", input_color_space=space)
    assert out.ui["images"][0]["filename"] == "test_00001.exr"
    attributes, channels = _exr((base_dir / "output" / "adv" / "test_00001.exr").read_bytes())
    assert sorted(channels) == ["A", "B", "G", "R"]
    for index, name in enumerate("RGB"):
        want = np.vectorize(transfer)(images[0, ..., index].double().numpy())
        np.testing.assert_allclose(channels[name], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(channels["A"], images[0, ..., 3].numpy())  # alpha is never transformed
    assert attributes["chromaticities"][0] == "chromaticities"
    np.testing.assert_allclose(struct.unpack("<8f", attributes["chromaticities"][1]), primaries, rtol=1e-6)
    assert attributes["prompt"] == ("string", json.dumps(PROMPT).encode())
    assert json.loads(attributes["workflow"][1]) == WORKFLOW["workflow"]


def test_avif_and_options_of_another_format_are_clear_errors(base_dir):
    with pytest.raises(ValueError, match=r"SaveImageAdvanced: input 'format': Loom cannot write AVIF"):
        _save(_images(), "avif", bit_depth="auto", input_color_space="sRGB", crf=18, save_mode="still images")
    with pytest.raises(ValueError, match=r"SaveImageAdvanced: input 'format.bit_depth': '32-bit float' is not a png "
                                         r"choice \(8-bit, 16-bit\)"):
        _save(_images(), "png", bit_depth="32-bit float")
    assert not (base_dir / "output" / "adv").exists() or not any((base_dir / "output" / "adv").iterdir())


def test_defaults_apply_when_the_option_inputs_are_left_out(base_dir):
    name = _save(_images()[:1], "png").ui["images"][0]["filename"]
    assert _png_pixels((base_dir / "output" / "adv" / name).read_bytes()).dtype == np.uint8


def test_a_saved_ui_workflow_converts_validates_and_runs(base_dir):
    """widgets_values as ComfyUI's frontend saves them: the prefix, the format, then the chosen option's widgets."""
    from loom.nodes.kernel.schema import default_registry
    from loom.server.executor import Executor
    from loom.server.validation import validate_prompt
    from loom.server.workflow import ui_to_api

    registry = default_registry([])
    widget = lambda name, kind: {"name": name, "type": kind, "widget": {"name": name}, "link": None}  # noqa: E731
    save = {"id": 2, "type": "SaveImageAdvanced", "mode": 0,
            "inputs": [{"name": "images", "type": "IMAGE", "link": 1}, widget("filename_prefix", "STRING"),
                       widget("format", "COMFY_DYNAMICCOMBO_V3"), widget("format.bit_depth", "COMBO"),
                       widget("format.input_color_space", "COMBO")],
            "outputs": [{"name": "images", "type": "IMAGE", "links": []}],
            "widgets_values": ["wf", "png", "16-bit", "sRGB"]}
    image = {"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [8, 4, 1, 0xFF8000]}
    ui = {"last_node_id": 2, "last_link_id": 1, "nodes": [image, save], "links": [[1, 1, 0, 2, 0, "IMAGE"]],
          "groups": [], "config": {}, "extra": {}, "version": 0.4}
    prompt, warnings = ui_to_api(ui, registry)
    assert warnings == []
    assert prompt["2"]["inputs"] == {"images": ["1", 0], "filename_prefix": "wf", "format": "png",
                                     "format.bit_depth": "16-bit", "format.input_color_space": "sRGB"}
    validation = validate_prompt(prompt, registry)
    assert validation.ok, (validation.error, validation.node_errors)
    result = Executor(registry).execute(prompt, "adv")
    assert result.status == "success", result.error
    pixels = _png_pixels((base_dir / "output" / "wf_00001.png").read_bytes())
    assert pixels.dtype == np.dtype(">u2") and tuple(pixels[0, 0]) == (65535, 32896, 0)  # 0x80 / 255 * 65535
