"""Workflows in and out of the editor: drop a JSON file or a Loom-saved PNG, save/reload, schema 1, unknown nodes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]


def graph_shape(workflow: dict) -> tuple:
    nodes = sorted((n["id"], n["type"], json.dumps(n.get("widgets_values"))) for n in workflow["nodes"])
    links = sorted(tuple(l) for l in workflow["links"])
    return nodes, links


def test_drop_a_saved_ui_workflow(editor):
    text = (REPO / "workflows" / "txt2img.json").read_text()
    original = json.loads(text)
    editor.js("loom.clear()")
    editor.drop_file("txt2img.json", text.encode(), "application/json")
    editor.page.wait_for_function(f"loom.nodes().length === {len(original['nodes'])}")
    assert graph_shape(editor.workflow()) == graph_shape(original)
    saved = editor.workflow()
    ksampler = [n for n in saved["nodes"] if n["type"] == "KSampler"][0]
    # widgets_values stay positional, control_after_generate included
    assert ksampler["widgets_values"] == [n for n in original["nodes"] if n["type"] == "KSampler"][0]["widgets_values"]


def test_drop_a_png_saved_by_loom_restores_its_workflow(editor):
    editor.js("loom.clear()")
    editor.js("""() => { const a = loom.editor.addNode('EmptyImage', [100, 100]); const b = loom.editor.addNode('SaveImage', [500, 100]);
                 loom.graph.connect(a, 0, b, 0); a.widget('width').value = 40; a.widget('height').value = 24;
                 b.title = 'Keeper'; }""")
    queued = editor.workflow()
    assert editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function("loom.nodeState(2).images.length > 0 && loom.nodeState(2).images[0].loaded",
                                  timeout=30000)
    src = editor.js("loom.nodeState(2).images[0].src")
    png = editor.page.request.get(src).body()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    editor.js("loom.clear()")
    assert editor.js("loom.nodes()") == []
    editor.drop_file("Loom_00001_.png", png, "image/png")
    editor.page.wait_for_function("loom.nodes().length === 2")
    assert graph_shape(editor.workflow()) == graph_shape(queued)
    assert [n["title"] for n in editor.js("loom.nodes()")] == ["Empty Image", "Keeper"]  # its display name


def test_dropping_an_image_on_load_image_uploads_and_previews_it(editor, loom_server):
    editor.js("loom.clear()")
    editor.js("""() => { loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [0, 0];
                 loom.editor.addNode('LoadImage', [200, 100]); }""")
    editor.frame()
    png = (REPO / "workflows" / "example.png").read_bytes()
    at = editor.point("bodyPoint", 1)
    editor.drop_file("dropped-photo.png", png, "image/png", at=at)
    # the node may first preview an image already in the input folder: wait for the upload's
    editor.page.wait_for_function("loom.node(1).widgets.image === 'dropped-photo.png' && loom.nodeState(1).inputImage"
                                  " && loom.nodeState(1).inputImage.loaded", timeout=15000)
    from PIL import Image
    with Image.open(loom_server.base_dir / "input" / "dropped-photo.png") as uploaded, \
            Image.open(REPO / "workflows" / "example.png") as original:
        assert uploaded.size == original.size
    assert editor.js("loom.nodeState(1).inputImage.src").endswith("filename=dropped-photo.png&subfolder=&type=input")
    saved = editor.workflow()["nodes"][0]
    assert saved["widgets_values"] == ["dropped-photo.png", "image"]  # the upload button's value stays


def test_save_reload_gives_identical_json(editor):
    editor.js("loom.newWorkflow()")
    editor.page.wait_for_function("loom.nodes().length === 7")
    start = editor.point("titlePoint", 5)
    editor.drag(start, (start[0] + 25, start[1] - 15))
    editor.type_into_widget(5, "batch_size", "2")
    editor.mouse.move(600, 500)
    editor.mouse.wheel(0, 120)
    editor.frame()
    saved = editor.workflow()
    assert saved["version"] == 0.4 and saved["extra"]["ds"]["scale"] < 1
    editor.reload()
    assert editor.workflow() == saved
    editor.js("(w) => loom.load(w)", saved)
    assert editor.workflow() == saved


def test_schema_1_workflow_loads_and_saves_as_0_4(editor):
    workflow = {
        "version": 1, "state": {"lastNodeId": 12, "lastLinkId": 7, "lastGroupId": 0, "lastRerouteId": 0},
        "nodes": [
            {"id": 11, "type": "EmptyImage", "pos": [0, 0], "size": [260, 130], "flags": {}, "order": 0, "mode": 0,
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [7]}], "properties": {},
             "widgets_values": [32, 32, 1, 0]},
            {"id": 12, "type": "PreviewImage", "pos": [400, 0], "size": [300, 300], "flags": {}, "order": 1, "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 7}], "properties": {}, "widgets_values": []},
        ],
        "links": [{"id": 7, "origin_id": 11, "origin_slot": 0, "target_id": 12, "target_slot": 0, "type": "IMAGE"}],
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [10, 20]}, "custom_key": {"kept": True}},
    }
    editor.js("(w) => loom.load(w)", workflow)
    saved = editor.workflow()
    assert saved["version"] == 0.4
    assert saved["links"] == [[7, 11, 0, 12, 0, "IMAGE"]]
    assert (saved["last_node_id"], saved["last_link_id"]) == (12, 7)
    assert saved["extra"]["custom_key"] == {"kept": True}


def test_unknown_nodes_and_fields_survive_a_round_trip(editor):
    workflow = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    workflow["nodes"].append({"id": 50, "type": "SomeCustomPackNode", "pos": [0, 900], "size": [300, 120], "flags": {},
                              "order": 7, "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": None}],
                              "outputs": [{"name": "MASK", "type": "MASK", "links": None}],
                              "properties": {"cnr_id": "some-pack", "ver": "1.2.3"},
                              "widgets_values": {"threshold": 0.5, "mode": "soft"}, "shape": 1})
    workflow["nodes"].append({"id": 51, "type": "Note", "pos": [0, 1100], "size": [300, 120], "flags": {}, "order": 8,
                              "mode": 0, "properties": {"text": ""}, "widgets_values": ["remember the seed"],
                              "color": "#432", "bgcolor": "#653"})
    workflow["nodes"][0]["some_extension_field"] = {"x": 1}
    workflow["models"] = [{"name": "v1-5-pruned-emaonly.safetensors", "directory": "checkpoints"}]
    editor.js("(w) => loom.load(w)", workflow)
    saved = editor.workflow()
    warnings = editor.js("(w) => loom.load(w)", workflow)
    assert warnings == ["unknown node types kept as they are: SomeCustomPackNode"]  # a Note is not unknown
    saved = editor.workflow()
    note = {k: v for k, v in [n for n in saved["nodes"] if n["id"] == 51][0].items() if k != "order"}
    assert note == {k: v for k, v in workflow["nodes"][-1].items() if k != "order"}
    custom = [n for n in saved["nodes"] if n["id"] == 50][0]
    assert custom["widgets_values"] == {"threshold": 0.5, "mode": "soft"}
    assert custom["properties"] == {"cnr_id": "some-pack", "ver": "1.2.3"} and custom["shape"] == 1
    assert saved["nodes"][0]["some_extension_field"] == {"x": 1}
    assert saved["models"] == workflow["models"]


def test_widget_order_matches_saved_files(editor):
    """widgets_values positions: the upload button ends its group; a seed is followed by its control."""
    editor.js("""() => { loom.clear(); const e = loom.editor;
        e.addNode('LoadImageMask', [0, 0]); e.addNode('KSamplerAdvanced', [400, 0]); }""")
    nodes = {n["type"]: n for n in editor.workflow()["nodes"]}
    mask = nodes["LoadImageMask"]["widgets_values"]
    assert len(mask) == 3 and mask[2] == "image" and mask[1] in ("alpha", "red", "green", "blue")
    advanced = nodes["KSamplerAdvanced"]["widgets_values"]
    assert advanced[0] in ("enable", "disable") and advanced[2] == "randomize" and len(advanced) == 10


def test_save_and_export_api_download_json(editor):
    editor.js("loom.newWorkflow()")
    editor.page.wait_for_function("loom.nodes().length === 7")
    with editor.page.expect_download() as saved:
        editor.page.click("#btn-save")
    workflow = json.loads(Path(saved.value.path()).read_text())
    assert workflow == editor.workflow()
    with editor.page.expect_download() as exported:
        editor.page.click("#btn-export-api")
    prompt = json.loads(Path(exported.value.path()).read_text())
    assert exported.value.suggested_filename == "workflow_api.json"
    assert prompt["3"]["class_type"] == "KSampler" and prompt["3"]["inputs"]["model"] == ["4", 0]
    sampler = next(n for n in workflow["nodes"] if n["id"] == 3)
    assert prompt["3"]["inputs"]["seed"] == sampler["widgets_values"][0]
    assert "control_after_generate" not in prompt["3"]["inputs"]


def test_drop_an_api_prompt_builds_a_laid_out_graph(editor):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 255}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"},
              "_meta": {"title": "Inverted"}},
    }
    editor.js("loom.clear()")
    editor.drop_file("workflow_api.json", json.dumps(prompt).encode(), "application/json")
    editor.page.wait_for_function("loom.nodes().length === 3")
    nodes = {n["id"]: n for n in editor.js("loom.nodes()")}
    assert nodes[1]["widgets"]["width"] == 48 and nodes[3]["widgets"]["filename_prefix"] == "inverted"
    assert nodes[3]["title"] == "Inverted"
    assert sorted((l["origin_id"], l["target_id"]) for l in editor.js("loom.links()")) == [(1, 2), (2, 3)]
    assert nodes[1]["pos"][0] < nodes[2]["pos"][0] < nodes[3]["pos"][0]  # columns by depth


def _normalised(workflow: dict) -> dict:
    """What saving may change: layout order, sizes grown to fit, vectors as arrays, the view, link order."""
    workflow = json.loads(json.dumps(workflow))
    for node in workflow["nodes"]:
        node.pop("order", None)
        node.pop("size", None)
        if isinstance(node.get("pos"), dict):
            node["pos"] = [node["pos"]["0"], node["pos"]["1"]]
        for output in node.get("outputs") or []:
            output.pop("slot_index", None)
    (workflow.get("extra") or {}).pop("ds", None)
    workflow.pop("last_node_id", None)
    workflow.pop("last_link_id", None)
    if workflow.get("links") and isinstance(workflow["links"][0], list):
        workflow["links"] = sorted(workflow["links"])
    return workflow


UI_WORKFLOWS = sorted(p for p in [*(REPO / "workflows").glob("*.json"), *(REPO / "tests" / "fixtures" / "workflows").glob("*.json")]
                      if "nodes" in json.loads(p.read_text()))


def test_every_example_and_fixture_workflow_round_trips(editor):
    assert UI_WORKFLOWS
    for path in UI_WORKFLOWS:
        original = json.loads(path.read_text())
        warnings = editor.js("(w) => loom.load(w)", original)
        editor.frame()
        assert warnings == [], (path.name, warnings)
        saved = editor.workflow()
        assert saved["version"] == 0.4
        assert saved["last_node_id"] >= max(n["id"] for n in original["nodes"] if isinstance(n["id"], int))
        assert _normalised(saved) == _normalised(original), path.name


def test_groups_of_a_loaded_workflow_are_drawn_and_kept(editor):
    group = {"id": 1, "title": "Inputs", "bounding": [0, 0, 400, 300], "color": "#b58b2a", "font_size": 24, "flags": {}}
    workflow = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [group], "config": {},
                "extra": {"ds": {"scale": 1, "offset": [50, 50]}}, "version": 0.4}
    editor.js("(w) => loom.load(w)", workflow)
    editor.frame()
    x, y = editor.js("loom.toClient(200, 200)")
    red, green, blue = editor.js("""([x, y]) => { const c = document.getElementById('graph'); const r = c.getBoundingClientRect();
        const d = c.getContext('2d').getImageData(x - r.left, y - r.top, 1, 1).data; return [d[0], d[1], d[2]]; }""", [x, y])
    assert red > green > blue and red - blue > 20  # tinted with the group's colour
    assert editor.workflow()["groups"] == [group]
