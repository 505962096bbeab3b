"""FLUX.1 Kontext's pieces: ReferenceLatent, FluxKontextImageScale, FluxKontextMultiReferenceLatentMethod, and the
reference latents' tokens in the FLUX network (position ids as ComfyUI's ``Flux._forward`` lays them out)."""
from __future__ import annotations

import pytest
import torch

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    import fixtures_flux
except ModuleNotFoundError:
    from tests import fixtures_flux

from loom.nodes.reference_latents import (FluxKontextImageScale, FluxKontextMultiReferenceLatentMethod,
                                          ReferenceLatent, kontext_size)
from loom.nodes.runtime import flux_layout
from loom.nodes.runtime.families.flux import FAMILY, REFERENCE_KEY, REFERENCE_METHOD_KEY


@pytest.fixture(scope="module")
def network() -> flux_layout.FluxNetwork:
    torch.manual_seed(0)
    module, _config = flux_layout.build_transformer(fixtures_flux.flux_bfl_state_dict(), compute_dtype=torch.float32)
    return flux_layout.FluxNetwork(module, torch.float32)


def _inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 6, 8, generator=g), torch.tensor([0.7]),
            torch.randn(1, 5, fixtures_flux.FLUX_CONTEXT, generator=g),
            torch.randn(1, fixtures_flux.FLUX_POOLED, generator=g), torch.tensor([3.5]))


def test_reference_ids_follow_comfyui_for_each_method():
    sizes = [(64, 64), (64, 32)]
    # offset: index 1; a tall second reference goes right of the first, a wide one below it (2x2 patches)
    assert flux_layout.reference_ids(128, 128, sizes, "offset") == [(1.0, 0, 0), (1.0, 0, 32)]
    assert flux_layout.reference_ids(128, 128, [(64, 64), (32, 64), (32, 32)], "offset") == [
        (1.0, 0, 0), (1.0, 32, 0), (1.0, 0, 32)]
    assert flux_layout.reference_ids(128, 128, sizes, "index") == [(1.0, 0, 0), (2.0, 0, 0)]
    # uxo: index 0, diagonally past the 6x8 latent (3x4 patches) and the references before
    assert flux_layout.reference_ids(6, 8, [(4, 4), (4, 4)], "uxo") == [(0.0, 3, 4), (0.0, 5, 6)]


def test_a_reference_joins_the_image_tokens_and_only_the_latent_is_read_back(network):
    x, t, context, y, guidance = _inputs()
    reference = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(9))
    plain = network(x, t, context, y, guidance)
    with_reference = network(x, t, context, y, guidance, references=[reference])
    assert with_reference.shape == plain.shape == x.shape
    assert not torch.allclose(with_reference, plain, atol=1e-4)

    # the same call made by hand: the reference's patches after the latent's, ids (1, row, col)
    tokens = torch.cat([flux_layout.patchify(x), flux_layout.patchify(reference)], dim=1)
    ids = torch.cat([flux_layout.image_ids(3, 4), flux_layout.image_ids(2, 3, index=1.0)])
    with torch.no_grad():
        out = network.transformer(hidden_states=tokens, encoder_hidden_states=context, pooled_projections=y,
                                  timestep=t, img_ids=ids, txt_ids=torch.zeros(5, 3), guidance=guidance,
                                  return_dict=False)[0]
    expected = flux_layout.unpatchify(out[:, :12].float(), 3, 4)
    torch.testing.assert_close(with_reference, expected, rtol=1e-4, atol=1e-5)


