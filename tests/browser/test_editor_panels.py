"""The side panel in real Chromium: queue (cancel one, clear), history (load a run's workflow), gallery
with the full-size view, the shortcuts table, settings kept on the server, and the minimap."""
from __future__ import annotations

import json

import pytest

from test_editor_run import build

pytestmark = pytest.mark.browser


def test_queue_history_gallery_and_shortcuts(editor):
    image, save = build(editor, "const i = add('EmptyImage', 100, 100); const s = add('SaveImage', 500, 100); link(i, 0, s, 0);")
    editor.js(f"() => {{ loom.graph.getNode({image}).widget('color').value = 12345; }}")
    first = editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"loom.nodeState({save}).images.length > 0", timeout=20000)
    # the output image is drawn from a bitmap decoded and scaled once, not from the full image each frame
    editor.page.wait_for_function("loom.renderStats().bitmapsMade > 0", timeout=10000)
    editor.js("() => { loom.canvas.viewport.panBy(5, 0); loom.canvas.setDirty(); }")
    editor.frame()
    assert editor.js("loom.renderStats().bitmapHits") > 0

    sleep_graph = """const a = add('TestConstInt', 50, 100); const b = add('TestSleep', 400, 100);
        const c = add('TestOutput', 800, 100); link(a, 0, b, 0); link(b, 0, c, 0);
        b.widget('seconds').value = 4; b.widget('steps').value = 40;"""
    build(editor, sleep_graph)
    running = editor.js("loom.queue()")["prompt_id"]
    editor.js("() => { loom.graph.nodes[0].widgets[0].value = 77; }")
    pending = editor.js("loom.queue()")["prompt_id"]

    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("q")
    panel = editor.page.locator(".sidebar")
    editor.page.wait_for_selector(f'.queue-item.pending[data-prompt-id="{pending}"]')
    editor.page.wait_for_selector(f'.queue-item.running[data-prompt-id="{running}"]')
    editor.page.click(f'.queue-item[data-prompt-id="{pending}"] .queue-cancel')
    editor.page.wait_for_selector(f'.queue-item[data-prompt-id="{pending}"]', state="detached")
    editor.page.click(f'.queue-item[data-prompt-id="{running}"] .queue-cancel')  # stops the running prompt
    editor.page.wait_for_selector(f'.queue-item[data-prompt-id="{running}"]', state="detached", timeout=20000)

    # history: the first run, with its image; a click loads the workflow that made it
    panel.locator('button[data-tab="history"]').click()
    entry = editor.page.locator(f'.history-item[data-prompt-id="{first}"]')
    entry.wait_for()
    assert "/view?" in entry.locator("img.thumb").first.get_attribute("src")
    entry.click()
    editor.frame()
    assert sorted(n["type"] for n in editor.js("loom.nodes()")) == ["EmptyImage", "SaveImage"]
    assert next(n for n in editor.js("loom.nodes()") if n["type"] == "EmptyImage")["widgets"]["color"] == 12345

    # gallery: the full-size view, closed with Escape
    panel.locator('button[data-tab="gallery"]').click()
    editor.page.locator(".gallery img.thumb").first.click()
    editor.page.wait_for_function("document.querySelector('.lightbox-image')?.naturalWidth > 0")
    editor.keyboard.press("Escape")
    assert editor.page.locator(".lightbox").count() == 0

    panel.locator('button[data-tab="shortcuts"]').click()
    rows = editor.page.locator(".shortcuts tr").all_inner_texts()
    assert any(r.startswith("Ctrl+Z") and "Undo" in r for r in rows)
    assert any("Ctrl+Shift+V" in r for r in rows) and any("Ctrl+G" in r for r in rows)


