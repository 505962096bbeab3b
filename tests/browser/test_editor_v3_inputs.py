"""ComfyUI's V3 dynamic inputs in the editor (issue 12): autogrow sockets, match types, dynamic combos,
the image compare slider (issue 18.7), previews of the new output nodes, and the new nodes in search.

Input names and ``widgets_values`` are the ones ComfyUI's frontend uses (``images.image0``,
``resize_type.multiplier``, the chosen option's values right after the combo)."""
from __future__ import annotations

import json

import pytest

from tests.browser.conftest import screenshot_path

pytestmark = pytest.mark.browser


PIXEL = """([x, y]) => { const c = document.getElementById('graph');
  const r = c.getBoundingClientRect(); const ratio = window.devicePixelRatio || 1;
  const d = c.getContext('2d').getImageData(Math.round((x - r.left) * ratio), Math.round((y - r.top) * ratio), 1, 1).data;
  return [d[0], d[1], d[2]]; }"""


def build(editor, script: str) -> list[int]:
    editor.js("loom.clear()")
    editor.js("() => { loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [0, 0]; }")
    editor.js("() => { const add = (t, x, y) => loom.editor.addNode(t, [x, y]); const link = (a, i, b, j) => loom.graph.connect(a, i, b, j);"
              + script + "}")
    editor.frame()
    return [n["id"] for n in editor.js("loom.nodes()")]


def names(editor, node: int) -> list[str]:
    return [i["name"] for i in editor.js(f"loom.node({node})")["inputs"]]


def saved_node(workflow: dict, node: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node)


def convert(editor) -> dict:
    return editor.js("async () => (await loom.editor.api.convert(loom.serialize())).prompt")


def links_consistent(editor) -> None:
    """Every link's target slot is the input that holds it."""
    bad = editor.js("""() => [...loom.graph.links.values()].filter((l) => {
        const t = loom.graph.getNode(l.target_id); return !t || t.inputs[l.target_slot]?.link !== l.id; }).length""")
    assert bad == 0


def run_and_wait(editor, node: int, condition: str, timeout: int = 30000) -> None:
    assert editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"(() => {{ const s = loom.nodeState({node}); return {condition}; }})()", timeout=timeout)


# ---------------------------------------------------------------------------------------- 1 autogrow

def test_autogrow_sockets_grow_shrink_save_and_queue(editor):
    red, green, blue, batch, save = build(editor, """
        const r = add('EmptyImage', 40, 60); r.widget('width').value = 32; r.widget('height').value = 32;
        const g = add('EmptyImage', 40, 260); g.widget('width').value = 32; g.widget('height').value = 32;
        const b = add('EmptyImage', 40, 460); b.widget('width').value = 32; b.widget('height').value = 32;
        add('BatchImagesNode', 420, 200); add('PreviewImage', 700, 200);""")
    # ComfyUI starts with min (2) + 1 copies, labelled without the group name
    assert names(editor, batch) == ["images.image0", "images.image1", "images.image2"]
    assert [i["label"] for i in editor.js(f"loom.node({batch})")["inputs"]] == ["image0", "image1", "image2"]
    editor.connect(red, "IMAGE", batch, "images.image0")  # by dragging, as a user does
    editor.connect(green, "IMAGE", batch, "images.image1")
    assert names(editor, batch) == ["images.image0", "images.image1", "images.image2"]  # the last is still free
    editor.connect(blue, "IMAGE", batch, "images.image2")
    assert names(editor, batch) == ["images.image0", "images.image1", "images.image2", "images.image3"]
    links_consistent(editor)

    # unlinking image1: the links below move up, one free copy stays after the last linked one
    editor.js(f"loom.graph.disconnectInput(loom.graph.getNode({batch}), 1)")
    node = editor.js(f"loom.node({batch})")
    assert [i["name"] for i in node["inputs"]] == ["images.image0", "images.image1", "images.image2"]
    origins = editor.js(f"""() => loom.graph.getNode({batch}).inputs.map((i) => i.link == null ? null
        : loom.graph.links.get(i.link).origin_id)""")
    assert origins == [red, blue, None]
    links_consistent(editor)
    # unlinking everything never goes below min + 1
    editor.js(f"() => {{ const n = loom.graph.getNode({batch}); loom.graph.disconnectInput(n, 1); loom.graph.disconnectInput(n, 0); }}")
    assert names(editor, batch) == ["images.image0", "images.image1", "images.image2"]

    for origin, slot in ((red, 0), (green, 1), (blue, 2)):
        editor.js(f"loom.graph.connect(loom.graph.getNode({origin}), 0, loom.graph.getNode({batch}), {slot})")
    editor.js(f"loom.graph.connect(loom.graph.getNode({batch}), 0, loom.graph.getNode({save}), 0)")
    workflow = editor.workflow()
    saved = saved_node(workflow, batch)
    assert [i["name"] for i in saved["inputs"]] == ["images.image0", "images.image1", "images.image2", "images.image3"]
    assert saved["inputs"][0]["label"] == "image0" and saved["widgets_values"] == []
    prompt = convert(editor)
    assert prompt[str(batch)]["inputs"] == {"images.image0": [str(red), 0], "images.image1": [str(green), 0],
                                            "images.image2": [str(blue), 0]}
    # the saved workflow loads back with the same sockets and links
    editor.js("(w) => loom.load(w)", workflow)
    assert names(editor, batch) == ["images.image0", "images.image1", "images.image2", "images.image3"]
    links_consistent(editor)
    run_and_wait(editor, save, "s.images.length === 3 && s.images.every((i) => i.loaded)")


