"""Issue 12, converter defects: promoted subgraph widgets, legacy group nodes with links from outside, and
SaveImage/PreviewImage's ``images`` output.

The fixtures are hand-written in the shapes ComfyUI's frontend saves (current templates for the subgraphs,
``extra.groupNodes`` for the group nodes); the expected prompts are what that frontend queues for them.
"""
from __future__ import annotations

import copy

import torch

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    from fixtures_workflow import core_registry, inp, node, out, workflow
except ModuleNotFoundError:
    from tests.fixtures_workflow import core_registry, inp, node, out, workflow

from loom.server.workflow import ui_to_api

CKPT = "v1-5-pruned-emaonly.safetensors"


def _link(link_id, origin, origin_slot, target, target_slot, kind):
    return {"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
            "target_slot": target_slot, "type": kind}


def _definition(def_id, inputs, nodes, links, outputs=()):
    return {"id": def_id, "version": 1, "name": def_id, "state": {}, "config": {},
            "inputNode": {"id": -10, "bounding": [0, 0, 1, 1]}, "outputNode": {"id": -20, "bounding": [0, 0, 1, 1]},
            "inputs": inputs, "outputs": list(outputs), "widgets": [], "nodes": nodes, "links": links,
            "groups": [], "extra": {}}


# ---- subgraph promoted widgets -------------------------------------------------------------------
# One definition shaped like the SD1.5 templates: five widget-typed subgraph inputs feeding the loader,
# the prompt and the sampler, plus the inner nodes' own (stale) values.

INPUT_NAMES = [("ckpt_name", "COMBO"), ("text", "STRING"), ("seed", "INT"), ("steps", "INT"),
               ("sampler_name", "COMBO")]
FRESH = [CKPT, "a red fox in the snow", 1234, 9, "dpmpp_2m"]


def _txt2img_definition():
    inner = [
        node(1, "CheckpointLoaderSimple", [inp("ckpt_name", "COMBO", 1, widget="ckpt_name")],
             [out("MODEL", "MODEL", [10]), out("CLIP", "CLIP", [11]), out("VAE", "VAE", [])], ["other.safetensors"]),
        node(2, "CLIPTextEncode", [inp("clip", "CLIP", 11), inp("text", "STRING", 2, widget="text")],
             [out("CONDITIONING", "CONDITIONING", [12, 13])], ["stale prompt"]),
        node(3, "KSampler", [inp("model", "MODEL", 10), inp("positive", "CONDITIONING", 12),
                             inp("negative", "CONDITIONING", 13), inp("latent_image", "LATENT", 14),
                             inp("seed", "INT", 3, widget="seed"), inp("steps", "INT", 4, widget="steps"),
                             inp("sampler_name", "COMBO", 5, widget="sampler_name")],
             [out("LATENT", "LATENT", [15])], [0, "randomize", 20, 8, "euler", "normal", 1]),
    ]
    links = [_link(i + 1, -10, i, target, slot, kind) for i, (target, slot, kind) in
             enumerate([(1, 0, "COMBO"), (2, 1, "STRING"), (3, 4, "INT"), (3, 5, "INT"), (3, 6, "COMBO")])]
    links += [_link(10, 1, 0, 3, 0, "MODEL"), _link(11, 1, 1, 2, 0, "CLIP"), _link(12, 2, 0, 3, 1, "CONDITIONING"),
              _link(13, 2, 0, 3, 2, "CONDITIONING"), _link(14, -10, 5, 3, 3, "LATENT"),
              _link(15, 3, 0, -20, 0, "LATENT")]
    inputs = [{"name": name, "type": kind, "linkIds": [i + 1]} for i, (name, kind) in enumerate(INPUT_NAMES)]
    inputs.append({"name": "latent_image", "type": "LATENT", "linkIds": [14]})
    return _definition("def-txt2img", inputs, inner, links, [{"name": "LATENT", "type": "LATENT", "linkIds": [15]}])


def _txt2img_workflow(instance_inputs, widgets, **instance_extra):
    root = [node(20, "EmptyLatentImage", [], [out("LATENT", "LATENT", [30])], [512, 512, 1]),
            node(5, "def-txt2img", instance_inputs + [inp("latent_image", "LATENT", 30)],
                 [out("LATENT", "LATENT", [])], widgets, **instance_extra)]
    return workflow(root, [[30, 20, 0, 5, 5, "LATENT"]], definitions={"subgraphs": [_txt2img_definition()]})


