"""UI → API conversion: widget values by name, links, frontend-only nodes, mute and bypass."""
from __future__ import annotations

import copy

import pytest

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    from fixtures_workflow import STANDIN_SCHEMAS, core_registry, inp, load_fixture, node, out, workflow
except ModuleNotFoundError:
    from tests.fixtures_workflow import STANDIN_SCHEMAS, core_registry, inp, load_fixture, node, out, workflow

from loom.server.workflow import WorkflowError, is_api_format, is_ui_format, to_api, ui_to_api


@pytest.fixture(scope="module")
def core():
    return core_registry()


def test_default_txt2img_converts_exactly(core):
    result = ui_to_api(load_fixture("default_txt2img.json"), core)
    assert result.prompt == load_fixture("default_txt2img.api.json")
    assert result.warnings == []


def test_result_unpacks_as_prompt_and_warnings(core):
    prompt, warnings = ui_to_api(load_fixture("default_txt2img.json"), core)
    assert set(prompt) == {"3", "4", "5", "6", "7", "8", "9"} and warnings == []


def test_legacy_true_control_value_is_skipped(core):
    ui = load_fixture("default_txt2img.json")
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    sampler["widgets_values"] = [42, True, 25, 7.5, "dpmpp_2m", "karras", 0.6]
    inputs = ui_to_api(ui, core).prompt["3"]["inputs"]
    assert {k: inputs[k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")} == \
        {"seed": 42, "steps": 25, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 0.6}


def test_test_pack_seed_control_and_optional_widget(registry):
    ui = workflow([
        node(1, "TestSeeded", outputs=[out("value", "INT", [1])], widgets=[7, "increment", 3]),
        node(2, "TestStringConcat", outputs=[out("text", "STRING", [2])], widgets=["a", "b", " + "]),
        node(3, "TestChoice", widgets=["gamma"]),
        node(4, "TestIntToString", inputs=[inp("value", "INT", 1)], outputs=[out("STRING", "STRING", [])]),
        node(5, "TestOutput", inputs=[inp("value", "*", 2)]),
    ], [[1, 1, 0, 4, 0, "INT"], [2, 2, 0, 5, 0, "STRING"]])
    assert ui_to_api(ui, registry).prompt == {
        "1": {"inputs": {"seed": 7, "steps": 3}, "class_type": "TestSeeded", "_meta": {"title": "TestSeeded"}},
        "2": {"inputs": {"a": "a", "b": "b", "separator": " + "}, "class_type": "TestStringConcat",
              "_meta": {"title": "TestStringConcat"}},
        "3": {"inputs": {"choice": "gamma"}, "class_type": "TestChoice", "_meta": {"title": "TestChoice"}},
        "4": {"inputs": {"value": ["1", 0]}, "class_type": "TestIntToString", "_meta": {"title": "TestIntToString"}},
        "5": {"inputs": {"value": ["2", 0]}, "class_type": "TestOutput", "_meta": {"title": "TestOutput"}},
    }


def test_missing_widget_values_take_defaults_with_a_warning(registry):
    ui = workflow([node(1, "TestStringConcat", widgets=["a", "b"]), node(2, "TestSeeded", widgets=[5])], [])
    result = ui_to_api(ui, registry)
    assert result.prompt["1"]["inputs"] == {"a": "a", "b": "b", "separator": ""}
    assert result.prompt["2"]["inputs"] == {"seed": 5, "steps": 4}
    assert any("separator" in w for w in result.warnings) and any("steps" in w for w in result.warnings)


def test_truncated_ksampler_values_keep_what_is_there(core):
    ui = workflow([node(3, "KSampler", widgets=[9, "fixed", 30])], [])
    inputs = ui_to_api(ui, core).prompt["3"]["inputs"]
    assert inputs == {"seed": 9, "steps": 30, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
                      "denoise": 1.0}


def test_load_image_upload_entry_is_dropped(core):
    ui = workflow([
        node(1, "LoadImage", outputs=[out("IMAGE", "IMAGE", [1]), out("MASK", "MASK", None)],
             widgets=["example.png", "image"]),
        node(2, "PreviewImage", inputs=[inp("images", "IMAGE", 1)]),
        node(3, "LoadImageMask", widgets=["mask.png", "red", "image"]),
        node(4, "LoadImage", widgets=["no_upload_entry.png"]),
    ], [[1, 1, 0, 2, 0, "IMAGE"]])
    prompt = ui_to_api(ui, core).prompt
    assert prompt["1"] == {"inputs": {"image": "example.png"}, "class_type": "LoadImage",
                           "_meta": {"title": "Load Image"}}
    assert prompt["2"]["inputs"] == {"images": ["1", 0]}
    assert prompt["3"]["inputs"] == {"image": "mask.png", "channel": "red"}
    assert prompt["4"]["inputs"] == {"image": "no_upload_entry.png"}


def test_combo_control_with_and_without_filter_box(core):
    ui = workflow([node(1, "ComboControlStandIn", widgets=["b", "randomize", "", 3]),
                   node(2, "ComboControlStandIn", widgets=["c", "fixed", 4])], [])
    prompt = ui_to_api(ui, core).prompt
    assert prompt["1"]["inputs"] == {"choice": "b", "count": 3}
    assert prompt["2"]["inputs"] == {"choice": "c", "count": 4}


def test_widget_values_as_dict_and_named(core, registry):
    ui = workflow([
        node(1, "TestStringConcat", widgets={"a": "x", "b": "y", "separator": "-", "unknown": 1}),
        node(2, "TestSeeded", widgets=[1, "fixed", 2], widgets_values_named={"seed": 10, "steps": 20,
                                                                              "control_after_generate": "fixed"}),
    ], [])
    prompt = ui_to_api(ui, registry).prompt
    assert prompt["1"]["inputs"] == {"a": "x", "b": "y", "separator": "-"}
    assert prompt["2"]["inputs"] == {"seed": 10, "steps": 20}
    named = workflow([node(1, "LoadImage", widgets_values_named={"image": "x.png", "upload": "image"})], [])
    assert ui_to_api(named, core).prompt["1"]["inputs"] == {"image": "x.png"}


def test_list_widget_values_are_wrapped(registry):
    ui = workflow([node(1, "TestStringConcat", widgets=[["x", "y"], "b", ""])], [])
    assert ui_to_api(ui, registry).prompt["1"]["inputs"]["a"] == {"__value__": ["x", "y"]}


def test_custom_title_goes_to_meta(registry):
    ui = workflow([node(1, "TestChoice", widgets=["beta"], title="Pick one")], [])
    assert ui_to_api(ui, registry).prompt["1"]["_meta"] == {"title": "Pick one"}


# ---- widgets converted to inputs -------------------------------------------------------------

def test_linked_widget_input_wins_over_widget_value(registry):
    ui = workflow([
        node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[123]),
        node(2, "TestSeeded", inputs=[inp("seed", "INT", 1, widget="seed"), inp("steps", "INT", None, widget="steps")],
             widgets=[5, "randomize", 6]),
    ], [[1, 1, 0, 2, 0, "INT"]])
    assert ui_to_api(ui, registry).prompt["2"]["inputs"] == {"seed": ["1", 0], "steps": 6}


def test_old_style_renamed_converted_input_maps_by_widget_name(registry):
    # older editors appended converted widgets after the real inputs and let users rename them
    ui = workflow([
        node(1, "TestConstInt", outputs=[out("value", "INT", [4])], widgets=[9]),
        node(2, "TestAdd", inputs=[inp("my renamed b", "INT", 4, widget="b")], widgets=[1, 2]),
    ], [[4, 1, 0, 2, 0, "INT"]])
    assert ui_to_api(ui, registry).prompt["2"]["inputs"] == {"a": 1, "b": ["1", 0]}


# ---- frontend-only nodes -----------------------------------------------------------------------

def test_primitive_node_value_reaches_every_target_through_reroutes(registry):
    ui = workflow([
        node(1, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [1, 2], "widget": {"name": "seed"}}],
             widgets=[777, "fixed"]),
        node(2, "TestSeeded", inputs=[inp("seed", "INT", 1, widget="seed")], widgets=[0, "randomize", 5]),
        node(3, "Reroute", inputs=[inp("", "*", 2)], outputs=[out("", "INT", [3])]),
        node(4, "TestAdd", inputs=[inp("a", "INT", 3, widget="a")], widgets=[1, 2]),
        node(5, "PrimitiveNode", outputs=[{"name": "COMBO", "type": "COMBO", "links": [5]}],
             widgets=["beta", "fixed", ""]),
        node(6, "TestChoice", inputs=[inp("choice", "COMBO", 5, widget="choice")], widgets=["alpha"]),
    ], [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "INT"], [5, 5, 0, 6, 0, "COMBO"]])
    prompt = ui_to_api(ui, registry).prompt
    assert set(prompt) == {"2", "4", "6"}
    assert prompt["2"]["inputs"] == {"seed": 777, "steps": 5}
    assert prompt["4"]["inputs"] == {"a": 777, "b": 2}
    assert prompt["6"]["inputs"] == {"choice": "beta"}


