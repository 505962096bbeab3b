"""Subgraphs in real Chromium: open an instance, edit inside (nested too), leave with Escape; the
definition is written back in ComfyUI's schema, links across its border kept, and the workflow runs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "workflows" / "subgraphs_nested.json"


def test_open_edit_leave_and_run_a_subgraph(editor):
    original = json.loads(FIXTURE.read_text())
    editor.js("(w) => loom.load(w)", original)
    editor.js("""() => { loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [300, 300];
                 const n = loom.graph.getNode(10); n.pos = [400, 100]; loom.graph.bringToFront(n); }""")
    editor.frame()
    editor.mouse.dblclick(*editor.point("bodyPoint", 10))
    editor.frame()
    assert editor.js("loom.subgraphPath()") == [original["definitions"]["subgraphs"][0]["name"]]
    assert editor.page.locator("#run-precision").is_disabled()  # a setting of the whole workflow, not of the inside
    inner = {n["id"]: n for n in editor.js("loom.nodes()")}
    assert inner[1]["type"] == "TestAdd" and inner[4]["type"].endswith("00000000000b")

    # edit a widget inside, then open the nested subgraph and edit there too
    editor.js("() => { loom.editor.setWidgetValue(loom.graph.getNode(1), loom.graph.getNode(1).widget('b'), 42); }")
    editor.js("() => loom.editor.openSubgraph(loom.graph.getNode(4))")
    assert len(editor.js("loom.subgraphPath()")) == 2
    editor.js("() => { const n = loom.graph.getNode(1); loom.editor.setWidgetValue(n, n.widget('b'), '?'); }")
    saved_inside = editor.workflow()  # saving from inside writes the whole workflow
    assert sorted(n["id"] for n in saved_inside["nodes"]) == [n["id"] for n in original["nodes"]]

    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("Escape")
    editor.keyboard.press("Escape")
    editor.frame()
    assert editor.js("loom.subgraphPath()") == []
    assert editor.page.locator("#run-precision").is_enabled()
    saved = editor.workflow()
    assert saved["definitions"] == saved_inside["definitions"]

    expected = copy.deepcopy(original["definitions"])
    outer = expected["subgraphs"][0]
    next(n for n in outer["nodes"] if n["id"] == 1)["widgets_values"][1] = 42
    next(n for n in outer["definitions"]["subgraphs"][0]["nodes"] if n["id"] == 1)["widgets_values"][1] = "?"
    got = saved["definitions"]["subgraphs"][0]
    # border links kept; the fixture's broken links (a repeated id, one to a missing node) are dropped on load
    ids = {n["id"] for n in outer["nodes"]} | {-10, -20}
    sound = list({l["id"]: l for l in reversed(outer["links"]) if l["origin_id"] in ids and l["target_id"] in ids}.values())
    assert sorted(map(json.dumps, got["links"])) == sorted(map(json.dumps, sound)), got["links"]
    had_values = {n["id"]: n["widgets_values"] for n in outer["nodes"] if "widgets_values" in n}
    assert {n["id"]: n["widgets_values"] for n in got["nodes"] if n["id"] in had_values} == had_values
    nested = got["definitions"]["subgraphs"][0]
    assert nested["links"] == outer["definitions"]["subgraphs"][0]["links"]
    assert nested["nodes"][0]["widgets_values"] == ["", "?", ""]
    assert got["inputs"] == outer["inputs"] and got["outputs"] == outer["outputs"]

    # the edited workflow converts and runs on the server
    prompt = editor.page.evaluate("async () => (await loom.editor.api.convert(loom.serialize())).prompt")
    assert any(v["class_type"] == "TestAdd" and v["inputs"].get("b") == 42 for v in prompt.values())
    assert editor.js("loom.queue()")["prompt_id"]
