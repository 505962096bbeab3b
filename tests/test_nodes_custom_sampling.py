"""ComfyUI's custom-sampling nodes (nodes/custom_sampling.py) on a tiny random UNet.

Schedules are checked against ComfyUI's formulas computed here independently (plain Python/numpy, not
Loom's schedule functions); the samplers against the KSampler, which must give bit-identical latents for
the same seed, sampler, schedule and cfg (both run ``sampling.sample_guided``); the guiders against
predictions combined by hand; a UI workflow shaped like ComfyUI's SamplerCustomAdvanced example runs
through ``loom run``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from loom.nodes import custom_sampling as cs
from loom.nodes.runtime.custom_sampling import DualCFGDenoiser, EmptyNoise, RandomNoise, SamplerChoice
from loom.nodes.runtime.denoiser import GuidedDenoiser
from loom.nodes.sampling import KSampler, KSamplerAdvanced
from tests.fixtures_sockets import run_node

WORKFLOW = Path(__file__).resolve().parent / "fixtures" / "workflows" / "sampler_custom_advanced.json"


def info(registry, name: str) -> dict:
    return json.loads(json.dumps(registry.object_info(name)[name]))


def sd_sigmas() -> np.ndarray:
    """SD1's 1000 training sigmas (scaled-linear betas), computed in float64 and rounded to float32."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).astype(np.float32)


def karras_expected(n: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + (i / (n - 1) if n > 1 else 0.0) * (lo - hi)) ** rho for i in range(n)] + [0.0]


