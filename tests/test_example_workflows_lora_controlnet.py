"""The LoRA and ControlNet example workflows: well-formed, valid, and runnable on tiny generated models.

The shared checks come from ``tests/test_example_workflows.py``; the runs use the tiny SD1 checkpoint
with a tiny kohya LoRA / a tiny ControlNet in the original layout, at 64×64 pixels and 2 steps.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import tests.test_example_workflows as examples

NAMES = ("lora", "controlnet-canny")


@pytest.mark.parametrize("name", NAMES)
def test_example_is_well_formed_and_its_widgets_match(name, registry):
    examples.test_workflow_is_well_formed_litegraph_0_4(name)
    examples.test_widget_values_match_the_node_schemas(name, registry)


@pytest.fixture
def models(base_dir):
    """The example's model file names in base_dir/models, backed by tiny generated models."""
    from tests.fixtures_checkpoints import write_checkpoint
    from tests.fixtures_controlnet import write_controlnet
    from tests.fixtures_lora import write_lora

    write_checkpoint("sd1", base_dir / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    write_lora("kohya_sd1", base_dir / "models" / "loras" / "example-lora.safetensors")
    write_controlnet("sd1", base_dir / "models" / "controlnet" / "control_v11p_sd15_canny.safetensors")
    Image.open(examples.WORKFLOWS / "example.png").resize((64, 64), Image.Resampling.LANCZOS).save(
        base_dir / "input" / "small.png")
    return base_dir


@pytest.mark.parametrize("name", NAMES)
def test_example_converts_validates_and_runs(name, models, registry):
    from loom.server.validation import validate_prompt
    from loom.server.workflow import ui_to_api

    workflow = examples.load(name)
    prompt = ui_to_api(workflow, registry).prompt
    result = validate_prompt(prompt, registry)
    assert result.ok, (result.error, result.node_errors)
    by_type = {node["class_type"]: node for node in prompt.values()}
    if name == "lora":
        assert by_type["KSampler"]["inputs"]["model"] == [by_type_id(prompt, "LoraLoader"), 0]
        assert by_type["LoraLoader"]["inputs"]["strength_clip"] == 1.0
        overrides = ["--set", "10.strength_model=0.8"]
    else:
        assert by_type["ControlNetApplyAdvanced"]["inputs"]["image"] == [by_type_id(prompt, "Canny"), 0]
        assert by_type["Canny"]["inputs"]["low_threshold"] == 0.05
        overrides = ["--set", "10.image=small.png"]
    size = ["--set", "5.width=64", "--set", "5.height=64", "--set", "3.steps=2"]
    (saved,) = examples.loom_run(models, models / "models", name, *size, *overrides)
    picture = Image.open(saved)
    assert picture.size == (64, 64) and np.array(picture).std() > 0
    assert json.loads(picture.text["workflow"])["nodes"] == workflow["nodes"]


def test_controlnet_example_without_its_controlnet_exits_2_naming_the_input(models, capsys):
    """The Canny preview alone could run, but a command line run that skips the SaveImage output is an error."""
    from loom.server.cli import main

    (models / "models" / "controlnet" / "control_v11p_sd15_canny.safetensors").unlink()
    code = main(["run", str(examples.WORKFLOWS / "controlnet-canny.json"), "--base-dir", str(models), "--quiet",
                 "--set", "10.image=small.png"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("error: node 12 (ControlNetLoader) input 'control_net_name': ")
    assert "control_v11p_sd15_canny.safetensors" in lines[0]
    assert lines[1:] == ["error: output node 9 (SaveImage) cannot run: it needs node 12 (ControlNetLoader)",
                         "error: nothing was run: 1 of 2 outputs cannot run"]
    assert not list((models / "output").rglob("*.png")) and not list((models / "temp").rglob("*.png"))


def test_canny_example_thresholds_find_the_outlines_of_its_own_picture():
    """The example's thresholds draw the sun, the hills and the tree of example.png (0.4/0.8 drew nothing)."""
    from loom.nodes.controlnet import Canny
    from loom.nodes.image import load_image_file

    (canny,) = [node for node in examples.load("controlnet-canny")["nodes"] if node["type"] == "Canny"]
    low, high = canny["widgets_values"]
    image, _ = load_image_file(examples.WORKFLOWS / "example.png")
    (edges,) = Canny.execute(image, low, high)
    mask = edges[0, :, :, 0]
    assert 0.005 < float(mask.mean()) < 0.05  # outlines, not noise
    assert mask[60:180, 320:440].sum() > 200  # the sun, a circle about 100 px across
    assert mask[230:380, 40:130].sum() > 200  # the tree
    assert mask[240:340].any(dim=0).float().mean() > 0.95  # the hills' line crosses the whole picture


def by_type_id(prompt: dict, class_type: str) -> str:
    (node_id,) = [i for i, node in prompt.items() if node["class_type"] == class_type]
    return node_id