def test_autogrow_named_slots_and_text_preview(editor):
    two, three, math, preview = build(editor, """
        const a = add('PrimitiveInt', 40, 60); a.widget('value').value = 2;
        const b = add('PrimitiveFloat', 40, 260); b.widget('value').value = 3.5;
        const m = add('ComfyMathExpression', 400, 100); m.widget('expression').value = 'a * b + 1';
        add('PreviewAny', 900, 100);""")
    assert names(editor, math) == ["values.a", "values.b"]  # names from the template's list, min 1 + 1
    editor.connect(two, 0, math, "values.a")
    assert names(editor, math) == ["values.a", "values.b"]
    editor.connect(three, 0, math, "values.b")
    assert names(editor, math) == ["values.a", "values.b", "values.c"]
    editor.connect(math, "FLOAT", preview, "source")
    prompt = convert(editor)
    assert prompt[str(math)]["inputs"]["values.a"] == [str(two), 0]
    assert prompt[str(math)]["inputs"]["values.b"] == [str(three), 0]
    assert "values.c" not in prompt[str(math)]["inputs"]
    run_and_wait(editor, preview, "s.text !== null")
    assert editor.js(f"loom.nodeState({preview})")["text"] == "8.0"


# ---------------------------------------------------------------------------------------- 2 match type