def _expect_fresh(prompt, values=FRESH):
    ckpt, text, seed, steps, sampler = values
    assert prompt["5:1"]["inputs"] == {"ckpt_name": ckpt}
    assert prompt["5:2"]["inputs"] == {"text": text, "clip": ["5:1", 1]}
    assert prompt["5:3"]["inputs"] == {"seed": seed, "steps": steps, "cfg": 8, "sampler_name": sampler,
                                       "scheduler": "normal", "denoise": 1, "model": ["5:1", 0],
                                       "positive": ["5:2", 0], "negative": ["5:2", 0], "latent_image": ["20", 0]}


def test_one_value_per_widget_fed_input_although_fewer_inputs_are_marked():
    # the shape of 43 templates: every subgraph input is listed on the instance, only one carries the widget
    # mark, and widgets_values holds one value per subgraph input that feeds an inner widget
    listed = [inp(name, kind, None, widget="seed" if name == "seed" else None) for name, kind in INPUT_NAMES]
    _expect_fresh(ui_to_api(_txt2img_workflow(listed, list(FRESH)), core_registry()).prompt)


def test_promoted_inputs_that_the_instance_does_not_list_still_take_their_values():
    # the instance lists only its sockets (frontend fixture subgraph-multi-instance-promoted-text-values.json)
    _expect_fresh(ui_to_api(_txt2img_workflow([], list(FRESH)), core_registry()).prompt)


def test_legacy_control_after_generate_entry_is_skipped_only_when_the_list_is_longer():
    values = [CKPT, "a red fox in the snow", 1234, "fixed", 9, "dpmpp_2m"]
    _expect_fresh(ui_to_api(_txt2img_workflow([], values), core_registry()).prompt)


def test_widgets_values_named_wins_by_subgraph_input_name():
    shifted = ["a red fox in the snow", 1234, 9, "dpmpp_2m", CKPT]  # a positional list one slot off
    named = dict(zip([name for name, _ in INPUT_NAMES], FRESH))
    ui = _txt2img_workflow([], shifted, widgets_values_named=named)
    _expect_fresh(ui_to_api(ui, core_registry()).prompt)


def test_proxy_widgets_pair_with_values_by_index_in_their_own_order():
    # like the Capybara template: the proxy order is not the subgraph-input order; an [inner id, widget]
    # entry that a subgraph input feeds lands on that input; one no input feeds overrides the inner widget;
    # control_after_generate entries and nulls (holes) change nothing
    proxies = [["2", "text"], ["-1", "sampler_name"], ["3", "cfg"], ["-1", "steps"], ["3", "seed"],
               ["3", "control_after_generate"], ["-1", "ckpt_name"], ["-1", "missing"]]
    values = ["a red fox in the snow", "dpmpp_2m", 4.5, 9, 1234, "fixed", None, "ignored"]
    ui = _txt2img_workflow([], values, properties={"proxyWidgets": proxies})
    prompt = ui_to_api(ui, core_registry()).prompt
    assert prompt["5:1"]["inputs"] == {"ckpt_name": "other.safetensors"}  # a hole keeps the inner value
    assert prompt["5:2"]["inputs"]["text"] == "a red fox in the snow"
    assert {k: prompt["5:3"]["inputs"][k] for k in ("seed", "steps", "cfg", "sampler_name")} == {
        "seed": 1234, "steps": 9, "cfg": 4.5, "sampler_name": "dpmpp_2m"}


def test_proxy_widgets_as_a_json_string_and_with_legacy_prefixes():
    proxies = '[["-1", "text"], ["3", "7: steps"]]'  # stored as a string; "7: " is an older nested prefix
    ui = _txt2img_workflow([], ["a red fox in the snow", 9], properties={"proxyWidgets": proxies})
    prompt = ui_to_api(ui, core_registry()).prompt
    assert prompt["5:2"]["inputs"]["text"] == "a red fox in the snow"
    assert prompt["5:3"]["inputs"]["steps"] == 9