def close(actual: torch.Tensor, expected, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert actual.dtype == torch.float32 and actual.ndim == 1
    np.testing.assert_allclose(actual.numpy(), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


def latent(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 8, 8)}


# --------------------------------------------------------------------------------------------
# schemas: ComfyUI's names, inputs, outputs, defaults and mainline categories
# --------------------------------------------------------------------------------------------

SCHEMAS = {
    # name: (category, display_name, required inputs in order, outputs, output names)
    "SamplerCustom": ("model/sampling/custom", "SamplerCustom",
                      ["model", "add_noise", "noise_seed", "cfg", "positive", "negative", "sampler", "sigmas",
                       "latent_image"], ["LATENT", "LATENT"], ["output", "denoised_output"]),
    "SamplerCustomAdvanced": ("model/sampling/custom", "SamplerCustomAdvanced",
                              ["noise", "guider", "sampler", "sigmas", "latent_image"], ["LATENT", "LATENT"],
                              ["output", "denoised_output"]),
    "BasicScheduler": ("model/sampling/schedulers", "BasicScheduler", ["model", "scheduler", "steps", "denoise"],
                       ["SIGMAS"], ["SIGMAS"]),
    "KarrasScheduler": ("model/sampling/schedulers", "KarrasScheduler", ["steps", "sigma_max", "sigma_min", "rho"],
                        ["SIGMAS"], ["SIGMAS"]),
    "ExponentialScheduler": ("model/sampling/schedulers", "ExponentialScheduler", ["steps", "sigma_max", "sigma_min"],
                             ["SIGMAS"], ["SIGMAS"]),
    "PolyexponentialScheduler": ("model/sampling/schedulers", "PolyexponentialScheduler",
                                 ["steps", "sigma_max", "sigma_min", "rho"], ["SIGMAS"], ["SIGMAS"]),
    "BetaSamplingScheduler": ("model/sampling/schedulers", "BetaSamplingScheduler", ["model", "steps", "alpha", "beta"],
                              ["SIGMAS"], ["SIGMAS"]),
    "SDTurboScheduler": ("model/sampling/schedulers", "SDTurboScheduler", ["model", "steps", "denoise"],
                         ["SIGMAS"], ["SIGMAS"]),
    "SplitSigmas": ("model/sampling/sigmas", "SplitSigmas", ["sigmas", "step"], ["SIGMAS", "SIGMAS"],
                    ["high_sigmas", "low_sigmas"]),
    "SplitSigmasDenoise": ("model/sampling/sigmas", "SplitSigmasDenoise", ["sigmas", "denoise"], ["SIGMAS", "SIGMAS"],
                           ["high_sigmas", "low_sigmas"]),
    "FlipSigmas": ("model/sampling/sigmas", "FlipSigmas", ["sigmas"], ["SIGMAS"], ["SIGMAS"]),
    "KSamplerSelect": ("model/sampling/samplers", "KSamplerSelect", ["sampler_name"], ["SAMPLER"], ["SAMPLER"]),
    "SamplerEulerAncestral": ("model/sampling/samplers", "SamplerEulerAncestral", ["eta", "s_noise"], ["SAMPLER"],
                              ["SAMPLER"]),
    "SamplerEulerAncestralCFGPP": ("model/sampling/samplers", "SamplerEulerAncestralCFG++", ["eta", "s_noise"],
                                   ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_2M_SDE": ("model/sampling/samplers", "SamplerDPMPP_2M_SDE",
                            ["solver_type", "eta", "s_noise", "noise_device"], ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_3M_SDE": ("model/sampling/samplers", "SamplerDPMPP_3M_SDE", ["eta", "s_noise", "noise_device"],
                            ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_SDE": ("model/sampling/samplers", "SamplerDPMPP_SDE", ["eta", "s_noise", "r", "noise_device"],
                         ["SAMPLER"], ["SAMPLER"]),
    "SamplerDPMPP_2S_Ancestral": ("model/sampling/samplers", "SamplerDPMPP_2S_Ancestral", ["eta", "s_noise"],
                                  ["SAMPLER"], ["SAMPLER"]),
    "SamplerLMS": ("model/sampling/samplers", "SamplerLMS", ["order"], ["SAMPLER"], ["SAMPLER"]),
    "BasicGuider": ("model/sampling/guiders", "Basic Guider", ["model", "conditioning"], ["GUIDER"], ["GUIDER"]),
    "CFGGuider": ("model/sampling/guiders", "CFG Guider", ["model", "positive", "negative", "cfg"], ["GUIDER"],
                  ["GUIDER"]),
    "DualCFGGuider": ("model/sampling/guiders", "Dual CFG Guider",
                      ["model", "cond1", "cond2", "negative", "cfg_conds", "cfg_cond2_negative", "style"],
                      ["GUIDER"], ["GUIDER"]),
    "RandomNoise": ("model/sampling/noise", "RandomNoise", ["noise_seed"], ["NOISE"], ["NOISE"]),
    "DisableNoise": ("model/sampling/noise", "DisableNoise", [], ["NOISE"], ["NOISE"]),
    "AddNoise": ("model/sampling/noise", "AddNoise", ["model", "noise", "sigmas", "latent_image"], ["LATENT"],
                 ["LATENT"]),
    "CFGOverride": ("model/sampling/guiders", "CFG Override", ["model", "cfg", "start_percent", "end_percent"],
                    ["MODEL"], ["MODEL"]),
    "LaplaceScheduler": ("model/sampling/schedulers", "LaplaceScheduler",
                         ["steps", "sigma_max", "sigma_min", "mu", "beta"], ["SIGMAS"], ["SIGMAS"]),
    "VPScheduler": ("model/sampling/schedulers", "VPScheduler", ["steps", "beta_d", "beta_min", "eps_s"], ["SIGMAS"],
                    ["SIGMAS"]),
    "SetFirstSigma": ("model/sampling/sigmas", "SetFirstSigma", ["sigmas", "sigma"], ["SIGMAS"], ["SIGMAS"]),
    "ExtendIntermediateSigmas": ("model/sampling/sigmas", "ExtendIntermediateSigmas",
                                 ["sigmas", "steps", "start_at_sigma", "end_at_sigma", "spacing"], ["SIGMAS"],
                                 ["SIGMAS"]),
    "SamplingPercentToSigma": ("model/sampling/sigmas", "SamplingPercentToSigma",
                               ["model", "sampling_percent", "return_actual_sigma"], ["FLOAT"], ["sigma_value"]),
    "ManualSigmas": ("model/sampling/sigmas", "ManualSigmas", ["sigmas"], ["SIGMAS"], ["SIGMAS"]),
    "SamplerDPMAdaptative": ("model/sampling/samplers", "SamplerDPMAdaptative",
                             ["order", "rtol", "atol", "h_init", "pcoeff", "icoeff", "dcoeff", "accept_safety", "eta",
                              "s_noise"], ["SAMPLER"], ["SAMPLER"]),
    "SamplerER_SDE": ("model/sampling/samplers", "SamplerER_SDE", ["solver_type", "max_stage", "eta", "s_noise"],
                      ["SAMPLER"], ["SAMPLER"]),
    "SamplerSASolver": ("model/sampling/samplers", "SamplerSASolver",
                        ["model", "eta", "sde_start_percent", "sde_end_percent", "s_noise", "predictor_order",
                         "corrector_order", "use_pece", "simple_order_2"], ["SAMPLER"], ["SAMPLER"]),
    "SamplerSEEDS2": ("model/sampling/samplers", "SamplerSEEDS2", ["solver_type", "eta", "s_noise", "r"], ["SAMPLER"],
                      ["SAMPLER"]),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_matches_comfyui(registry, name):
    category, display, inputs, outputs, output_names = SCHEMAS[name]
    got = info(registry, name)
    assert (got["category"], got["display_name"]) == (category, display)
    assert got["input_order"]["required"] == inputs
    assert got["output"] == outputs and got["output_name"] == output_names


def test_widget_defaults_and_ranges_are_comfyuis(registry):
    karras = info(registry, "KarrasScheduler")["input"]["required"]
    assert karras["steps"][1] == {"default": 20, "min": 1, "max": 10000}
    assert karras["sigma_max"][1] == {"default": 14.614642, "min": 0.0, "max": 5000.0, "step": 0.01, "round": False,
                                      "advanced": True}
    assert karras["sigma_min"][1]["default"] == 0.0291675 and karras["rho"][1]["default"] == 7.0
    assert info(registry, "PolyexponentialScheduler")["input"]["required"]["rho"][1]["default"] == 1.0
    turbo = info(registry, "SDTurboScheduler")["input"]["required"]
    assert turbo["steps"][1] == {"default": 1, "min": 1, "max": 10}
    beta = info(registry, "BetaSamplingScheduler")["input"]["required"]
    assert beta["alpha"][1]["default"] == beta["beta"][1]["default"] == 0.6
    custom = info(registry, "SamplerCustom")["input"]["required"]
    assert custom["add_noise"][1] == {"default": True, "advanced": True}
    assert custom["noise_seed"][1] == {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                       "control_after_generate": True}
    assert custom["cfg"][1] == {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}
    assert info(registry, "RandomNoise")["input"]["required"]["noise_seed"][1]["control_after_generate"] is True
    dual = info(registry, "DualCFGGuider")["input"]["required"]
    assert dual["style"][0] == ["regular", "nested"] and dual["cfg_conds"][1]["default"] == 8.0
    sde = info(registry, "SamplerDPMPP_2M_SDE")["input"]["required"]
    assert sde["solver_type"][0] == ["midpoint", "heun"] and sde["noise_device"][0] == ["gpu", "cpu"]
    cfgpp = info(registry, "SamplerEulerAncestralCFGPP")["input"]["required"]
    assert cfgpp["eta"][1]["max"] == 1.0 and cfgpp["s_noise"][1]["max"] == 10.0
    assert info(registry, "SamplerLMS")["input"]["required"]["order"][1] == {"default": 4, "min": 1, "max": 100,
                                                                             "advanced": True}
    sampler_names = info(registry, "KSamplerSelect")["input"]["required"]["sampler_name"][0]
    assert sampler_names == info(registry, "KSampler")["input"]["required"]["sampler_name"][0]
    assert info(registry, "BasicScheduler")["input"]["required"]["scheduler"][0] == \
        info(registry, "KSampler")["input"]["required"]["scheduler"][0]


# --------------------------------------------------------------------------------------------
# schedulers: ComfyUI's formulas, computed independently
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps,sigma_max,sigma_min,rho", [(8, 14.614642, 0.0291675, 7.0), (3, 10.0, 0.1, 3.0),
                                                           (1, 14.614642, 0.0291675, 7.0)])