def test_match_type_output_follows_the_linked_input(editor):
    image, mask, resize, save, to_image = build(editor, """
        add('EmptyImage', 40, 60); add('SolidMask', 40, 300); add('ResizeImageMaskNode', 400, 100);
        add('PreviewImage', 800, 60); add('MaskToImage', 800, 420);""")
    node = editor.js(f"loom.node({resize})")
    assert node["inputs"][0] == {"name": "input", "type": "IMAGE,MASK", "link": None, "label": None}
    assert node["outputs"][0]["type"] == "IMAGE,MASK"  # unlinked: what the template allows
    editor.connect(image, "IMAGE", resize, "input")
    assert editor.js(f"loom.node({resize})")["outputs"][0]["type"] == "IMAGE"
    editor.connect(resize, "resized", save, "images")
    assert editor.js(f"loom.node({save})")["inputs"][0]["link"] is not None
    # an IMAGE output does not feed a MASK input
    can = editor.js(f"loom.graph.canConnect(loom.graph.getNode({resize}), 0, loom.graph.getNode({to_image}), 0)")
    assert can is False
    # a mask into it: the output becomes MASK and the link into the IMAGE input goes
    editor.connect(mask, "MASK", resize, "input")
    assert editor.js(f"loom.node({resize})")["outputs"][0]["type"] == "MASK"
    assert editor.js(f"loom.node({save})")["inputs"][0]["link"] is None
    editor.connect(resize, "resized", to_image, "mask")
    link = editor.js(f"loom.node({to_image})")["inputs"][0]["link"]
    assert link is not None
    assert next(l for l in editor.js("loom.links()") if l["id"] == link)["type"] == "MASK"
    # saved and loaded back, the type stays what is linked
    workflow = editor.workflow()
    assert saved_node(workflow, resize)["outputs"][0]["type"] == "MASK"
    editor.js("(w) => loom.load(w)", workflow)
    assert editor.js(f"loom.node({resize})")["outputs"][0]["type"] == "MASK"
    # unlinked again: back to IMAGE,MASK
    editor.js(f"loom.graph.disconnectInput(loom.graph.getNode({resize}), 0)")
    assert editor.js(f"loom.node({resize})")["outputs"][0]["type"] == "IMAGE,MASK"


# ---------------------------------------------------------------------------------------- 3 dynamic combo

def widget_names(editor, node: int) -> list[str]:
    return editor.js(f"loom.graph.getNode({node}).widgets.map((w) => w.name)")


def test_dynamic_combo_swaps_the_options_widgets(editor):
    image, resize = build(editor, "add('EmptyImage', 40, 60); add('ResizeImageMaskNode', 400, 100);")
    assert widget_names(editor, resize) == ["resize_type", "resize_type.width", "resize_type.height",
                                            "resize_type.crop", "scale_method"]
    assert saved_node(editor.workflow(), resize)["widgets_values"] == ["scale dimensions", 512, 512, "center", "area"]
    # sub-widgets are drawn with the option's own names
    assert editor.js(f"loom.graph.getNode({resize}).widget('resize_type.width').label") == "width"

    editor.choose_combo(resize, "resize_type", "multiplier", "scale by multiplier")
    assert widget_names(editor, resize) == ["resize_type", "resize_type.multiplier", "scale_method"]
    editor.type_into_widget(resize, "resize_type.multiplier", "2")
    assert saved_node(editor.workflow(), resize)["widgets_values"] == ["scale by multiplier", 2, "area"]

    # an option with a socket: resize_type.match (labelled match) appears after the input socket
    editor.choose_combo(resize, "resize_type", "match", "match size")
    assert widget_names(editor, resize) == ["resize_type", "resize_type.crop", "scale_method"]
    assert names(editor, resize) == ["input", "resize_type.match"]
    assert editor.js(f"loom.node({resize})")["inputs"][1]["label"] == "match"
    editor.connect(image, "IMAGE", resize, "resize_type.match")
    workflow = editor.workflow()
    assert saved_node(workflow, resize)["widgets_values"] == ["match size", "center", "area"]
    editor.js("(w) => loom.load(w)", workflow)
    assert widget_names(editor, resize) == ["resize_type", "resize_type.crop", "scale_method"]
    assert editor.js(f"loom.node({resize})")["inputs"][1]["link"] is not None
    links_consistent(editor)

    # back to the multiplier: its socket and link go, the typed value comes back
    editor.js(f"() => {{ const n = loom.graph.getNode({resize}); loom.editor.setWidgetValue(n, n.widget('resize_type'), 'scale dimensions'); }}")
    editor.choose_combo(resize, "resize_type", "multiplier", "scale by multiplier")
    assert names(editor, resize) == ["input"]
    assert editor.js("loom.links()") == []
    node = editor.js(f"loom.node({resize})")
    assert node["widgets"]["resize_type.multiplier"] == 1.0  # a reload forgets values of other options

    # a workflow saved by ComfyUI (widget inputs listed, the option's value after the combo) loads the same
    comfy = {
        "last_node_id": 1, "last_link_id": 0, "version": 0.4, "groups": [], "config": {}, "extra": {}, "links": [],
        "nodes": [{"id": 1, "type": "ResizeImageMaskNode", "pos": [100, 100], "size": [300, 150], "flags": {},
                   "order": 0, "mode": 0, "properties": {},
                   "inputs": [{"localized_name": "input", "name": "input", "type": "IMAGE,MASK", "link": None},
                              {"localized_name": "resize_type", "name": "resize_type", "type": "COMFY_DYNAMICCOMBO_V3",
                               "widget": {"name": "resize_type"}, "link": None},
                              {"localized_name": "resize_type.longer_size", "label": "longer_size",
                               "name": "resize_type.longer_size", "type": "INT",
                               "widget": {"name": "resize_type.longer_size"}, "link": None},
                              {"localized_name": "scale_method", "name": "scale_method", "type": "COMBO",
                               "widget": {"name": "scale_method"}, "link": None}],
                   "outputs": [{"localized_name": "resized", "name": "resized", "type": "*", "links": []}],
                   "widgets_values": ["scale longer dimension", 768, "lanczos"]}],
    }
    editor.js("(w) => loom.load(w)", comfy)
    node = editor.js("loom.node(1)")
    assert node["widgets"] == {"resize_type": "scale longer dimension", "resize_type.longer_size": 768,
                               "scale_method": "lanczos"}
    assert saved_node(editor.workflow(), 1)["widgets_values"] == ["scale longer dimension", 768, "lanczos"]
    editor.frame()
    assert editor.js("loom.widgetPoint(1, 'resize_type.longer_size')")  # drawn in the body