def test_reroute_chain_and_notes_disappear(registry):
    ui = workflow([
        node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[5]),
        node(2, "Reroute", inputs=[inp("", "*", 1)], outputs=[out("", "INT", [2])]),
        node(3, "Reroute", inputs=[inp("", "*", 2)], outputs=[out("", "INT", [3])]),
        node(4, "TestIntToString", inputs=[inp("value", "INT", 3)], outputs=[out("STRING", "STRING", [])]),
        node(5, "Note", widgets=["remember to change the seed"]),
        node(6, "MarkdownNote", widgets=["# notes"]),
        node(7, "Reroute", inputs=[inp("", "*", None)], outputs=[out("", "*", [7])]),
        node(8, "TestOutput", inputs=[inp("value", "*", 7)]),
    ], [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "*"], [3, 3, 0, 4, 0, "INT"], [7, 7, 0, 8, 0, "*"]])
    prompt = ui_to_api(ui, registry).prompt
    assert prompt == {
        "1": {"inputs": {"value": 5}, "class_type": "TestConstInt", "_meta": {"title": "TestConstInt"}},
        "4": {"inputs": {"value": ["1", 0]}, "class_type": "TestIntToString", "_meta": {"title": "TestIntToString"}},
        "8": {"inputs": {}, "class_type": "TestOutput", "_meta": {"title": "TestOutput"}},
    }


