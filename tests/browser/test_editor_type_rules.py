"""The editor's side of the rules the server applies too, read from the same tables as
tests/test_type_rules.py: which links may be drawn (tests/fixtures/type_compat.json) and where each widget's
value sits in widgets_values (tests/fixtures/widget_layout.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TYPE_CASES = json.loads((FIXTURES / "type_compat.json").read_text())["cases"]
WIDGET_LAYOUT_TABLE = json.loads((FIXTURES / "widget_layout.json").read_text())
WIDGET_LAYOUTS = WIDGET_LAYOUT_TABLE["nodes"]
DYNAMIC_LAYOUTS = WIDGET_LAYOUT_TABLE["dynamic_combos"]["cases"]


def test_editor_link_rule_follows_the_shared_table(editor):
    got = editor.js("""async (cases) => { const m = await import('/graph/types.js');
        return cases.map(([a, b]) => m.isValidConnection(a, b)); }""", [[a, b] for a, b, _ in TYPE_CASES])
    assert [[a, b, ok] for (a, b, _), ok in zip(TYPE_CASES, got)] == TYPE_CASES


def test_editor_refuses_to_link_a_string_into_a_combo_input(editor):
    got = editor.js("""() => {
        const text = loom.editor.addNode('TestStringConcat', [0, 0]);
        const combo = loom.editor.addNode('TestControlCombo', [400, 0]);
        const seeded = loom.editor.addNode('TestSeeded', [400, 300]);
        const int = loom.editor.addNode('TestConstInt', [0, 300]);
        const widget = (node, name) => node.widgets.find((w) => w.name === name);
        loom.graph.convertWidgetToInput(combo, widget(combo, 'choice'));
        loom.graph.convertWidgetToInput(seeded, widget(seeded, 'seed'));
        const slot = (node, name) => node.inputs.findIndex((i) => i.name === name);
        return {choice: slot(combo, 'choice'), seed: slot(seeded, 'seed'),
                stringToCombo: loom.graph.canConnect(text, 0, combo, slot(combo, 'choice')),
                intToInt: loom.graph.canConnect(int, 0, seeded, slot(seeded, 'seed'))}; }""")
    assert got["choice"] >= 0 and got["seed"] >= 0, got  # widget inputs have sockets
    assert got["stringToCombo"] is False and got["intToInt"] is True


@pytest.mark.parametrize("node_type", sorted(WIDGET_LAYOUTS))
def test_editor_lays_out_widgets_as_the_shared_table(editor, node_type):
    got = editor.js("""(type) => {
        loom.clear();
        const node = loom.editor.addNode(type, [0, 0]);
        const saved = loom.serialize().nodes.find((n) => n.id === node.id);
        return {names: node.widgets.map((w) => w.name),
                saved: (saved.widgets_values || []).length}; }""", node_type)
    assert got["names"] == WIDGET_LAYOUTS[node_type]
    assert got["saved"] == len(WIDGET_LAYOUTS[node_type])


@pytest.mark.parametrize("case", DYNAMIC_LAYOUTS,
                         ids=[f"{c['node']}-{'-'.join(v for _, v in c['choose']) or 'fresh'}" for c in DYNAMIC_LAYOUTS])
def test_editor_lays_out_dynamic_combo_widgets_as_the_shared_table(editor, case):
    got = editor.js("""({node: type, choose}) => {
        loom.clear();
        const node = loom.editor.addNode(type, [0, 0]);
        for (const [name, value] of choose) loom.editor.setWidgetValue(node, node.widget(name), value);
        const saved = loom.serialize().nodes.find((n) => n.id === node.id);
        loom.load(loom.serialize());
        return {names: node.widgets.map((w) => w.name), saved: saved.widgets_values.length,
                reloaded: loom.graph.getNode(node.id).widgets.map((w) => w.name)}; }""", case)
    assert got == {"names": case["widgets"], "saved": len(case["widgets"]), "reloaded": case["widgets"]}