def test_dynamic_combo_prompt_has_only_the_chosen_options_inputs(editor):
    image, resize, save = build(editor, """const i = add('EmptyImage', 40, 60); i.widget('width').value = 32;
        i.widget('height').value = 16; const r = add('ResizeImageMaskNode', 400, 100); const p = add('PreviewImage', 800, 100);
        link(i, 0, r, 0); link(r, 0, p, 0);
        loom.editor.setWidgetValue(r, r.widget('resize_type'), 'scale by multiplier');
        r.widget('resize_type.multiplier').value = 2; r.widget('scale_method').value = 'bilinear';""")
    prompt = convert(editor)
    assert prompt[str(resize)]["inputs"] == {"input": [str(image), 0], "resize_type": "scale by multiplier",
                                             "resize_type.multiplier": 2, "scale_method": "bilinear"}
    run_and_wait(editor, save, "s.images.length === 1 && s.images[0].loaded")
    assert editor.js(f"loom.nodeState({save})")["images"][0]["width"] == 64


# ------------------------------------------------------------------------------ 3b nested dynamic combo
# SaveImageAdvanced's format = avif brings a dynamic combo of its own, format.save_mode, whose "animated"
# brings format.save_mode.fps and format.save_mode.loop_count right after it.

PNG_WIDGETS = ["filename_prefix", "format", "format.bit_depth", "format.input_color_space"]
AVIF_WIDGETS = PNG_WIDGETS + ["format.crf", "format.save_mode"]
ANIMATED_WIDGETS = AVIF_WIDGETS + ["format.save_mode.fps", "format.save_mode.loop_count"]


