"""ComfyUI's V3 input shapes in saved UI workflows, converted as ComfyUI_frontend's graphToPrompt queues them.

* ``COMFY_DYNAMICCOMBO_V3`` (``ResizeImageMaskNode``'s ``resize_type``): ``widgets_values`` holds the combo,
  then only the chosen option's widgets (dynamicWidgets.ts splices them in right after the combo), then
  the next top-level widget; only the chosen option's inputs are sent, as ``resize_type.<key>``; an
  option's socket (``match``) is linked by its input name. A combo inside an option (SaveImageAdvanced's
  ``format.save_mode``) is followed by its own option's widgets (``format.save_mode.fps``), and its inputs
  go with the outer option.
* ``IMAGECOMPARE`` (``ImageCompare``'s ``compare_view``): not in ``widgets_values`` (the node saves ``[]``,
  useImageCompareWidget.ts sets ``widget.serialize = false``) but sent with the widget's initial value
  ``['', '']``, wrapped as a list literal; ComfyUI's backend requires the input.
* ``COMFY_AUTOGROW_V3`` (``BatchImagesNode``'s ``images.image0..``, ``ComfyMathExpression``'s ``values.a..``):
  sockets named ``<group>.<slot>`` linked by name, the free trailing socket sends nothing; the math node's
  only widget is ``expression`` (its autogrow sockets take FLOAT,INT,BOOLEAN: no widget).

The fixtures are hand-written in the shape the frontend saves (``localized_name`` left out, as
graphToPrompt strips it from queued workflows); each prompt validates and runs.
"""
from __future__ import annotations

import copy

import pytest

from loom.nodes.kernel.schema import default_registry
from loom.server.executor import Executor
from loom.server.validation import validate_prompt
from loom.server.workflow import ui_to_api


@pytest.fixture(scope="module")
def registry():
    return default_registry([])


def _image(node_id, links, width=32, height=16, color=0):
    return {"id": node_id, "type": "EmptyImage", "mode": 0, "inputs": [],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": links}],
            "widgets_values": [width, height, 1, color]}


def _preview(node_id, link, kind="IMAGE", name="images", node_type="PreviewImage"):
    return {"id": node_id, "type": node_type, "mode": 0, "inputs": [{"name": name, "type": kind, "link": link}],
            "outputs": [], "widgets_values": []}