def test_karras_scheduler(steps, sigma_max, sigma_min, rho):
    (sigmas,) = cs.KarrasScheduler.execute(steps, sigma_max, sigma_min, rho)
    close(sigmas, karras_expected(steps, sigma_min, sigma_max, rho))


@pytest.mark.parametrize("steps,sigma_max,sigma_min", [(5, 14.614642, 0.0291675), (2, 3.0, 0.5)])
def test_exponential_scheduler(steps, sigma_max, sigma_min):
    (sigmas,) = cs.ExponentialScheduler.execute(steps, sigma_max, sigma_min)
    logs = np.linspace(math.log(sigma_max), math.log(sigma_min), steps)
    close(sigmas, list(np.exp(logs)) + [0.0])


@pytest.mark.parametrize("rho", [1.0, 2.5])
def test_polyexponential_scheduler(rho):
    steps, hi, lo = 6, 14.614642, 0.0291675
    (sigmas,) = cs.PolyexponentialScheduler.execute(steps, hi, lo, rho)
    expected = [math.exp(((1 - i / (steps - 1)) ** rho) * (math.log(hi) - math.log(lo)) + math.log(lo))
                for i in range(steps)]
    close(sigmas, expected + [0.0])


def test_laplace_and_vp_schedulers():
    (laplace,) = cs.LaplaceScheduler.execute(5, 14.614642, 0.0291675, 0.0, 0.5)
    expected = []
    for i in range(5):
        x = i / 4
        sign = (0.5 - x > 0) - (0.5 - x < 0)
        value = math.exp(0.0 - 0.5 * sign * math.log(1 - 2 * abs(0.5 - x) + 1e-5))
        expected.append(min(max(value, 0.0291675), 14.614642))
    close(laplace, expected)  # ComfyUI's Laplace schedule has no final zero
    (vp,) = cs.VPScheduler.execute(4, 19.9, 0.1, 0.001)
    ts = np.linspace(1, 0.001, 4)
    close(vp, list(np.sqrt(np.expm1(19.9 * ts ** 2 / 2 + 0.1 * ts))) + [0.0], rtol=1e-5)


def test_basic_scheduler_follows_its_denoise_rule(tiny_model):
    table = sd_sigmas()
    lo, hi = float(table[0]), float(table[-1])
    (full,) = cs.BasicScheduler.execute(tiny_model, "karras", 4, 1.0)
    close(full, karras_expected(4, lo, hi, 7.0))
    (part,) = cs.BasicScheduler.execute(tiny_model, "karras", 4, 0.5)  # int(4 / 0.5) = 8 steps, last 5 kept
    close(part, karras_expected(8, lo, hi, 7.0)[-5:])
    (none,) = cs.BasicScheduler.execute(tiny_model, "karras", 4, 0.0)
    assert none.shape == (0,)
    (simple,) = cs.BasicScheduler.execute(tiny_model, "simple", 4, 1.0)  # every 250th table entry from the top
    close(simple, [float(table[-1 - int(i * 250)]) for i in range(4)] + [0.0])


@pytest.mark.parametrize("steps,denoise,timesteps", [(1, 1.0, [999]), (3, 1.0, [999, 899, 799]),
                                                     (2, 0.5, [499, 399]), (4, 0.25, [199, 99])])
def test_sd_turbo_scheduler(tiny_model, steps, denoise, timesteps):
    (sigmas,) = cs.SDTurboScheduler.execute(tiny_model, steps, denoise)
    table = sd_sigmas()
    close(sigmas, [float(table[t]) for t in timesteps] + [0.0])


def test_beta_sampling_scheduler(tiny_model):
    from scipy import stats

    table = sd_sigmas()
    for steps, alpha, beta in ((10, 0.6, 0.6), (6, 0.5, 0.7)):
        (sigmas,) = cs.BetaSamplingScheduler.execute(tiny_model, steps, alpha, beta)
        quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
        timesteps = np.rint(stats.beta.ppf(quantiles, alpha, beta) * 999)
        expected, previous = [], None
        for t in timesteps:
            if t != previous:
                expected.append(float(table[int(t)]))
            previous = t
        close(sigmas, expected + [0.0])


# --------------------------------------------------------------------------------------------
# sigma tools
# --------------------------------------------------------------------------------------------

def test_split_flip_and_split_by_denoise():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    high, low = cs.SplitSigmas.execute(sigmas, 2)
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]  # the split sigma is in both
    high, low = cs.SplitSigmas.execute(sigmas, 0)
    assert high.tolist() == [10.0] and low.tolist() == sigmas.tolist()
    high, low = cs.SplitSigmas.execute(sigmas, 50)
    assert high.tolist() == sigmas.tolist() and low.tolist() == []  # past the end: nothing left

    high, low = cs.SplitSigmasDenoise.execute(sigmas, 0.5)  # round(4 * 0.5) = 2 steps in the low part
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = cs.SplitSigmasDenoise.execute(sigmas, 1.0)
    assert high.tolist() == [10.0] and low.tolist() == sigmas.tolist()
    high, low = cs.SplitSigmasDenoise.execute(sigmas, 0.0)  # ComfyUI's sigmas[:-0] is empty
    assert high.tolist() == [] and low.tolist() == [0.0]

    (flipped,) = cs.FlipSigmas.execute(sigmas)
    assert flipped.tolist() == pytest.approx([0.0001, 1.0, 2.0, 5.0, 10.0])
    assert sigmas.tolist() == [10.0, 5.0, 2.0, 1.0, 0.0]  # the input is not changed
    (empty,) = cs.FlipSigmas.execute(torch.tensor([]))
    assert empty.shape == (0,)
    (first,) = cs.SetFirstSigma.execute(sigmas, 136.0)
    assert first.tolist() == [136.0, 5.0, 2.0, 1.0, 0.0]
    (manual,) = cs.ManualSigmas.execute("1, 0.5, .25,0")
    assert manual.tolist() == [1.0, 0.5, 0.25, 0.0]
    (extended,) = cs.ExtendIntermediateSigmas.execute(torch.tensor([10.0, 6.0, 0.0]), 2, -1.0, 8.0, "linear")
    assert extended.tolist() == [10.0, 8.0, 6.0, 0.0]  # only steps starting at sigma >= 8 get a midpoint