def test_nested_dynamic_combo_switches_saves_reloads_and_queues(editor):
    image, save = build(editor, """const i = add('EmptyImage', 40, 60); i.widget('width').value = 8;
        i.widget('height').value = 4; const s = add('SaveImageAdvanced', 400, 60); link(i, 0, s, 0);""")
    assert widget_names(editor, save) == PNG_WIDGETS
    editor.choose_combo(save, "format", "avif", "avif")
    assert widget_names(editor, save) == AVIF_WIDGETS
    assert editor.js(f"loom.graph.getNode({save}).widget('format.save_mode').label") == "save_mode"
    editor.type_into_widget(save, "format.crf", "30")
    editor.choose_combo(save, "format.save_mode", "anim", "animated")
    assert widget_names(editor, save) == ANIMATED_WIDGETS
    assert editor.js(f"loom.graph.getNode({save}).widget('format.save_mode.fps').label") == "fps"
    editor.type_into_widget(save, "format.save_mode.fps", "12.5")
    editor.type_into_widget(save, "format.save_mode.loop_count", "3")
    animated = ["ComfyUI", "avif", "auto", "sRGB", 30, "animated", 12.5, 3]
    assert saved_node(editor.workflow(), save)["widgets_values"] == animated
    expected = {"images": [str(image), 0], "filename_prefix": "ComfyUI", "format": "avif", "format.bit_depth": "auto",
                "format.input_color_space": "sRGB", "format.crf": 30, "format.save_mode": "animated",
                "format.save_mode.fps": 12.5, "format.save_mode.loop_count": 3}
    assert convert(editor)[str(save)]["inputs"] == expected

    # another format: the nested combo and its widgets go; back to avif, every typed value comes back
    editor.choose_combo(save, "format", "exr", "exr")
    assert widget_names(editor, save) == PNG_WIDGETS
    assert saved_node(editor.workflow(), save)["widgets_values"] == ["ComfyUI", "exr", "32-bit float", "sRGB"]
    assert set(convert(editor)[str(save)]["inputs"]) == {"images", "filename_prefix", "format", "format.bit_depth",
                                                         "format.input_color_space"}
    editor.choose_combo(save, "format", "avif", "avif")
    assert saved_node(editor.workflow(), save)["widgets_values"] == animated
    # the inner combo alone: still images drops fps and loop_count, animated brings back what was typed
    editor.choose_combo(save, "format.save_mode", "still", "still images")
    assert widget_names(editor, save) == AVIF_WIDGETS
    editor.choose_combo(save, "format.save_mode", "anim", "animated")
    assert saved_node(editor.workflow(), save)["widgets_values"] == animated

    # saved and loaded again (and loaded from the API prompt alone): the same widgets, values and prompt
    workflow = editor.workflow()
    editor.js("(w) => loom.load(w)", workflow)
    assert widget_names(editor, save) == ANIMATED_WIDGETS
    assert saved_node(editor.workflow(), save)["widgets_values"] == animated
    assert convert(editor)[str(save)]["inputs"] == expected
    editor.frame()
    assert editor.js(f"loom.widgetPoint({save}, 'format.save_mode.loop_count')")  # drawn in the body
    prompt = convert(editor)
    editor.js("(p) => loom.load(p)", prompt)
    assert widget_names(editor, save) == ANIMATED_WIDGETS
    assert saved_node(editor.workflow(), save)["widgets_values"] == animated


@pytest.mark.parametrize("fmt, options, extension", [("png", {"format.bit_depth": "16-bit"}, "png"),
                                                      ("exr", {"format.input_color_space": "linear"}, "exr")])
def test_save_image_advanced_runs_from_the_editor(editor, loom_server, fmt, options, extension):
    image, save = build(editor, f"""const i = add('EmptyImage', 40, 60); i.widget('width').value = 8;
        i.widget('height').value = 4; const s = add('SaveImageAdvanced', 400, 60); link(i, 0, s, 0);
        s.widget('filename_prefix').value = 'editor_{fmt}';
        loom.editor.setWidgetValue(s, s.widget('format'), '{fmt}');
        for (const [name, value] of Object.entries({json.dumps(options)}))
            loom.editor.setWidgetValue(s, s.widget(name), value);""")
    assert editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"loom.nodeState({save}).images.length === 1", timeout=30000)
    state = editor.js(f"loom.nodeState({save})")
    assert state["error"] is None
    assert f"filename=editor_{fmt}_00001.{extension}" in state["images"][0]["src"]
    data = (loom_server.base_dir / "output" / f"editor_{fmt}_00001.{extension}").read_bytes()
    assert data[:4] == (b"\x89PNG" if fmt == "png" else b"\x76\x2f\x31\x01")
    if fmt == "png":
        assert data[24] == 16  # IHDR bit depth


