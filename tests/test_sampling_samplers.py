"""Samplers on an analytic denoiser (Gaussian data), noise seeding, and the sampler registry."""
from __future__ import annotations

import pytest
import torch

from loom.nodes.runtime import samplers
from loom.nodes.runtime.model_types import ModelSampling
from loom.nodes.runtime.noise import SeededNoise, initial_noise
from loom.nodes.runtime.schedules import calculate_sigmas
from tests.fixtures_sampling import GaussianDenoiser

SD = ModelSampling.scaled_linear()

DETERMINISTIC = ["euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v", "res_multistep",
                 "gradient_estimation", "ddim", "uni_pc", "uni_pc_bh2", "deis"]
FIRST_ORDER = {"euler", "ddim", "heunpp2", "gradient_estimation"}
STOCHASTIC = ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
              "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "ddpm", "lcm", "res_multistep_ancestral", "er_sde", "seeds_2",
              "seeds_3", "sa_solver", "sa_solver_pece"]


def _start(sigmas: torch.Tensor, seed: int = 0, shape=(1, 4, 8, 8)) -> torch.Tensor:
    return initial_noise(torch.zeros(shape), seed) * sigmas[0]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_solve_the_probability_flow_ode(name):
    denoiser = GaussianDenoiser(s=0.5)
    sigmas = calculate_sigmas(SD, "karras", 30)
    x0 = _start(sigmas)
    out = samplers.sampler_spec(name).function(denoiser, x0, sigmas, seed=0)
    # the ODE's exact end point at sigma -> 0
    exact = denoiser.ode_solution(x0, float(sigmas[0]), 0.0)
    error = float((out - exact).norm() / exact.norm())
    assert error < (0.08 if name in FIRST_ORDER else 0.01), f"{name}: relative error {error}"


@pytest.mark.parametrize("name, tolerance", [("dpm_fast", 0.002), ("dpm_adaptive", 0.05)])
def test_dpm_solver_samplers_integrate_between_the_schedule_end_points(name, tolerance):
    denoiser = GaussianDenoiser(s=0.5)
    sigmas = calculate_sigmas(SD, "karras", 30)
    x0 = _start(sigmas)
    out = samplers.sampler_spec(name).function(denoiser, x0, sigmas, seed=0)
    exact = denoiser.ode_solution(x0, float(sigmas[0]), float(sigmas[-2]))  # they stop at the last sigma > 0
    assert float((out - exact).norm() / exact.norm()) < tolerance
    if name == "dpm_fast":
        assert denoiser.calls == 30


def test_higher_order_samplers_are_more_accurate_than_euler():
    denoiser = GaussianDenoiser(s=0.5)
    sigmas = calculate_sigmas(SD, "karras", 20)
    x0 = _start(sigmas)
    exact = denoiser.ode_solution(x0, float(sigmas[0]), float(sigmas[-2]))
    errors = {}
    for name in ("euler", "heun", "dpmpp_2m"):
        out = samplers.sampler_spec(name).function(denoiser, x0, sigmas[:-1], seed=0)  # stop before the last jump
        errors[name] = float((out - exact).norm() / exact.norm())
    assert errors["heun"] < errors["euler"] / 4
    assert errors["dpmpp_2m"] < errors["euler"] / 4


