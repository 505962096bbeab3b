"""The editor shows and runs UI workflows shaped like ComfyUI's FLUX dev and SD3.5 examples
(tests/workflows/), on tiny random-weight files of each family put into the browser server's model folders:
every node has its definition, the file combos list the files, and Queue makes a picture of the size asked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture(scope="module")
def dit_models(loom_server) -> Path:
    from tests import fixtures_flux
    from tests.fixtures_checkpoints import checkpoint_path

    models = loom_server.base_dir / "models"
    fixtures_flux.write_flux_transformer(models / "diffusion_models" / "tiny-flux-dev.safetensors")
    fixtures_flux.write_clip_l(models / "text_encoders" / "tiny-clip-l.safetensors")
    fixtures_flux.write_t5(models / "text_encoders" / "tiny-t5.safetensors", width=fixtures_flux.FLUX_CONTEXT)
    fixtures_flux.write_flux_vae(models / "vae" / "tiny-flux-ae.safetensors")
    target = models / "checkpoints" / "tiny-sd3.safetensors"
    target.write_bytes(checkpoint_path("sd3").read_bytes())
    return models


def _with_values(name: str, values: dict[int, list]) -> dict:
    workflow = json.loads((WORKFLOWS / name).read_text())
    for node in workflow["nodes"]:
        if node["id"] in values:
            node["widgets_values"] = values[node["id"]]
    return workflow


def _load_and_run(editor, workflow: dict) -> dict:
    editor.js("(w) => loom.load(w)", workflow)
    editor.frame()
    nodes = editor.js("loom.nodes()")
    missing = [n["type"] for n in nodes if editor.js(f"loom.defs.get('{n['type']}') === null")
               and n["type"] != "PrimitiveNode"]
    assert not missing, f"the editor has no definition for {missing}"
    save = next(n["id"] for n in nodes if n["type"] == "SaveImage")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function(f"loom.nodeState({save}).images.length > 0 && loom.nodeState({save}).images[0].loaded"
                                  f" || loom.nodeState({save}).error || document.querySelector('.toast.error')",
                                  timeout=240000)
    errors = editor.page.locator(".toast.error").all_inner_texts()
    assert not errors, errors
    return editor.js(f"loom.nodeState({save})")["images"][0]


def test_flux_dev_workflow_shows_and_runs_in_the_editor(editor, dit_models):
    workflow = _with_values("flux-dev.json", {
        12: ["tiny-flux-dev.safetensors", "default"],
        11: ["tiny-t5.safetensors", "tiny-clip-l.safetensors", "flux", "default"],
        10: ["tiny-flux-ae.safetensors"],
        34: [64, "fixed"], 35: [64, "fixed"],
        17: ["simple", 2, 1], 25: [5, "fixed"]})
    image = _load_and_run(editor, workflow)
    assert (image["width"], image["height"]) == (64, 64)
    unet_files = editor.js("""() => loom.graph.nodes.find(n => n.type === 'UNETLoader').widget('unet_name')
        .options.values""")
    assert "tiny-flux-dev.safetensors" in unet_files


def test_sd35_workflow_shows_and_runs_in_the_editor(editor, dit_models):
    workflow = _with_values("sd3.5-simple.json", {
        4: ["tiny-sd3.safetensors"], 5: [64, 64, 1],
        3: [7, "fixed", 2, 4.01, "euler", "sgm_uniform", 1]})
    image = _load_and_run(editor, workflow)
    assert (image["width"], image["height"]) == (64, 64)