def test_two_instances_each_get_their_own_values():
    ui = _txt2img_workflow([], list(FRESH))
    second = copy.deepcopy(ui["nodes"][1])
    second["id"] = 6
    second["inputs"][-1]["link"] = 31
    second["widgets_values"] = [CKPT, "a blue whale", 7, 30, "euler"]
    ui["nodes"].append(second)
    ui["nodes"][0]["outputs"][0]["links"].append(31)
    ui["links"].append([31, 20, 0, 6, 5, "LATENT"])
    prompt = ui_to_api(ui, core_registry()).prompt
    _expect_fresh(prompt)
    assert prompt["6:2"]["inputs"]["text"] == "a blue whale"
    assert (prompt["6:3"]["inputs"]["seed"], prompt["6:3"]["inputs"]["steps"]) == (7, 30)


def test_nested_promotion_counts_as_a_promoted_input():
    # outer input "prompt" feeds an inner instance's input, which feeds a CLIPTextEncode text widget:
    # it is promoted although no instance input carries a widget mark
    inner = _definition("inner", [{"name": "text", "type": "STRING", "linkIds": [1]}],
                        [node(1, "CLIPTextEncode", [inp("clip", "CLIP"), inp("text", "STRING", 1, widget="text")],
                              [out("CONDITIONING", "CONDITIONING", [])], ["inner default"])],
                        [_link(1, -10, 0, 1, 1, "STRING")])
    outer = _definition("outer", [{"name": "seed", "type": "INT", "linkIds": [2]},
                                  {"name": "prompt", "type": "STRING", "linkIds": [1]}],
                        [node(2, "inner", [inp("text", "STRING", 1)], [], ["middle"]),
                         node(3, "EmptyLatentImage", [inp("batch_size", "INT", 2, widget="batch_size")],
                              [out("LATENT", "LATENT", [])], [64, 64, 1])],
                        [_link(1, -10, 1, 2, 0, "STRING"), _link(2, -10, 0, 3, 2, "INT")])
    ui = workflow([node(9, "outer", [inp("seed", "INT"), inp("prompt", "STRING")], [], [3, "from the top"])],
                  [], definitions={"subgraphs": [outer, inner]})
    prompt = ui_to_api(ui, core_registry()).prompt
    assert prompt["9:2:1"]["inputs"]["text"] == "from the top"
    assert prompt["9:3"]["inputs"] == {"width": 64, "height": 64, "batch_size": 3}


# ---- legacy group nodes with links from outside ----------------------------------------------------

