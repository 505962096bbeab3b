"""Workflows embedded in PNG/WebP images, and loading workflow files of every kind."""
from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    from fixtures_workflow import FIXTURES, core_registry, load_fixture, node
except ModuleNotFoundError:
    from tests.fixtures_workflow import FIXTURES, core_registry, load_fixture, node

from loom.server.workflow import (WorkflowError, embed_png_metadata, load_workflow_file, read_image_metadata, to_api)
from loom.server.workflow.media import read_exif_text

UI = load_fixture("default_txt2img.json")
API = load_fixture("default_txt2img.api.json")


def _png(info: PngInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def _chunk_types(data: bytes) -> list[bytes]:
    kinds, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        kinds.append(kind)
        position += 12 + length
    return kinds


def test_saved_png_round_trips_workflow_and_prompt(tmp_path):
    ui = json.loads(json.dumps(UI))
    ui["nodes"][1]["widgets_values"] = ["café au lait ☕, 夜景"]
    data = _png(embed_png_metadata({"prompt": API, "workflow": ui, "skipped": None}))
    assert _chunk_types(data).count(b"tEXt") == 2 and b"iTXt" not in _chunk_types(data)
    metadata = read_image_metadata(data)
    assert set(metadata) == {"prompt", "workflow"}
    assert json.loads(metadata["prompt"]) == API and json.loads(metadata["workflow"]) == ui
    path = tmp_path / "saved.png"
    path.write_bytes(data)
    loaded = load_workflow_file(path)
    assert (loaded.ui, loaded.api, loaded.source, loaded.path) == (ui, API, "png", str(path))
    # the UI graph is preferred: converting it gives the API prompt with the edited text
    assert to_api(loaded, core_registry())["6"]["inputs"]["text"] == "café au lait ☕, 夜景"


@pytest.mark.parametrize("compressed", [False, True])
def test_itxt_chunks_are_read(compressed):
    info = PngInfo()
    info.add_itxt("workflow", json.dumps(UI, ensure_ascii=False), lang="en", tkey="Workflow", zip=compressed)
    assert read_image_metadata(_png(info)) == {"workflow": json.dumps(UI, ensure_ascii=False)}


def test_ztxt_chunks_are_read():
    info = PngInfo()
    info.add_text("prompt", json.dumps(API), zip=True)
    data = _png(info)
    assert b"zTXt" in _chunk_types(data)
    assert json.loads(read_image_metadata(data)["prompt"]) == API


def test_prompt_only_png_falls_back_to_the_api_prompt(tmp_path):
    path = tmp_path / "prompt_only.png"
    path.write_bytes(_png(embed_png_metadata({"prompt": API, "parameters": "a1111 text, Steps: 20"})))
    loaded = load_workflow_file(path)
    assert loaded.ui is None and loaded.api == API
    assert to_api(loaded, core_registry()) == API


@pytest.mark.parametrize("info", [None, embed_png_metadata({"parameters": "a photo, Steps: 20, Sampler: Euler"})])
def test_png_without_workflow_is_reported(tmp_path, info):
    path = tmp_path / "plain.png"
    path.write_bytes(_png(info))
    with pytest.raises(WorkflowError, match="no workflow in this image"):
        load_workflow_file(path)


def test_truncated_and_broken_pngs_keep_what_was_found():
    data = _png(embed_png_metadata({"workflow": UI}))
    assert json.loads(read_image_metadata(data[:-20])["workflow"]) == UI  # cut inside the image data
    text_end = data.index(b"IDAT") - 4
    broken = data[:text_end] + b"\xff\xff\xff\xffJUNK" + b"\0" * 10
    assert json.loads(read_image_metadata(broken)["workflow"]) == UI
    assert read_image_metadata(data[:20]) == {}
    assert read_image_metadata(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x05tEXt\xff") == {}
    assert read_image_metadata(b"GIF89a....") == {}


def _webp(exif: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 10)).save(buffer, "WEBP", exif=exif)
    return buffer.getvalue()


def _comfy_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + json.dumps(API)
    exif[0x010F] = "workflow:" + json.dumps(UI)
    return exif


def test_webp_exif_with_and_without_header(tmp_path):
    with_header = _comfy_exif().tobytes()
    assert with_header.startswith(b"Exif\0\0")
    for exif in (with_header, with_header[6:]):
        path = tmp_path / "image.webp"
        path.write_bytes(_webp(exif))
        loaded = load_workflow_file(path)
        assert (loaded.ui, loaded.api, loaded.source) == (UI, API, "webp")


def test_webp_without_workflow_is_reported(tmp_path):
    path = tmp_path / "no_workflow.webp"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "WEBP")
    path.write_bytes(buffer.getvalue())
    with pytest.raises(WorkflowError, match="no workflow in this image"):
        load_workflow_file(path)