def test_native_reroutes_in_extra_and_floating_links(registry):
    ui = workflow([
        node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[5]),
        node(2, "TestIntToString", inputs=[inp("value", "INT", 1)], outputs=[out("STRING", "STRING", [])]),
    ], [[1, 1, 0, 2, 0, "INT"]],
        extra={"ds": {"scale": 1, "offset": [0, 0]},
               "reroutes": [{"id": 1, "pos": [100, 100], "linkIds": [1]},
                            {"id": 2, "parentId": 1, "pos": [150, 100], "linkIds": [1]},
                            {"id": 3, "pos": [300, 300], "linkIds": [], "floating": {"slotType": "output"}}],
               "linkExtensions": [{"id": 1, "parentId": 2}]},
        floatingLinks=[{"id": 9, "origin_id": 1, "origin_slot": 0, "target_id": -1, "target_slot": -1,
                        "type": "INT", "parentId": 3}])
    assert ui_to_api(ui, registry).prompt["2"]["inputs"] == {"value": ["1", 0]}


def test_schema_version_1_root_with_link_objects_and_top_level_reroutes(registry):
    ui = {"version": 1, "state": {"lastGroupId": 0, "lastNodeId": 2, "lastLinkId": 1, "lastRerouteId": 1},
          "nodes": [node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[5]),
                    node(2, "TestIntToString", inputs=[inp("value", "INT", 1)])],
          "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INT",
                     "parentId": 1}],
          "reroutes": [{"id": 1, "pos": [10, 10], "linkIds": [1]}], "groups": [], "config": {}, "extra": {}}
    assert ui_to_api(ui, registry).prompt["2"]["inputs"] == {"value": ["1", 0]}