def _group_node_workflow():
    """A group (Reroute -> KSampler, two prompts, VAE Decode) whose definition keeps the links from outside
    the group with a null origin, as the editor's copy serialiser writes them."""
    inner = [
        {"index": 0, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": None}],
         "outputs": [{"name": "", "type": "MODEL", "links": []}], "properties": {"showOutputText": False}},
        {"index": 1, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": None}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}], "widgets_values": [""]},
        {"index": 2, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": None}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}], "widgets_values": [""]},
        {"index": 3, "type": "KSampler",
         "inputs": [{"name": "model", "type": "MODEL", "link": None},
                    {"name": "positive", "type": "CONDITIONING", "link": None},
                    {"name": "negative", "type": "CONDITIONING", "link": None},
                    {"name": "latent_image", "type": "LATENT", "link": None}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
         "widgets_values": [0, "randomize", 20, 8, "euler", "normal", 1]},
        {"index": 4, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": None},
                                                     {"name": "vae", "type": "VAE", "link": None}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]},
    ]
    links = [[None, 0, 0, 0, 1, "MODEL"], [0, 0, 3, 0, 1, "MODEL"],
             [None, 1, 1, 0, 1, "CLIP"], [None, 1, 2, 0, 1, "CLIP"],
             [1, 0, 3, 1, 7, "CONDITIONING"], [2, 0, 3, 2, 8, "CONDITIONING"],
             [None, 0, 3, 3, 2, "LATENT"], [3, 0, 4, 0, 9, "LATENT"], [None, 2, 4, 1, 1, "VAE"]]
    external = [[{"id": 12, "type": "VAEDecode", "index": 4}, 0, "IMAGE"]]  # a node object, not an index
    instance = node(10, "workflow>sampler_group",
                    [inp("MODEL", "MODEL", 11), inp("clip", "CLIP", 12), inp("CLIPTextEncode clip", "CLIP", 13),
                     inp("latent_image", "LATENT", 14), inp("vae", "VAE", 15)],
                    [out("IMAGE", "IMAGE", [16])],
                    ["a lighthouse at dusk", "blurry", 42, "fixed", 12, 6.5, "dpmpp_2m", "karras", 0.8])
    root = [node(1, "CheckpointLoaderSimple", [], [out("MODEL", "MODEL", [11]), out("CLIP", "CLIP", [12, 13]),
                                                  out("VAE", "VAE", [15])], [CKPT]),
            node(2, "EmptyLatentImage", [], [out("LATENT", "LATENT", [14])], [512, 512, 1]),
            instance,
            node(20, "SaveImage", [inp("images", "IMAGE", 16)], [], ["grouped"])]
    root_links = [[11, 1, 0, 10, 0, "MODEL"], [12, 1, 1, 10, 1, "CLIP"], [13, 1, 1, 10, 2, "CLIP"],
                  [14, 2, 0, 10, 3, "LATENT"], [15, 1, 2, 10, 4, "VAE"], [16, 10, 0, 20, 0, "IMAGE"]]
    ui = workflow(root, root_links)
    ui["extra"]["groupNodes"] = {"sampler_group": {"nodes": inner, "links": links, "external": external}}
    return ui


def test_group_node_links_from_outside_are_skipped_and_bound_to_the_instance_inputs():
    prompt = ui_to_api(_group_node_workflow(), core_registry()).prompt
    assert "10:0" not in prompt  # the Reroute is followed, not sent
    assert prompt["10:1"]["inputs"] == {"text": "a lighthouse at dusk", "clip": ["1", 1]}
    assert prompt["10:2"]["inputs"] == {"text": "blurry", "clip": ["1", 1]}
    assert prompt["10:3"]["inputs"] == {"seed": 42, "steps": 12, "cfg": 6.5, "sampler_name": "dpmpp_2m",
                                        "scheduler": "karras", "denoise": 0.8, "model": ["1", 0],
                                        "positive": ["10:1", 0], "negative": ["10:2", 0], "latent_image": ["2", 0]}
    assert prompt["10:4"]["inputs"] == {"samples": ["10:3", 0], "vae": ["1", 2]}
    assert prompt["20"]["inputs"] == {"filename_prefix": "grouped", "images": ["10:4", 0]}


def test_group_node_reroute_input_named_with_a_prefix_and_a_null_origin_slot():
    ui = _group_node_workflow()
    ui["nodes"][2]["inputs"][0]["name"] = "Reroute MODEL"  # the editor's name when "MODEL" is taken
    ui["extra"]["groupNodes"]["sampler_group"]["links"][0] = [None, None, 0, 0, None, "MODEL"]
    assert ui_to_api(ui, core_registry()).prompt["10:3"]["inputs"]["model"] == ["1", 0]


# ---- SaveImage / PreviewImage pass their images on ----------------------------------------------

def test_save_and_preview_image_have_comfyui_images_output(registry):
    from loom.nodes.kernel.schema import Output

    for name in ("SaveImage", "PreviewImage"):
        schema = registry.get(name).schema()
        assert schema.output_node and schema.outputs == [Output("IMAGE", "images")], name


def test_a_graph_linking_from_save_image_validates_and_runs(base_dir, registry):
    from loom.server.executor import Executor
    from loom.server.validation import validate_prompt

    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 2,
                                                          "color": 0xFF0000}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "chain"}},
              "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
              "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "after_preview"}}}
    assert validate_prompt(prompt, registry).ok
    result = Executor(registry).execute(prompt, "chain")
    assert result.status == "success", result.error
    assert [len(result.outputs[n]["images"]) for n in ("2", "4", "5")] == [2, 2, 2]
    from PIL import Image
    import numpy as np
    saved = np.array(Image.open(base_dir / "output" / result.outputs["5"]["images"][0]["filename"]))
    assert saved[0, 0].tolist() == [0, 255, 255]  # red, inverted by node 3, passed on by PreviewImage


def test_save_image_execute_returns_its_input():
    from loom.nodes.image import PreviewImage, SaveImage

    images = torch.rand(1, 4, 4, 3)
    assert SaveImage.execute(images, "x").values[0] is images
    assert PreviewImage.execute(images).values[0] is images
