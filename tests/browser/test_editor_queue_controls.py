"""Queue controls in real Chromium: the batch count beside Queue (N prompts, seeds advanced by each seed's
control_after_generate), "Queue (instant)" re-queueing while the queue empties, per-prompt progress in the
Queue panel, and a failed prompt's History entry that names node, type and message and shows the node."""
from __future__ import annotations

import json
import time

import pytest

from test_editor_run import build
from tests.browser.conftest import screenshot_path

pytestmark = pytest.mark.browser


def history(editor) -> dict:
    return json.loads(editor.page.request.get(editor.url + "/api/history?max_items=200").text())


def wait_history(editor, prompt_ids: list[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = history(editor)
        if all(p in entries for p in prompt_ids):
            return entries
        editor.page.wait_for_timeout(200)
    raise AssertionError(f"not all of {prompt_ids} finished within {timeout} s")


def test_batch_count_3_queues_3_prompts_with_3_seeds(editor):
    seeded, out = build(editor, """const a = add('TestSeeded', 50, 100); const c = add('TestOutput', 500, 100);
        link(a, 0, c, 0); a.widget('seed').value = 40;""")
    editor.choose_combo(seeded, "control_after_generate", "incr", "increment")
    assert editor.page.locator("#batch-count").is_visible() and editor.page.locator("#queue-mode").is_visible()
    editor.page.fill("#batch-count", "3")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("loom.editor.queueControls.lastBatch.length === 3 && !loom.editor.queueControls.busy")
    ids = [r["prompt_id"] for r in editor.js("loom.editor.queueControls.lastBatch")]
    assert len(set(ids)) == 3
    entries = wait_history(editor, ids)
    seeds = [entries[p]["prompt"][2][str(seeded)]["inputs"]["seed"] for p in ids]
    assert seeds == [40, 41, 42]
    assert editor.js(f"loom.node({seeded})")["widgets"]["seed"] == 43  # the widget shows the next one
    numbers = [entries[p]["prompt"][0] for p in ids]
    assert numbers == sorted(numbers)  # queued in order

    # randomize: three different seeds; Ctrl+Enter uses the batch count too
    editor.choose_combo(seeded, "control_after_generate", "rand", "randomize")
    editor.page.fill("#batch-count", "3")
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("Control+Enter")
    editor.page.wait_for_function("loom.editor.queueControls.lastBatch.length === 3 && !loom.editor.queueControls.busy"
                                  f" && !loom.editor.queueControls.lastBatch.some(r => {json.dumps(ids)}.includes(r.prompt_id))")
    random_ids = [r["prompt_id"] for r in editor.js("loom.editor.queueControls.lastBatch")]
    entries = wait_history(editor, random_ids)
    assert len({entries[p]["prompt"][2][str(seeded)]["inputs"]["seed"] for p in random_ids}) == 3

    # a refused prompt stops the batch: one POST /prompt (its error shown on the node), not three
    editor.js("""() => { window.__posts = 0; const fetch = window.fetch;
        window.fetch = (url, options) => { if (String(url).endsWith('/api/prompt')) window.__posts++; return fetch(url, options); }; }""")
    editor.js(f"() => {{ loom.graph.getNode({seeded}).widget('seed').value = -5; }}")
    assert editor.js("loom.queue()") is None
    assert editor.js("window.__posts") == 1 and editor.js("loom.editor.queueControls.lastBatch") == []
    assert editor.js(f"loom.nodeState({seeded})")["error"]
    editor.page.fill("#batch-count", "1")
    assert editor.js("loom.editor.queueControls.batchCount") == 1


def test_queue_instant_requeues_until_switched_off(editor):
    const, out = build(editor, """const a = add('TestSeeded', 50, 100); const c = add('TestOutput', 500, 100);
        link(a, 0, c, 0); a.widget('seed').value = 1; a.widget('control_after_generate').value = 'increment';""")
    editor.js("() => { window.__queued = []; loom.editor.execution.addEventListener('queued', (e) => window.__queued.push(e.detail.prompt_id)); }")
    editor.page.select_option("#queue-mode", "instant")
    editor.page.click("#btn-queue")
    # each run empties the queue, which queues the next (seed 1, 2, 3, ...)
    editor.page.wait_for_function(f"loom.node({const}).widgets.seed >= 5", timeout=30000)
    editor.page.select_option("#queue-mode", "queue")
    editor.page.wait_for_function("!loom.editor.queueControls.busy")
    editor.page.wait_for_timeout(1500)
    settled = editor.js(f"loom.node({const}).widgets.seed")
    editor.page.wait_for_timeout(1500)
    assert editor.js(f"loom.node({const}).widgets.seed") == settled  # stopped
    queued = editor.js("window.__queued")
    entries = wait_history(editor, queued)
    seeds = [entries[p]["prompt"][2][str(const)]["inputs"]["seed"] for p in queued]
    assert seeds == list(range(1, len(queued) + 1)) and len(seeds) >= 4  # one after another, none lost
    assert editor.js(f"loom.node({const}).widgets.seed") == len(queued) + 1
    assert not editor.js("loom.editor.queueControls.armed")


def test_queue_panel_shows_each_prompts_progress(editor, tmp_path):
    sleep_graph = """const a = add('TestConstInt', 50, 100); const b = add('TestSleep', 400, 100);
        const c = add('TestOutput', 800, 100); link(a, 0, b, 0); link(b, 0, c, 0);
        b.widget('seconds').value = 3; b.widget('steps').value = 30;"""
    const, sleep, out = build(editor, sleep_graph)
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("q")
    editor.page.fill("#batch-count", "2")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function("loom.editor.queueControls.lastBatch.length === 2")
    running, pending = [r["prompt_id"] for r in editor.js("loom.editor.queueControls.lastBatch")]
    row = editor.page.locator(f'.queue-item[data-prompt-id="{running}"] .queue-progress')
    row.wait_for()
    editor.page.wait_for_function(f"""() => {{ const p = loom.promptProgress('{running}');
        return p && p.node === '{sleep}' && p.max === 30 && p.value >= 3; }}""", timeout=20000)
    # the row follows the events: the running node, its step, the share done
    editor.page.wait_for_function(f"""() => {{ const el = document.querySelector('.queue-item[data-prompt-id="{running}"] .queue-progress');
        return el && /\\d\\/3 nodes · TestSleep #{sleep} step \\d+\\/30/.test(el.textContent) && Number(el.dataset.fraction) > 0.3; }}""",
                                  timeout=20000)
    editor.page.screenshot(path=str(screenshot_path("queue-panel.png", tmp_path)))
    state = editor.js(f"loom.promptProgress('{running}')")
    assert state["total"] == 3 and state["type"] == "TestSleep" and 0 < state["fraction"] < 1
    pending_row = editor.page.locator(f'.queue-item.pending[data-prompt-id="{pending}"] .queue-progress')
    assert pending_row.inner_text().startswith("waiting")
    # the second prompt runs after the first (nothing cached: its own progress from zero)
    editor.page.wait_for_function(f"loom.promptProgress('{running}')?.finished", timeout=20000)
    assert editor.js(f"loom.promptProgress('{running}')")["done"] == 3
    editor.page.wait_for_function(f"loom.promptProgress('{pending}')?.finished", timeout=20000)
    editor.page.fill("#batch-count", "1")


def test_failed_history_entry_shows_and_highlights_the_node(editor):
    const, boom, out = build(editor, """const a = add('TestConstInt', 50, 100); const b = add('TestRaise', 400, 100);
        const c = add('TestOutput', 800, 100); link(a, 0, b, 0); link(b, 0, c, 0);
        b.title = 'Exploder'; b.widget('message').value = 'the node went boom';""")
    failed = editor.js("loom.queue()")["prompt_id"]
    editor.page.wait_for_function(f"loom.nodeState({boom}).error !== null", timeout=20000)
    # another workflow in front: the click brings the failed run's workflow back and frames the node
    build(editor, "const a = add('EmptyImage', 3000, 3000);")
    editor.js("() => { loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [-2900, -2900]; }")
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("q")
    editor.page.locator('.sidebar button[data-tab="history"]').click()
    failure = editor.page.locator(f'.history-item[data-prompt-id="{failed}"] .history-failure')
    failure.wait_for()
    assert failure.inner_text() == f'node {boom} (TestRaise "Exploder"): the node went boom'
    assert "clickable" in failure.get_attribute("class")
    failure.click()
    editor.frame()
    nodes = editor.js("loom.nodes()")
    assert sorted(n["type"] for n in nodes) == ["TestConstInt", "TestOutput", "TestRaise"]
    node = editor.js(f"loom.node({boom})")
    assert node["selected"] and [n["id"] for n in nodes if n["selected"]] == [boom]
    assert "the node went boom" in editor.js(f"loom.nodeState({boom})")["error"]
    # framed: the node's centre is inside the canvas
    cx, cy = editor.point("toClient", node["pos"][0] + node["size"][0] / 2, node["pos"][1] + node["size"][1] / 2)
    box = editor.page.locator("#graph").bounding_box()
    assert box["x"] < cx < box["x"] + box["width"] and box["y"] < cy < box["y"] + box["height"]

    # in the graph in front already: the same node is highlighted without reloading anything
    editor.js(f"() => {{ delete loom.graph.getNode({boom}).runtime.error; loom.canvas.clearSelection(); }}")
    editor.js(f"() => loom.graph.getNode({const}).title = 'kept'")
    failure.click()
    assert editor.js(f"loom.node({const})")["title"] == "kept"
    assert editor.js(f"loom.node({boom})")["selected"] and editor.js(f"loom.nodeState({boom})")["error"]


def test_the_precision_choice_is_saved_with_the_workflow_and_sent_with_its_prompts(editor):
    seeded, out = build(editor, """const a = add('TestSeeded', 50, 100); const c = add('TestOutput', 500, 100);
        link(a, 0, c, 0);""")
    choice = editor.page.locator("#run-precision")
    assert choice.is_visible() and choice.input_value() == "default"
    assert "loom" not in editor.workflow()["extra"]  # the server's default: the key is left out

    choice.select_option("fast")
    assert editor.workflow()["extra"]["loom"] == {"fast": True}
    result = editor.js("loom.queue()")
    entry = wait_history(editor, [result["prompt_id"]])[result["prompt_id"]]
    assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["extra"]["loom"] == {"fast": True}

    choice.select_option("exact")
    assert editor.workflow()["extra"]["loom"] == {"fast": False}
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("Control+z")  # the choice is an edit like any other
    editor.page.wait_for_function("document.getElementById('run-precision').value === 'fast'")
    assert editor.workflow()["extra"]["loom"] == {"fast": True}

    # other keys under extra.loom are kept; a loaded workflow shows its own setting
    workflow = editor.workflow()
    workflow["extra"]["loom"] = {"fast": False, "note": "kept"}
    editor.js("(w) => loom.load(w)", workflow)
    assert choice.input_value() == "exact"
    choice.select_option("default")
    assert editor.workflow()["extra"]["loom"] == {"note": "kept"}