def test_settings_are_kept_on_the_server_and_the_minimap_moves_the_view(editor):
    assert editor.page.locator("canvas.minimap").is_visible()
    editor.js("loom.newWorkflow()")
    editor.page.wait_for_function("loom.nodes().length === 7")
    box = editor.page.locator("canvas.minimap").bounding_box()
    before = editor.js("loom.viewport()")["offset"]
    editor.click((box["x"] + 20, box["y"] + 20))
    assert editor.js("loom.viewport()")["offset"] != before

    editor.keyboard.press("Alt+Shift+M")
    editor.page.wait_for_function("document.querySelector('canvas.minimap').hidden")
    editor.page.wait_for_function("""fetch('/api/settings').then(r => r.json())
        .then(s => s['Loom.Minimap.Visible'] === false)""")
    editor.reload()
    assert editor.page.locator("canvas.minimap").is_hidden()
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("q")
    editor.page.locator('.sidebar button[data-tab="settings"]').click()
    editor.page.check('input[data-setting="Loom.Minimap.Visible"]')
    editor.page.wait_for_function("!document.querySelector('canvas.minimap').hidden")
    settings = json.loads(editor.page.request.get(editor.url + "/api/settings").text())
    assert settings["Loom.Minimap.Visible"] is True


def test_history_shows_the_failing_node_and_its_message(editor):
    """A failed prompt's history entry names the node (id, type and title) and the exception's message."""
    const, boom, out = build(editor, """const a = add('TestConstInt', 50, 100); const b = add('TestRaise', 400, 100);
        const c = add('TestOutput', 800, 100); link(a, 0, b, 0); link(b, 0, c, 0);
        b.title = 'Exploder'; b.widget('message').value = 'the node went boom';""")
    failed = editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"loom.nodeState({boom}).error !== null", timeout=20000)
    build(editor, """const a = add('TestConstInt', 50, 100); const c = add('TestOutput', 500, 100); link(a, 0, c, 0);
        a.widget('value').value = 31337;""")
    succeeded = editor.js("loom.queue()")["prompt_id"]

    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("q")
    editor.page.locator('.sidebar button[data-tab="history"]').click()
    entry = editor.page.locator(f'.history-item[data-prompt-id="{failed}"]')
    entry.wait_for()
    assert entry.locator(".history-label").inner_text() == f"{failed[:8]} error"
    assert entry.locator(".history-failure").inner_text() == \
        f'node {boom} (TestRaise "Exploder"): the node went boom'
    done = editor.page.locator(f'.history-item[data-prompt-id="{succeeded}"]')
    done.wait_for(timeout=20000)
    assert done.locator(".history-label").inner_text() == f"{succeeded[:8]} success"
    assert done.locator(".history-failure").count() == 0


def test_history_failure_text_for_each_kind_of_entry(editor):
    """The one-line reason from ComfyUI's history shape: node errors, prompt-level errors, interrupts."""
    entries = {
        "node": {"status": {"status_str": "error", "messages": [
            ["execution_start", {"prompt_id": "p"}],
            ["execution_error", {"node_id": "7", "node_type": "KSampler", "exception_message": "out of memory\n",
                                 "exception_type": "torch.OutOfMemoryError"}]]},
                 "prompt": [0, "p", {"7": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "KSampler"}}},
                            {}, []]},
        "prompt": {"status": {"status_str": "error", "messages": [
            ["execution_error", {"node_id": None, "node_type": None, "exception_type": "prompt_invalid",
                                 "exception_message": "node 3 (LoadImage) input 'image': gone.png is missing"}]]}},
        "interrupted": {"status": {"status_str": "error", "messages": [
            ["execution_interrupted", {"node_id": "4", "node_type": "TestSleep", "executed": []}]]}},
        "success": {"status": {"status_str": "success", "completed": True, "messages": [
            ["execution_success", {"prompt_id": "p"}]]}},
        "old": {"status": None},
    }
    texts = editor.js("""async (entries) => {
        const m = await import('/ui/sidebar.js');
        return Object.fromEntries(Object.entries(entries).map(([k, e]) => [k, m.failureText(e)]));
    }""", entries)
    assert texts == {"node": "node 7 (KSampler): out of memory",
                     "prompt": "node 3 (LoadImage) input 'image': gone.png is missing",
                     "interrupted": "node 4 (TestSleep): interrupted", "success": None, "old": None}
