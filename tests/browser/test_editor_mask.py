"""The mask editor in real Chromium: opened from a LoadImage node (its menu and the button on its preview),
brush / eraser / undo / fill / clear / invert / zoom, Save through ``/upload/mask`` as ComfyUI's editor does
(the alpha of the PNG in ``input/clipspace/`` is the mask, the colours the source's), the node showing the
masked image, and the inpaint example workflow running with LoadImage's MASK output."""
from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import screenshot_path
from tools import demo_scenes

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SOURCE = "mask-source.png"


def put_source(server) -> Path:
    target = server.base_dir / "input" / SOURCE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "workflows" / "demo-scene.png", target)
    return target


def open_inpaint(editor, server) -> dict[str, int]:
    with urllib.request.urlopen(f"{server.url}/api/workflows/templates/inpaint") as response:
        workflow = json.loads(response.read())
    editor.js("(w) => loom.workspace.open(w, { name: 'Inpainting', fit: true })", workflow)
    editor.frame()
    ids = {n["type"]: n["id"] for n in editor.js("loom.nodes()")}
    editor.js(f"""() => {{ const n = loom.graph.getNode({ids['LoadImage']});
        const w = n.widget('image'); if (!w.options.values.includes('{SOURCE}')) w.options.values.push('{SOURCE}');
        loom.editor.setWidgetValue(n, w, '{SOURCE}'); }}""")
    editor.page.wait_for_function(f"loom.nodeState({ids['LoadImage']}).inputImage?.loaded")
    editor.frame()
    return ids


