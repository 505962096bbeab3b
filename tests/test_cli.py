"""`loom run | validate | convert | nodes` on the test node pack: overrides, exit codes, embedded workflows."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from loom.server.cli import main
from tests.conftest import NODEPACK

UI_WORKFLOW = {
    "last_node_id": 4, "last_link_id": 3, "version": 0.4, "config": {}, "groups": [],
    "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
    "nodes": [
        {"id": 1, "type": "TestSeeded", "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 0, "mode": 0,
         "title": "Seed source", "inputs": [],
         "outputs": [{"name": "value", "type": "INT", "links": [1], "slot_index": 0}],
         "properties": {"Node name for S&R": "TestSeeded"}, "widgets_values": [5, "randomize", 3]},
        {"id": 2, "type": "TestIntToString", "pos": [350, 0], "size": [200, 60], "flags": {}, "order": 1,
         "mode": 0, "inputs": [{"name": "value", "type": "INT", "link": 1}],
         "outputs": [{"name": "STRING", "type": "STRING", "links": [2], "slot_index": 0}],
         "properties": {"Node name for S&R": "TestIntToString"}},
        {"id": 3, "type": "TestStringConcat", "pos": [600, 0], "size": [300, 120], "flags": {}, "order": 2,
         "mode": 0, "inputs": [{"name": "b", "type": "STRING", "link": 2, "widget": {"name": "b"}}],
         "outputs": [{"name": "text", "type": "STRING", "links": [3], "slot_index": 0}],
         "properties": {"Node name for S&R": "TestStringConcat"}, "widgets_values": ["value=", "", ""]},
        {"id": 4, "type": "TestOutput", "pos": [950, 0], "size": [200, 60], "flags": {}, "order": 3, "mode": 0,
         "inputs": [{"name": "value", "type": "*", "link": 3}], "outputs": [],
         "properties": {"Node name for S&R": "TestOutput"}},
    ],
    "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 1, "STRING"], [3, 3, 0, 4, 0, "STRING"]],
}


def loom(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(UI_WORKFLOW))
    return path


def common(base_dir) -> list[str]:
    return ["--base-dir", str(base_dir), "--nodes", str(NODEPACK)]


def test_run_ui_workflow_prints_outputs(capsys, base_dir, workflow_file):
    code, out, err = loom(capsys, "run", str(workflow_file), *common(base_dir))
    assert code == 0, err
    assert "node 4: value=5003" in out
    assert "[1/4]" in err and "TestOutput" in err


def test_set_by_id_title_and_type_and_seed(capsys, base_dir, workflow_file):
    code, out, _ = loom(capsys, "run", str(workflow_file), *common(base_dir),
                        "--set", "Seed source.steps=7", "--set", "TestStringConcat.a=n:", "--seed", "9")
    assert code == 0
    assert "node 4: n:9007" in out
    code, out, _ = loom(capsys, "run", str(workflow_file), *common(base_dir), "--set", "1.seed=2")
    assert code == 0 and "node 4: value=2003" in out


@pytest.mark.parametrize("override, message", [
    ("nosuch.steps=1", "no node with id, title or type 'nosuch'"),
    ("1.nosuch=1", "has no input 'nosuch'"),
    ("1steps", "expected NODE.INPUT=VALUE"),
])
def test_bad_overrides_are_usage_errors(capsys, base_dir, workflow_file, override, message):
    code, _, err = loom(capsys, "run", str(workflow_file), *common(base_dir), "--set", override)
    assert code == 2 and message in err


def test_invalid_workflow_exits_2_with_one_line_per_error(capsys, base_dir, tmp_path):
    prompt = {"1": {"class_type": "TestAdd", "inputs": {"a": "x"}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    path = tmp_path / "api.json"
    path.write_text(json.dumps(prompt))
    code, _, err = loom(capsys, "run", str(path), *common(base_dir))
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2
    assert any("node 1 (TestAdd) input 'a'" in line for line in lines)
    assert any("node 1 (TestAdd) input 'b'" in line and "missing" in line for line in lines)
    code, _, err = loom(capsys, "validate", str(path), *common(base_dir))
    assert code == 2 and "input 'a'" in err


def test_failed_run_exits_1_naming_the_node(capsys, base_dir, tmp_path):
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
              "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "kaput"}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    path = tmp_path / "api.json"
    path.write_text(json.dumps(prompt))
    code, _, err = loom(capsys, "run", str(path), *common(base_dir))
    assert code == 1 and "node 2 (TestRaise): kaput" in err


def test_unknown_node_type_is_reported_by_name(capsys, base_dir, tmp_path):
    workflow = json.loads(json.dumps(UI_WORKFLOW))
    workflow["nodes"][1]["type"] = "FancyCustomNode"
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(workflow))
    for command in ("run", "validate"):
        code, _, err = loom(capsys, command, str(path), *common(base_dir))
        assert code == 2
        assert [line for line in err.splitlines() if "FancyCustomNode" in line] == [
            "error: node 2 (FancyCustomNode): unknown node type 'FancyCustomNode' (is its node pack installed?)"]
        assert err.splitlines()[0] == f"error: {path}: the workflow cannot be converted"


def test_an_output_that_fails_validation_stops_the_run_with_exit_2(capsys, base_dir, tmp_path):
    """ComfyUI's server runs the valid outputs and skips the others; ``loom run`` says why and runs nothing."""
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 4}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": "many"}},
              "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}}}
    path = tmp_path / "api.json"
    path.write_text(json.dumps(prompt))
    code, out, err = loom(capsys, "run", str(path), *common(base_dir))
    assert code == 2 and out == ""  # node 2 did not run either
    lines = err.splitlines()
    assert lines[0].startswith("error: node 3 (TestAdd) input 'b': ") and "many" in lines[0]
    assert lines[1:] == ["error: output node 4 (TestOutput) cannot run: it needs node 3 (TestAdd)",
                         "error: nothing was run: 1 of 2 outputs cannot run"]
    code, out, err = loom(capsys, "validate", str(path), *common(base_dir))
    assert code == 2 and out == "" and "warning" not in err
    assert err.splitlines() == lines[:2]


