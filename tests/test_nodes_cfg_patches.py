"""CFG patches (issue 12): RescaleCFG, CFGZeroStar, CFGNorm — /object_info against ComfyUI's source, and one
guided-denoiser step on the tiny SD1 checkpoint against ComfyUI's formulas written out here (from
comfy/samplers.py cfg_function, comfy_extras/nodes_model_advanced.py and comfy_extras/nodes_cfg.py)."""
from __future__ import annotations

import json

import pytest
import torch

from loom.nodes.model_patches import CFGNorm, CFGZeroStar, RescaleCFG
from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.denoiser import GuidedDenoiser
from loom.nodes.runtime.sampling import sample
from loom.nodes.runtime.text_encoding import encode_text
from tests.fixtures_checkpoints import checkpoint_path

MODEL = ["MODEL", {}]

# name -> (display_name, category, required, outputs, output_names, experimental)
COMFY = {
    "RescaleCFG": ("RescaleCFG", "advanced/model",
                   {"model": MODEL, "multiplier": ["FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}]},
                   ["MODEL"], ["MODEL"], False),
    "CFGZeroStar": ("CFGZeroStar", "advanced/guidance", {"model": MODEL}, ["MODEL"], ["patched_model"], False),
    "CFGNorm": ("CFGNorm", "advanced/guidance",
                {"model": MODEL, "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01}]},
                ["MODEL"], ["patched_model"], True),
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_matches_comfyui(registry, name):
    display, category, required, outputs, names, experimental = COMFY[name]
    info = json.loads(json.dumps(registry.object_info(name)[name]))
    assert info["display_name"] == display and info["category"] == category
    assert info["input"]["required"] == required and "optional" not in info["input"]
    assert info["input_order"]["required"] == list(required)
    assert info["output"] == outputs and info["output_name"] == names
    assert info["output_node"] is False
    assert info.get("experimental", False) is experimental


@pytest.fixture(scope="module")
def sd1():
    model, clip, _vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    return model, encode_text(clip, "a red cube on a table"), encode_text(clip, "blurry")


CFG = 6.5


def _step(model, positive, negative, cfg=CFG):
    """One denoiser call at a mid-schedule sigma: (output, x, sigma, cond_denoised, uncond_denoised)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((2, 4, 8, 8), generator=generator) * 3.0
    sigma = torch.tensor([2.5, 2.5])
    denoiser = GuidedDenoiser(model, positive, negative, cfg, x.shape)
    out = denoiser(x, sigma)
    plain = GuidedDenoiser(model.replace(options={}), positive, negative, cfg, x.shape)
    cond, uncond = plain.calc_cond_batch([plain.positive, plain.negative], x, sigma)
    return out, x, sigma, cond, uncond


def test_rescale_cfg_is_comfyuis_formula(sd1):
    model, positive, negative = sd1
    multiplier = 0.7
    (patched,) = RescaleCFG.execute(model, multiplier)
    out, x_orig, sigma, cond_denoised, uncond_denoised = _step(patched, positive, negative)
    # ComfyUI: args["cond"] = x - cond_pred; rescale_cfg works on the v-prediction; result = x - returned
    cond, uncond = x_orig - cond_denoised, x_orig - uncond_denoised
    s = sigma.view(-1, 1, 1, 1)
    x = x_orig / (s * s + 1.0)
    v_cond = ((x - (x_orig - cond)) * (s ** 2 + 1.0) ** 0.5) / s
    v_uncond = ((x - (x_orig - uncond)) * (s ** 2 + 1.0) ** 0.5) / s
    x_cfg = v_uncond + CFG * (v_cond - v_uncond)
    x_rescaled = x_cfg * (torch.std(v_cond, dim=(1, 2, 3), keepdim=True) / torch.std(x_cfg, dim=(1, 2, 3), keepdim=True))
    x_final = multiplier * x_rescaled + (1.0 - multiplier) * x_cfg
    expected = x_orig - (x_orig - (x - x_final * s / (s * s + 1.0) ** 0.5))
    assert torch.equal(out, expected)
    plain = uncond_denoised + (cond_denoised - uncond_denoised) * CFG
    assert not torch.allclose(out, plain, atol=1e-4)  # the patch does something


def test_rescale_cfg_multiplier_zero_is_plain_cfg_up_to_rounding(sd1):
    model, positive, negative = sd1
    (patched,) = RescaleCFG.execute(model, 0.0)
    out, _x, _s, cond, uncond = _step(patched, positive, negative)
    torch.testing.assert_close(out, uncond + (cond - uncond) * CFG, rtol=1e-5, atol=1e-5)


def test_cfg_zero_star_is_comfyuis_formula(sd1):
    model, positive, negative = sd1
    (patched,) = CFGZeroStar.execute(model)
    out, x, _sigma, cond_p, uncond_p = _step(patched, positive, negative)
    denoised = uncond_p + (cond_p - uncond_p) * CFG
    pos, neg = (x - cond_p).reshape(2, -1), (x - uncond_p).reshape(2, -1)
    alpha = (torch.sum(pos * neg, dim=1, keepdim=True) / (torch.sum(neg ** 2, dim=1, keepdim=True) + 1e-8))
    alpha = alpha.reshape(2, 1, 1, 1)
    expected = denoised + uncond_p * (alpha - 1.0) + CFG * uncond_p * (1.0 - alpha)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, denoised, atol=1e-5)


def test_cfg_norm_is_comfyuis_formula(sd1):
    model, positive, negative = sd1
    strength = 0.8
    (patched,) = CFGNorm.execute(model, strength)
    out, _x, _sigma, cond_p, uncond_p = _step(patched, positive, negative)
    denoised = uncond_p + (cond_p - uncond_p) * CFG
    scale = (torch.norm(cond_p, dim=1, keepdim=True) / (torch.norm(denoised, dim=1, keepdim=True) + 1e-8))
    expected = denoised * scale.clamp(min=0.0, max=1.0) * strength
    assert torch.equal(out, expected)


def test_post_cfg_functions_chain_in_order_after_the_cfg_function(sd1):
    model, positive, negative = sd1
    (rescaled,) = RescaleCFG.execute(model, 0.5)
    (zero_star,) = CFGZeroStar.execute(rescaled)
    (both,) = CFGNorm.execute(zero_star, 1.0)
    assert [type(f).__name__ for f in both.options["sampler_post_cfg_function"]] == \
        ["CFGZeroStarFunction", "CFGNormFunction"]
    out, x, sigma, cond_p, uncond_p = _step(both, positive, negative)
    from loom.nodes.model_patches import CFGNormFunction, CFGZeroStarFunction, RescaleCFGFunction
    first = x - RescaleCFGFunction(0.5)({"cond": x - cond_p, "uncond": x - uncond_p, "cond_scale": CFG,
                                          "sigma": sigma, "input": x})
    args = {"cond_scale": CFG, "input": x, "cond_denoised": cond_p, "uncond_denoised": uncond_p}
    second = CFGZeroStarFunction()({**args, "denoised": first})
    assert torch.equal(out, CFGNormFunction(1.0)({**args, "denoised": second}))


def test_patches_leave_the_input_handle_alone(sd1):
    model, _positive, _negative = sd1
    before = dict(model.options)
    (patched,) = CFGZeroStar.execute(model)
    assert model.options == before and "sampler_post_cfg_function" not in model.options
    assert patched.unet is model.unet and patched.options is not model.options


def test_cfg1_skips_the_negative_as_comfyui_does(sd1):
    """With cfg 1 ComfyUI leaves the negative out (its prediction is zeros) unless a patch asks otherwise."""
    model, positive, negative = sd1
    (patched,) = CFGZeroStar.execute(model)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((1, 4, 8, 8), generator=generator)
    sigma = torch.tensor([1.5])
    denoiser = GuidedDenoiser(patched, positive, negative, 1.0, x.shape)
    out = denoiser(x, sigma)
    assert denoiser.unet_calls == 1
    cond_p = GuidedDenoiser(model, positive, negative, 1.0, x.shape)(x, sigma)
    uncond_p = torch.zeros_like(x)
    alpha = torch.sum((x - cond_p) * (x - uncond_p)) / (torch.sum((x - uncond_p) ** 2) + 1e-8)
    expected = cond_p + uncond_p * (alpha - 1.0) + 1.0 * uncond_p * (1.0 - alpha)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    flagged = patched.replace(options={**patched.options, "disable_cfg1_optimization": True})
    counting = GuidedDenoiser(flagged, positive, negative, 1.0, x.shape)
    counting(x, sigma)
    assert counting.unet_calls == 1 and counting.disable_cfg1_optimization  # one batch of both


def test_a_patched_model_samples(sd1):
    model, positive, negative = sd1
    (patched,) = RescaleCFG.execute(model, 0.7)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kwargs = dict(seed=5, steps=3, cfg=7.0, sampler_name="euler", scheduler="normal")
    plain = sample(model, positive, negative, latent, **kwargs)
    rescaled = sample(patched, positive, negative, latent, **kwargs)
    assert torch.isfinite(rescaled).all() and not torch.equal(plain, rescaled)
