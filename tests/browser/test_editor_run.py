"""Running from the editor: validation and execution errors on the node at fault, progress, cache marks,
and control_after_generate applied after queueing."""
from __future__ import annotations

import pytest

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


def test_validation_error_highlights_the_node_and_input(editor):
    image, save = build(editor, "add('EmptyImage', 100, 100); add('SaveImage', 500, 100);")  # images not linked
    assert editor.js("loom.queue()") is None
    result = editor.js("loom.lastQueueResult()")
    assert str(save) in result["node_errors"]
    state = editor.js(f"loom.nodeState({save})")
    assert state["error"] and state["errorInputs"] == ["images"]
    editor.frame()
    node = editor.js(f"loom.node({save})")
    left_edge = editor.js(f"loom.toClient({node['pos'][0] - 3}, {node['pos'][1] + 40})")
    red, green, blue = editor.js(PIXEL, left_edge)
    assert red > 200 and green < 100 and blue < 100  # the red outline
    assert editor.page.locator(".toast.error").count() >= 1

    # fixing the input at fault clears the mark on the next queue
    editor.connect(image, "IMAGE", save, "images")
    assert editor.js("loom.queue()")["prompt_id"]
    assert editor.js(f"loom.nodeState({save})")["error"] is None


def test_out_of_range_widget_value_is_marked_on_its_widget(editor):
    workflow = {
        "last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "EmptyImage", "pos": [100, 100], "size": [260, 130], "flags": {}, "order": 0, "mode": 0,
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "properties": {},
             "widgets_values": [0, 64, 1, 0]},
            {"id": 2, "type": "PreviewImage", "pos": [500, 100], "size": [300, 300], "flags": {}, "order": 1,
             "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "properties": {},
             "widgets_values": []},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }
    editor.js("(w) => loom.load(w)", workflow)
    assert editor.js("loom.queue()") is None
    state = editor.js("loom.nodeState(1)")
    assert "width" in state["errorInputs"] and "smaller than min" in state["error"].lower()


def test_execution_error_is_shown_on_the_failing_node(editor):
    const, boom, out = build(editor, """const a = add('TestConstInt', 50, 100); const b = add('TestRaise', 400, 100);
        const c = add('TestOutput', 800, 100); link(a, 0, b, 0); link(b, 0, c, 0);
        b.widget('message').value = 'the node went boom';""")
    assert editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"loom.nodeState({boom}).error !== null", timeout=20000)
    assert "the node went boom" in editor.js(f"loom.nodeState({boom})")["error"]
    assert editor.js(f"loom.nodeState({const})")["error"] is None


def test_progress_running_highlight_and_cached_marks(editor):
    const, sleep, out = build(editor, """const a = add('TestConstInt', 50, 100); const b = add('TestSleep', 400, 100);
        const c = add('TestOutput', 800, 100); link(a, 0, b, 0); link(b, 0, c, 0);
        b.widget('seconds').value = 1.5; b.widget('steps').value = 6;""")
    assert editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"loom.nodeState({sleep}).running && loom.nodeState({sleep}).progress", timeout=20000)
    progress = editor.js(f"loom.nodeState({sleep}).progress")
    assert progress["max"] == 6 and 0 < progress["value"] <= 6
    editor.page.wait_for_function(f"!loom.nodeState({sleep}).running && loom.editor.execution.runningNode === null",
                                  timeout=20000)
    assert editor.js("loom.queue()")["prompt_id"]  # nothing changed: every node comes from the cache
    editor.page.wait_for_function(f"loom.nodeState({out}).cached || loom.nodeState({sleep}).cached", timeout=20000)
    assert editor.js(f"loom.nodeState({sleep})")["cached"]


def test_seed_control_after_generate_applies_after_queueing(editor):
    seeded, out = build(editor, """const a = add('TestSeeded', 50, 100); const c = add('TestOutput', 500, 100);
        link(a, 0, c, 0); a.widget('seed').value = 5;""")
    editor.choose_combo(seeded, "control_after_generate", "incr", "increment")
    result = editor.js("loom.queue()")
    assert editor.js(f"loom.node({seeded})")["widgets"]["seed"] == 6  # the widget shows the next seed
    history = editor.page.request.get(f"{editor.url}/api/history/{result['prompt_id']}")
    for _ in range(50):
        entry = history.json().get(result["prompt_id"])
        if entry:
            break
        editor.page.wait_for_timeout(100)
        history = editor.page.request.get(f"{editor.url}/api/history/{result['prompt_id']}")
    assert entry["prompt"][2][str(seeded)]["inputs"]["seed"] == 5  # the seed that ran

    editor.choose_combo(seeded, "control_after_generate", "rand", "randomize")
    editor.js("loom.queue()")
    assert editor.js(f"loom.node({seeded})")["widgets"]["seed"] != 6
    editor.choose_combo(seeded, "control_after_generate", "fix", "fixed")
    seed = editor.js(f"loom.node({seeded})")["widgets"]["seed"]
    editor.js("loom.queue()")
    assert editor.js(f"loom.node({seeded})")["widgets"]["seed"] == seed


