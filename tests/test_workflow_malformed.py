"""Malformed and unusual UI workflows: repaired with a warning, or refused with a clear WorkflowError."""
from __future__ import annotations

import pytest

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    from fixtures_workflow import core_registry, inp, load_fixture, node, out, workflow
except ModuleNotFoundError:
    from tests.fixtures_workflow import core_registry, inp, load_fixture, node, out, workflow

from loom.server.workflow import WorkflowError, ui_to_api


def _seeded_consumer(link_id):
    return node(2, "TestSeeded", inputs=[inp("seed", "INT", None, widget="seed"),
                                         inp("steps", "INT", link_id, widget="steps")], widgets=[1, "fixed", 2])


def test_link_with_wrong_target_slot_is_followed_from_the_input(registry):
    # like bad_link.json: link 3 says target slot 5, but the input holding it is at index 1
    ui = workflow([node(1, "TestConstInt", outputs=[out("value", "INT", [3])], widgets=[9]), _seeded_consumer(3)],
                  [[3, 1, 0, 2, 5, "INT"]])
    assert ui_to_api(ui, registry).prompt["2"]["inputs"] == {"seed": 1, "steps": ["1", 0]}


def test_dangling_links_between_missing_nodes_are_dropped(registry):
    ui = workflow([node(1, "TestConstInt", outputs=[out("value", "INT", [3, 99])], widgets=[9]), _seeded_consumer(3)],
                  [[3, 1, 0, 2, 1, "INT"], [99, 404, 0, 405, 0, "INT"]])
    result = ui_to_api(ui, registry)
    assert set(result.prompt) == {"1", "2"} and result.prompt["2"]["inputs"]["steps"] == ["1", 0]


def test_input_fed_from_a_missing_node_is_left_unconnected_with_a_warning(registry):
    ui = workflow([_seeded_consumer(7)], [[7, 404, 0, 2, 1, "INT"]])
    result = ui_to_api(ui, registry)
    assert result.prompt["2"]["inputs"] == {"seed": 1, "steps": 2}
    assert any("node 404, which does not exist" in w for w in result.warnings)


def test_input_naming_a_link_that_is_not_listed(registry):
    result = ui_to_api(workflow([_seeded_consumer(55)], []), registry)
    assert result.prompt["2"]["inputs"] == {"seed": 1, "steps": 2}
    assert any("link 55" in w for w in result.warnings)


def test_conflicting_origins_keep_the_link_the_input_names(registry):
    ui = workflow([node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[1]),
                   node(3, "TestConstInt", outputs=[out("value", "INT", [2])], widgets=[3]),
                   _seeded_consumer(2)],
                  [[1, 1, 0, 2, 1, "INT"], [2, 3, 0, 2, 1, "INT"]], id="conflicting-origins")
    assert ui_to_api(ui, registry).prompt["2"]["inputs"]["steps"] == ["3", 0]


def test_duplicate_and_stale_links(registry):
    ui = workflow([node(1, "TestConstInt", outputs=[out("value", "INT", [1, 1, 8, 12])], widgets=[1]),
                   node(3, "TestConstInt", outputs=[out("value", "INT", [])], widgets=[3]),
                   _seeded_consumer(1)],
                  [[1, 1, 0, 2, 1, "INT"], [1, 1, 0, 2, 1, "INT"], [1, 3, 0, 2, 1, "INT"]])
    result = ui_to_api(ui, registry)
    assert result.prompt["2"]["inputs"]["steps"] == ["1", 0]
    assert [w for w in result.warnings if "link id 1" in w] == [
        "workflow: link id 1 appears twice with different ends; kept the first"]


def test_garbage_entries_are_skipped_with_warnings(registry):
    ui = workflow([node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[1]),
                   {"type": "TestChoice"}, "not a node",
                   node(2, "TestIntToString", inputs=["bad", inp("value", "INT", 1)])],
                  ["x", [1, 1, 0, 2, 1, "INT"], [5, 6], {"id": 9}, [7, None, 0, 2, 0, "INT"]])
    result = ui_to_api(ui, registry)
    assert result.prompt["2"]["inputs"] == {"value": ["1", 0]}
    assert sum("malformed link" in w for w in result.warnings) == 4
    assert any("without an id" in w for w in result.warnings)
    assert any("not an object" in w for w in result.warnings)


