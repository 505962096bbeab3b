"""Subgraphs and legacy group nodes flattened into colon-path ids."""
from __future__ import annotations

import pytest

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    from fixtures_workflow import core_registry, inp, load_fixture, node, out, workflow
except ModuleNotFoundError:
    from tests.fixtures_workflow import core_registry, inp, load_fixture, node, out, workflow

from loom.server.workflow import WorkflowError, ui_to_api


def _entry(class_type: str, inputs: dict, title: str | None = None) -> dict:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title or class_type}}


def _instance(prefix: str, label: str, separator: str = ": ") -> dict:
    return {
        f"{prefix}:1": _entry("TestAdd", {"a": ["1", 0], "b": 5}),
        f"{prefix}:2": _entry("TestIntToString", {"value": [f"{prefix}:1", 0]}),
        f"{prefix}:3": _entry("TestStringConcat", {"a": [f"{prefix}:2", 0], "b": label, "separator": separator}),
        f"{prefix}:4:1": _entry("TestStringConcat", {"a": [f"{prefix}:3", 0], "b": "!", "separator": ""}),
    }


def test_nested_subgraphs_with_promoted_widgets_per_instance(registry):
    result = ui_to_api(load_fixture("subgraphs_nested.json"), registry)
    expected = {"1": _entry("TestConstInt", {"value": 100})}
    expected |= _instance("10", "first") | _instance("11", "second") | _instance("12", "third", " / ")
    expected |= {"20": _entry("TestOutput", {"value": ["10:4:1", 0]}),
                 "21": _entry("TestOutput", {"value": ["11:4:1", 0]}),
                 "22": _entry("TestOutput", {"value": ["12:4:1", 0]}),
                 # instance 13 is bypassed: its INT input is handed to the "*" consumer; 14 is muted
                 "23": _entry("TestOutput", {"value": ["1", 0]})}
    assert result.prompt == expected


def test_duplicate_subgraph_links_are_harmless_and_bad_inner_links_ignored(registry):
    result = ui_to_api(load_fixture("subgraphs_nested.json"), registry)
    assert not any("link id 3" in w for w in result.warnings)  # identical duplicate: silently merged
    assert "10:79" not in result.prompt


def _subgraph_workflow(inner_nodes, inner_links, inputs, outputs, instance_inputs, instance_outputs,
                       widgets=None, properties=None, root_nodes=(), root_links=()):
    definition = {"id": "def-1", "version": 1, "name": "Inner", "state": {}, "config": {},
                  "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]},
                  "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]},
                  "inputs": inputs, "outputs": outputs, "widgets": [], "nodes": inner_nodes, "links": inner_links,
                  "groups": [], "extra": {}}
    instance = node(5, "def-1", instance_inputs, instance_outputs, widgets, properties=properties or {})
    return workflow([instance, *root_nodes], list(root_links), definitions={"subgraphs": [definition]})


def _link(link_id, origin, origin_slot, target, target_slot, kind):
    return {"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
            "target_slot": target_slot, "type": kind}


def test_promoted_seed_with_legacy_control_slot_and_unset_promotion(registry):
    ui = _subgraph_workflow(
        [node(1, "TestSeeded", [inp("seed", "INT", 1, widget="seed"), inp("steps", "INT", 2, widget="steps")],
              [out("value", "INT", [3])], [1, "fixed", 2])],
        [_link(1, -10, 0, 1, 0, "INT"), _link(2, -10, 1, 1, 1, "INT"), _link(3, 1, 0, -20, 0, "INT")],
        [{"name": "seed", "type": "INT", "linkIds": [1]}, {"name": "steps", "type": "INT", "linkIds": [2]}],
        [{"name": "value", "type": "INT", "linkIds": [3]}],
        [inp("seed", "INT", None, widget="seed"), inp("steps", "INT", None, widget="steps")],
        [out("value", "INT", [])],
        widgets=[99, "randomize", 7])
    assert ui_to_api(ui, registry).prompt["5:1"]["inputs"] == {"seed": 99, "steps": 7}
    ui["nodes"][0].pop("widgets_values")  # no saved promotion: the inner widgets keep their values
    assert ui_to_api(ui, registry).prompt["5:1"]["inputs"] == {"seed": 1, "steps": 2}