# ---------------------------------------------------------------------------------------- 4 image compare

COMPARE_GRAPH = """
    const a = add('EmptyImage', 40, 60); a.widget('width').value = 64; a.widget('height').value = 64;
    a.widget('color').value = 0xFF0000;
    const b = add('EmptyImage', 40, 300); b.widget('width').value = 64; b.widget('height').value = 64;
    b.widget('color').value = 0x0000FF;
    const c = add('ImageCompare', 420, 60); link(a, 0, c, 0); link(b, 0, c, 1);"""


def image_rect(editor, node: int) -> list[float]:
    """Graph rectangle of the compare node's (square) images inside its image area."""
    return editor.js(f"""async () => {{ const {{ imageArea }} = await import('/canvas/layout.js');
        const [x, y, w, h] = imageArea(loom.graph.getNode({node})); const side = Math.min(w, h);
        return [x + (w - side) / 2, y + (h - side) / 2, side, side]; }}""")


def test_image_compare_slider_after_a_run(editor, tmp_path):
    red, blue, compare = build(editor, COMPARE_GRAPH)
    node = editor.js(f"loom.node({compare})")
    assert node["size"][0] >= 400 and node["size"][1] >= 350
    assert [i["name"] for i in node["inputs"]] == ["image_a", "image_b"]
    assert saved_node(editor.workflow(), compare)["widgets_values"] == []  # the slider is not saved (as ComfyUI)
    # queued with the value ComfyUI's frontend sends for the socketless widget (its initial ['', ''])
    prompt = convert(editor)
    assert prompt[str(compare)]["inputs"]["compare_view"] == {"__value__": ["", ""]}
    assert editor.js("async (p) => (await loom.editor.api.queuePrompt(p, loom.serialize())).prompt_id", prompt)
    editor.page.wait_for_function(f"(() => {{ const s = loom.nodeState({compare}); return s.compare && s.compare.loaded; }})()",
                                  timeout=30000)
    state = editor.js(f"loom.nodeState({compare})")
    assert len(state["compare"]["refs"]["a"]) == 1 and len(state["compare"]["refs"]["b"]) == 1
    editor.frame()
    x, y, w, h = image_rect(editor, compare)
    mid = y + h / 2
    # the slider follows the pointer: image_a (red, before) left of it, image_b (blue, after) right of it
    editor.mouse.move(*editor.js(f"loom.toClient({x + w * 0.75}, {mid})"))
    editor.mouse.move(*editor.js(f"loom.toClient({x + w * 0.25}, {mid})"), steps=4)
    editor.frame()
    assert abs(editor.js(f"loom.nodeState({compare})")["compare"]["position"] - 0.25) < 0.03
    left = editor.js(PIXEL, editor.js(f"loom.toClient({x + w * 0.1}, {mid})"))
    right = editor.js(PIXEL, editor.js(f"loom.toClient({x + w * 0.5}, {mid})"))
    assert left[0] > 180 and left[2] < 80, left
    assert right[2] > 180 and right[0] < 80, right
    editor.mouse.move(*editor.js(f"loom.toClient({x + w * 0.8}, {mid})"), steps=4)
    editor.frame()
    assert editor.js(PIXEL, editor.js(f"loom.toClient({x + w * 0.5}, {mid})"))[0] > 180  # now red there
    editor.page.screenshot(path=str(screenshot_path("image-compare.png", tmp_path)))


def test_image_compare_queued_from_the_editor(editor):
    red, blue, compare = build(editor, COMPARE_GRAPH)
    run_and_wait(editor, compare, "s.compare && s.compare.loaded")


# ---------------------------------------------------------------------------------------- 5 previews

