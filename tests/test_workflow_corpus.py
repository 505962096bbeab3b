"""tools/workflow_corpus.py: the family rule, the placeholders, the wrong-input check and the grouped reasons,
on hand-written workflows in the shapes ComfyUI's editor saves (the fetched corpus is never part of the repo)."""
from __future__ import annotations

import json

import pytest
from PIL import Image

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    from fixtures_workflow import inp, node, out, workflow
except ModuleNotFoundError:
    from tests.fixtures_workflow import inp, node, out, workflow

from loom.nodes.kernel import folders
from loom.nodes.kernel.schema import default_registry
from loom.server.workflow import LoadedWorkflow, embed_png_metadata
from tools import workflow_corpus as corpus

SD15 = "SD1.5/dreamshaper_8.safetensors"


@pytest.fixture(autouse=True)
def _restore_folders():
    saved = folders.current()
    yield
    folders._folders = saved


def _txt2img(ckpt=SD15, sampler_widgets=(7, "randomize", 20, 8.0, "euler", "normal", 1.0), image=None):
    nodes = [
        node(1, "CheckpointLoaderSimple", [], [out("MODEL", "MODEL", [1]), out("CLIP", "CLIP", [2, 3]),
                                               out("VAE", "VAE", [7])], [ckpt]),
        node(2, "CLIPTextEncode", [inp("clip", "CLIP", 2)], [out("CONDITIONING", "CONDITIONING", [4])], ["a fox"]),
        node(3, "CLIPTextEncode", [inp("clip", "CLIP", 3)], [out("CONDITIONING", "CONDITIONING", [5])], [""]),
        node(4, "EmptyLatentImage", [], [out("LATENT", "LATENT", [6])], [512, 512, 1]),
        node(5, "KSampler", [inp("model", "MODEL", 1), inp("positive", "CONDITIONING", 4),
                             inp("negative", "CONDITIONING", 5), inp("latent_image", "LATENT", 6)],
             [out("LATENT", "LATENT", [8])], list(sampler_widgets)),
        node(6, "VAEDecode", [inp("samples", "LATENT", 8), inp("vae", "VAE", 7)], [out("IMAGE", "IMAGE", [9])]),
        node(7, "SaveImage", [inp("images", "IMAGE", 9)], [], ["ComfyUI"]),
    ]
    links = [[1, 1, 0, 5, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 1, 1, 3, 0, "CLIP"],
             [4, 2, 0, 5, 1, "CONDITIONING"], [5, 3, 0, 5, 2, "CONDITIONING"], [6, 4, 0, 5, 3, "LATENT"],
             [7, 1, 2, 6, 1, "VAE"], [8, 5, 0, 6, 0, "LATENT"], [9, 6, 0, 7, 0, "IMAGE"]]
    if image is not None:
        nodes.append(node(8, "LoadImage", [], [out("IMAGE", "IMAGE", []), out("MASK", "MASK", [])],
                          [image, "image"]))
        nodes.append(node(9, "PreviewImage", [inp("images", "IMAGE", 10)], []))
        nodes[-2]["outputs"][0]["links"] = [10]
        links.append([10, 8, 0, 9, 0, "IMAGE"])
    return workflow(nodes, links)


def _loaded(ui, api=None, path="w.json"):
    return LoadedWorkflow(ui=ui, api=api, source="json", path=path)


def _dual_clip(kind, unet):
    return workflow([node(1, "UNETLoader", [], [out("MODEL", "MODEL", [])], [unet, "default"]),
                     node(2, "DualCLIPLoader", [], [out("CLIP", "CLIP", [])],
                          ["clip_l.safetensors", "t5xxl_fp16.safetensors", kind])], [])


@pytest.mark.parametrize("ui, family", [
    (_txt2img(), "SD1.5"),
    (_txt2img(ckpt="Anything-V3.0.ckpt"), "SD1.5"),  # an unmarked checkpoint
    (_txt2img(ckpt="v2-1_768-ema-pruned.ckpt"), "SD2.x"),
    (_txt2img(ckpt="sd_xl_base_1.0.safetensors"), "SDXL"),
    (_txt2img(ckpt="sd3.5_large_fp8_scaled.safetensors"), "SD3"),
    (_dual_clip("flux", "flux1-dev.safetensors"), "FLUX.1"),  # t5xxl is no SDXL marker
    (_dual_clip("hunyuan_video", "hunyuan_video_t2v_720p_bf16.safetensors"), "Hunyuan"),
    (_dual_clip("flux", "flux2_dev_fp8mixed.safetensors"), "FLUX.2"),
    (workflow([node(1, "SaveImage", [], [], ["x"])], []), "no model"),
])
def test_family_rule(ui, family):
    assert corpus.classify(ui, None) == family