# ---- mute and bypass ---------------------------------------------------------------------------

def test_muted_node_is_dropped_and_its_links_removed(registry):
    ui = workflow([
        node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[5], mode=2),
        node(2, "TestAdd", inputs=[inp("a", "INT", 1, widget="a")], widgets=[3, 4]),
        node(3, "TestChoice", widgets=["beta"], mode=2),
    ], [[1, 1, 0, 2, 0, "INT"]])
    # as in the editor's prompt, the input fed by a muted node is removed, widget value and all
    assert ui_to_api(ui, registry).prompt == {
        "2": {"inputs": {"b": 4}, "class_type": "TestAdd", "_meta": {"title": "TestAdd"}}}


def test_muted_primitive_and_reroute_still_act(registry):
    ui = workflow([
        node(1, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [1], "widget": {"name": "a"}}],
             widgets=[50, "fixed"], mode=2),
        node(2, "Reroute", inputs=[inp("", "*", 1)], outputs=[out("", "INT", [2])], mode=2),
        node(3, "TestAdd", inputs=[inp("a", "INT", 2, widget="a")], widgets=[3, 4]),
    ], [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]])
    assert ui_to_api(ui, registry).prompt["3"]["inputs"] == {"a": 50, "b": 4}


def test_muted_socket_source_leaves_input_unconnected(core):
    ui = load_fixture("default_txt2img.json")
    next(n for n in ui["nodes"] if n["id"] == 5)["mode"] = 2
    prompt = ui_to_api(ui, core).prompt
    assert "5" not in prompt and "latent_image" not in prompt["3"]["inputs"]


def test_bypassed_lora_passes_model_and_clip_through(core):
    ui = load_fixture("default_txt2img.json")
    nodes = {n["id"]: n for n in ui["nodes"]}
    ui["nodes"].append(node(10, "LoraLoader", mode=4,
                            inputs=[inp("model", "MODEL", 10), inp("clip", "CLIP", 11)],
                            outputs=[out("MODEL", "MODEL", [1]), out("CLIP", "CLIP", [3, 5])],
                            widgets=["a.safetensors", 1, 1]))
    links = [link for link in ui["links"] if link[0] not in (1, 3, 5)]
    links += [[10, 4, 0, 10, 0, "MODEL"], [11, 4, 1, 10, 1, "CLIP"], [1, 10, 0, 3, 0, "MODEL"],
              [3, 10, 1, 6, 0, "CLIP"], [5, 10, 1, 7, 0, "CLIP"]]
    ui["links"] = links
    assert nodes[3]["inputs"][0]["link"] == 1
    assert ui_to_api(ui, core).prompt == load_fixture("default_txt2img.api.json")


