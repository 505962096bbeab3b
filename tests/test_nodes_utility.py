"""Text and logic utility nodes (nodes/strings.py, nodes/logic.py) against ComfyUI's nodes_string.py,
nodes_text.py, nodes_logic.py, nodes_math.py, nodes_resolution.py and nodes_preview_any.py."""
from __future__ import annotations

import json
import time

import pytest


def run(registry, name, **inputs):
    return registry.get(name).execute(**inputs)


def test_string_schemas(registry):
    info = registry.object_info()
    ml = ["STRING", {"multiline": True}]
    assert info["StringConcatenate"]["input"]["required"] == {"string_a": ml, "string_b": ml,
                                                              "delimiter": ["STRING", {"default": ""}]}
    assert info["StringConcatenate"]["display_name"] == "Concatenate Text"
    assert info["StringReplace"]["input"]["required"] == {"string": ml, "find": ml, "replace": ml}
    assert info["StringLength"]["output_name"] == ["length"] and info["StringLength"]["output"] == ["INT"]
    assert info["RegexExtract"]["input"]["required"]["group_index"] == [
        "INT", {"default": 1, "min": 0, "max": 100, "advanced": True}]
    assert info["RegexReplace"]["input_order"] == {"required": ["string", "regex_pattern", "replace"],
                                                   "optional": ["case_insensitive", "multiline", "dotall", "count"]}
    assert info["JsonExtractString"]["input"]["required"] == {"json_string": ml, "key": ["STRING", {}]}
    assert all(info[n]["category"] == "text" for n in ("StringConcatenate", "StringReplace", "StringLength",
                                                        "RegexExtract", "RegexReplace", "JsonExtractString", "SaveText"))
    assert info["SaveText"]["output_node"] is True and info["SaveText"]["output_name"] == ["text"]


def test_string_behaviour(registry):
    assert run(registry, "StringConcatenate", string_a="a", string_b="b", delimiter=", ") == ("a, b",)
    assert run(registry, "StringReplace", string="a-b-c", find="-", replace="+") == ("a+b+c",)
    assert run(registry, "StringLength", string="héllo") == (5,)
    text = "Cat 12, dog 7\ncat 3"
    extract = lambda mode, pattern, **kw: run(registry, "RegexExtract", string=text, regex_pattern=pattern, mode=mode,
                                              **({"case_insensitive": True, "multiline": False, "dotall": False,
                                                  "group_index": 1} | kw))[0]
    assert extract("First Match", r"cat \d+") == "Cat 12"
    assert extract("First Match", r"cat \d+", case_insensitive=False) == "cat 3"
    assert extract("All Matches", r"(\w+) (\d+)") == "Cat\ndog\ncat"  # first group of each tuple
    assert extract("First Group", r"dog (\d+)") == "7"
    assert extract("All Groups", r"(\w+) (\d+)", group_index=2) == "12\n7\n3"
    assert extract("First Group", r"dog (\d+)", group_index=2) == ""
    assert extract("First Match", r"([") == ""  # a broken pattern gives nothing
    assert run(registry, "RegexReplace", string="a1b22", regex_pattern=r"\d+", replace="#") == ("a#b#",)
    assert run(registry, "RegexReplace", string="a1b22", regex_pattern=r"\d", replace="#", count=2) == ("a#b#2",)
    assert run(registry, "RegexReplace", string="A a", regex_pattern="a", replace="x",
               case_insensitive=False) == ("A x",)


def test_json_extract_string(registry):
    text = 'Here:\n```json\n{"name": "cat", "n": 3, "none": null, "list": [1, 2]}\n```'
    get = lambda key, source=text: run(registry, "JsonExtractString", json_string=source, key=key)[0]
    assert get("name") == "cat" and get("n") == "3" and get("list") == "[1, 2]"
    assert get("none") == "" and get("missing") == ""
    assert get("a", "{broken {\"a\": 1}") == "1"  # the first brace that parses
    assert get("a", "no json") == ""


def test_save_text(registry, base_dir):
    from loom.nodes.kernel import folders

    out = registry.get("SaveText").execute(text='{"a":1,"b":"é"}', filename_prefix="notes/t", format="json")
    assert out.values == ('{"a":1,"b":"é"}',)
    saved = out.ui["files"][0]
    assert saved == {"filename": "t_00001.json", "subfolder": "notes", "type": "output"}
    path = folders.output_dir() / "notes" / "t_00001.json"
    assert path.read_text(encoding="utf-8") == json.dumps({"a": 1, "b": "é"}, indent=2, ensure_ascii=False)
    again = registry.get("SaveText").execute(text="plain", filename_prefix="notes/t", format="txt")
    assert again.ui["text"] == ("plain",) and again.ui["files"][0]["filename"] == "t_00001.txt"
    third = registry.get("SaveText").execute(text="more", filename_prefix="notes/t", format="txt")
    assert third.ui["files"][0]["filename"] != "t_00001.txt"  # never overwrites