def test_proxy_widget_with_no_host_value_keeps_inner_value(registry):
    ui = _subgraph_workflow(
        [node(3, "TestSeeded", [], [out("value", "INT", [1])], [1, "increment", 20])],
        [_link(1, 3, 0, -20, 0, "INT")], [], [{"name": "value", "type": "INT", "linkIds": [1]}],
        [], [out("value", "INT", [2])], widgets=[], properties={"proxyWidgets": [["3", "seed"]]},
        root_nodes=[node(6, "TestIntToString", [inp("value", "INT", 2)])], root_links=[[2, 5, 0, 6, 0, "INT"]])
    prompt = ui_to_api(ui, registry).prompt
    assert prompt["5:3"]["inputs"] == {"seed": 1, "steps": 20}
    assert prompt["6"]["inputs"] == {"value": ["5:3", 0]}


def test_subgraph_input_passed_straight_to_output(registry):
    ui = _subgraph_workflow(
        [], [_link(1, -10, 0, -20, 0, "INT")],
        [{"name": "x", "type": "INT", "linkIds": [1]}], [{"name": "x", "type": "INT", "linkIds": [1]}],
        [inp("x", "INT", 1)], [out("x", "INT", [2])],
        root_nodes=[node(1, "TestConstInt", [], [out("value", "INT", [1])], [3]),
                    node(2, "TestIntToString", [inp("value", "INT", 2)])],
        root_links=[[1, 1, 0, 5, 0, "INT"], [2, 5, 0, 2, 0, "INT"]])
    assert ui_to_api(ui, registry).prompt["2"]["inputs"] == {"value": ["1", 0]}


def test_unknown_type_inside_a_subgraph_is_named_with_its_path(registry):
    ui = _subgraph_workflow([node(7, "MISSING_NODE_TYPE_IN_SUBGRAPH", [], [], [1])], [], [], [], [], [])
    with pytest.raises(WorkflowError) as caught:
        ui_to_api(ui, registry)
    assert caught.value.problems == [{"node_id": "5:7", "class_type": "MISSING_NODE_TYPE_IN_SUBGRAPH",
                                      "message": "unknown node type 'MISSING_NODE_TYPE_IN_SUBGRAPH' "
                                                 "(is its node pack installed?)"}]


def test_subgraph_that_contains_itself_is_an_error(registry):
    ui = _subgraph_workflow([node(1, "def-1", [], [])], [], [], [], [], [])
    with pytest.raises(WorkflowError, match="contains an instance of itself"):
        ui_to_api(ui, registry)


# ---- legacy group nodes ------------------------------------------------------------------------