def test_previews_of_mask_and_animated_outputs(editor):
    # three different frames (identical ones would be merged by the encoders) batched by BatchImagesNode
    mask, mask_preview, r, g, b, batch, png, webp = build(editor, """
        const m = add('SolidMask', 40, 60); m.widget('width').value = 48; m.widget('height').value = 48;
        const p = add('MaskPreview', 400, 60); link(m, 0, p, 0);
        const colors = [0xFF0000, 0x00FF00, 0x0000FF].map((color, i) => { const e = add('EmptyImage', 40, 400 + 200 * i);
            e.widget('width').value = 32; e.widget('height').value = 32; e.widget('color').value = color; return e; });
        const batch = add('BatchImagesNode', 400, 500); colors.forEach((e, i) => link(e, 0, batch, i));
        const a = add('SaveAnimatedPNG', 700, 400); const w = add('SaveAnimatedWEBP', 1000, 400);
        link(batch, 0, a, 0); link(batch, 0, w, 0);""")
    assert editor.js(f"loom.node({mask_preview})")["size"][1] > 200  # room for the preview
    run_and_wait(editor, mask_preview, "s.images.length === 1 && s.images[0].loaded")
    state = editor.js(f"loom.nodeState({mask_preview})")
    assert state["images"][0]["width"] == 48
    editor.page.wait_for_function(f"loom.nodeState({png}).images.length === 1 && loom.nodeState({webp}).images.length === 1",
                                  timeout=30000)
    assert editor.js(f"loom.nodeState({png})")["images"][0]["src"].split("filename=")[1].split("&")[0].endswith(".png")
    has_decoder = editor.js("typeof ImageDecoder !== 'undefined'")
    if has_decoder:
        editor.page.wait_for_function(
            f"loom.nodeState({png}).animationFrames[0] === 3 && loom.nodeState({webp}).animationFrames[0] === 3",
            timeout=20000)
    frames_before = editor.js("loom.frames()")
    editor.page.wait_for_timeout(600)
    if has_decoder:
        assert editor.js("loom.frames()") > frames_before  # the animation keeps drawing


# ---------------------------------------------------------------------------------------- 6 search

@pytest.mark.parametrize("query, node_type, name, category", [
    ("get image size", "GetImageSize", "Get Image Size", "image"),
    ("latent add", "LatentAdd", None, None),
    ("concatenate", "StringConcatenate", None, None),
    ("composite masked", "ImageCompositeMasked", None, None),
    ("batch images", "BatchImagesNode", "Batch Images", "image/batch"),
    ("resize image/mask", "ResizeImageMaskNode", "Resize Image/Mask", "image/transform"),
])
def test_search_lists_the_new_nodes(editor, query, node_type, name, category):
    info = editor.js(f"async () => (await (await fetch('/object_info/{node_type}')).json())['{node_type}']")
    name = name or info["display_name"]
    category = category or info["category"]
    assert info["display_name"] == name and info["category"] == category
    editor.js("loom.clear()")
    point = editor.js("loom.emptyPoint()")
    editor.mouse.dblclick(*point)
    editor.page.wait_for_selector(".search-box input")
    editor.keyboard.type(query)
    item = editor.page.locator(f'.search-results li[data-type="{node_type}"]')
    assert item.count() == 1
    assert item.locator(".name").text_content() == name
    assert item.locator(".category").text_content() == category
    item.dispatch_event("pointerdown")
    editor.frame()
    nodes = editor.js("loom.nodes()")
    assert [n["type"] for n in nodes] == [node_type]
    editor.frame()  # drawn without errors (the fixture checks the page's errors)


def test_every_object_info_node_is_searchable(editor):
    missing = editor.js("""async () => {
        const info = await (await fetch('/object_info')).json();
        const defs = loom.defs;
        return Object.keys(info).filter((type) => !defs.get(type)
            || defs.get(type).displayName !== (info[type].display_name || type)
            || defs.get(type).category !== (info[type].category || '')); }""")
    assert missing == []
