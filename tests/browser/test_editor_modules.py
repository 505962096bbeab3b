"""The editor's pure modules, run in the page through dynamic imports: search ranking, number
rounding, seed control, PNG text chunks, and the slider widget (no server node uses one yet)."""
from __future__ import annotations

import io
import json
import zlib

import pytest

pytestmark = pytest.mark.browser


def module_call(editor, module: str, body: str, arg=None):
    return editor.js(f"async (arg) => {{ const m = await import('/{module}'); {body} }}", arg)


def test_search_ranks_by_name_then_category_and_filters_by_type(editor):
    ranked = editor.js("""async () => { const m = await import('/ui/search.js');
        return {ksampler: m.searchDefs(loom.defs, 'ksampler').slice(0, 2).map(d => d.type),
                fuzzy: m.searchDefs(loom.defs, 'emptlat').slice(0, 1).map(d => d.type),
                category: m.searchDefs(loom.defs, 'upscaling').map(d => d.type),
                latentInputs: m.searchDefs(loom.defs, '', {type: 'LATENT', wantInput: true}).map(d => d.type),
                imageOutputs: m.searchDefs(loom.defs, '', {type: 'IMAGE', wantInput: false}).map(d => d.type)}; }""")
    assert ranked["ksampler"][0] == "KSampler"
    assert ranked["fuzzy"] == ["EmptyLatentImage"]
    assert "ImageScale" in ranked["category"]
    assert "LatentUpscale" in ranked["latentInputs"] and "EmptyImage" not in ranked["latentInputs"]
    assert "EmptyImage" in ranked["imageOutputs"] and "EmptyLatentImage" not in ranked["imageOutputs"]


def test_number_rounding_and_control_after_generate(editor):
    got = editor.js("""async () => { const model = await import('/graph/model.js');
        const control = await import('/widgets/control.js');
        const float = {options: {min: 0, max: 100, step: 0.1, round: 0.01}};
        const int = {kind: 'number', value: 10, options: {min: 0, max: 12, step: 1, integer: true}};
        const combo = {kind: 'combo', value: 'b', options: {values: ['a', 'b', 'c']}};
        return {round: model.normalizeNumber(float, 7.123456), clampHigh: model.normalizeNumber(float, 1000),
                int: model.normalizeNumber(int, 3.6), inc: control.nextControlledValue(int, 'increment'),
                incAtMax: control.nextControlledValue({...int, value: 12}, 'increment'),
                dec: control.nextControlledValue(int, 'decrement'), fixed: control.nextControlledValue(int, 'fixed'),
                legacy: control.nextControlledValue(int, true),
                comboInc: control.nextControlledValue(combo, 'increment'),
                random: Array.from({length: 20}, () => control.nextControlledValue(int, 'randomize'))}; }""")
    assert got["round"] == pytest.approx(7.12) and got["clampHigh"] == 100 and got["int"] == 4
    assert (got["inc"], got["incAtMax"], got["dec"], got["fixed"], got["legacy"]) == (11, 12, 9, 10, 10)
    assert got["comboInc"] == "c"
    assert all(0 <= v <= 12 and v == int(v) for v in got["random"])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def test_png_text_chunks_are_read(editor):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="PNG")
    png = buffer.getvalue()
    workflow = {"nodes": [], "links": [], "note": "ünïcode"}
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    extra = (_chunk(b"iTXt", b"workflow\x00\x01\x00\x00\x00" + zlib.compress(json.dumps(workflow).encode()))
             + _chunk(b"tEXt", b"prompt\x00" + json.dumps(prompt).encode())
             + _chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"zipped")))
    png = png[:-12] + extra + png[-12:]
    got = module_call(editor, "png.js",
                      "const bytes = Uint8Array.from(atob(arg), c => c.charCodeAt(0)); return m.readPngText(bytes.buffer);",
                      __import__("base64").b64encode(png).decode())
    assert json.loads(got["workflow"]) == workflow
    assert json.loads(got["prompt"]) == prompt
    assert got["comment"] == "zipped"


def test_slider_widget_sets_the_value_from_the_pointer(editor):
    editor.js("""async () => { const { NodeDef } = await import('/graph/definitions.js');
        loom.defs.byType.set('SliderTest', new NodeDef('SliderTest', {input: {required: {
            strength: ['FLOAT', {default: 0.5, min: 0, max: 1, step: 0.01, display: 'slider'}]}},
            output: ['FLOAT'], output_name: ['FLOAT'], name: 'SliderTest', category: 'test'}));
        loom.clear(); loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [0, 0];
        loom.editor.addNode('SliderTest', [100, 100]); }""")
    editor.frame()
    x, y = editor.point("widgetPoint", 1, "strength", "left")
    right, _ = editor.point("widgetPoint", 1, "strength", "right")
    editor.drag((x, y), (x + (right - x) * 0.75, y), steps=6)
    value = editor.js("loom.node(1)")["widgets"]["strength"]
    assert 0.6 < value < 0.85
    editor.drag((x, y), (x - 50, y), steps=3)
    assert editor.js("loom.node(1)")["widgets"]["strength"] == 0


def test_built_in_default_workflow_matches_workflows_txt2img(editor):
    """The editor's fallback "new workflow" and workflows/txt2img.json say the same: same node types, same
    widget values, except the seed and the file name prefix, which are the editor's own."""
    from pathlib import Path

    shipped = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "txt2img.json").read_text())
    built_in = module_call(editor, "graph/default-workflow.js", "return m.DEFAULT_WORKFLOW;")

    def values(workflow):
        by_type = {}
        for node in workflow["nodes"]:
            widgets = list(node.get("widgets_values") or [])
            if node["type"] == "KSampler":
                widgets = widgets[1:]  # the seed
            if node["type"] == "SaveImage":
                widgets = []  # the file name prefix is the editor's own
            by_type.setdefault(node["type"], []).append(widgets)
        return {t: sorted(v, key=json.dumps) for t, v in by_type.items()}

    assert values(built_in) == values(shipped)
