"""CheckpointSave (issue 12): /object_info against ComfyUI's comfy_extras/nodes_model_merging.py, the single-file
layout and metadata of comfy/sd.py save_checkpoint, and a round trip through CheckpointLoaderSimple that gives
the same denoiser output bit for bit."""
from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch
from safetensors import safe_open

from loom.nodes.checkpoint_save import CheckpointSave
from loom.nodes.loaders import CheckpointLoaderSimple
from loom.nodes.model_merging import ModelMergeSimple
from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.denoiser import GuidedDenoiser
from loom.nodes.runtime.text_encoding import encode_text
from loom.nodes.runtime.vae import decode
from tests.fixtures_checkpoints import checkpoint_path

PROMPT = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}}}
WORKFLOW = {"last_node_id": 1, "nodes": [{"id": 1, "type": "CheckpointLoaderSimple"}], "version": 0.4}


def test_object_info_matches_comfyui(registry):
    info = json.loads(json.dumps(registry.object_info("CheckpointSave")["CheckpointSave"]))
    assert info["display_name"] == "Save Checkpoint" and info["category"] == "advanced/model_merging"
    assert info["input"]["required"] == {"model": ["MODEL", {}], "clip": ["CLIP", {}], "vae": ["VAE", {}],
                                         "filename_prefix": ["STRING", {"default": "checkpoints/ComfyUI"}]}
    assert info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["output"] == [] and info["output_node"] is True


@contextlib.contextmanager
def applied(handle):
    with contextlib.ExitStack() as stack:
        for patch in handle.patches:
            stack.enter_context(patch.applied(handle))
        yield


def _denoise(model, clip):
    positive, negative = encode_text(clip, "a red cube"), encode_text(clip, "blurry")
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4)) * 5.0
    with applied(model):
        return GuidedDenoiser(model, positive, negative, 7.0, x.shape)(x, torch.tensor([4.0]))


def _save_and_reload(base_dir, model, clip, vae, prefix="checkpoints/ComfyUI"):
    CheckpointSave.execute(model, clip, vae, prefix, prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW})
    folder = base_dir / "output" / os.path.dirname(prefix)
    saved = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")[-1]
    target = base_dir / "models" / "checkpoints" / saved.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(saved, target)
    return saved, CheckpointLoaderSimple.execute(saved.name)


def test_round_trip_gives_the_same_denoiser_output(base_dir):
    model, clip, vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    saved, (model2, clip2, vae2) = _save_and_reload(base_dir, model, clip, vae)
    assert saved.name == "ComfyUI_00001_.safetensors" and saved.parent == base_dir / "output" / "checkpoints"
    assert model2.unet is not model.unet and model2.family == "sd1"
    assert torch.equal(_denoise(model2, clip2), _denoise(model, clip))
    latent = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(decode(vae2, latent), decode(vae, latent))


def test_layout_and_metadata_are_comfyuis(base_dir):
    model, clip, vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    saved, _handles = _save_and_reload(base_dir, model, clip, vae)
    with safe_open(str(saved), "pt") as new, safe_open(str(checkpoint_path("sd1")), "pt") as original:
        keys = set(new.keys())
        assert keys == set(original.keys())  # the fixture is written in the original single-file layout
        metadata = new.metadata()
        assert new.get_tensor("cond_stage_model.transformer.text_model.final_layer_norm.weight").dtype == torch.float16
        assert new.get_tensor("model.diffusion_model.out.2.weight").dtype == next(model.unet.parameters()).dtype
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert json.loads(metadata["prompt"]) == PROMPT and json.loads(metadata["workflow"]) == WORKFLOW
    assert metadata["modelspec.predict_key"] == "epsilon"
    assert not any(k.startswith("modelspec.architecture") for k in metadata)  # ComfyUI: SDXL/SD3/SVD only
    CheckpointSave.execute(model, clip, vae, "checkpoints/ComfyUI")
    second = base_dir / "output" / "checkpoints" / "ComfyUI_00002_.safetensors"
    with safe_open(str(second), "pt") as f:
        assert f.metadata()["prompt"] == ""  # no prompt: ComfyUI writes an empty string
    assert not [p for p in second.parent.iterdir() if p.name.startswith(".")]


def test_patches_are_baked_into_the_saved_weights(base_dir):
    model, clip, vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    other, _clip, _vae = load_checkpoint(checkpoint_path("sd1", seed=1), device="cpu")
    (merged,) = ModelMergeSimple.execute(model, other, 0.4)
    _saved, (model2, clip2, _vae2) = _save_and_reload(base_dir, merged, clip, vae, "checkpoints/merged")
    assert model2.patches == ()
    assert torch.equal(_denoise(model2, clip2), _denoise(merged, clip))


@pytest.mark.parametrize("family", ["sdxl", "sd2_v"])
def test_other_families_reload(base_dir, family):
    model, clip, vae = load_checkpoint(checkpoint_path(family), device="cpu")
    saved, (model2, clip2, _vae2) = _save_and_reload(base_dir, model, clip, vae, f"checkpoints/{family}")
    assert model2.family == model.family and model2.sampling.prediction == model.sampling.prediction
    assert torch.equal(_denoise(model2, clip2), _denoise(model, clip))
    with safe_open(str(saved), "pt") as f:
        metadata = f.metadata()
        if family == "sdxl":
            assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
            assert metadata["modelspec.title"] == "sdxl 1"
            assert "conditioner.embedders.0.transformer.text_model.embeddings.position_ids" in f.keys()
        else:
            assert metadata["modelspec.predict_key"] == "v" and "v_pred" in f.keys()