def finished_entry(editor, prompt_id: str, timeout: float) -> dict:
    """The history entry of prompt ``prompt_id``, once it has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = json.loads(editor.page.request.get(f"{editor.url}/api/history/{prompt_id}").text()).get(prompt_id)
        if entry:
            return entry
        editor.page.wait_for_timeout(500)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")


def mask_state(editor) -> dict:
    return editor.js("""() => { const m = loom.maskEditor(); if (!m) return null;
        const a = m.alpha(); let masked = 0; for (const v of a) if (v > 127) masked++;
        return { masked, tool: m.tool, brush: { ...m.brush }, scale: m.view.scale, width: m.width, height: m.height }; }""")


def alpha_at(editor, x: int, y: int) -> int:
    return editor.js(f"() => loom.maskEditor().alpha()[{y} * loom.maskEditor().width + {x}]")


def to_client(editor, x: float, y: float) -> tuple[float, float]:
    cx, cy = editor.js(f"() => loom.maskEditor().clientPoint({x}, {y})")
    return float(cx), float(cy)


def stroke(editor, points: list[tuple[float, float]]) -> None:
    editor.mouse.move(*to_client(editor, *points[0]))
    editor.mouse.down()
    for point in points[1:]:
        editor.mouse.move(*to_client(editor, *point), steps=6)
    editor.mouse.up()


def set_slider(editor, name: str, value: float) -> None:
    editor.page.eval_on_selector(f".mask-{name}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def test_mask_painted_in_the_editor_reaches_input_and_the_inpaint_workflow_runs_with_it(editor, loom_server, tmp_path):
    source = put_source(loom_server)
    ids = open_inpaint(editor, loom_server)
    loader = ids["LoadImage"]

    # the node's menu opens the editor over the image, at the image's own resolution
    editor.mouse.click(*editor.point("titlePoint", loader), button="right")
    editor.page.click('.context-menu .menu-item[data-label="Open in MaskEditor"]')
    editor.page.wait_for_selector(".mask-editor .mask-stage")
    editor.page.wait_for_function("loom.maskEditor() !== null")
    state = mask_state(editor)
    assert (state["width"], state["height"]) == (128, 128) and state["masked"] == 0

    # a hard, opaque brush 48 px wide: two strokes down the right half
    set_slider(editor, "hardness", 1)
    set_slider(editor, "opacity", 1)
    set_slider(editor, "size", 48)
    assert mask_state(editor)["brush"] == {"size": 48, "hardness": 1, "opacity": 1}
    stroke(editor, [(88, 44), (88, 88)])
    stroke(editor, [(112, 44), (112, 88)])
    assert alpha_at(editor, 96, 64) == 255 and alpha_at(editor, 20, 64) == 0 and alpha_at(editor, 96, 4) == 0

    # a stray stroke on the left, taken back with Ctrl+Z; the eraser, undone with the button
    stroke(editor, [(20, 20), (30, 30)])
    assert alpha_at(editor, 25, 25) == 255
    editor.keyboard.press("Control+z")
    assert alpha_at(editor, 25, 25) == 0 and alpha_at(editor, 96, 64) == 255
    editor.page.click('.mask-tool[data-tool="eraser"]')
    stroke(editor, [(100, 64), (100, 66)])
    assert alpha_at(editor, 100, 64) == 0
    editor.page.click(".mask-undo")
    assert alpha_at(editor, 100, 64) == 255
    editor.keyboard.press("b")
    assert mask_state(editor)["tool"] == "brush"

    # invert, fill and clear, each undone
    masked = mask_state(editor)["masked"]
    editor.page.click(".mask-invert")
    assert mask_state(editor)["masked"] == 128 * 128 - masked
    editor.page.click(".mask-undo")
    editor.page.click(".mask-fill")
    assert mask_state(editor)["masked"] == 128 * 128
    editor.page.click(".mask-undo")
    editor.page.click(".mask-clear")
    assert mask_state(editor)["masked"] == 0
    editor.page.click(".mask-undo")
    assert mask_state(editor)["masked"] == masked
    editor.page.click(".mask-redo")
    assert mask_state(editor)["masked"] == 0
    editor.keyboard.press("Control+z")
    assert mask_state(editor)["masked"] == masked

    # the wheel zooms around the pointer: the image point under it stays put
    before = mask_state(editor)["scale"]
    under = to_client(editor, 64, 64)
    editor.mouse.move(*under)
    editor.mouse.wheel(0, -300)
    assert mask_state(editor)["scale"] > before
    assert np.allclose(to_client(editor, 64, 64), under, atol=1.5)
    editor.page.click(".mask-fit")
    assert abs(mask_state(editor)["scale"] - before) < 1e-6
    editor.page.screenshot(path=str(screenshot_path("mask-editor.png", tmp_path)))

    # Save: POST /upload/mask with original_ref; the node selects input/clipspace/clipspace-mask-*.png
    editor.js("""() => { window.__uploads = []; const fetch = window.fetch;
        window.fetch = (url, options) => { if (String(url).includes('/upload/')) window.__uploads.push({ url: String(url),
            fields: Object.fromEntries([...options.body.entries()].map(([k, v]) => [k, typeof v === 'string' ? v
                : { name: v.name, type: v.type }])) }); return fetch(url, options); }; }""")
    editor.page.click(".mask-save")
    editor.page.wait_for_function("window.__uploads.length > 0")
    [upload] = editor.js("window.__uploads")
    assert upload["url"].endswith("/api/upload/mask")
    fields = upload["fields"]
    assert json.loads(fields["original_ref"]) == {"filename": SOURCE, "subfolder": "", "type": "input"}
    assert (fields["type"], fields["subfolder"]) == ("input", "clipspace")
    assert fields["image"]["name"].startswith("clipspace-mask-") and fields["image"]["type"] == "image/png"
    editor.page.wait_for_selector(".mask-editor", state="detached")
    value = editor.js(f"loom.node({loader}).widgets.image")
    assert value.startswith("clipspace/clipspace-mask-") and value.endswith(".png [input]"), value
    saved = loom_server.base_dir / "input" / value[: -len(" [input]")]
    with Image.open(saved) as picture, Image.open(source) as original:
        assert picture.mode == "RGBA" and picture.size == (128, 128)
        alpha = np.asarray(picture.getchannel("A"))
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(original.convert("RGB")))
    assert editor.js("loom.maskEditor()") is None
    assert alpha[64, 96] == 0 and alpha[64, 20] == 255 and alpha[4, 96] == 255 and alpha[25, 25] == 255
    assert ((alpha > 0) & (alpha < 255)).mean() < 0.03  # a hard brush: masked or not, but for anti-aliased edges
    assert 0.25 < (alpha == 0).mean() < 0.5
    # the node shows the masked image
    editor.page.wait_for_function(f"loom.nodeState({loader}).inputImage?.loaded")
    assert "clipspace-mask-" in editor.js(f"loom.nodeState({loader})")["inputImage"]["src"]

    # reopening (the button on the preview) starts from the saved mask
    editor.frame()
    rect = editor.js(f"() => loom.maskButtonRect({loader})")
    editor.click(editor.point("toClient", rect[0] + rect[2] / 2, rect[1] + rect[3] / 2))
    editor.page.wait_for_function("loom.maskEditor() !== null && loom.maskEditor().alpha().some(v => v > 0)")
    assert mask_state(editor)["masked"] == int((alpha < 128).sum())
    editor.keyboard.press("Escape")
    editor.page.wait_for_selector(".mask-editor", state="detached")
    assert editor.js(f"loom.node({loader}).widgets.image") == value

    # LoadImage's MASK output, end to end: shown through MaskToImage, and the inpaint run
    mask_view = editor.js(f"""() => {{ const m = loom.editor.addNode('MaskToImage', [0, 900]);
        const p = loom.editor.addNode('PreviewImage', [300, 900]);
        loom.graph.connect(loom.graph.getNode({loader}), 1, m, 0); loom.graph.connect(m, 0, p, 0); return p.id; }}""")
    save = ids["SaveImage"]
    editor.js(f"() => loom.graph.getNode({ids['KSampler']}).widget('control_after_generate').value = 'fixed'")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("loom.lastQueueResult()?.prompt_id")
    entry = finished_entry(editor, editor.js("loom.lastQueueResult().prompt_id"), timeout=180)
    assert entry["status"]["status_str"] == "success", entry["status"]
    prompt = entry["prompt"][2]
    assert prompt[str(loader)]["inputs"]["image"] == value
    editor.page.wait_for_function(f"loom.nodeState({save}).images[0]?.loaded && loom.nodeState({mask_view}).images[0]?.loaded")
    preview = entry["outputs"][str(mask_view)]["images"][0]
    with Image.open(loom_server.base_dir / preview["type"] / preview["subfolder"] / preview["filename"]) as shown:
        mask = np.asarray(shown.convert("L"))
    assert np.abs(mask.astype(int) - (255 - alpha.astype(int))).max() <= 1  # MASK = 1 - alpha
    result = entry["outputs"][str(save)]["images"][0]
    with Image.open(loom_server.base_dir / "output" / result["subfolder"] / result["filename"]) as picture:
        colours = demo_scenes.colour_map(picture.convert("RGB"))
    # the prompt asks for a red circle beside the triangle: red appears where the mask is, nowhere else, and the
    # green triangle outside it stays (the demo model draws the shape the mask leaves room for)
    names = list(demo_scenes.COLORS)
    red, green, masked = colours == names.index("red"), colours == names.index("green"), alpha < 128
    assert red.sum() > 0.015 * red.size and (red & ~masked).sum() < 0.1 * red.sum()
    assert green.sum() > 0.015 * green.size and np.nonzero(green)[1].mean() < np.nonzero(red)[1].mean()


def test_mask_editor_on_a_shipped_example_keeps_its_mask_and_saves(editor, loom_server):
    """The inpaint example's own picture (served from the examples, not in input/) opens with the mask its alpha
    holds; Save copies it into input/ first, then uploads the mask onto it."""
    with urllib.request.urlopen(f"{loom_server.url}/api/workflows/templates/inpaint") as response:
        workflow = json.loads(response.read())
    editor.js("(w) => loom.workspace.open(w, { name: 'Inpainting', fit: true })", workflow)
    loader = next(n["id"] for n in editor.js("loom.nodes()") if n["type"] == "LoadImage")
    example = REPO / "workflows" / "demo-scene-inpaint.png"
    assert editor.js(f"loom.node({loader}).widgets.image") == example.name
    assert not (loom_server.base_dir / "input" / example.name).exists()
    editor.page.wait_for_function(f"loom.nodeState({loader}).inputImage?.loaded")
    editor.frame()
    editor.js(f"() => {{ loom.editor.openMaskEditor(loom.graph.getNode({loader})); }}")  # resolves on close
    editor.page.wait_for_function("loom.maskEditor() !== null")
    with Image.open(example) as picture:
        alpha = np.asarray(picture.getchannel("A"))
    mask = np.asarray(editor.js("() => Array.from(loom.maskEditor().alpha())"), dtype=np.uint8).reshape(alpha.shape)
    assert np.array_equal(mask, 255 - alpha) and (mask > 0).any()
    editor.page.click(".mask-save")
    editor.page.wait_for_selector(".mask-editor", state="detached")
    value = editor.js(f"loom.node({loader}).widgets.image")
    assert value.startswith("clipspace/clipspace-mask-"), value
    copied = loom_server.base_dir / "input" / example.name
    assert copied.read_bytes() and Image.open(copied).size == (128, 128)
    with Image.open(loom_server.base_dir / "input" / value[: -len(" [input]")]) as saved, Image.open(example) as original:
        assert np.array_equal(np.asarray(saved.getchannel("A")), alpha)
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(original.convert("RGB")))