def _workflow(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max((l[0] for l in links), default=0),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def _convert(registry, ui):
    prompt, warnings = ui_to_api(ui, registry)
    assert warnings == []
    validation = validate_prompt(prompt, registry)
    assert validation.ok, (validation.error, validation.node_errors)
    return prompt


def _run(registry, prompt):
    result = Executor(registry).execute(copy.deepcopy(prompt), "v3")
    assert result.status == "success", result.error
    return result


# ---- dynamic combo --------------------------------------------------------------------------------

def _resize(widgets_values, option_inputs, input_link=3, output_links=(4,)):
    inputs = [{"name": "input", "type": "IMAGE,MASK", "link": input_link},
              {"name": "resize_type", "type": "COMFY_DYNAMICCOMBO_V3", "widget": {"name": "resize_type"}, "link": None},
              *option_inputs,
              {"name": "scale_method", "type": "COMBO", "widget": {"name": "scale_method"}, "link": None}]
    return {"id": 3, "type": "ResizeImageMaskNode", "mode": 0, "inputs": inputs,
            "outputs": [{"name": "resized", "type": "IMAGE", "links": list(output_links)}],
            "widgets_values": widgets_values}


def _option_widget(key, kind, link=None):
    return {"name": f"resize_type.{key}", "label": key, "type": kind, "widget": {"name": f"resize_type.{key}"},
            "link": link}


def _size_of(registry, prompt, node_id="3"):
    prompt = copy.deepcopy(prompt)
    prompt["9"] = {"class_type": "GetImageSize", "inputs": {"image": [node_id, 0]}}
    prompt["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["9", 0]}}
    prompt["11"] = {"class_type": "PreviewAny", "inputs": {"source": ["9", 1]}}
    result = _run(registry, prompt)
    return result.outputs["10"]["text"][0], result.outputs["11"]["text"][0]


def test_dynamic_combo_reads_only_the_chosen_options_widgets(registry, base_dir):
    ui = _workflow([_image(1, [3]), _resize(["scale by multiplier", 2.0, "bilinear"],
                                            [_option_widget("multiplier", "FLOAT")]), _preview(4, 4)],
                   [[3, 1, 0, 3, 0, "IMAGE"], [4, 3, 0, 4, 0, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "scale by multiplier",
                                     "resize_type.multiplier": 2.0, "scale_method": "bilinear"}
    assert _size_of(registry, prompt) == ("64", "32")


def test_dynamic_combo_option_socket_linked_by_name(registry, base_dir):
    reference = _image(5, [7], width=24, height=40)
    ui = _workflow([_image(1, [3]), reference,
                    _resize(["match size", "center", "area"],
                            [{"name": "resize_type.match", "label": "match", "type": "IMAGE,MASK", "link": 7},
                             _option_widget("crop", "COMBO")]), _preview(4, 4)],
                   [[3, 1, 0, 3, 0, "IMAGE"], [7, 5, 0, 3, 2, "IMAGE"], [4, 3, 0, 4, 0, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "match size", "resize_type.match": ["5", 0],
                                     "resize_type.crop": "center", "scale_method": "area"}
    assert _size_of(registry, prompt) == ("24", "40")


def test_dynamic_combo_option_with_several_widgets_then_the_next_widget(registry, base_dir):
    ui = _workflow([_image(1, [3]),
                    _resize(["scale dimensions", 20, 12, "disabled", "nearest-exact"],
                            [_option_widget("width", "INT"), _option_widget("height", "INT"),
                             _option_widget("crop", "COMBO")]), _preview(4, 4)],
                   [[3, 1, 0, 3, 0, "IMAGE"], [4, 3, 0, 4, 0, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "scale dimensions", "resize_type.width": 20,
                                     "resize_type.height": 12, "resize_type.crop": "disabled",
                                     "scale_method": "nearest-exact"}
    assert _size_of(registry, prompt) == ("20", "12")


def test_dynamic_combo_option_widget_fed_by_a_link(registry, base_dir):
    """A converted option widget fed by a primitive node: the link wins, the saved value is still read
    in its place (the frontend keeps the widget, only its value is replaced)."""
    primitive = {"id": 6, "type": "PrimitiveInt", "mode": 0, "inputs": [],
                 "outputs": [{"name": "INT", "type": "INT", "links": [8]}], "widgets_values": [48, "fixed"]}
    ui = _workflow([_image(1, [3]), primitive,
                    _resize(["scale longer dimension", 512, "lanczos"],
                            [_option_widget("longer_size", "INT", link=8)]), _preview(4, 4)],
                   [[3, 1, 0, 3, 0, "IMAGE"], [8, 6, 0, 3, 2, "INT"], [4, 3, 0, 4, 0, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "scale longer dimension",
                                     "resize_type.longer_size": ["6", 0], "scale_method": "lanczos"}
    assert _size_of(registry, prompt) == ("48", "24")


def test_dynamic_combo_drops_a_stale_link_to_an_option_not_chosen(registry):
    """The frontend removes the inputs of an option that is not chosen (and their links) when it applies
    the combo's value; a link still saved into one is not sent."""
    ui = _workflow([_image(1, [3]), _image(5, [7]),
                    _resize(["scale by multiplier", 0.5, "area"],
                            [{"name": "resize_type.match", "label": "match", "type": "IMAGE,MASK", "link": 7},
                             _option_widget("multiplier", "FLOAT")]), _preview(4, 4)],
                   [[3, 1, 0, 3, 0, "IMAGE"], [7, 5, 0, 3, 2, "IMAGE"], [4, 3, 0, 4, 0, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "scale by multiplier",
                                     "resize_type.multiplier": 0.5, "scale_method": "area"}


def test_dynamic_combo_without_saved_values_uses_the_first_option(registry):
    """No widgets_values (a node added by a script): the combo holds its first option, whose widgets get
    their defaults; a short list defaults the rest with a warning."""
    ui = _workflow([_image(1, [3]), _resize(None, []), _preview(4, 4)],
                   [[3, 1, 0, 3, 0, "IMAGE"], [4, 3, 0, 4, 0, "IMAGE"]])
    del ui["nodes"][1]["widgets_values"]
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "scale dimensions", "resize_type.width": 512,
                                     "resize_type.height": 512, "resize_type.crop": "center", "scale_method": "area"}
    short = _workflow([_image(1, [3]), _resize(["scale total pixels"], []), _preview(4, 4)],
                      [[3, 1, 0, 3, 0, "IMAGE"], [4, 3, 0, 4, 0, "IMAGE"]])
    prompt, warnings = ui_to_api(short, registry)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "scale total pixels",
                                     "resize_type.megapixels": 1.0, "scale_method": "area"}
    assert len(warnings) == 1 and "resize_type.megapixels, scale_method" in warnings[0]


def test_dynamic_combo_named_values_win_by_name(registry):
    ui = _workflow([_image(1, [3]), _resize(["scale width", 64, "area"], [_option_widget("width", "INT")]),
                    _preview(4, 4)], [[3, 1, 0, 3, 0, "IMAGE"], [4, 3, 0, 4, 0, "IMAGE"]])
    ui["nodes"][1]["widgets_values_named"] = {"resize_type": "scale height", "resize_type.height": 80,
                                              "scale_method": "bicubic"}
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"input": ["1", 0], "resize_type": "scale height", "resize_type.height": 80,
                                     "scale_method": "bicubic"}


def test_dynamic_combo_layout_helpers():
    from loom.server.workflow.widgets import assign_widget_values, dynamic_combos
    node_class = default_registry([]).get("ResizeImageMaskNode")
    combos = dynamic_combos(node_class.object_info())
    assert list(combos) == ["resize_type"]
    assert combos["resize_type"].options["match size"] == ("resize_type.match", "resize_type.crop")
    assigned = assign_widget_values(node_class.schema(), ["scale to multiple", 64, "bicubic"], None, combos)
    assert assigned.values == {"resize_type": "scale to multiple", "resize_type.multiple": 64,
                               "scale_method": "bicubic"}
    assert "resize_type.multiplier" in assigned.inactive and "resize_type.multiple" not in assigned.inactive
    # an unknown option (renamed upstream) brings no widgets: the next value is the next top-level widget
    assigned = assign_widget_values(node_class.schema(), ["no such option", "bilinear"], None, combos)
    assert assigned.values == {"resize_type": "no such option", "scale_method": "bilinear"}


# ---- nested dynamic combo -------------------------------------------------------------------------
# SaveImageAdvanced's ``format`` = avif holds a dynamic combo of its own, ``format.save_mode``, whose "animated"
# brings ``format.save_mode.fps`` and ``format.save_mode.loop_count``: its widgets follow it in widgets_values
# (the inner combo's updateWidgets splices them in after it while the outer one's are being added).

def _widget_input(name, kind, link=None):
    """A widget's input as the frontend saves it; an option's inputs are labelled with their own key."""
    entry = {"name": name, "type": kind, "widget": {"name": name}, "link": link}
    if "." in name:
        entry["label"] = name.rsplit(".", 1)[-1]
    return entry


def _save_advanced(widgets_values, option_inputs, node_id=3, image_link=3):
    inputs = [{"name": "images", "type": "IMAGE", "link": image_link}, _widget_input("filename_prefix", "STRING"),
              _widget_input("format", "COMFY_DYNAMICCOMBO_V3"), *[_widget_input(*spec) for spec in option_inputs]]
    return {"id": node_id, "type": "SaveImageAdvanced", "mode": 0, "inputs": inputs,
            "outputs": [{"name": "images", "type": "IMAGE", "links": []}], "widgets_values": widgets_values}


AVIF_INPUTS = [("format.bit_depth", "COMBO"), ("format.input_color_space", "COMBO"), ("format.crf", "INT"),
               ("format.save_mode", "COMFY_DYNAMICCOMBO_V3")]


def test_nested_dynamic_combo_option_widgets_follow_the_inner_combo(registry):
    """avif, animated: the inner combo's widgets come right after it; fps fed by a primitive node by name."""
    primitive = {"id": 6, "type": "PrimitiveFloat", "mode": 0, "inputs": [],
                 "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [8]}], "widgets_values": [12.5]}
    save = _save_advanced(["clip", "avif", "10-bit YUV420", "HDR", 30, "animated", 8.0, 2],
                          [*AVIF_INPUTS, ("format.save_mode.fps", "FLOAT", 8), ("format.save_mode.loop_count", "INT")])
    ui = _workflow([_image(1, [3]), primitive, save], [[3, 1, 0, 3, 0, "IMAGE"], [8, 6, 0, 3, 7, "FLOAT"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"images": ["1", 0], "filename_prefix": "clip", "format": "avif",
                                     "format.bit_depth": "10-bit YUV420", "format.input_color_space": "HDR",
                                     "format.crf": 30, "format.save_mode": "animated",
                                     "format.save_mode.fps": ["6", 0], "format.save_mode.loop_count": 2}
    # still images: the inner combo's option brings nothing, so nothing follows it
    still = _save_advanced(["frames", "avif", "auto", "sRGB", 18, "still images"], AVIF_INPUTS)
    prompt = _convert(registry, _workflow([_image(1, [3]), still], [[3, 1, 0, 3, 0, "IMAGE"]]))
    assert prompt["3"]["inputs"] == {"images": ["1", 0], "filename_prefix": "frames", "format": "avif",
                                     "format.bit_depth": "auto", "format.input_color_space": "sRGB",
                                     "format.crf": 18, "format.save_mode": "still images"}


def test_nested_dynamic_combo_inputs_go_with_the_outer_option(registry, base_dir):
    """exr chosen: a link still saved into the avif option's nested fps input is not sent, and the prompt runs."""
    primitive = {"id": 6, "type": "PrimitiveFloat", "mode": 0, "inputs": [],
                 "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [8]}], "widgets_values": [12.5]}
    save = _save_advanced(["linear", "exr", "32-bit float", "linear"],
                          [("format.bit_depth", "COMBO"), ("format.input_color_space", "COMBO"),
                           ("format.save_mode.fps", "FLOAT", 8)])
    ui = _workflow([_image(1, [3], width=4, height=2), primitive, save],
                   [[3, 1, 0, 3, 0, "IMAGE"], [8, 6, 0, 3, 5, "FLOAT"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"images": ["1", 0], "filename_prefix": "linear", "format": "exr",
                                     "format.bit_depth": "32-bit float", "format.input_color_space": "linear"}
    result = _run(registry, prompt)
    assert result.outputs["3"]["images"] == [{"filename": "linear_00001.exr", "subfolder": "", "type": "output"}]
    assert (base_dir / "output" / "linear_00001.exr").read_bytes()[:4] == b"\x76\x2f\x31\x01"


# ---- image compare --------------------------------------------------------------------------------

def _compare(widgets_values):
    return {"id": 3, "type": "ImageCompare", "mode": 0,
            "inputs": [{"name": "image_a", "type": "IMAGE", "link": 1},
                       {"name": "image_b", "type": "IMAGE", "link": 2}],
            "outputs": [], "widgets_values": widgets_values, "properties": {"Node name for S&R": "ImageCompare"}}


def test_image_compare_sends_the_fresh_slider_value(registry, base_dir):
    ui = _workflow([_image(1, [1], color=0xFF0000), _image(2, [2], color=0x0000FF), _compare([])],
                   [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"image_a": ["1", 0], "image_b": ["2", 0], "compare_view": {"__value__": ["", ""]}}
    result = _run(registry, prompt)
    ui_out = result.outputs["3"]
    assert len(ui_out["a_images"]) == 1 and len(ui_out["b_images"]) == 1
    assert (base_dir / "temp" / ui_out["a_images"][0]["filename"]).is_file()


@pytest.mark.parametrize("saved", [[["", ""]], [{"beforeImages": ["/view?filename=a.png"], "afterImages": []}]])
def test_image_compare_ignores_a_slider_value_older_editors_saved(registry, saved):
    """Older frontends saved the widget (its initial ``['', '']`` or the images shown after a run); today's
    frontend restores only widgets that serialize, so the slider starts fresh."""
    ui = _workflow([_image(1, [1]), _image(2, [2]), _compare(saved)],
                   [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"]["compare_view"] == {"__value__": ["", ""]}


# ---- autogrow -------------------------------------------------------------------------------------

def test_batch_images_autogrow_sockets_by_name(registry, base_dir):
    batch = {"id": 3, "type": "BatchImagesNode", "mode": 0,
             "inputs": [{"name": "images.image0", "label": "image0", "type": "IMAGE", "link": 1},
                        {"name": "images.image1", "label": "image1", "type": "IMAGE", "link": 2},
                        {"name": "images.image2", "label": "image2", "type": "IMAGE", "link": 5},
                        {"name": "images.image3", "label": "image3", "type": "IMAGE", "link": None}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}], "widgets_values": []}
    ui = _workflow([_image(1, [1, 5], width=8, height=8), _image(2, [2], width=4, height=4), batch, _preview(4, 4)],
                   [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"], [5, 1, 0, 3, 2, "IMAGE"],
                    [4, 3, 0, 4, 0, "IMAGE"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"images.image0": ["1", 0], "images.image1": ["2", 0], "images.image2": ["1", 0]}
    sizes = _size_of(registry, prompt)
    assert sizes == ("8", "8")


def test_math_expression_widget_and_autogrow_sockets(registry, base_dir):
    number = {"id": 1, "type": "PrimitiveFloat", "mode": 0, "inputs": [],
              "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [1]}], "widgets_values": [2.5]}
    count = {"id": 2, "type": "PrimitiveInt", "mode": 0, "inputs": [],
             "outputs": [{"name": "INT", "type": "INT", "links": [2]}], "widgets_values": [4, "fixed"]}
    math = {"id": 3, "type": "ComfyMathExpression", "mode": 0,
            "inputs": [{"name": "expression", "type": "STRING", "widget": {"name": "expression"}, "link": None},
                       {"name": "values.a", "label": "a", "type": "FLOAT,INT,BOOLEAN", "link": 1},
                       {"name": "values.b", "label": "b", "type": "FLOAT,INT,BOOLEAN", "link": 2},
                       {"name": "values.c", "label": "c", "type": "FLOAT,INT,BOOLEAN", "link": None}],
            "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [3]}, {"name": "INT", "type": "INT", "links": []},
                        {"name": "BOOL", "type": "BOOLEAN", "links": []}],
            "widgets_values": ["a * b + 1"]}
    ui = _workflow([number, count, math, _preview(4, 3, kind="*", name="source", node_type="PreviewAny")],
                   [[1, 1, 0, 3, 1, "FLOAT"], [2, 2, 0, 3, 2, "INT"], [3, 3, 0, 4, 0, "FLOAT"]])
    prompt = _convert(registry, ui)
    assert prompt["3"]["inputs"] == {"expression": "a * b + 1", "values.a": ["1", 0], "values.b": ["2", 0]}
    assert prompt["2"]["inputs"] == {"value": 4}
    result = _run(registry, prompt)
    assert result.outputs["4"]["text"][0] == "11.0"


def test_dynamic_combo_option_widgets_keep_their_control_entries():
    """An option's seed-like widget brings its control_after_generate entry along (addNodeInput adds both,
    dynamicWidgets.ts splices both in after the combo); optional option inputs follow the required ones."""
    from loom.nodes.kernel.schema import Combo, Float, Int, Node, NodeRegistry, Output, Schema

    seed = Int("mode.seed", default=0, min=0, control_after_generate=True, optional=True)
    scale = Float("mode.scale", default=1.0, optional=True)

    class DynamicSeedStandIn(Node):
        python_module = "tests.standins"

        @classmethod
        def define_schema(cls):
            return Schema("DynamicSeedStandIn", inputs=[Combo("mode", options_source=["seeded", "plain"]),
                                                       Int("steps", default=20), seed, scale],
                          outputs=[Output("INT")])

        @classmethod
        def object_info(cls):
            info = super().object_info()
            info["input"] = {"required": {
                "mode": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                    {"key": "seeded", "inputs": {"required": {"seed": ["INT", {"control_after_generate": True}]},
                                                 "optional": {"scale": ["FLOAT", {}]}}},
                    {"key": "plain", "inputs": {}}]}],
                "steps": ["INT", {"default": 20}]}}
            return info

    registry = NodeRegistry()
    registry.add(DynamicSeedStandIn)

    def convert(values):
        stand_in = {"id": 1, "type": "DynamicSeedStandIn", "mode": 0, "inputs": [],
                    "outputs": [{"name": "INT", "type": "INT", "links": []}], "widgets_values": values}
        prompt, warnings = ui_to_api(_workflow([stand_in], []), registry)
        assert warnings == []
        return prompt["1"]["inputs"]

    assert convert(["seeded", 7, "randomize", 1.5, 30]) == {"mode": "seeded", "mode.seed": 7, "mode.scale": 1.5,
                                                            "steps": 30}
    assert convert(["plain", 30]) == {"mode": "plain", "steps": 30}