# --------------------------------------------------------------------------------------------
# SamplerCustom / SamplerCustomAdvanced against the KSampler
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler_name,scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"),
                                                    ("euler_ancestral", "normal"), ("dpmpp_sde", "karras"),
                                                    ("euler_cfg_pp", "simple")])
def test_sampler_custom_is_bit_identical_to_ksampler(tiny_model, tiny_conds, sampler_name, scheduler):
    positive, negative = tiny_conds
    steps, cfg, seed = 3, 5.0, 42
    (expected,) = KSampler.execute(tiny_model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                   latent(2), 1.0)
    (sampler,) = cs.KSamplerSelect.execute(sampler_name)
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, scheduler, steps, 1.0)
    out, denoised = cs.SamplerCustom.execute(tiny_model, True, seed, cfg, positive, negative, sampler, sigmas,
                                             latent(2))
    assert torch.equal(out["samples"], expected["samples"])
    assert denoised["samples"].shape == out["samples"].shape

    (noise,) = cs.RandomNoise.execute(seed)
    (guider,) = cs.CFGGuider.execute(tiny_model, positive, negative, cfg)
    advanced, _ = cs.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent(2))
    assert torch.equal(advanced["samples"], expected["samples"])


def test_img2img_denoise_matches_ksampler(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    image = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    (expected,) = KSampler.execute(tiny_model, 7, 4, 4.0, "euler", "karras", positive, negative, image, 0.6)
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "karras", 4, 0.6)
    out, _ = cs.SamplerCustom.execute(tiny_model, True, 7, 4.0, positive, negative, SamplerChoice("euler"), sigmas,
                                      image)
    assert torch.equal(out["samples"], expected["samples"])


def test_disable_noise_and_split_sigmas_match_ksampler_advanced(tiny_model, tiny_conds):
    """A two-stage run: noise and the high sigmas, then no noise and the low sigmas, as KSamplerAdvanced's
    end_at_step/return_with_leftover_noise and add_noise=disable/start_at_step do it."""
    positive, negative = tiny_conds
    sampler = SamplerChoice("dpmpp_2m")
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "normal", 4, 1.0)
    high, low = cs.SplitSigmas.execute(sigmas, 2)
    (guider,) = cs.CFGGuider.execute(tiny_model, positive, negative, 5.0)
    first, _ = cs.SamplerCustomAdvanced.execute(RandomNoise(9), guider, sampler, high, latent())
    second, _ = cs.SamplerCustomAdvanced.execute(cs.DisableNoise.execute()[0], guider, sampler, low, first)

    (stage1,) = KSamplerAdvanced.execute(tiny_model, "enable", 9, 4, 5.0, "dpmpp_2m", "normal", positive, negative,
                                         latent(), 0, 2, "enable")
    (stage2,) = KSamplerAdvanced.execute(tiny_model, "disable", 9, 4, 5.0, "dpmpp_2m", "normal", positive, negative,
                                         stage1, 2, 10000, "disable")
    assert torch.equal(first["samples"], stage1["samples"])
    assert torch.equal(second["samples"], stage2["samples"])


def test_disable_noise_with_denoise_matches_ksampler_without_noise(tiny_model, tiny_conds):
    from loom.nodes.runtime.sampling import sample

    positive, negative = tiny_conds
    image = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))}
    expected = sample(tiny_model, positive, negative, image, seed=0, steps=3, cfg=3.0, sampler_name="euler",
                      scheduler="normal", denoise=0.5, disable_noise=True)
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "normal", 3, 0.5)
    out, _ = cs.SamplerCustom.execute(tiny_model, False, 1234, 3.0, positive, negative, SamplerChoice("euler"),
                                      sigmas, image)
    assert torch.equal(out["samples"], expected)
    assert torch.equal(EmptyNoise().generate(image), torch.zeros(1, 4, 8, 8))
    # empty sigmas (denoise 0): nothing runs, the latent comes back as it was, and so does denoised_output
    (nothing,) = cs.BasicScheduler.execute(tiny_model, "normal", 3, 0.0)
    out, denoised = cs.SamplerCustom.execute(tiny_model, True, 1, 3.0, positive, negative, SamplerChoice("euler"),
                                             nothing, image)
    assert torch.equal(out["samples"], image["samples"]) and denoised is out


def test_random_noise_is_the_ksampler_noise_with_batch_index():
    from loom.nodes.runtime.noise import initial_noise

    samples = torch.zeros(2, 4, 8, 8)
    generator = torch.Generator().manual_seed(77)
    assert torch.equal(RandomNoise(77).generate({"samples": samples}),
                       torch.randn(2, 4, 8, 8, generator=generator))
    picked = RandomNoise(77).generate({"samples": samples, "batch_index": [3, 1]})
    assert torch.equal(picked, initial_noise(samples, 77, [3, 1]))
    assert torch.equal(picked[1], torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(77))[1])


def test_denoised_output_is_the_last_steps_prediction(tiny_model, tiny_conds):
    """One Euler step from sigma s0 to s1 is x1 = x0 + (x0 - D) / s0 * (s1 - s0); D is what denoised_output
    must hold (in the VAE's space)."""
    positive, negative = tiny_conds
    fmt = tiny_model.latent_format
    s0 = float(tiny_model.sampling.sigma_max)
    sigmas = torch.tensor([s0, 2.0])
    out, denoised = cs.SamplerCustomAdvanced.execute(RandomNoise(5), cs.CFGGuider.execute(
        tiny_model, positive, negative, 4.0)[0], SamplerChoice("euler"), sigmas, latent())
    x0 = RandomNoise(5).generate(latent()) * math.sqrt(1 + s0 ** 2)  # pure noise: scaled by sqrt(1 + sigma^2)
    x1 = fmt.process_in(out["samples"])
    prediction = x0 - (x1 - x0) * s0 / (2.0 - s0)
    assert torch.allclose(fmt.process_in(denoised["samples"]), prediction, atol=2e-4)
    assert not torch.allclose(denoised["samples"], out["samples"], atol=1e-2)  # leftover noise in the output