def test_legacy_group_node_is_expanded_with_outer_index_ids():
    prompt = ui_to_api(load_fixture("group_node_legacy.json"), core_registry()).prompt
    assert prompt == {
        "10:0": _entry("CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "Load Checkpoint"),
        "10:1": _entry("CLIPTextEncode", {"text": "a glass bottle", "clip": ["10:0", 1]}, "CLIP Text Encode (Prompt)"),
        "10:2": _entry("CLIPTextEncode", {"text": "text, watermark", "clip": ["10:0", 1]}, "CLIP Text Encode (Prompt)"),
        "10:3": _entry("KSampler", {"seed": 42424242, "steps": 17, "cfg": 6.5, "sampler_name": "dpmpp_2m",
                                    "scheduler": "karras", "denoise": 0.87, "model": ["10:0", 0],
                                    "positive": ["10:1", 0], "negative": ["10:2", 0], "latent_image": ["20", 0]}),
        "10:4": _entry("VAEDecode", {"samples": ["10:3", 0], "vae": ["10:0", 2]}, "VAE Decode"),
        "20": _entry("EmptyLatentImage", {"width": 768, "height": 512, "batch_size": 3}, "Empty Latent Image"),
        "21": _entry("SaveImage", {"filename_prefix": "grouped", "images": ["10:4", 0]}, "Save Image"),
    }


def test_legacy_group_node_without_definition_is_a_clear_error():
    ui = load_fixture("group_node_legacy.json")
    ui["extra"]["groupNodes"] = {}
    ui["nodes"][0]["type"] = "workflow/ksampler_group"
    with pytest.raises(WorkflowError) as caught:
        ui_to_api(ui, core_registry())
    assert caught.value.problems[0]["node_id"] == "10"
    assert "legacy group node 'ksampler_group'" in caught.value.problems[0]["message"]


def test_instances_without_promotion_marks_get_their_own_text():
    # shaped like the editor's multi-instance fixture: instance inputs list only the sockets, each instance
    # saves one value for the promoted "text" input
    inner = [node(10, "CLIPTextEncode", [inp("clip", "CLIP", 11), inp("text", "STRING", 10, widget="text")],
                  [out("CONDITIONING", "CONDITIONING", None)], [""]),
             node(11, "KSampler", [inp("model", "MODEL", 12)], [out("LATENT", "LATENT", None)],
                  [0, "randomize", 20, 8, "euler", "simple", 1])]
    links = [_link(10, -10, 0, 10, 1, "STRING"), _link(11, -10, 1, 10, 0, "CLIP"), _link(12, -10, 2, 11, 0, "MODEL")]
    slots = [{"name": "text", "type": "STRING", "linkIds": [10]}, {"name": "clip", "type": "CLIP", "linkIds": [11]},
             {"name": "model", "type": "MODEL", "linkIds": [12]}]
    sockets = [inp("clip", "CLIP"), inp("model", "MODEL")]
    ui = _subgraph_workflow(inner, links, slots, [], sockets, [], widgets=["Alpha\n"],
                            root_nodes=[node(6, "def-1", sockets, [], ["Beta\n"])])
    prompt = ui_to_api(ui, core_registry()).prompt
    assert prompt["5:10"]["inputs"] == {"text": "Alpha\n"}
    assert prompt["6:10"]["inputs"] == {"text": "Beta\n"}
    assert prompt["6:11"]["inputs"] == {"seed": 0, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                        "scheduler": "simple", "denoise": 1}


def test_widget_promoted_through_two_levels(registry):
    def definition(def_id, nodes, links):
        return {"id": def_id, "version": 1, "name": def_id, "state": {}, "config": {},
                "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]}, "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]},
                "inputs": [{"name": "text", "type": "STRING", "linkIds": [1]}], "outputs": [], "widgets": [],
                "nodes": nodes, "links": links, "groups": [], "extra": {}}
    inner = definition("inner", [node(1, "TestStringConcat", [inp("a", "STRING", 1, widget="a")], [], ["", "?", ""])],
                       [_link(1, -10, 0, 1, 0, "STRING")])
    outer = definition("outer", [node(2, "inner", [inp("text", "STRING", 1, widget="text")], [], ["middle"])],
                       [_link(1, -10, 0, 2, 0, "STRING")])
    ui = workflow([node(9, "outer", [inp("text", "STRING", None, widget="text")], [], ["hello"]),
                   node(10, "outer", [inp("text", "STRING", None, widget="text")], [])],
                  [], definitions={"subgraphs": [outer, inner]})
    prompt = ui_to_api(ui, registry).prompt
    assert prompt["9:2:1"]["inputs"] == {"a": "hello", "b": "?", "separator": ""}
    assert prompt["10:2:1"]["inputs"] == {"a": "middle", "b": "?", "separator": ""}  # nothing saved on 10


def test_flattened_subgraphs_run_headless(registry):
    from loom.server.executor import Executor
    prompt = ui_to_api(load_fixture("subgraphs_nested.json"), registry).prompt
    result = Executor(registry).execute(prompt, "subgraphs")
    assert result.status == "success", result.error
    assert {node_id: ui["text"] for node_id, ui in result.outputs.items()} == {
        "20": ["105: first!"], "21": ["105: second!"], "22": ["105 / third!"], "23": ["100"]}


def test_older_group_node_separator_and_mismatched_values():
    ui = load_fixture("group_node_legacy.json")
    ui["nodes"][0]["type"] = "workflow/ksampler_group"
    assert ui_to_api(ui, core_registry()).prompt["10:3"]["inputs"]["seed"] == 42424242
    ui["nodes"][0]["widgets_values"] = ui["nodes"][0]["widgets_values"][:-1]
    with pytest.raises(WorkflowError, match="saves 9 widget values but its inner nodes hold 10"):
        ui_to_api(ui, core_registry())
