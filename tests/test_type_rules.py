"""The server's side of the rules the editor applies too, read from one table each
(tests/fixtures/type_compat.json, tests/fixtures/widget_layout.json); tests/browser/test_editor_type_rules.py
checks the editor against the same tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from loom.nodes.kernel.schema import default_registry, types_compatible

FIXTURES = Path(__file__).parent / "fixtures"
TYPE_CASES = json.loads((FIXTURES / "type_compat.json").read_text())["cases"]
WIDGET_LAYOUT_TABLE = json.loads((FIXTURES / "widget_layout.json").read_text())
WIDGET_LAYOUTS = WIDGET_LAYOUT_TABLE["nodes"]
DYNAMIC_LAYOUTS = WIDGET_LAYOUT_TABLE["dynamic_combos"]["cases"]
NODEPACK = Path(__file__).parent / "nodepack"
_SLOT_NAMES = {"control": "control_after_generate", "filter": "control_filter_list", "upload": "upload"}


@pytest.mark.parametrize(("output_type", "input_type", "allowed"), TYPE_CASES)
def test_server_type_rule_follows_the_shared_table(output_type, input_type, allowed):
    assert types_compatible(output_type, input_type) is allowed


def test_a_string_linked_into_a_combo_input_fails_validation_as_comfyui_does():
    from loom.server.validation import validate_prompt

    registry = default_registry([NODEPACK])
    prompt = {"1": {"class_type": "TestStringConcat", "inputs": {"a": "x", "b": "y"}},
              "2": {"class_type": "TestControlCombo", "inputs": {"choice": ["1", 0], "amount": 1}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result = validate_prompt(prompt, registry)
    assert not result.ok
    errors = result.node_errors["2"]["errors"]
    assert [e["type"] for e in errors] == ["return_type_mismatch"]
    assert "choice" in errors[0]["details"] and "STRING" in errors[0]["details"]


@pytest.mark.parametrize("node_type", sorted(WIDGET_LAYOUTS))
def test_server_reads_saved_widgets_in_the_editor_layout(node_type):
    from loom.server.workflow.widgets import widget_slots

    registry = default_registry([NODEPACK])
    slots = widget_slots(registry.get(node_type).schema())
    names = [_SLOT_NAMES.get(slot.kind, slot.spec.name) for slot in slots]
    assert names == WIDGET_LAYOUTS[node_type]


@pytest.mark.parametrize("case", DYNAMIC_LAYOUTS,
                         ids=[f"{c['node']}-{'-'.join(v for _, v in c['choose']) or 'fresh'}" for c in DYNAMIC_LAYOUTS])
def test_server_reads_dynamic_combo_widgets_in_the_editor_layout(case):
    """Saved values laid out as the table says map back to those names; the other options' inputs are inactive."""
    from loom.server.workflow.widgets import assign_widget_values, dynamic_combos, widget_default

    node_class = default_registry([NODEPACK]).get(case["node"])
    schema = node_class.schema()
    combos = dynamic_combos(node_class.object_info())
    chosen = {name: widget_default(schema.input(name)) for name in combos} | dict(case["choose"])
    saved = [chosen.get(name, f"value of {name}") for name in case["widgets"]]
    assigned = assign_widget_values(schema, saved, None, combos)
    assert assigned.values == dict(zip(case["widgets"], saved))
    assert assigned.defaulted == []
    option_inputs = {name for combo in combos.values() for names in combo.options.values() for name in names}
    assert assigned.inactive == option_inputs - set(case["widgets"])