def test_noise_mask_is_honoured_as_in_the_ksampler(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    image = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, 4:] = 1.0
    masked = {"samples": image, "noise_mask": mask}
    (expected,) = KSampler.execute(tiny_model, 2, 3, 5.0, "euler", "normal", positive, negative, masked, 1.0)
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "normal", 3, 1.0)
    (guider,) = cs.CFGGuider.execute(tiny_model, positive, negative, 5.0)
    out, denoised = cs.SamplerCustomAdvanced.execute(RandomNoise(2), guider, SamplerChoice("euler"), sigmas, masked)
    assert torch.equal(out["samples"], expected["samples"])
    assert torch.equal(out["noise_mask"], mask)  # the latent's other entries are kept
    assert torch.allclose(out["samples"][..., :4], image[..., :4], atol=1e-5)  # outside the mask: the image
    assert not torch.allclose(out["samples"][..., 4:], image[..., 4:], atol=1e-2)
    assert torch.allclose(denoised["samples"][..., :4], image[..., :4], atol=1e-5)


def test_sampler_options_reach_the_sampler(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "normal", 3, 1.0)

    def run(sampler):
        out, _ = cs.SamplerCustom.execute(tiny_model, True, 11, 5.0, positive, negative, sampler, sigmas, latent())
        return out["samples"]

    euler = run(cs.KSamplerSelect.execute("euler")[0])
    assert torch.allclose(run(cs.SamplerLMS.execute(1)[0]), euler, atol=1e-5)  # first-order LMS is Euler
    assert torch.allclose(run(cs.SamplerEulerAncestral.execute(0.0, 1.0)[0]), euler, atol=1e-5)  # eta 0: no noise
    ancestral = run(cs.SamplerEulerAncestral.execute(1.0, 1.0)[0])
    assert torch.equal(ancestral, run(cs.KSamplerSelect.execute("euler_ancestral")[0]))  # the defaults
    assert not torch.allclose(run(cs.SamplerEulerAncestral.execute(1.0, 0.5)[0]), ancestral, atol=1e-3)
    (choice,) = cs.SamplerDPMPP_2M_SDE.execute("heun", 0.5, 1.0, "cpu")
    assert choice == SamplerChoice("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 1.0, "solver_type": "heun"})
    assert cs.SamplerDPMPP_SDE.execute(1.0, 1.0, 0.5, "gpu")[0].name == "dpmpp_sde_gpu"
    assert cs.SamplerEulerAncestralCFGPP.execute(1.0, 1.0)[0].spec.cfg_pp


# --------------------------------------------------------------------------------------------
# guiders
# --------------------------------------------------------------------------------------------

def _conds(seed: int) -> list:
    return [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def test_basic_guider_is_cfg_one_on_the_conditioning(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "normal", 3, 1.0)
    unet = tiny_model.unet
    unet.batches.clear()
    basic, _ = cs.SamplerCustomAdvanced.execute(RandomNoise(3), cs.BasicGuider.execute(tiny_model, positive)[0],
                                                SamplerChoice("euler"), sigmas, latent())
    assert unet.batches == [1, 1, 1]  # no negative is evaluated
    (expected,) = KSampler.execute(tiny_model, 3, 3, 1.0, "euler", "normal", positive, negative, latent(), 1.0)
    assert torch.equal(basic["samples"], expected["samples"])


@pytest.mark.parametrize("nested", [False, True])
def test_dual_cfg_guider_combines_three_predictions(tiny_model, nested):
    pos, mid, neg = _conds(1), _conds(2), _conds(3)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([2.5])
    p, m, n = (GuidedDenoiser(tiny_model, c, [], 1.0, x.shape)(x, sigma) for c in (pos, mid, neg))
    cfg1, cfg2 = 3.0, 2.0
    (guider,) = cs.DualCFGGuider.execute(tiny_model, pos, mid, neg, cfg1, cfg2, "nested" if nested else "regular")
    got = guider.denoiser(x.shape, None, None)(x, sigma)
    expected = n + cfg2 * ((m + cfg1 * (p - m)) - n) if nested else n + (m - n) * cfg2 + (p - m) * cfg1
    assert torch.allclose(got, expected, atol=1e-4)


def test_dual_cfg_guider_skips_what_cfg_one_makes_unneeded(tiny_model):
    pos, mid, neg = _conds(1), _conds(2), _conds(3)
    x = torch.randn(1, 4, 8, 8)
    unet = tiny_model.unet

    def batches(cfg1: float, cfg2: float) -> list[int]:
        unet.batches.clear()
        denoiser = DualCFGDenoiser(tiny_model, pos, mid, neg, cfg1, cfg2, False, x.shape)
        denoiser(x, torch.tensor([1.0]))
        return list(unet.batches)

    assert batches(3.0, 2.0) == [3]
    assert batches(3.0, 1.0) == [2]  # the negative is skipped at cfg_cond2_negative 1
    assert batches(1.0, 1.0) == [1]  # and the middle too when cfg_conds is 1 as well


# --------------------------------------------------------------------------------------------
# bad inputs: clear errors naming the node and the input
# --------------------------------------------------------------------------------------------

def _prompt(**nodes) -> dict:
    return {key: {"class_type": value[0], "inputs": value[1]} for key, value in nodes.items()}


def test_validation_errors_name_the_node_and_input(registry):
    from loom.server.validation import validate_prompt

    prompt = _prompt(
        n=("RandomNoise", {"noise_seed": 1}),
        g=("DisableNoise", {}),
        s=("KSamplerSelect", {"sampler_name": "no_such_sampler"}),
        k=("KarrasScheduler", {"steps": 0, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 7.0}),
        l=("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}),
        x=("SamplerCustomAdvanced", {"noise": ["n", 0], "guider": ["g", 0], "sampler": ["s", 0],
                                     "sigmas": ["k", 0], "latent_image": ["l", 0]}),
        o=("SaveLatent", {"samples": ["x", 0], "filename_prefix": "t"}))
    result = validate_prompt(prompt, registry)
    assert not result.ok
    text = result.describe() if hasattr(result, "describe") else json.dumps(result.node_errors)
    errors = result.node_errors
    assert "no_such_sampler" in json.dumps(errors["s"]) and errors["s"]["class_type"] == "KSamplerSelect"
    assert any(e.get("extra_info", {}).get("input_name") == "steps" for e in errors["k"]["errors"])
    # a NOISE output linked into the guider input is a type mismatch on SamplerCustomAdvanced's 'guider'
    guider_errors = [e for e in errors["x"]["errors"] if e.get("extra_info", {}).get("input_name") == "guider"]
    assert guider_errors and "NOISE" in json.dumps(guider_errors) and "GUIDER" in json.dumps(guider_errors), text


def test_runtime_errors_name_the_node_and_input(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    sigmas = torch.tensor([1.0, 0.0])
    guider = cs.CFGGuider.execute(tiny_model, positive, negative, 2.0)[0]
    advanced = dict(noise=RandomNoise(1), guider=guider, sampler=SamplerChoice("euler"), sigmas=sigmas,
                    latent_image=latent())
    with pytest.raises(ValueError, match=r"SamplerCustomAdvanced: input 'sigmas' is not a SIGMAS"):
        run_node("SamplerCustomAdvanced", **advanced | {"sigmas": [1.0, 0.0]})
    with pytest.raises(ValueError, match=r"SamplerCustomAdvanced: input 'guider' is not a GUIDER .*; got DiffusionModel"):
        run_node("SamplerCustomAdvanced", **advanced | {"guider": tiny_model})
    custom = dict(model=tiny_model, add_noise=True, noise_seed=1, cfg=2.0, positive=positive, negative=negative,
                  sampler=SamplerChoice("euler"), sigmas=sigmas, latent_image=latent())
    with pytest.raises(ValueError, match=r"SamplerCustom: input 'latent_image' is not a LATENT"):
        run_node("SamplerCustom", **custom | {"latent_image": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(ValueError, match=r"SamplerCustom: input 'sampler' is not a SAMPLER .*; got str"):
        run_node("SamplerCustom", **custom | {"sampler": "euler"})
    with pytest.raises(ValueError, match=r"CFGGuider: input 'positive' is an empty CONDITIONING"):
        cs.CFGGuider.execute(tiny_model, [], negative, 2.0)
    with pytest.raises(ValueError, match=r"BasicGuider: input 'model' is not a MODEL"):
        run_node("BasicGuider", model="model", conditioning=positive)
    with pytest.raises(ValueError, match=r"KarrasScheduler: input 'rho' must be greater than 0"):
        cs.KarrasScheduler.execute(4, 14.6, 0.03, 0.0)
    with pytest.raises(ValueError, match=r"ExponentialScheduler: input 'sigma_min' must be greater than 0"):
        cs.ExponentialScheduler.execute(4, 14.6, 0.0)
    with pytest.raises(ValueError, match=r"SetFirstSigma: input 'sigmas' is empty"):
        cs.SetFirstSigma.execute(torch.tensor([]), 1.0)
    with pytest.raises(ValueError, match=r"KSamplerSelect: unknown sampler 'bogus'"):
        cs.KSamplerSelect.execute("bogus")


# --------------------------------------------------------------------------------------------
# a UI workflow shaped like ComfyUI's SamplerCustomAdvanced example, through the converter and `loom run`
# --------------------------------------------------------------------------------------------

def test_ui_workflow_converts_with_the_new_socket_types(registry):
    from loom.server.workflow import ui_to_api

    workflow = json.loads(WORKFLOW.read_text())
    prompt = ui_to_api(workflow, registry).prompt
    assert prompt["13"] == {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
        "latent_image": ["5", 0]}, "_meta": prompt["13"]["_meta"]}
    assert prompt["25"]["inputs"] == {"noise_seed": 314}
    assert prompt["22"]["inputs"]["cfg"] == 6.0
    assert prompt["16"]["inputs"] == {"sampler_name": "dpmpp_2m"}
    assert prompt["17"]["inputs"] == {"model": ["4", 0], "scheduler": "karras", "steps": 20, "denoise": 1}
    assert prompt["26"]["inputs"]["samples"] == ["13", 1]  # denoised_output
    assert {link[5] for link in workflow["links"]} >= {"NOISE", "GUIDER", "SAMPLER", "SIGMAS"}


def test_ui_workflow_runs_with_loom_run(base_dir, tmp_path):
    from PIL import Image

    from loom.server.cli import main
    from tests.fixtures_checkpoints import FILE_NAMES, write_checkpoint

    models = tmp_path / "models"
    write_checkpoint("sd1", models / "checkpoints" / FILE_NAMES["sd1"])
    code = main(["run", str(WORKFLOW), "--base-dir", str(base_dir), "--models-dir", str(models), "--quiet",
                 "--set", f"4.ckpt_name={FILE_NAMES['sd1']}", "--set", "5.width=64", "--set", "5.height=64",
                 "--set", "17.steps=3"])
    assert code == 0
    saved = sorted((base_dir / "output").rglob("*.png"))
    assert len(saved) == 1  # SaveImage; the PreviewImage of denoised_output goes to temp/
    picture = Image.open(saved[0])
    assert picture.size == (64, 64) and np.array(picture).std() > 0
    prompt = json.loads(picture.text["prompt"])
    assert prompt["13"]["class_type"] == "SamplerCustomAdvanced" and prompt["17"]["inputs"]["steps"] == 3
    assert json.loads(picture.text["workflow"])["nodes"]


# --------------------------------------------------------------------------------------------
# the sampler nodes whose options needed the samplers' own parameters
# --------------------------------------------------------------------------------------------

def _custom(model, conds, sampler, sigmas, seed: int = 11) -> torch.Tensor:
    positive, negative = conds
    out, _ = cs.SamplerCustom.execute(model, True, seed, 5.0, positive, negative, sampler, sigmas, latent())
    return out["samples"]


def test_parameterised_sampler_nodes_at_their_defaults_are_the_plain_samplers(tiny_model, tiny_conds):
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "karras", 4, 1.0)
    plain = {name: _custom(tiny_model, tiny_conds, SamplerChoice(name), sigmas)
             for name in ("dpm_adaptive", "er_sde", "sa_solver", "sa_solver_pece", "seeds_2")}
    (adaptive,) = cs.SamplerDPMAdaptative.execute(3, 0.05, 0.0078, 0.05, 0.0, 1.0, 0.0, 0.81, 0.0, 1.0)
    assert torch.equal(_custom(tiny_model, tiny_conds, adaptive, sigmas), plain["dpm_adaptive"])
    (er_sde,) = cs.SamplerER_SDE.execute("ER-SDE", 3, 1.0, 1.0)
    assert torch.allclose(_custom(tiny_model, tiny_conds, er_sde, sigmas), plain["er_sde"], atol=1e-6)
    (sa,) = cs.SamplerSASolver.execute(tiny_model, 1.0, 0.2, 0.8, 1.0, 3, 4, False, False)
    assert torch.equal(_custom(tiny_model, tiny_conds, sa, sigmas), plain["sa_solver"])
    (pece,) = cs.SamplerSASolver.execute(tiny_model, 1.0, 0.2, 0.8, 1.0, 3, 4, True, False)
    assert torch.equal(_custom(tiny_model, tiny_conds, pece, sigmas), plain["sa_solver_pece"])
    (seeds,) = cs.SamplerSEEDS2.execute("phi_1", 1.0, 1.0, 0.5)
    assert torch.equal(_custom(tiny_model, tiny_conds, seeds, sigmas), plain["seeds_2"])


def test_parameterised_sampler_options_change_the_result(tiny_model, tiny_conds):
    (sigmas,) = cs.BasicScheduler.execute(tiny_model, "karras", 4, 1.0)

    def run(sampler, seed: int = 11) -> torch.Tensor:
        """The same starting noise every time; ``seed`` seeds only the sampler's own noise."""
        from loom.nodes.runtime.custom_sampling import CFGGuider
        from loom.nodes.runtime.sampling import sample_guided

        noise = RandomNoise(11).generate(latent())
        return sample_guided(CFGGuider(tiny_model, *tiny_conds, 5.0), sampler, noise, latent()["samples"], sigmas,
                             seed=seed)

    default = run(cs.SamplerDPMAdaptative.execute(3, 0.05, 0.0078, 0.05, 0.0, 1.0, 0.0, 0.81, 0.0, 1.0)[0])
    loose = run(cs.SamplerDPMAdaptative.execute(2, 0.5, 0.1, 0.05, 0.0, 1.0, 0.0, 0.81, 0.0, 1.0)[0])
    noisy = cs.SamplerDPMAdaptative.execute(3, 0.05, 0.0078, 0.05, 0.0, 1.0, 0.0, 0.81, 1.0, 1.0)[0]
    noisy_1 = run(noisy, 1)
    assert not torch.allclose(default, loose, atol=1e-3) and not torch.allclose(default, noisy_1, atol=1e-3)
    assert not torch.equal(noisy_1, run(noisy, 2))  # eta > 0: the ancestral noise comes from the seed
    ode = cs.SamplerER_SDE.execute("ODE", 3, 1.0, 1.0)[0]
    assert ode.options["s_noise"] == 0.0 and torch.equal(run(ode, 1), run(ode, 2))  # no noise at all
    assert cs.SamplerER_SDE.execute("Reverse-time SDE", 3, 0.0, 1.0)[0].options["noise_scaler"].solver_type == "ODE"
    reverse = cs.SamplerER_SDE.execute("Reverse-time SDE", 2, 0.5, 1.0)[0]
    assert not torch.allclose(run(reverse), run(cs.SamplerER_SDE.execute("ER-SDE", 2, 0.5, 1.0)[0]), atol=1e-3)
    ode_sa = cs.SamplerSASolver.execute(tiny_model, 0.0, 0.2, 0.8, 1.0, 2, 2, False, False)[0]
    assert torch.equal(run(ode_sa, 1), run(ode_sa, 2))  # eta 0: SA-Solver is an ODE solver
    simple = cs.SamplerSASolver.execute(tiny_model, 0.0, 0.2, 0.8, 1.0, 2, 2, False, True)[0]
    assert not torch.allclose(run(simple), run(ode_sa), atol=1e-4)
    phi_2 = cs.SamplerSEEDS2.execute("phi_2", 1.0, 1.0, 0.5)[0]
    assert not torch.allclose(run(phi_2), run(cs.SamplerSEEDS2.execute("phi_1", 1.0, 1.0, 0.5)[0]), atol=1e-4)


def test_er_sde_noise_scalers_and_sa_tau_interval_are_comfyuis():
    x = torch.tensor([0.5, 2.0, 7.0])
    for eta in (0.5, 1.0, 2.0):
        er = cs.ERSDENoiseScaler("ER-SDE", eta)(x)
        assert torch.allclose(er, torch.tensor([v * (math.exp(v ** 0.3) + 10.0) ** eta for v in x.tolist()]))
        reverse = cs.ERSDENoiseScaler("Reverse-time SDE", eta)(x)
        assert torch.allclose(reverse, x ** (eta + 1))
    assert torch.equal(cs.ERSDENoiseScaler("ODE", 1.0)(x), x)
    tau = cs.SATauInterval(10.0, 1.0, eta=0.7)
    assert [tau(s) for s in (12.0, 10.0, 5.0, 1.0, 0.5)] == [0.0, 0.7, 0.7, 0.7, 0.0]
    assert cs.SATauInterval(10.0, 1.0, eta=0.0)(5.0) == 0.0


def test_sa_solver_simple_order_2_weights_integrate_constants_like_the_general_ones():
    from loom.nodes.runtime.samplers import _adams_b_coeffs

    lambdas = torch.tensor([-1.2, -0.7])
    for tau in (0.0, 1.0):
        for corrector in (False, True):
            lambda_s, lambda_t = (lambdas[0], lambdas[1]) if corrector else (lambdas[1], torch.tensor(-0.1))
            general = _adams_b_coeffs(torch.tensor(0.9), lambdas, lambda_s, lambda_t, tau)
            simple = _adams_b_coeffs(torch.tensor(0.9), lambdas, lambda_s, lambda_t, tau, True, corrector)
            assert torch.allclose(simple.sum(), general.sum(), atol=1e-6)  # both exact for constant predictions
            assert not torch.allclose(simple, general, atol=1e-6)


def test_seeds_2_phi_2_step_by_hand():
    """One deterministic (eta 0) SEEDS-2 phi_2 step, r = 1 (ComfyUI's exp_heun_2_x0), on an exact denoiser."""
    from loom.nodes.runtime.samplers import sample_seeds_2
    from tests.fixtures_sampling import GaussianDenoiser

    model = GaussianDenoiser(0.5)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 2.0
    s0, s1 = 2.0, 1.0
    got = sample_seeds_2(model, x, torch.tensor([s0, s1]), seed=0, eta=0.0, s_noise=1.0, r=1.0, solver_type="phi_2")
    h = math.log(s0 / s1)
    d0 = model(x, torch.tensor([s0]))
    x2 = s1 / s0 * x - math.expm1(-h) * d0
    d1 = model(x2, torch.tensor([s1]))
    b2 = (math.expm1(-h) + h) / -h
    b1 = math.expm1(-h) - b2
    assert torch.allclose(got, s1 / s0 * x - (b1 * d0 + b2 * d1), atol=1e-5)


def test_a_guider_in_the_output_cache_counts_its_conditionings_not_the_model(tiny_model, tiny_conds):
    from loom.server.cache import estimate_bytes

    positive, negative = tiny_conds
    (guider,) = cs.CFGGuider.execute(tiny_model, positive, negative, 5.0)
    conditioning = sum(c[0].element_size() * c[0].nelement() for c in positive + negative)
    assert estimate_bytes(guider) == conditioning < estimate_bytes(tiny_model.unet)


def test_cfg_override_replaces_cfg_inside_its_range_and_the_nearest_wins(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sampling = tiny_model.sampling
    high, low = sampling.percent_to_sigma(0.0), sampling.percent_to_sigma(0.5)
    (outer,) = cs.CFGOverride.execute(tiny_model, 1.0, 0.0, 0.5)  # cfg 1 for the first half
    (inner,) = cs.CFGOverride.execute(outer, 3.0, 0.25, 0.5)  # nearer the sampler: cfg 3 from 25 % to 50 %
    assert inner.options["cfg_overrides"][0] == (low, high, 1.0) and tiny_model.options.get("cfg_overrides") is None

    def predict(model, sigma: float, cfg: float = 7.0) -> torch.Tensor:
        denoiser = cs.CFGGuider.execute(model, positive, negative, cfg)[0].denoiser(x.shape, None, None)
        return denoiser(x, torch.tensor([sigma]))

    early, mid = float(sampling.sigma_max), float(sampling.percent_to_sigma(0.4))
    late = float(sampling.percent_to_sigma(0.8))
    unet = tiny_model.unet
    unet.batches.clear()
    assert torch.allclose(predict(outer, early), predict(tiny_model, early, cfg=1.0), atol=1e-6)
    assert unet.batches[0] == 1  # cfg 1: the negative is skipped, as ComfyUI's guider with cfg 1
    assert torch.allclose(predict(inner, mid), predict(tiny_model, mid, cfg=3.0), atol=1e-6)
    assert torch.allclose(predict(inner, early), predict(tiny_model, early, cfg=1.0), atol=1e-6)
    assert torch.allclose(predict(inner, late), predict(tiny_model, late, cfg=7.0), atol=1e-6)


def test_sampling_percent_to_sigma_and_add_noise(tiny_model):
    table = sd_sigmas().astype(np.float64)
    (half,) = cs.SamplingPercentToSigma.execute(tiny_model, 0.5, False)  # sigma at timestep 499.5, log-lerped
    assert half == pytest.approx(math.exp(0.5 * math.log(table[499]) + 0.5 * math.log(table[500])), rel=1e-5)
    assert cs.SamplingPercentToSigma.execute(tiny_model, 0.0, False) == (999999999.9,)
    assert cs.SamplingPercentToSigma.execute(tiny_model, 1.0, False) == (0.0,)
    assert cs.SamplingPercentToSigma.execute(tiny_model, 0.0, True)[0] == pytest.approx(float(table[-1]), rel=1e-6)
    assert cs.SamplingPercentToSigma.execute(tiny_model, 1.0, True)[0] == pytest.approx(float(table[0]), rel=1e-6)

    fmt = tiny_model.latent_format
    noise = RandomNoise(6).generate(latent())
    (noisy,) = cs.AddNoise.execute(tiny_model, RandomNoise(6), torch.tensor([3.0, 1.0, 0.0]), latent())
    assert torch.allclose(noisy["samples"], fmt.process_out(noise * 3.0), atol=1e-6)  # |first - last| = 3
    image = {"samples": torch.full((1, 4, 8, 8), 0.5)}
    (noisy,) = cs.AddNoise.execute(tiny_model, RandomNoise(6), torch.tensor([2.0]), image)
    assert torch.allclose(noisy["samples"], fmt.process_out(noise * 2.0 + fmt.process_in(image["samples"])), atol=1e-5)
    (same,) = cs.AddNoise.execute(tiny_model, RandomNoise(6), torch.tensor([]), image)
    assert same is image
