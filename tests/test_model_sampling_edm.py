"""ModelSamplingContinuousEDM (comfy_extras/nodes_model_advanced.py, comfy/model_sampling.py): the continuous EDM
sampling object against ComfyUI's formulas, the node's schema and choices, and CheckpointSave's EDM marks."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors import safe_open

from loom.nodes.model_sampling import ModelSamplingContinuousEDM
from loom.nodes.runtime import schedules
from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.model_sampling import ContinuousEDMSampling
from tests.fixtures_checkpoints import checkpoint_path


def test_object_info_matches_comfyui(registry):
    info = json.loads(json.dumps(registry.object_info("ModelSamplingContinuousEDM")["ModelSamplingContinuousEDM"]))
    assert info["category"] == "advanced/model"
    required = info["input"]["required"]
    assert list(required) == ["model", "sampling", "sigma_max", "sigma_min"]
    assert required["sampling"][0] == ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]
    assert required["sigma_max"][1] == {"default": 120.0, "min": 0.0, "max": 1000.0, "step": 0.001, "round": False}
    assert required["sigma_min"][1]["default"] == 0.002
    assert info["output"] == ["MODEL"]


def test_the_table_time_input_and_percentages_follow_comfyui():
    sampling = ContinuousEDMSampling("v", 0.002, 120.0)
    assert len(sampling.sigmas) == 1000
    assert math.isclose(float(sampling.sigma_min), 0.002, rel_tol=1e-5)
    assert math.isclose(float(sampling.sigma_max), 120.0, rel_tol=1e-5)
    sigma = torch.tensor([3.0])
    torch.testing.assert_close(sampling.timestep(sigma), 0.25 * torch.log(sigma))
    torch.testing.assert_close(sampling.sigma(sampling.timestep(sigma)), sigma)
    assert sampling.percent_to_sigma(0.0) == 999999999.9 and sampling.percent_to_sigma(1.0) == 0.0
    assert math.isclose(sampling.percent_to_sigma(0.5), math.sqrt(0.002 * 120.0), rel_tol=1e-5)
    # the karras/normal schedules read the range: normal spaces 0.25*log(sigma) evenly
    sigmas = schedules.normal(sampling, 4)
    assert math.isclose(float(sigmas[0]), 120.0, rel_tol=1e-4) and float(sigmas[-1]) == 0.0


@pytest.mark.parametrize("prediction, sigma_data", [("v", 1.0), ("eps", 1.0), ("edm", 0.5)])
def test_input_and_denoised_scaling(prediction, sigma_data):
    sampling = ContinuousEDMSampling(prediction, sigma_data=sigma_data)
    x, out, s = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 0.5), torch.tensor([3.0])
    torch.testing.assert_close(sampling.calculate_input(s, x), x / math.sqrt(9.0 + sigma_data ** 2))
    skip, scaled = 2.0 * sigma_data ** 2 / (9 + sigma_data ** 2), 0.5 * 3 * sigma_data / math.sqrt(9 + sigma_data ** 2)
    expected = {"eps": 2.0 - 0.5 * 3.0, "v": skip - scaled, "edm": skip + scaled}[prediction]
    assert math.isclose(float(sampling.calculate_denoised(s, out, x)), expected, rel_tol=1e-6)
    noise = torch.ones(1, 1, 1, 1)
    assert float(sampling.noise_scaling(s, noise, x)) == 5.0
    assert math.isclose(float(sampling.noise_scaling(s, noise, x, max_denoise=True)), 2.0 + math.sqrt(10.0),
                        rel_tol=1e-6)


def test_the_node_patches_a_copy_and_names_what_loom_lacks(registry):
    model, _clip, _vae = load_checkpoint(checkpoint_path("sdxl"), device="cpu")
    (patched,) = ModelSamplingContinuousEDM.execute(model, "v_prediction", 120.0, 0.002)
    assert isinstance(patched.sampling, ContinuousEDMSampling) and patched.sampling.prediction == "v"
    assert patched.unet is model.unet and not isinstance(model.sampling, ContinuousEDMSampling)
    (edm,) = ModelSamplingContinuousEDM.execute(model, "edm", 80.0, 0.002)
    assert edm.sampling.sigma_data == 0.5
    with pytest.raises(ValueError, match="sigma_min"):
        ModelSamplingContinuousEDM.execute(model, "eps", 0.002, 120.0)
    from loom.server.validation import validate_prompt

    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
              "2": {"class_type": "ModelSamplingContinuousEDM",
                    "inputs": {"model": ["1", 0], "sampling": "cosmos_rflow", "sigma_max": 80.0, "sigma_min": 0.002}},
              "3": {"class_type": "CheckpointSave", "inputs": {"model": ["2", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                               "filename_prefix": "x"}}}
    messages = validate_prompt(prompt, registry).messages()
    assert any("ModelSamplingContinuousEDM" in m and "the Cosmos model family" in m for m in messages), messages


def test_checkpoint_save_writes_comfyuis_edm_vpred_marks(base_dir):
    from loom.nodes.checkpoint_save import CheckpointSave

    model, clip, vae = load_checkpoint(checkpoint_path("sdxl"), device="cpu")
    (patched,) = ModelSamplingContinuousEDM.execute(model, "v_prediction", 120.0, 0.002)
    CheckpointSave.execute(patched, clip, vae, "checkpoints/cosxl", prompt=None, extra_pnginfo=None)
    folder = base_dir / "output" / "checkpoints"
    [saved] = [p for p in folder.iterdir() if p.suffix == ".safetensors" and p.name.startswith("cosxl")]
    with safe_open(str(saved), "pt") as f:
        keys = set(f.keys())
        assert "v_pred" not in keys and "modelspec.predict_key" not in (f.metadata() or {})
        assert math.isclose(float(f.get_tensor("edm_vpred.sigma_max")), 120.0, rel_tol=1e-5)
        assert math.isclose(float(f.get_tensor("edm_vpred.sigma_min")), 0.002, rel_tol=1e-5)
    reloaded, _clip, _vae = load_checkpoint(saved, device="cpu")  # the marks make it a CosXL-style model again
    assert isinstance(reloaded.sampling, ContinuousEDMSampling) and reloaded.sampling.prediction == "v"
    os.remove(saved)


def test_a_checkpoint_with_edm_vpred_marks_loads_as_v_prediction_edm(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(checkpoint_path("sdxl")))
    tensors.update({"edm_vpred.sigma_max": torch.tensor(80.0), "edm_vpred.sigma_min": torch.tensor(0.03)})
    save_file(tensors, str(tmp_path / "cosxl.safetensors"))
    model, _clip, _vae = load_checkpoint(tmp_path / "cosxl.safetensors", device="cpu")
    assert isinstance(model.sampling, ContinuousEDMSampling) and model.sampling.prediction == "v"
    assert math.isclose(float(model.sampling.sigma_max), 80.0, rel_tol=1e-5)
    assert math.isclose(float(model.sampling.sigma_min), 0.03, rel_tol=1e-5)
    plain, _clip, _vae = load_checkpoint(checkpoint_path("sdxl"), device="cpu")
    assert not isinstance(plain.sampling, ContinuousEDMSampling)


def test_a_ksampler_runs_on_the_patched_model():
    from loom.nodes.runtime.text_encoding import encode_text
    from loom.nodes.sampling import KSampler

    model, clip, _vae = load_checkpoint(checkpoint_path("sdxl"), device="cpu")
    (patched,) = ModelSamplingContinuousEDM.execute(model, "v_prediction", 120.0, 0.002)
    positive, negative = encode_text(clip, "a red cube"), encode_text(clip, "blurry")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (edm,) = KSampler.execute(patched, 3, 2, 5.0, "euler", "karras", positive, negative, latent, 1.0)
    (plain,) = KSampler.execute(model, 3, 2, 5.0, "euler", "karras", positive, negative, latent, 1.0)
    assert edm["samples"].shape == (1, 4, 8, 8) and torch.isfinite(edm["samples"]).all()
    assert not torch.allclose(edm["samples"], plain["samples"])