def test_bypass_prefers_same_slot_then_exact_then_compatible_type(core, registry):
    # ConditioningAverage bypassed: output 0 (CONDITIONING) → input 0 (same slot, compatible)
    ui = workflow([
        node(1, "CheckpointLoaderSimple", outputs=[out("MODEL", "MODEL", []), out("CLIP", "CLIP", [1, 2])],
             widgets=["v1-5-pruned-emaonly.safetensors"]),
        node(2, "CLIPTextEncode", inputs=[inp("clip", "CLIP", 1)], outputs=[out("CONDITIONING", "CONDITIONING", [3])],
             widgets=["first"]),
        node(3, "CLIPTextEncode", inputs=[inp("clip", "CLIP", 2)], outputs=[out("CONDITIONING", "CONDITIONING", [4])],
             widgets=["second"]),
        node(4, "ConditioningAverage", mode=4,
             inputs=[inp("conditioning_to", "CONDITIONING", 3), inp("conditioning_from", "CONDITIONING", 4)],
             outputs=[out("CONDITIONING", "CONDITIONING", [5])], widgets=[0.5]),
        node(5, "ConditioningAverage", inputs=[inp("conditioning_to", "CONDITIONING", 5)], widgets=[1.0]),
        # ImageScale bypassed, asked for IMAGE on output 0: its input 0 is IMAGE (exact)
        node(6, "LoadImage", outputs=[out("IMAGE", "IMAGE", [6]), out("MASK", "MASK", [])],
             widgets=["example.png", "image"]),
        node(7, "ImageScale", mode=4, inputs=[inp("image", "IMAGE", 6)], outputs=[out("IMAGE", "IMAGE", [7])],
             widgets=["bilinear", 64, 64, "disabled"]),
        node(8, "PreviewImage", inputs=[inp("images", "IMAGE", 7)]),
        # ImageToMask bypassed: asked for MASK, it has only an IMAGE input → no match, input left unconnected
        node(9, "ImageToMaskStandIn", mode=4, inputs=[inp("image", "IMAGE", 8)], outputs=[out("MASK", "MASK", [9])],
             widgets=[False]),
        node(10, "TestOutput", inputs=[inp("value", "MASK", 9)]),
    ], [[1, 1, 1, 2, 0, "CLIP"], [2, 1, 1, 3, 0, "CLIP"], [3, 2, 0, 4, 0, "CONDITIONING"],
        [4, 3, 0, 4, 1, "CONDITIONING"], [5, 4, 0, 5, 0, "CONDITIONING"], [6, 6, 0, 7, 0, "IMAGE"],
        [7, 7, 0, 8, 0, "IMAGE"], [8, 6, 0, 9, 0, "IMAGE"], [9, 9, 0, 10, 0, "MASK"]])
    merged = core_registry()
    merged.add(registry.get("TestOutput"))
    result = ui_to_api(ui, merged)
    prompt = result.prompt
    assert prompt["5"]["inputs"] == {"conditioning_to": ["2", 0], "conditioning_to_strength": 1.0}
    assert prompt["8"]["inputs"] == {"images": ["6", 0]}
    assert prompt["10"]["inputs"] == {}
    assert {"4", "7", "9"}.isdisjoint(prompt)
    assert any("no input of type MASK" in w for w in result.warnings)


def test_bypass_with_a_different_slot_and_exact_type():
    i, o = inp, out
    from loom.server.workflow.convert import bypass_input_index
    bypassed = node(1, "X", inputs=[i("model", "MODEL"), i("clip", "CLIP"), i("latent", "LATENT")],
                    outputs=[o("LATENT", "LATENT"), o("CLIP", "CLIP")])
    assert bypass_input_index(bypassed, 0, "LATENT") == 2   # slot 0 is MODEL: exact type wins
    assert bypass_input_index(bypassed, 1, "CLIP") == 1     # same slot index
    assert bypass_input_index(bypassed, 1, "*") == 1        # any type: same slot
    union = node(2, "Y", inputs=[i("a", "INT,FLOAT")], outputs=[o("out", "FLOAT")])
    assert bypass_input_index(union, 0, "FLOAT") == 0       # compatible (overlapping union)
    assert bypass_input_index(union, 0, "IMAGE") == -1