def test_logic_schemas(registry):
    info = registry.object_info()
    switch = info["ComfySwitchNode"]
    assert switch["input"]["required"] == {"switch": ["BOOLEAN", {}]}
    template = {"template": {"template_id": "switch", "allowed_types": "*"}}
    assert switch["input"]["optional"] == {"on_false": ["COMFY_MATCHTYPE_V3", {"lazy": True} | template],
                                           "on_true": ["COMFY_MATCHTYPE_V3", {"lazy": True} | template]}
    assert switch["output"] == ["COMFY_MATCHTYPE_V3"] and switch["output_name"] == ["output"]
    assert switch["display_name"] == "If/Else Switch" and switch["experimental"] is True
    combo = info["CustomCombo"]
    assert combo["input"] == {"required": {"choice": [[], {}]}}
    assert combo["output"] == ["STRING", "INT"] and combo["output_name"] == ["STRING", "INDEX"]
    math_node = info["ComfyMathExpression"]
    assert math_node["input"]["required"]["expression"] == ["STRING", {"default": "a + b", "multiline": True}]
    values = math_node["input"]["required"]["values"]
    assert values[0] == "COMFY_AUTOGROW_V3" and values[1]["template"]["names"] == list("abcdefghijklmnopqrstuvwxyz")
    assert values[1]["template"]["min"] == 1
    assert math_node["output"] == ["FLOAT", "INT", "BOOLEAN"] and math_node["output_name"] == ["FLOAT", "INT", "BOOL"]
    res = info["ResolutionSelector"]
    assert res["input_order"] == {"required": ["aspect_ratio", "megapixels", "multiple", "minimum"]}
    assert res["input"]["required"]["aspect_ratio"][1]["default"] == "1:1 (Square)"
    assert res["output_name"] == ["width", "height"]
    assert info["PreviewAny"]["input"]["required"] == {"source": ["*", {}]} and info["PreviewAny"]["output_node"]


def test_switch_and_combo(registry):
    assert run(registry, "ComfySwitchNode", switch=True, on_true="T", on_false="F") == ("T",)
    assert run(registry, "ComfySwitchNode", switch=False, on_true="T", on_false="F") == ("F",)
    assert run(registry, "ComfySwitchNode", switch=False, on_true="T") == (None,)
    assert run(registry, "CustomCombo", choice="anything", index=2) == ("anything", 2)
    assert registry.get("CustomCombo").schema().input("choice").check_value("not listed") == "not listed"


def math_expr(registry, expression, **values):
    return run(registry, "ComfyMathExpression", expression=expression, **{f"values.{k}": v for k, v in values.items()})


def test_math_expression_values(registry):
    assert math_expr(registry, "a + b", a=1.5, b=2) == (3.5, 3, True)
    assert math_expr(registry, "a/2", a=1080) == (540.0, 540, True)
    assert math_expr(registry, "sum(values) / len_ if False else max(a, b) ** 2", a=3, b=-4) == (9.0, 9, True)
    assert math_expr(registry, "floor(sqrt(a)) + round(2.5) + pow(2, 10) + values[1]", a=17, b=10) == (1040.0, 1040, True)
    assert math_expr(registry, "a > b and a or b", a=2, b=5) == (5.0, 5, True)
    assert math_expr(registry, "a - a", a=7) == (0.0, 0, False)
    assert math_expr(registry, "-7 // 2 + 7 % 3 + (1 if a else 0)", a=True) == (-2.0, -2, True)
    assert math_expr(registry, "int(a * 10) / 10", a=0.27) == (0.2, 0, True)


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "a.__class__", "().__class__.__bases__", "open('x')", "eval('1')",
    "[x for x in values]", "lambda: 1", "'a' * 10", "b", "9**9**9", "2 ** 5000000", "pow(2, 5000)",
    "10**300000 * 10**300000", "1 << 100000", "1/0", "sqrt(-1)", "10.0 ** 400", "", "   ", "a +",
    "values[0.5]", "sum(*values)", "max(a=1)", "(" * 200 + "1" + ")" * 200 + "+" * 100000 + "1",
])
def test_math_expression_refuses_hostile_or_bad_input(registry, expression):
    start = time.monotonic()
    with pytest.raises(ValueError):
        math_expr(registry, expression, a=2)
    assert time.monotonic() - start < 2.0


def test_resolution_selector(registry):
    pick = lambda ratio, mp, multiple=8, minimum=256: run(registry, "ResolutionSelector", aspect_ratio=ratio,
                                                          megapixels=mp, multiple=multiple, minimum=minimum)
    assert pick("1:1 (Square)", 1.0) == (1024, 1024)
    assert pick("16:9 (Widescreen)", 1.0) == (1368, 768)
    assert pick("2:3 (Portrait Photo)", 0.5, multiple=64) == (576, 896)
    # below the minimum: the smallest multiple-of-8 pair in the ratio with both sides >= 256
    assert pick("21:9 (Ultrawide)", 0.1) == (21 * 32, 9 * 32)


def test_preview_any(registry):
    text = lambda value: registry.get("PreviewAny").execute(source=value).ui["text"][0]
    assert text("hi") == "hi" and text(3) == "3" and text(True) == "True" and text(None) == "None"
    assert text({"a": [1, 2]}) == json.dumps({"a": [1, 2]}, indent=4)
    assert text(object()).startswith("<object object")