def test_exif_text_in_big_endian_and_capitalised_keys():
    text = b'Workflow: {"nodes": []}\0'
    entry = struct.pack(">HHI", 0x010F, 2, len(text)) + struct.pack(">I", 26)
    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + b"\0\0\0\0" + text
    assert read_exif_text(tiff) == {"workflow": '{"nodes": []}'}
    assert read_exif_text(b"not exif") == {}
    assert read_exif_text(b"II*\0\xff\xff\xff\xff") == {}


def test_json_files_of_both_formats(tmp_path):
    ui_path, api_path = tmp_path / "ui.json", tmp_path / "api.json"
    ui_path.write_bytes(b"\xef\xbb\xbf" + json.dumps(UI).encode())  # a byte-order mark is tolerated
    api_path.write_text(json.dumps(API))
    assert load_workflow_file(ui_path).ui == UI and load_workflow_file(ui_path).api is None
    loaded = load_workflow_file(api_path)
    assert (loaded.ui, loaded.api, loaded.source) == (None, API, "json")
    assert load_workflow_file(FIXTURES / "default_txt2img.json").ui == UI


@pytest.mark.parametrize("content, message", [
    (b'{"templates": [{"name": "default"}]}', "not a workflow"),
    (b"[1, 2, 3]", "not a workflow"),
    (b"\x00\x01binary", "neither JSON nor an image with a workflow"),
])
def test_files_that_are_not_workflows(tmp_path, content, message):
    path = tmp_path / "thing.json"
    path.write_bytes(content)
    with pytest.raises(WorkflowError, match=message):
        load_workflow_file(path)


def test_missing_file_is_a_workflow_error(tmp_path):
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow_file(tmp_path / "absent.json")


def test_hand_written_text_chunk_with_compression_bomb_is_refused(monkeypatch):
    from loom.server.workflow import media as workflow_media
    monkeypatch.setattr(workflow_media, "MAX_TEXT_BYTES", 4096)
    payload = zlib.compress(b" " * 100_000, 9)
    body = b"prompt\0\0" + payload
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    data = _png()
    assert read_image_metadata(data[:33] + chunk + data[33:]) == {}


def test_saved_prompt_request_body_and_workflow_wrapper(tmp_path):
    body = tmp_path / "request.json"
    body.write_text(json.dumps({"client_id": "abc", "prompt": API, "extra_data": {"extra_pnginfo": {"workflow": UI}}}))
    loaded = load_workflow_file(body)
    assert (loaded.ui, loaded.api) == (UI, API)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"workflow": UI}))
    assert load_workflow_file(wrapped).ui == UI


def test_image_whose_graph_needs_editor_only_nodes_runs_its_prompt(tmp_path):
    ui = json.loads(json.dumps(UI))
    ui["nodes"].append(node(50, "Fast Muter (someone's pack)", widgets=[]))
    path = tmp_path / "custom.png"
    path.write_bytes(_png(embed_png_metadata({"prompt": API, "workflow": ui})))
    assert to_api(load_workflow_file(path), core_registry()) == API
    with pytest.raises(WorkflowError, match="Fast Muter"):
        to_api(load_workflow_file(path).ui, core_registry())


def test_jpeg_with_exif_workflow_is_read_through_pillow(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "JPEG", exif=_comfy_exif().tobytes())
    path = tmp_path / "photo.jpg"
    path.write_bytes(buffer.getvalue())
    loaded = load_workflow_file(path)
    assert (loaded.ui, loaded.api, loaded.source) == (UI, API, "image")
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, "JPEG")
    assert read_image_metadata(plain.getvalue()) == {}
