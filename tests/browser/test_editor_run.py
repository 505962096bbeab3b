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
