"""Sigma schedules: ComfyUI's formulas on the SD1 schedule, denoise < 1 and the penultimate-sigma rule."""
from __future__ import annotations

import math

import pytest
import torch

from loom.nodes.runtime.model_types import ModelSampling
from loom.nodes.runtime.schedules import (SCHEDULER_NAMES, calculate_sigmas, ddim_uniform, sampling_sigmas)

SD = ModelSampling.scaled_linear()


def test_sd_sigma_range_is_the_published_one():
    # SD's scaled-linear betas 0.00085..0.012 over 1000 steps give sigma 0.0292 .. 14.6146
    assert float(SD.sigma_min) == pytest.approx(0.029168, rel=1e-4)
    assert float(SD.sigma_max) == pytest.approx(14.614642, rel=1e-5)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_every_schedule_is_descending_and_ends_at_zero(name, steps):
    sigmas = calculate_sigmas(SD, name, steps)
    assert sigmas.dtype == torch.float32
    assert float(sigmas[-1]) == 0.0
    assert len(sigmas) == steps + 1 or name == "ddim_uniform" or (name == "beta" and len(sigmas) <= steps + 1)
    assert torch.all(sigmas[:-1] > sigmas[1:]), f"{name} is not strictly descending: {sigmas}"
    assert float(sigmas[0]) <= float(SD.sigma_max) * (1 + 1e-6)


def test_karras_and_exponential_follow_their_formulas():
    n, lo, hi = 10, float(SD.sigma_min), float(SD.sigma_max)
    karras = calculate_sigmas(SD, "karras", n)[:-1].double()
    ramp = torch.linspace(0, 1, n).double()
    expected = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    assert torch.allclose(karras, expected, rtol=1e-5)
    exponential = calculate_sigmas(SD, "exponential", n)[:-1].double()
    assert torch.allclose(exponential.log(), torch.linspace(math.log(hi), math.log(lo), n).double(), atol=1e-5)


def test_normal_spaces_timesteps_evenly_from_999_to_0():
    sigmas = calculate_sigmas(SD, "normal", 5)
    for sigma, t in zip(sigmas[:-1], [999.0, 749.25, 499.5, 249.75, 0.0]):
        assert float(sigma) == pytest.approx(float(SD.sigma(torch.tensor(t))), rel=1e-6)


def test_simple_and_sgm_uniform():
    simple = calculate_sigmas(SD, "simple", 4)
    assert [float(s) for s in simple[:-1]] == [float(SD.sigmas[i]) for i in (999, 749, 499, 249)]
    sgm = calculate_sigmas(SD, "sgm_uniform", 4)
    for sigma, t in zip(sgm[:-1], [999.0, 749.25, 499.5, 249.75]):
        assert float(sigma) == pytest.approx(float(SD.sigma(torch.tensor(t))), rel=1e-6)


def test_ddim_uniform_takes_every_kth_table_entry_from_one():
    sigmas = ddim_uniform(SD, 10)
    assert [float(s) for s in sigmas] == [float(SD.sigmas[i]) for i in range(901, 0, -100)] + [0.0]
    # when 1000 is not a multiple of the step count ComfyUI's rule gives an extra step
    assert len(ddim_uniform(SD, 30)) == 32  # 31 steps for 30


def test_beta_uses_beta_quantile_timesteps():
    from scipy import stats

    sigmas = calculate_sigmas(SD, "beta", 6)
    quantiles = 1 - torch.linspace(0, 1, 7)[:-1].double().numpy()
    timesteps = [int(round(t)) for t in stats.beta.ppf(quantiles, 0.6, 0.6) * 999]
    assert [float(s) for s in sigmas[:-1]] == [float(SD.sigmas[t]) for t in timesteps]


def test_kl_optimal_is_even_in_arctan():
    sigmas = calculate_sigmas(SD, "kl_optimal", 5)[:-1].double()
    angles = sigmas.atan()
    assert torch.allclose(angles[1:] - angles[:-1], (angles[1] - angles[0]).expand(4), atol=1e-5)


def test_linear_quadratic_starts_at_sigma_max():
    sigmas = calculate_sigmas(SD, "linear_quadratic", 8)
    assert float(sigmas[0]) == pytest.approx(float(SD.sigma_max))


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    partial = sampling_sigmas(SD, "normal", 10, denoise=0.6)
    longer = calculate_sigmas(SD, "normal", int(10 / 0.6))
    assert len(partial) == 11
    assert torch.equal(partial, longer[-11:])
    assert len(sampling_sigmas(SD, "karras", 10, denoise=0.0)) == 0
    assert torch.equal(sampling_sigmas(SD, "karras", 10, denoise=1.0), calculate_sigmas(SD, "karras", 10))


@pytest.mark.parametrize("sampler", ["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"])
def test_some_samplers_drop_the_penultimate_sigma(sampler):
    sigmas = sampling_sigmas(SD, "karras", 6, sampler_name=sampler)
    longer = calculate_sigmas(SD, "karras", 7)
    assert len(sigmas) == 7
    assert torch.equal(sigmas, torch.cat([longer[:-2], longer[-1:]]))


def test_unknown_scheduler_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        calculate_sigmas(SD, "nope", 5)


def test_v_prediction_models_share_the_schedule():
    v = ModelSampling.scaled_linear(prediction="v")
    assert torch.equal(calculate_sigmas(v, "normal", 12), calculate_sigmas(SD, "normal", 12))