def test_chain_of_bypassed_nodes(registry):
    ui = workflow([
        node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[5]),
        node(2, "TestSleep", mode=4, inputs=[inp("value", "*", 1)], outputs=[out("value", "*", [2])],
             widgets=[0.1, 10]),
        node(3, "TestSleep", mode=4, inputs=[inp("value", "*", 2)], outputs=[out("value", "*", [3])],
             widgets=[0.1, 10]),
        node(4, "TestIntToString", inputs=[inp("value", "INT", 3)]),
    ], [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "*"], [3, 3, 0, 4, 0, "*"]])
    assert ui_to_api(ui, registry).prompt["4"]["inputs"] == {"value": ["1", 0]}


# ---- shapes ------------------------------------------------------------------------------------

def test_string_ids_object_vectors_numeric_string_slots_and_link_objects(registry):
    ui = workflow([
        node("CheckpointLoaderSimple.0", "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[5],
             pos={"0": 10, "1": 20, "2": 0, "3": 0, "4": 0, "5": 0, "6": 0, "7": 0, "8": 0, "9": 0},
             size={"0": 200, "1": 80}),
        node("b", "TestIntToString", inputs=[inp("value", "INT", "1")]),
    ], [{"id": 1, "origin_id": "CheckpointLoaderSimple.0", "origin_slot": "0", "target_id": "b", "target_slot": "0",
         "type": "INT"}], last_node_id=0)
    assert ui_to_api(ui, registry).prompt["b"]["inputs"] == {"value": ["CheckpointLoaderSimple.0", 0]}


def test_minimal_nodes_only_workflow_gets_defaults(core):
    prompt = ui_to_api({"nodes": [{"id": 1, "type": "KSampler"}]}, core).prompt
    assert prompt == {"1": {"inputs": {"seed": 0, "steps": 20, "cfg": 8.0, "sampler_name": "euler",
                                       "scheduler": "normal", "denoise": 1.0},
                            "class_type": "KSampler", "_meta": {"title": "KSampler"}}}


def test_format_detection():
    api = load_fixture("default_txt2img.api.json")
    ui = load_fixture("default_txt2img.json")
    assert is_api_format(api) and not is_ui_format(api)
    assert is_ui_format(ui) and not is_api_format(ui)
    for other in ({"templates": [{"name": "x"}]}, [], [1], "text", {}, {"nodes": "x"}, {"1": {"inputs": {}}},
                  {"nodes": [], "links": "x"}, {"1": {"class_type": "X", "inputs": []}}):
        assert not is_api_format(other) and not is_ui_format(other), other
    assert is_ui_format({"nodes": [{"id": 1, "type": "KSampler"}]})


def test_to_api_accepts_either_format(core):
    api = load_fixture("default_txt2img.api.json")
    assert to_api(api, core) == api and to_api(api, core) is not api
    assert to_api(load_fixture("default_txt2img.json"), core) == api


@pytest.mark.parametrize("document", [{"templates": [{"name": "t2i"}]}, [1, 2], "text", {"a": 1},
                                      {"fuse_options": {"keys": []}}])
def test_not_a_workflow_is_rejected_by_shape(core, document):
    with pytest.raises(WorkflowError, match="not a workflow"):
        ui_to_api(document, core)
    with pytest.raises(WorkflowError, match="not a workflow"):
        to_api(document, core)


def test_input_does_not_mutate_the_workflow(core):
    ui = load_fixture("default_txt2img.json")
    before = copy.deepcopy(ui)
    ui_to_api(ui, core)
    assert ui == before


def test_filename_prefix_date_and_widget_replacements(core):
    from datetime import datetime
    ui = load_fixture("default_txt2img.json")
    save = next(n for n in ui["nodes"] if n["id"] == 9)
    save["widgets_values"] = ["%date:yyyy-MM-dd%/%KSampler.sampler_name%_%Empty Latent Image.width%_"
                              "%date:hh.mm.ss%_%width%_%Nobody.x%_%CheckpointLoaderSimple.ckpt_name%"]
    prompt = ui_to_api(ui, core, now=datetime(2026, 3, 7, 9, 5, 1)).prompt
    assert prompt["9"]["inputs"]["filename_prefix"] == \
        "2026-03-07/euler_512_09_%width%_%Nobody.x%_v1-5-pruned-emaonly.safetensors"  # the editor reads "hh" only