def test_the_method_changes_where_the_second_reference_sits(network):
    x, t, context, y, guidance = _inputs()
    refs = [torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    offset = network(x, t, context, y, guidance, references=refs, reference_method="offset")
    index = network(x, t, context, y, guidance, references=refs, reference_method="index")
    assert not torch.allclose(offset, index, atol=1e-5)


def test_reference_latent_appends_and_chains_without_touching_its_input():
    cond = torch.zeros(1, 3, 8)
    conditioning = [[cond, {"guidance": 2.5}]]
    first, second = torch.ones(1, 16, 4, 4), torch.full((1, 16, 2, 2), 2.0)
    (once,) = ReferenceLatent.execute(conditioning, {"samples": first})
    (twice,) = ReferenceLatent.execute(once, {"samples": second})
    assert conditioning == [[cond, {"guidance": 2.5}]]
    assert once[0][1]["reference_latents"] == [first] and once[0][1]["guidance"] == 2.5
    assert [r.shape for r in twice[0][1]["reference_latents"]] == [first.shape, second.shape]
    assert ReferenceLatent.execute(conditioning, None)[0] == conditioning
    with pytest.raises(ValueError, match="input 'latent'"):
        ReferenceLatent.execute(conditioning, {"samples": torch.ones(3)})


def test_multi_reference_method_maps_uxo_and_uso_to_uxo():
    conditioning = [[torch.zeros(1, 1, 1), {}]]
    assert FluxKontextMultiReferenceLatentMethod.execute(conditioning, "uxo/uno")[0][0][1] == {
        "reference_latents_method": "uxo"}
    assert FluxKontextMultiReferenceLatentMethod.execute(conditioning, "index")[0][0][1] == {
        "reference_latents_method": "index"}


def test_kontext_image_scale_picks_the_closest_trained_aspect():
    assert kontext_size(1024, 1024) == (1024, 1024)
    assert kontext_size(200, 100) == (1456, 720)
    assert kontext_size(100, 300) == (672, 1568)
    (scaled,) = FluxKontextImageScale.execute(torch.rand(2, 50, 100, 3))
    assert scaled.shape == (2, 720, 1456, 3)


def test_the_flux_family_passes_processed_references_to_the_network():
    latent = torch.randn(1, 16, 4, 4)
    extra = FAMILY.extra_conds(None, {"reference_latents": [latent], "reference_latents_method": "index"},
                               (1, 16, 8, 8), "positive")
    torch.testing.assert_close(extra[f"{REFERENCE_KEY}0"], FAMILY.latent_format.process_in(latent))
    assert extra[REFERENCE_METHOD_KEY].tolist() == [[1.0]]
    assert set(FAMILY.extra_conds(None, {}, (1, 16, 8, 8), "positive")) == {"guidance"}
    with pytest.raises(ValueError, match="reference_latents_method"):
        FAMILY.extra_conds(None, {"reference_latents": [latent], "reference_latents_method": "sideways"},
                           (1, 16, 8, 8), "positive")


# ---------------------------------------------------------------------------------------------
# A Kontext-shaped prompt through the executor: the reference reaches both halves of the cfg batch
# ---------------------------------------------------------------------------------------------

KONTEXT_PROMPT = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "tiny-clip-l.safetensors",
                                                     "clip_name2": "tiny-t5.safetensors", "type": "flux"}},
    "3": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-flux-ae.safetensors"}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "make it night", "clip": ["2", 0]}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "start.png"}},
    "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["3", 0]}},
    "12": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["4", 0], "latent": ["11", 0]}},
    "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["12", 0], "guidance": 2.5}},
    "13": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["12", 0]}},
    "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
    "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["13", 0],
                                               "latent_image": ["6", 0], "seed": 1, "steps": 2, "cfg": 2.0,
                                               "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
    "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
}


def test_a_kontext_prompt_runs_and_its_reference_changes_the_picture(base_dir, registry):
    import json

    import numpy as np
    from PIL import Image

    from loom.nodes.kernel import folders
    from loom.server.executor import Executor
    from loom.server.validation import validate_prompt

    models = base_dir / "models"
    fixtures_flux.write_flux_transformer(models / "diffusion_models" / "tiny-flux-dev.safetensors")
    fixtures_flux.write_clip_l(models / "text_encoders" / "tiny-clip-l.safetensors")
    fixtures_flux.write_t5(models / "text_encoders" / "tiny-t5.safetensors", width=fixtures_flux.FLUX_CONTEXT)
    fixtures_flux.write_flux_vae(models / "vae" / "tiny-flux-ae.safetensors")
    (base_dir / "input").mkdir(exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(
        base_dir / "input" / "start.png")

    def picture(prompt: dict) -> np.ndarray:
        validation = validate_prompt(prompt, registry)
        assert validation.ok, validation.node_errors
        result = Executor(registry).execute(prompt, "kontext", validation=validation)
        assert result.status == "success", result.error
        [image] = result.outputs["9"]["images"]
        with Image.open(folders.current().data_dir("temp") / image.get("subfolder", "") / image["filename"]) as saved:
            return np.asarray(saved).copy()

    with_reference = picture(json.loads(json.dumps(KONTEXT_PROMPT)))
    without = json.loads(json.dumps(KONTEXT_PROMPT))
    without["12"]["inputs"].pop("latent")
    assert with_reference.shape == (48, 64, 3)
    assert not np.array_equal(with_reference, picture(without))
