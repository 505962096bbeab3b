"""FLUX.1 Fill and Canny/Depth (ComfyUI's ``model_base.Flux.concat_cond``): transformers with 384 or 128 input
features load, and take the conditioning's image latent (and Fill the mask in 8x8 patches) after the latent's
channels."""
from __future__ import annotations

import pytest
import torch

try:  # tests/ on sys.path as a folder (no __init__.py) or as the package ``tests``
    import fixtures_flux
except ModuleNotFoundError:
    from tests import fixtures_flux

from loom.nodes.runtime import flux_layout
from loom.nodes.runtime.families.base import UnknownModelError
from loom.nodes.runtime.families.flux import FAMILY, FLUX_LATENT
from loom.nodes.runtime.model_types import DiffusionModel


def _model(in_channels: int) -> DiffusionModel:
    tensors = fixtures_flux.flux_bfl_state_dict(in_channels=in_channels, out_channels=64)
    module, _config = flux_layout.build_transformer(tensors, compute_dtype=torch.float32)
    network = flux_layout.FluxNetwork(module, torch.float32)
    return DiffusionModel(unet=network, family="flux", latent_format=FLUX_LATENT,
                          sampling=FAMILY.model_sampling(_detected()))


def _detected():
    shapes = {("model.diffusion_model." + k): v for k, v in fixtures_flux.flux_bfl_shapes().items()}
    return FAMILY.detect(shapes, None, prediction=None, source="tiny", loose=True)


def test_fill_and_canny_widths_are_detected_and_others_named():
    for channels in (128, 384):
        shapes = {("model.diffusion_model." + k): v
                  for k, v in fixtures_flux.flux_bfl_shapes(in_channels=channels, out_channels=64).items()}
        assert FAMILY.detect(shapes, None, prediction=None, source="f", loose=True).family is FAMILY
    shapes = {("model.diffusion_model." + k): v for k, v in fixtures_flux.flux_bfl_shapes(in_channels=96).items()}
    with pytest.raises(UnknownModelError, match="96 input features; FLUX.1 takes 64 .*128 .*384 "):
        FAMILY.detect(shapes, None, prediction=None, source="f", loose=True)


