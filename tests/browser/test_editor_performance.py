"""Big graphs in real Chromium: a 3,000-node workflow loads, pans and takes typing without stalling.

Bounds are loose (a shared 2-core machine): they catch a regression by an order of magnitude, while
``bench/canvas.py`` reports the real figures.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

_spec = importlib.util.spec_from_file_location("bench_canvas", Path(__file__).resolve().parents[2] / "bench" / "canvas.py")
bench_canvas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_canvas)


def test_three_thousand_nodes_load_pan_and_type(editor):
    workflow = bench_canvas.generate_workflow(3000)
    load_ms = editor.js(bench_canvas.LOAD_SCRIPT, workflow)
    assert editor.js("loom.graph.nodes.length") == 3000
    assert load_ms < 3000
    result = editor.js(bench_canvas.PAN_SCRIPT, {"zoom": "fit", "frames": 20})
    assert result["drawn"] > 2000  # nearly all of it in view (the pan moves some out)
    assert sorted(result["times"])[len(result["times"]) // 2] < 50

    # typing into a prompt's text box does not touch the graph until it is committed
    editor.js("() => { loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [-300, 200]; }")
    editor.frame()
    editor.click(editor.point("widgetPoint", 2, "text"))
    editor.page.wait_for_selector(".overlay-textarea")
    started = time.perf_counter()
    editor.keyboard.type(" with a hat", delay=0)
    per_key_ms = (time.perf_counter() - started) * 1000 / len(" with a hat")
    assert per_key_ms < 100
    editor.click(editor.js("loom.emptyPoint()"))
    assert editor.js("loom.node(2)")["widgets"]["text"].endswith(" with a hat")