def test_binary_preview_frames_show_on_the_running_node(editor):
    from io import BytesIO

    from PIL import Image

    (sleep,) = build(editor, "add('TestSleep', 100, 100);")
    buffer = BytesIO()
    Image.new("RGB", (32, 32), (0, 200, 0)).save(buffer, format="PNG")
    png = list(buffer.getvalue())
    editor.js("""([id, png]) => { const node = loom.graph.getNode(id);
        loom.editor.api.receive(JSON.stringify({type: 'executing', data: {node: String(id), prompt_id: null}}));
        const header = new Uint8Array([0, 0, 0, 1, 0, 0, 0, 2]);   // type 1 (preview), format 2 (PNG)
        const frame = new Uint8Array(header.length + png.length); frame.set(header); frame.set(png, header.length);
        loom.editor.api.receive(frame.buffer); }""", [sleep, png])
    editor.page.wait_for_function(f"loom.graph.getNode({sleep}).runtime.preview", timeout=5000)
    editor.frame()
    node = editor.js(f"loom.node({sleep})")
    assert editor.js(f"loom.nodeState({sleep})")["running"]
    centre = editor.js(f"loom.toClient({node['pos'][0] + node['size'][0] / 2}, {node['pos'][1] + node['size'][1] - 60})")
    red, green, blue = editor.js(PIXEL, centre)
    assert green > 150 and red < 60  # the preview image is drawn in the node

    # a type 4 frame names its node in JSON metadata
    meta = list(b'{"node_id": "%d", "image_type": "image/png"}' % sleep)
    editor.js("""([meta, png]) => { const frame = new Uint8Array(8 + meta.length + png.length);
        new DataView(frame.buffer).setUint32(0, 4); new DataView(frame.buffer).setUint32(4, meta.length);
        frame.set(meta, 8); frame.set(png, 8 + meta.length);
        window.__previewBefore = loom.editor.execution.runningNode.runtime.preview;
        loom.editor.api.receive(frame.buffer); }""", [meta, png])
    editor.page.wait_for_function(f"loom.graph.getNode({sleep}).runtime.preview !== window.__previewBefore", timeout=5000)
    editor.js("() => loom.editor.api.receive(JSON.stringify({type: 'executing', data: {node: null, prompt_id: null}}))")
    assert not editor.js(f"loom.nodeState({sleep})")["running"]
    assert editor.js(f"loom.graph.getNode({sleep}).runtime.preview") is None


def test_queue_button_and_upload_button(editor, loom_server):
    (loader,) = build(editor, "add('LoadImage', 100, 100);")
    with editor.page.expect_file_chooser() as chooser:
        editor.click(editor.point("widgetPoint", loader, "upload"))
    from pathlib import Path
    chooser.value.set_files(str(Path(__file__).resolve().parents[2] / "workflows" / "example.png"))
    editor.page.wait_for_function(f"loom.node({loader}).widgets.image === 'example.png'", timeout=10000)
    editor.page.wait_for_function(f"loom.nodeState({loader}).inputImage && loom.nodeState({loader}).inputImage.loaded")
    assert (loom_server.base_dir / "input" / "example.png").is_file()

    editor.page.click("#btn-queue")  # LoadImage alone has no output node: refused, and said so
    editor.page.wait_for_selector(".toast.error")
    assert "Prompt refused" in editor.page.locator(".toast.error").last.inner_text()


def test_stop_button_interrupts_the_running_prompt(editor):
    const, sleep, out = build(editor, """const a = add('TestConstInt', 50, 100); const b = add('TestSleep', 400, 100);
        const c = add('TestOutput', 800, 100); link(a, 0, b, 0); link(b, 0, c, 0);
        b.widget('seconds').value = 20; b.widget('steps').value = 200;""")
    assert editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"loom.nodeState({sleep}).running", timeout=20000)
    editor.page.click("#btn-interrupt")
    editor.page.wait_for_function(f"!loom.nodeState({sleep}).running", timeout=20000)
    editor.page.wait_for_selector(".toast >> text=Interrupted")


def test_slot_menu_disconnects(editor):
    image, save = build(editor, "const a = add('EmptyImage', 100, 100); const b = add('SaveImage', 500, 100); link(a, 0, b, 0);")
    editor.mouse.click(*editor.point("slotPoint", save, "input", "images"), button="right")
    editor.page.click('.context-menu .menu-item[data-label="Disconnect"]')
    editor.frame()
    assert editor.js("loom.links()") == []