def test_date_format_tokens():
    from datetime import datetime
    from loom.server.workflow.widgets import format_date
    assert format_date("yyyy-MM-dd hh:mm:ss yy d/M h", datetime(2026, 3, 7, 9, 5, 1)) == \
        "2026-03-07 09:05:01 26 7/3 9"


# ---- the stand-ins against the real nodes, and the engine accepting what we produce -------------

def _layout(schema):
    from loom.server.workflow.widgets import widget_slots
    return ([(spec.name, spec.type if spec.type != "COMBO" else "COMBO", spec.optional) for spec in schema.inputs],
            [(slot.kind, slot.spec.name) for slot in widget_slots(schema)], [o.type for o in schema.outputs])


@pytest.mark.parametrize("name", [s.name for s in STANDIN_SCHEMAS if not s.name.endswith("StandIn")])
def test_standin_matches_the_real_node_once_it_exists(registry, core, name):
    real = registry.get(name)
    if real is None:
        pytest.skip(f"{name} is not in Loom's node library (yet)")
    assert _layout(real.schema()) == _layout(core.get(name).schema())


def test_converted_test_pack_workflow_validates(registry):
    from loom.server.validation import validate_prompt
    ui = workflow([
        node(1, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [1], "widget": {"name": "seed"}}],
             widgets=[3, "fixed"]),
        node(2, "TestSeeded", inputs=[inp("seed", "INT", 1, widget="seed")], outputs=[out("value", "INT", [2])],
             widgets=[0, "randomize", 2]),
        node(3, "Reroute", inputs=[inp("", "*", 2)], outputs=[out("", "INT", [3])]),
        node(4, "TestIntToString", inputs=[inp("value", "INT", 3)], outputs=[out("STRING", "STRING", [4])]),
        node(5, "TestStringConcat", inputs=[inp("a", "STRING", 4, widget="a")], outputs=[out("text", "STRING", [5])],
             widgets=["", "!", ""], mode=4),
        node(6, "TestOutput", inputs=[inp("value", "*", 5)]),
    ], [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "INT"], [4, 4, 0, 5, 0, "STRING"],
        [5, 5, 0, 6, 0, "STRING"]])
    prompt = ui_to_api(ui, registry).prompt
    assert prompt["6"]["inputs"] == {"value": ["4", 0]}
    result = validate_prompt(prompt, registry)
    assert result.ok, result.messages()
    assert result.outputs == ["6"]


def test_set_and_get_nodes_are_joined_by_name(registry):
    ui = workflow([
        node(1, "TestConstInt", outputs=[out("value", "INT", [1])], widgets=[8]),
        node(2, "SetNode", inputs=[inp("INT", "INT", 1)], outputs=[out("*", "*", None)], widgets=["my_number"]),
        node(3, "GetNode", outputs=[out("INT", "INT", [2])], widgets=["my_number"]),
        node(4, "TestIntToString", inputs=[inp("value", "INT", 2)]),
        node(5, "GetNode", outputs=[out("INT", "INT", [3])], widgets=["nobody_sets_this"]),
        node(6, "TestIntToString", inputs=[inp("value", "INT", 3)]),
    ], [[1, 1, 0, 2, 0, "INT"], [2, 3, 0, 4, 0, "INT"], [3, 5, 0, 6, 0, "INT"]])
    result = ui_to_api(ui, registry)
    assert set(result.prompt) == {"1", "4", "6"}
    assert result.prompt["4"]["inputs"] == {"value": ["1", 0]} and result.prompt["6"]["inputs"] == {}
    assert any("nobody_sets_this" in w for w in result.warnings)