def test_every_unknown_type_is_named_with_its_node_id(registry):
    ui = workflow([node(1, "UNKNOWN NODE"), node(2, "TestConstInt", widgets=[1]),
                   node(3, "NonExistentCustomNode_XYZ_12345", widgets=[1, 2]),
                   node(4, "TestChoice ", widgets=["alpha"]),
                   node(5, "GoneButMuted", mode=2), node(6, "GoneButBypassed", mode=4),
                   node(7, None)], [])
    with pytest.raises(WorkflowError) as caught:
        ui_to_api(ui, registry)
    problems = {p["node_id"]: p for p in caught.value.problems}
    assert set(problems) == {"1", "3", "4", "7"}
    assert problems["1"] == {"node_id": "1", "class_type": "UNKNOWN NODE",
                             "message": "unknown node type 'UNKNOWN NODE' (is its node pack installed?)"}
    assert "did you mean 'TestChoice'" in problems["4"]["message"]
    assert problems["7"]["message"] == "node has no type"
    message = str(caught.value)
    assert "UNKNOWN NODE" in message and "NonExistentCustomNode_XYZ_12345" in message
    assert isinstance(caught.value, ValueError)


def test_bypassed_unknown_node_still_passes_its_input_through(registry):
    ui = workflow([node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[1]),
                   node(2, "SomeCustomFilter", mode=4, inputs=[inp("x", "INT", 1)], outputs=[out("x", "INT", [2])]),
                   node(3, "TestIntToString", inputs=[inp("value", "INT", 2)])],
                  [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]])
    assert ui_to_api(ui, registry).prompt["3"]["inputs"] == {"value": ["1", 0]}


def test_reroute_loop_is_an_error_not_a_crash(registry):
    ui = workflow([node(1, "Reroute", inputs=[inp("", "*", 2)], outputs=[out("", "*", [1, 3])]),
                   node(2, "Reroute", inputs=[inp("", "*", 1)], outputs=[out("", "*", [2])]),
                   node(3, "TestOutput", inputs=[inp("value", "*", 3)])],
                  [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 1, 0, 3, 0, "*"]])
    with pytest.raises(WorkflowError, match="loop"):
        ui_to_api(ui, registry)


def test_long_reroute_chain_needs_no_recursion(registry):
    count = 3000
    nodes = [node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[4])]
    links = [[1, 1, 0, 2, 0, "INT"]]
    for index in range(2, count + 2):
        nodes.append(node(index, "Reroute", inputs=[inp("", "*", index - 1)], outputs=[out("", "INT", [index])]))
        links.append([index, index, 0, index + 1, 0, "INT"])
    nodes.append(node(count + 2, "TestIntToString", inputs=[inp("value", "INT", count + 1)]))
    assert ui_to_api(workflow(nodes, links), registry).prompt[str(count + 2)]["inputs"] == {"value": ["1", 0]}


def test_empty_workflow_gives_an_empty_prompt(registry):
    assert ui_to_api({"nodes": [], "links": []}, registry).prompt == {}


def test_subgraph_instance_without_its_definition_is_explained(registry):
    ui = workflow([node(4, "0d6c9e6a-29b8-4f57-bb4e-3b0a1f8a2c11")], [])
    with pytest.raises(WorkflowError, match="definition is missing from definitions.subgraphs"):
        ui_to_api(ui, registry)


def test_randomly_damaged_workflows_never_crash(registry):
    """Seeded random damage to the fixtures: every outcome is a prompt or a WorkflowError."""
    import copy
    import random

    from loom.nodes.kernel.schema import NodeRegistry
    merged = NodeRegistry()
    for _, node_class in [*core_registry().items(), *registry.items()]:
        if node_class.schema().name not in merged:
            merged.add(node_class)
    documents = [load_fixture(name) for name in ("default_txt2img.json", "subgraphs_nested.json",
                                                 "group_node_legacy.json")]
    junk = [None, 0, -1, 1.5, "x", "-10", [], {}, [1, 2], {"a": 1}, True, "4", 10**20, float("nan")]

    def damage(value, rng):
        if isinstance(value, (dict, list)) and value:
            key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
            roll = rng.random()
            if roll < 0.3:
                value[key] = rng.choice(junk)
            elif roll < 0.4:
                del value[key]
            else:
                damage(value[key], rng)

    rng = random.Random(1234)
    converted = 0
    for _ in range(800):
        document = copy.deepcopy(rng.choice(documents))
        for _ in range(rng.randint(1, 4)):
            damage(document, rng)
        try:
            ui_to_api(document, merged)
            converted += 1
        except WorkflowError as error:
            assert "malformed workflow (" not in str(error)  # the last-resort net never has to catch
    assert converted > 100  # most damage is repaired, not refused