def test_missing_file_and_non_workflow_json(capsys, base_dir, tmp_path):
    code, _, err = loom(capsys, "run", str(tmp_path / "nope.json"), *common(base_dir))
    assert code == 2 and "no such file" in err
    path = tmp_path / "index.json"
    path.write_text(json.dumps([{"templates": []}]))
    code, _, err = loom(capsys, "run", str(path), *common(base_dir))
    assert code == 2 and err.startswith("error:")


def test_convert_prints_api_json(capsys, base_dir, workflow_file):
    code, out, _ = loom(capsys, "convert", str(workflow_file), *common(base_dir))
    assert code == 0
    prompt = json.loads(out)
    assert prompt["1"]["inputs"] == {"seed": 5, "steps": 3}
    assert prompt["3"]["inputs"]["b"] == ["2", 0]
    assert prompt["1"]["_meta"]["title"] == "Seed source"


def test_convert_into_a_closed_pipe_ends_quietly(base_dir, workflow_file):
    """``loom convert x | head``: the reader is gone before loom writes; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([sys.executable, "-m", "loom.server.cli", "convert", str(workflow_file),
                              *common(base_dir)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                             timeout=300)
    finally:
        os.close(write_end)
    assert run.returncode == 1
    assert run.stderr == ""


def test_run_and_convert_png_with_embedded_workflow(capsys, base_dir, tmp_path):
    info = PngInfo()
    info.add_text("workflow", json.dumps(UI_WORKFLOW))
    path = tmp_path / "shared.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    code, out, _ = loom(capsys, "run", str(path), *common(base_dir))
    assert code == 0 and "node 4: value=5003" in out

    only_prompt = PngInfo()
    only_prompt.add_text("prompt", json.dumps({"1": {"class_type": "TestConstInt", "inputs": {"value": 4}},
                                               "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}))
    api_png = tmp_path / "api.png"
    Image.new("RGB", (8, 8)).save(api_png, pnginfo=only_prompt)
    code, out, _ = loom(capsys, "run", str(api_png), *common(base_dir))
    assert code == 0 and "node 2: 4" in out

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    code, _, err = loom(capsys, "run", str(plain), *common(base_dir))
    assert code == 2 and err == f"error: {plain}: no workflow in this image\n"  # the path once


def test_nodes_lists_and_describes(capsys, base_dir):
    code, out, _ = loom(capsys, "nodes", *common(base_dir))
    assert code == 0 and "TestSeeded" in out and "PrimitiveInt" in out
    code, out, _ = loom(capsys, "nodes", "TestChoice", *common(base_dir))
    assert code == 0 and "choice: COMBO" in out and "alpha, beta, gamma" in out
    code, out, _ = loom(capsys, "nodes", "TestSeeded", "--json", *common(base_dir))
    assert json.loads(out)["TestSeeded"]["input_order"] == {"required": ["seed", "steps"]}
    code, _, err = loom(capsys, "nodes", "Seeded", *common(base_dir))
    assert code == 2 and "did you mean TestSeeded" in err


def test_output_dir_option(capsys, base_dir, tmp_path):
    from loom.nodes.kernel import folders
    out_dir = tmp_path / "elsewhere"
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 4}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    path = tmp_path / "api.json"
    path.write_text(json.dumps(prompt))
    code, _, _ = loom(capsys, "run", str(path), *common(base_dir), "--output-dir", str(out_dir))
    assert code == 0 and folders.output_dir() == out_dir.resolve() and out_dir.is_dir()
