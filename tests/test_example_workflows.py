"""The example workflows in workflows/: well-formed UI JSON that converts, validates and runs.

The runs use the tiny generated checkpoints of ``tests/fixtures_checkpoints.py`` through the CLI
(``loom run WORKFLOW --set NODE.INPUT=VALUE``), at 64×64 pixels and 2–3 steps.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
EXAMPLES = ("txt2img", "img2img", "inpaint", "hires-fix", "sdxl-base-refiner")
MODEL_FILES = ("sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors")  # loom-demo is built in


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def node_types(workflow: dict) -> set[str]:
    return {node["type"] for node in workflow["nodes"]}


def require_node_types(registry, workflow: dict) -> None:
    missing = sorted(t for t in node_types(workflow) if t not in registry)
    if missing:
        pytest.skip(f"node types not in the registry yet: {', '.join(missing)}")


@pytest.mark.parametrize("name", EXAMPLES)
def test_workflow_is_well_formed_litegraph_0_4(name):
    workflow = load(name)
    assert workflow["version"] == 0.4
    assert set(workflow) >= {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"}
    assert set(workflow["extra"]["ds"]) == {"scale", "offset"}
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(link_ids)) == len(link_ids) and workflow["last_link_id"] >= max(link_ids)

    for node in nodes.values():
        assert set(node) >= {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs",
                             "properties"}
        assert node["properties"]["Node name for S&R"] == node["type"] and node["mode"] == 0
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
    # every link appears on both of its ends, with the socket's type
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        output = nodes[origin]["outputs"][origin_slot]
        socket = nodes[target]["inputs"][target_slot]
        assert link_id in output["links"] and socket["link"] == link_id
        assert output["type"] == socket["type"] == link_type
    for node in nodes.values():
        for socket in node["inputs"]:
            assert socket["link"] in link_ids, f"node {node['id']} input {socket['name']} is unconnected"
        for output in node["outputs"]:
            assert all(link in link_ids for link in output["links"] or [])
    # `order` is a topological order of the graph
    order = {node["id"]: node["order"] for node in nodes.values()}
    assert sorted(order.values()) == list(range(len(nodes)))
    assert all(order[origin] < order[target] for _, origin, _, target, _, _ in workflow["links"])


@pytest.mark.parametrize("name", EXAMPLES)
def test_widget_values_match_the_node_schemas(name, registry):
    workflow = load(name)
    for node in workflow["nodes"]:
        node_class = registry.get(node["type"])
        if node_class is None:
            continue  # its part of the library has not landed; checked by the conversion test
        widgets = node_class.schema().widget_inputs()
        expected = len(widgets) + sum(spec.has_control_after_generate for spec in widgets)
        if node["type"] == "LoadImage":
            expected += 1  # the upload button's "image" entry
        assert len(node.get("widgets_values", [])) == expected, node["type"]
        sockets = [spec.name for spec in node_class.schema().inputs if not spec.has_widget]
        assert [socket["name"] for socket in node["inputs"]] == sockets, node["type"]
        assert [o["type"] for o in node["outputs"]] == [o.type for o in node_class.schema().outputs]


def test_default_graph_is_comfyuis_on_the_demo_model():
    """ComfyUI's default graph, pointed at the demo model Loom ships, with one of its captions at its size."""
    from tools import demo_scenes

    workflow = load("txt2img")
    by_type = {}
    for node in workflow["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    assert by_type["CheckpointLoaderSimple"][0]["widgets_values"] == ["loom-demo.safetensors"]
    positive, negative = sorted(by_type["CLIPTextEncode"], key=lambda node: node["id"])
    demo_scenes.parse_caption(positive["widgets_values"][0])
    assert negative["widgets_values"] == [""]  # the empty caption the model learned as "unconditional"
    assert by_type["EmptyLatentImage"][0]["widgets_values"] == [demo_scenes.SIZE, demo_scenes.SIZE, 1]
    assert by_type["KSampler"][0]["widgets_values"][1:] == ["randomize", 20, 5, "euler", "normal", 1]
    assert {"VAEDecode", "SaveImage"} <= set(by_type)


@pytest.fixture
def example_models(base_dir):
    """Placeholder files with the names the examples use, so their combos validate."""
    for name in MODEL_FILES:
        (base_dir / "models" / "checkpoints" / name).write_bytes(b"")
    return base_dir


@pytest.mark.parametrize("name", EXAMPLES)
def test_workflow_converts_and_validates(name, registry, example_models):
    workflow_module = pytest.importorskip("loom.server.workflow")
    graph = pytest.importorskip("loom.server.validation")
    workflow = load(name)
    require_node_types(registry, workflow)
    converted = workflow_module.ui_to_api(workflow, registry)
    prompt = converted.prompt
    assert len(prompt) == len(workflow["nodes"])
    result = graph.validate_prompt(prompt, registry)
    assert result.ok, (result.error, result.node_errors)
    # widget values landed on the right names
    samplers = [node for node in prompt.values() if node["class_type"] in ("KSampler", "KSamplerAdvanced")]
    assert all(node["inputs"]["sampler_name"] == "euler" and node["inputs"]["scheduler"] == "normal"
               for node in samplers)
    if name == "img2img":
        assert samplers[0]["inputs"]["denoise"] == 0.75
    if name == "hires-fix":
        assert sorted(node["inputs"]["denoise"] for node in samplers) == [0.5, 1]
    if name == "sdxl-base-refiner":
        base, refiner = sorted(samplers, key=lambda node: node["inputs"]["start_at_step"])
        assert base["inputs"]["return_with_leftover_noise"] == "enable" and base["inputs"]["end_at_step"] == 20
        assert refiner["inputs"]["add_noise"] == "disable" and refiner["inputs"]["start_at_step"] == 20


# ---------------------------------------------------------------- runs on the tiny checkpoints

RUN_FAMILIES = ("sd1", "sd2_v", "sdxl")
SIZE = ["--set", "5.width=64", "--set", "5.height=64"]
# per workflow: the --set overrides that make it tiny and fast, and the size of the saved image
RUNS = {
    "txt2img": (SIZE + ["--set", "3.steps=2"], (64, 64)),
    "img2img": (["--set", "10.image=small.png", "--set", "3.steps=2"], (64, 64)),
    "inpaint": (["--set", "10.image=small-hole.png", "--set", "3.steps=2"], (64, 64)),
    "hires-fix": (SIZE + ["--set", "3.steps=2", "--set", "11.steps=2"], (96, 96)),
    "sdxl-base-refiner": (SIZE + ["--set", "10.steps=3", "--set", "10.end_at_step=2",
                                  "--set", "11.steps=3", "--set", "11.start_at_step=2"], (64, 64)),
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """One models/ folder for the whole session (same paths, so loaded models can be reused)."""
    fixtures = pytest.importorskip("tests.fixtures_checkpoints")
    models = tmp_path_factory.mktemp("example-models")
    folder = models / "checkpoints"
    folder.mkdir()
    for family in RUN_FAMILIES + ("sdxl_refiner",):
        fixtures.write_checkpoint(family, folder / fixtures.FILE_NAMES[family])
    return models


@pytest.fixture
def small_inputs(base_dir) -> Path:
    """64×64 versions of the example pictures in the input directory."""
    for source, target in (("example.png", "small.png"), ("example-inpaint.png", "small-hole.png")):
        Image.open(WORKFLOWS / source).resize((64, 64), Image.Resampling.LANCZOS).save(base_dir / "input" / target)
    return base_dir


def loom_run(base_dir: Path, models: Path, name: str, *arguments: str) -> list[Path]:
    """``loom run workflows/NAME.json ...`` in-process; returns the images it saved."""
    cli = pytest.importorskip("loom.server.cli")
    before = set((base_dir / "output").rglob("*.png"))
    code = cli.main(["run", str(WORKFLOWS / f"{name}.json"), "--base-dir", str(base_dir),
                     "--models-dir", str(models), "--quiet", *arguments])
    assert code == 0, f"loom run {name} exited with {code}"
    return sorted(set((base_dir / "output").rglob("*.png")) - before)


def checkpoint_overrides(name: str, family: str) -> list[str]:
    from tests.fixtures_checkpoints import FILE_NAMES

    overrides = ["--set", f"4.ckpt_name={FILE_NAMES[family]}"]
    if name == "sdxl-base-refiner":
        overrides += ["--set", f"12.ckpt_name={FILE_NAMES['sdxl_refiner']}"]
    return overrides


@pytest.mark.parametrize("name,family", [(name, family) for family in RUN_FAMILIES
                                         for name in ("txt2img", "img2img", "inpaint", "hires-fix")]
                         + [("sdxl-base-refiner", "sdxl")])
def test_example_runs_on_tiny_checkpoint(name, family, tiny_models, small_inputs, registry):
    require_node_types(registry, load(name))
    overrides, size = RUNS[name]
    (saved,) = loom_run(small_inputs, tiny_models, name, *checkpoint_overrides(name, family), *overrides)
    picture = Image.open(saved)
    assert picture.size == size and picture.mode == "RGB"
    assert np.array(picture).std() > 0  # random weights still give a varied picture, not a blank one
    # the PNG carries the prompt that ran and the UI workflow it came from
    prompt = json.loads(picture.text["prompt"])
    from tests.fixtures_checkpoints import FILE_NAMES
    assert prompt["4"]["inputs"]["ckpt_name"] == FILE_NAMES[family]
    assert json.loads(picture.text["workflow"])["nodes"] == load(name)["nodes"]


def test_same_workflow_and_seed_give_identical_png(tiny_models, small_inputs, registry):
    require_node_types(registry, load("txt2img"))
    arguments = [*checkpoint_overrides("txt2img", "sd1"), *RUNS["txt2img"][0], "--seed", "1234"]
    (first,) = loom_run(small_inputs, tiny_models, "txt2img", *arguments)
    (second,) = loom_run(small_inputs, tiny_models, "txt2img", *arguments)
    assert first != second
    assert first.read_bytes() == second.read_bytes()
    (other,) = loom_run(small_inputs, tiny_models, "txt2img", *[a if a != "1234" else "1235" for a in arguments])
    assert not np.array_equal(np.array(Image.open(other)), np.array(Image.open(first)))