def test_fill_concat_is_the_image_latent_and_the_mask_in_8x8_patches():
    model = _model(384)
    latent = torch.randn(2, 16, 3, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.arange(24 * 32, dtype=torch.float32).reshape(1, 1, 24, 32) / 1000.0
    concat = FAMILY.concat_input(model, {"concat_latent_image": latent, "concat_mask": mask}, (2, 16, 3, 4),
                                 None, None)
    assert concat.shape == (2, 16 + 64, 3, 4)
    torch.testing.assert_close(concat[:, :16], FLUX_LATENT.process_in(latent))
    # channel dy*8+dx of latent pixel (y, x) is the mask at (8y+dy, 8x+dx), for every batch item
    for y, x, dy, dx in ((0, 0, 0, 0), (2, 3, 7, 5), (1, 2, 3, 6)):
        assert float(concat[1, 16 + dy * 8 + dx, y, x]) == pytest.approx(float(mask[0, 0, 8 * y + dy, 8 * x + dx]))
    # without a mask or an image: everything masked, over the blank image's latent
    blank = FAMILY.concat_input(model, {}, (1, 16, 3, 4), None, None)
    torch.testing.assert_close(blank[:, :16], FLUX_LATENT.process_in(torch.zeros(1, 16, 3, 4)))
    assert torch.equal(blank[:, 16:], torch.ones(1, 64, 3, 4))


def test_canny_concat_is_the_image_latent_only_and_dev_has_none():
    image = torch.randn(1, 16, 6, 8)
    concat = FAMILY.concat_input(_model(128), {"concat_latent_image": image}, (1, 16, 3, 4), None, None)
    assert concat.shape == (1, 16, 3, 4)  # upscaled (here: down) to the latent's size
    assert FAMILY.concat_input(_model(64), {"concat_latent_image": image}, (1, 16, 3, 4), None, None) is None


def test_the_network_takes_the_concat_channels_after_the_latents():
    model = _model(384)
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(1, 16, 6, 8, generator=g), torch.randn(1, 5, fixtures_flux.FLUX_CONTEXT, generator=g)
    pooled, t = torch.randn(1, fixtures_flux.FLUX_POOLED, generator=g), torch.tensor([0.7])
    concat = torch.randn(1, 80, 6, 8, generator=g)
    extra = FAMILY.extra_conds(model, {"pooled_output": pooled}, x.shape, "positive")
    out = FAMILY.apply_network(model, x, t, t, context, extra, None, concat)
    assert out.shape == x.shape
    expected = model.unet.transformer  # the same call made by hand: 96 channels patched together
    tokens = flux_layout.patchify(torch.cat([x, concat], dim=1))
    with torch.no_grad():
        raw = expected(hidden_states=tokens, encoder_hidden_states=context, pooled_projections=pooled, timestep=t,
                       img_ids=flux_layout.image_ids(3, 4), txt_ids=torch.zeros(5, 3), guidance=torch.tensor([3.5]),
                       return_dict=False)[0]
    torch.testing.assert_close(out, flux_layout.unpatchify(raw.float(), 3, 4), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="takes 96 input channels; the latent has 16 and the extra input 0"):
        FAMILY.apply_network(model, x, t, t, context, extra, None, None)


FILL_PROMPT = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-fill.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "tiny-clip-l.safetensors",
                                                     "clip_name2": "tiny-t5.safetensors", "type": "flux"}},
    "3": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-flux-ae.safetensors"}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a window", "clip": ["2", 0]}},
    "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 30.0}},
    "13": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "wall.png"}},
    "11": {"class_type": "InpaintModelConditioning", "inputs": {"positive": ["5", 0], "negative": ["13", 0],
                                                               "vae": ["3", 0], "pixels": ["10", 0],
                                                               "mask": ["10", 1], "noise_mask": False}},
    "14": {"class_type": "DifferentialDiffusion", "inputs": {"model": ["1", 0]}},
    "7": {"class_type": "KSampler", "inputs": {"model": ["14", 0], "positive": ["11", 0], "negative": ["11", 1],
                                               "latent_image": ["11", 2], "seed": 1, "steps": 2, "cfg": 1.0,
                                               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
    "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
}


def test_a_flux_fill_prompt_shaped_like_comfyuis_example_runs(base_dir, registry):
    import json

    import numpy as np
    from PIL import Image

    from loom.server.executor import Executor
    from loom.server.validation import validate_prompt

    models = base_dir / "models"
    fixtures_flux.write_flux_transformer(models / "diffusion_models" / "tiny-flux-fill.safetensors",
                                         in_channels=384, out_channels=64)
    fixtures_flux.write_clip_l(models / "text_encoders" / "tiny-clip-l.safetensors")
    fixtures_flux.write_t5(models / "text_encoders" / "tiny-t5.safetensors", width=fixtures_flux.FLUX_CONTEXT)
    fixtures_flux.write_flux_vae(models / "vae" / "tiny-flux-ae.safetensors")
    (base_dir / "input").mkdir(exist_ok=True)
    rgba = (np.random.default_rng(0).random((48, 64, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[8:24, 16:40, 3] = 0  # the hole to fill: transparent pixels are the mask
    Image.fromarray(rgba, "RGBA").save(base_dir / "input" / "wall.png")
    prompt = json.loads(json.dumps(FILL_PROMPT))
    validation = validate_prompt(prompt, registry)
    assert validation.ok, validation.node_errors
    result = Executor(registry).execute(prompt, "fill", validation=validation)
    assert result.status == "success", result.error
    assert len(result.outputs["9"]["images"]) == 1