@pytest.mark.parametrize("name", [n for n in STOCHASTIC if n != "lcm"])  # LCM targets consistency models
def test_stochastic_samplers_draw_from_the_data_distribution(name):
    s = 0.5
    denoiser = GaussianDenoiser(s=s)
    sigmas = calculate_sigmas(SD, "karras", 100)
    x0 = _start(sigmas, shape=(1, 4, 64, 64))
    out = samplers.sampler_spec(name).function(denoiser, x0, sigmas, seed=3)
    # samples of the data distribution have std s; the ODE's end point (no fresh noise) would not keep it
    assert float(out.std()) == pytest.approx(s, rel=0.05), name
    assert abs(float(out.mean())) < 0.05


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_are_reproducible_by_seed(name):
    sigmas = calculate_sigmas(SD, "normal", 6)
    x0 = _start(sigmas)
    run = samplers.sampler_spec(name).function
    a = run(GaussianDenoiser(), x0, sigmas, seed=11)
    b = run(GaussianDenoiser(), x0, sigmas, seed=11)
    c = run(GaussianDenoiser(), x0, sigmas, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_model_evaluations_per_step():
    sigmas = calculate_sigmas(SD, "karras", 5)
    counts = {}
    for name in ("euler", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "dpmpp_2s_ancestral"):
        denoiser = GaussianDenoiser()
        samplers.sampler_spec(name).function(denoiser, _start(sigmas), sigmas, seed=0)
        counts[name] = denoiser.calls
    # second-order single-step samplers take two evaluations except on the last (to sigma 0) step
    assert counts == {"euler": 5, "heun": 9, "dpm_2": 9, "dpmpp_2m": 5, "dpmpp_sde": 9, "dpmpp_2s_ancestral": 9}


def test_ancestral_noise_comes_from_a_generator_seeded_like_the_initial_noise():
    latent = torch.zeros(2, 4, 8, 8)
    first_draw = SeededNoise(latent, 42)(torch.tensor(1.0), torch.tensor(0.5))
    assert torch.equal(first_draw, initial_noise(latent, 42))


def test_initial_noise_is_cpu_seeded_and_per_item_with_batch_index():
    latent = torch.zeros(4, 4, 8, 8)
    full = initial_noise(latent, 7)
    expected = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(full, expected)
    picked = initial_noise(torch.zeros(2, 4, 8, 8), 7, batch_index=[3, 1])
    assert torch.equal(picked, full[[3, 1]])


def test_callback_sees_every_step():
    sigmas = calculate_sigmas(SD, "normal", 4)
    seen = []
    samplers.sample_euler(GaussianDenoiser(), _start(sigmas), sigmas, callback=lambda i, d, x: seen.append(i))
    assert seen == [0, 1, 2, 3]


def test_registry_lists_comfyui_names_and_refuses_missing_ones():
    assert len(samplers.SAMPLER_NAMES) == 42
    assert samplers.SAMPLER_NAMES == tuple(spec.name for spec in samplers.SAMPLER_TABLE)
    implemented = {spec.name for spec in samplers.SAMPLER_TABLE if spec.function is not None}
    for required in ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                     "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "lcm", "ddpm"):
        assert required in implemented
    missing = next(name for name in samplers.SAMPLER_NAMES if name not in implemented)
    with pytest.raises(ValueError, match=f"'{missing}' is a ComfyUI sampler that Loom does not implement"):
        samplers.sampler_spec(missing)
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        samplers.sampler_spec("bogus")


def test_sampler_specs_say_what_the_loop_does_for_them():
    spec = samplers.sampler_spec
    cfg_pp = {s.name for s in samplers.SAMPLER_TABLE if s.cfg_pp}
    assert cfg_pp == {name for name in samplers.SAMPLER_NAMES if name.endswith("_cfg_pp")}
    assert [s.name for s in samplers.SAMPLER_TABLE if s.random_inpaint_noise] == ["ddim"]
    assert spec("ddim").function is spec("euler").function
    assert {s.name for s in samplers.SAMPLER_TABLE if s.discard_penultimate_sigma} == {
        "dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
    with pytest.raises(AttributeError):
        spec("euler").cfg_pp = True  # frozen


class _KeepsUncond(GaussianDenoiser):
    """A denoiser whose unconditional prediction equals the guided one (what cfg 1 gives)."""

    def __call__(self, x, sigma):
        self.uncond_denoised = super().__call__(x, sigma)
        return self.uncond_denoised


@pytest.mark.parametrize("cfg_pp, plain", [("euler_cfg_pp", "euler"), ("dpmpp_2m_cfg_pp", "dpmpp_2m"),
                                           ("euler_ancestral_cfg_pp", "euler_ancestral"),
                                           ("gradient_estimation_cfg_pp", "gradient_estimation")])
def test_cfg_pp_samplers_reduce_to_their_plain_versions_without_guidance(cfg_pp, plain):
    sigmas = calculate_sigmas(SD, "karras", 8)
    x0 = _start(sigmas)
    a = samplers.sampler_spec(cfg_pp).function(_KeepsUncond(), x0, sigmas, seed=5)
    b = samplers.sampler_spec(plain).function(GaussianDenoiser(), x0, sigmas, seed=5)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
