"""Sigma schedules by ComfyUI's scheduler names, with ComfyUI's exact numerics.

A schedule is a descending float32 tensor of ``steps + 1`` noise levels ending in ``0`` (the discrete
``ddim_uniform`` schedule may give one more). Every function reads the model's own sigma table
(:class:`~nodes.runtime.model_types.ModelSampling`), so v-prediction and SDXL models get their schedule.

:func:`sampling_sigmas` adds what the KSampler does on top: ``denoise < 1`` builds the schedule for
``int(steps / denoise)`` steps and keeps the last ``steps + 1`` sigmas, and some samplers drop the
penultimate sigma (their :class:`~nodes.runtime.samplers.SamplerSpec` says so).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from loom.nodes.runtime.model_types import ModelSampling
from loom.nodes.runtime.samplers import sampler_spec

SCHEDULER_NAMES: tuple[str, ...] = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                                    "normal", "linear_quadratic", "kl_optimal")
"""ComfyUI's ``KSampler.SCHEDULERS``, in its order (the combo shows them so)."""

def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in ``sigma ** (1 / rho)``."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in ``log(sigma)``."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def polyexponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, steps) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def kl_optimal(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in ``atan(sigma)`` (Align Your Steps' KL-optimal schedule)."""
    fractions = torch.arange(steps, dtype=torch.float).div_(steps - 1) if steps > 1 else torch.zeros(1)
    sigmas = fractions.new_zeros(steps + 1)
    sigmas[:-1] = (fractions * math.atan(sigma_min) + (1 - fractions) * math.atan(sigma_max)).tan_()
    return sigmas


def normal(sampling: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Evenly spaced training timesteps from the last to the first, mapped to sigmas.

    ``sgm`` (``sgm_uniform``) spaces ``steps + 1`` points and drops the last, as SGM's discretisation.
    """
    start = sampling.timestep(sampling.sigma_max)
    end = sampling.timestep(sampling.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(sampling.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append = False
        timesteps = torch.linspace(start, end, steps)
    values = [float(sampling.sigma(t)) for t in timesteps]
    if append:
        values.append(0.0)
    return torch.FloatTensor(values)


def simple(sampling: ModelSampling, steps: int) -> torch.Tensor:
    """Every ``len(sigmas) / steps``-th entry of the model's table, from the top."""
    table = sampling.sigmas
    stride = len(table) / steps
    values = [float(table[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(values + [0.0])


def ddim_uniform(sampling: ModelSampling, steps: int) -> torch.Tensor:
    """Every ``len(sigmas) // steps``-th entry from index 1 upwards, reversed (DDIM's uniform spacing)."""
    table = sampling.sigmas
    index = 1
    if math.isclose(float(table[index]), 0, abs_tol=0.00001):
        steps += 1
        values: list[float] = []
    else:
        values = [0.0]
    stride = max(len(table) // steps, 1)
    while index < len(table):
        values.append(float(table[index]))
        index += stride
    return torch.FloatTensor(values[::-1])


def beta(sampling: ModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Timesteps at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024), repeats removed."""
    import numpy
    from scipy import stats

    last_timestep = len(sampling.sigmas) - 1
    quantiles = 1 - numpy.linspace(0, 1, steps, endpoint=False)
    timesteps = numpy.rint(stats.beta.ppf(quantiles, alpha, beta_) * last_timestep)
    values: list[float] = []
    previous = -1
    for t in timesteps:
        if t != previous:
            values.append(float(sampling.sigmas[int(t)]))
        previous = t
    return torch.FloatTensor(values + [0.0])


def linear_quadratic(sampling: ModelSampling, steps: int, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> torch.Tensor:
    """Movie Gen's schedule: linear in the first half, quadratic after, scaled to ``sigma_max``."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear_part = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        threshold_noise_step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = threshold_noise_step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * threshold_noise_step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic_part = [quadratic_coef * (i ** 2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear_part + quadratic_part + [1.0]]
    return torch.FloatTensor(schedule) * sampling.sigma_max.cpu()


_SCHEDULERS: dict[str, Callable[[ModelSampling, int], torch.Tensor]] = {
    "normal": normal,
    "karras": lambda s, n: karras(n, float(s.sigma_min), float(s.sigma_max)),
    "exponential": lambda s, n: exponential(n, float(s.sigma_min), float(s.sigma_max)),
    "sgm_uniform": lambda s, n: normal(s, n, sgm=True),
    "simple": simple,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": lambda s, n: kl_optimal(n, float(s.sigma_min), float(s.sigma_max)),
}
assert set(_SCHEDULERS) == set(SCHEDULER_NAMES)


def calculate_sigmas(sampling: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """The schedule named ``scheduler`` for ``steps`` steps (ComfyUI's ``calculate_sigmas``)."""
    try:
        schedule = _SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; the schedulers are {', '.join(SCHEDULER_NAMES)}") from None
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {steps}")
    return schedule(sampling, steps)


def sampling_sigmas(sampling: ModelSampling, scheduler: str, steps: int, denoise: float = 1.0,
                    sampler_name: str = "") -> torch.Tensor:
    """The sigmas the KSampler runs: ``denoise`` and the sampler's penultimate-sigma rule applied.

    ``denoise <= 0`` gives an empty schedule (nothing to do); ``0 < denoise < 1`` computes the schedule
    for ``int(steps / denoise)`` steps and keeps its last ``steps + 1`` sigmas.
    """
    def full(n: int) -> torch.Tensor:
        discard = bool(sampler_name) and sampler_spec(sampler_name).discard_penultimate_sigma
        sigmas = calculate_sigmas(sampling, scheduler, n + 1 if discard else n)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    if denoise is None or denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return full(int(steps / denoise))[-(steps + 1):]


def vp(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """The continuous variance-preserving schedule (k-diffusion's ``get_sigmas_vp``), ending in 0."""
    t = torch.linspace(1, eps_s, steps)
    return append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def laplace(steps: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta_: float = 0.5) -> torch.Tensor:
    """Tiankai et al. (2024): log sigma at the quantiles of a Laplace(mu, beta) distribution, clamped to
    ``[sigma_min, sigma_max]``. As ComfyUI's ``get_sigmas_laplace`` it has ``steps`` values and no final 0."""
    epsilon = 1e-5  # keeps the logarithm finite at the ends
    x = torch.linspace(0, 1, steps)
    lmb = mu - beta_ * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + epsilon)
    return torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)