def test_an_out_of_scope_model_anywhere_puts_the_workflow_out_of_scope_and_the_highest_family_wins():
    ui = _txt2img(ckpt="sd3.5_large_fp8_scaled.safetensors")
    ui["nodes"].append(node(20, "UNETLoader", [], [], ["lotus-depth-d-v1-1.safetensors", "default"]))
    assert corpus.classify(ui, None) == "SD3"  # an SD2-based depth estimator inside an SD3.5 workflow
    ui["nodes"].append(node(21, "CLIPLoader", [], [], ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan"]))
    assert corpus.classify(ui, None) == "Wan"


def test_a_workflow_validates_given_placeholders_for_its_model_and_input_files():
    outcome = corpus.measure(_loaded(_txt2img(image="photo.png")), default_registry(), set())
    assert outcome.family == "SD1.5"
    assert outcome.reasons == [] and outcome.validated


def test_a_value_of_another_kind_is_reported_as_on_the_wrong_input():
    # cfg's value missing: "euler" lands on cfg (FLOAT), "normal" on sampler_name, 1.0 on scheduler
    shifted = _txt2img(sampler_widgets=(7, "randomize", 20, "euler", "normal", 1.0))
    outcome = corpus.measure(_loaded(shifted), default_registry(), set())
    assert not outcome.validated
    wrong = [r for r in outcome.reasons if r.startswith("value on the wrong input")]
    assert "value on the wrong input: KSampler.cfg (FLOAT got a str)" in wrong
    assert "value on the wrong input: KSampler.scheduler (COMBO got a float)" in wrong


@pytest.mark.parametrize("spec_value, why", [
    (("ckpt_name", "euler"), "model COMBO got a value that is not a file name"),
    (("sampler_name", "randomize"), "option COMBO got a control_after_generate word"),
    (("sampler_name", "v1-5.safetensors"), "option COMBO got a model file name"),
    (("steps", 20.5), "INT got a float"),
    (("steps", True), "INT got a bool"),
    (("steps", 20.0), None),
    (("sampler_name", "not_a_sampler"), None),  # a bad value, which validation reports, not a misplaced one
])
def test_wrong_input_kinds(spec_value, why):
    registry = default_registry()
    name, value = spec_value
    node_type = "CheckpointLoaderSimple" if name == "ckpt_name" else "KSampler"
    spec = registry.get(node_type).schema().input(name)
    assert corpus.wrong_input(spec, value) == why


def test_an_image_is_compared_with_the_prompt_it_saved():
    ui = _txt2img()
    saved = {"5": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 25, "cfg": 8.0,
                                                         "model": ["1", 0]}}}
    outcome = corpus.measure(_loaded(ui, saved), default_registry(), set())
    assert outcome.reasons == ["differs from the saved prompt: KSampler.steps"]


def test_unknown_node_types_are_grouped_by_why(tmp_path):
    ui = _txt2img()
    ui["nodes"] += [node(30, "ImageResizeKJ", [], [], [], properties={"cnr_id": "comfyui-kjnodes"}),
                    node(32, "UpscaleModelLoader", [], [], []),
                    node(33, "GLIGENLoader", [], [], [], properties={"cnr_id": "comfy-core"})]
    outcome = corpus.measure(_loaded(ui), default_registry(), set())
    assert sorted(outcome.reasons) == [
        "custom node pack (comfyui-kjnodes): ImageResizeKJ", "missing core node: GLIGENLoader",
        "node blocked (needs spandrel): UpscaleModelLoader"]


def test_the_command_reads_json_and_png_and_prints_the_table(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_txt2img()))
    shifted = _txt2img(ckpt="sd_xl_base_1.0.safetensors", sampler_widgets=(7, "randomize", 20, "euler", "normal", 1))
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png", pnginfo=embed_png_metadata({"workflow": shifted}))
    Image.new("RGB", (4, 4)).save(tmp_path / "input.png")  # a picture without a workflow: not counted
    (tmp_path / "index.json").write_text("[]")
    assert corpus.main([str(tmp_path), "--json", str(tmp_path / "out.json")]) == 0
    table = capsys.readouterr().out
    assert "| SDXL | 1 | 0 | 0 |" in table and "| SD1.5 | 1 | 1 | 0 |" in table
    assert "| **in scope** | **2** | **1** (50 %) | 0 |" in table
    assert "value on the wrong input" in table
    assert len(json.loads((tmp_path / "out.json").read_text())) == 2
