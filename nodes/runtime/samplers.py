"""Samplers in the k-diffusion style: short functions that integrate a denoiser over a list of sigmas.

Every sampler has the signature ``sample(model, x, sigmas, *, seed=None, callback=None) -> x`` where

* ``model(x, sigma)`` is the denoiser: it returns the model's estimate of the clean latent (``denoised``)
  for ``x`` at noise level ``sigma`` (a ``[B]`` tensor), guidance included;
* ``x`` is the starting latent, already noised to ``sigmas[0]``;
* ``sigmas`` is the descending schedule (``steps + 1`` values, usually ending in 0);
* ``seed`` seeds the extra noise of stochastic samplers (ComfyUI seeds it with the sampler's seed too);
* ``callback(i, denoised, x)`` is called once per step (progress and previews).

Names and numerics follow ComfyUI's ``KSampler.SAMPLERS`` (which are k-diffusion's samplers plus a few).
Where ComfyUI's sampler has a flow-specific branch (the denoiser's ``.sampling.is_flow``: SD3, FLUX,
AuraFlow), so does Loom's: the ancestral samplers (euler/dpm_2/dpmpp_2s ancestral) take the RF form, and the
half-log-SNR samplers (dpmpp_sde, dpmpp_2m/3m_sde, er_sde, seeds_2/3, sa_solver, euler_ancestral_cfg_pp)
use ``-logit(sigma)`` with the first sigma moved off 1; lcm renoises by the model's noise scaling.

:data:`SAMPLER_TABLE` holds one :class:`SamplerSpec` per ComfyUI sampler name, in ComfyUI's order: the
function (``None`` for a name Loom does not implement yet, so shared workflows still validate their shape)
and what the sampling loop and the schedule must do for it. :func:`sampler_spec` looks a name up and
refuses an unknown or unimplemented one with a clear message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from loom.nodes.runtime.noise import BrownianNoise, SeededNoise


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative ``dx/dsigma`` for a denoiser output (Karras et al. 2022)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """Split a step to ``sigma_to`` into a deterministic step down to ``sigma_down`` plus fresh noise
    of size ``sigma_up`` (``sigma_down**2 + sigma_up**2 == sigma_to**2``)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


def _emit(callback: Callback | None, i: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
    if callback is not None:
        callback(i, denoised, x)


def _brownian(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None) -> BrownianNoise:
    positive = sigmas[sigmas > 0]
    return BrownianNoise(x, positive.min(), sigmas.max(), seed)


# -- the flow (rectified-flow, ComfyUI's CONST) branches -------------------------------------------

def is_flow(model: Denoiser) -> bool:
    """Whether the denoiser's model sampling is a flow model's (SD3, FLUX, AuraFlow): ``x = sigma * noise +
    (1 - sigma) * x0``. Denoisers expose their MODEL's sampling as ``.sampling``."""
    return bool(getattr(getattr(model, "sampling", None), "is_flow", False))


def half_log_snr_fns(model: Denoiser) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                               Callable[[torch.Tensor], torch.Tensor]]:
    """``(lambda_fn, sigma_fn)``: sigma to half-log-SNR ``log(alpha / sigma)`` and back, as ComfyUI's
    ``sigma_to_half_log_snr``: ``-log(sigma)`` for discrete models, ``-logit(sigma)`` for flow models."""
    if is_flow(model):
        return (lambda sigma: sigma.logit().neg()), (lambda half_log_snr: half_log_snr.neg().sigmoid())
    return _t_fn, _sigma_fn


def offset_first_sigma_for_snr(sigmas: torch.Tensor, model: Denoiser, percent_offset: float = 1e-4) -> torch.Tensor:
    """A flow schedule starting at sigma 1 (infinite -log-SNR) starts at ``percent_to_sigma(1e-4)`` instead."""
    if len(sigmas) <= 1 or not is_flow(model):
        return sigmas
    if sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = model.sampling.percent_to_sigma(percent_offset)
    return sigmas


def _rf_ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float):
    """ComfyUI's flow ancestral step: ``(sigma_down, alpha_next / alpha_down, renoise_coeff)``."""
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_ip1 = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise_coeff = (sigma_next ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_ip1 / alpha_down, renoise_coeff


# --------------------------------------------------------------------------------------------
# first-order and Heun-type samplers
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                 callback: Callback | None = None) -> torch.Tensor:
    """Euler steps of the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _emit(callback, i, denoised, x)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                           callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                           noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler steps down to ``sigma_down``, then fresh noise up to the next sigma (flow models: the RF form)."""
    if is_flow(model):
        return sample_euler_ancestral_rf(model, x, sigmas, seed=seed, callback=callback, eta=eta, s_noise=s_noise,
                                         noise_sampler=noise_sampler)
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _emit(callback, i, denoised, x)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_ancestral_rf(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                              callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                              noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler ancestral for flow models (ComfyUI's ``sample_euler_ancestral_RF``): interpolate towards the
    denoised estimate down to ``sigma_down``, rescale and renoise to the next sigma."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            sigma_down, rescale, renoise = _rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
            ratio = sigma_down / sigmas[i]
            x = ratio * x + (1 - ratio) * denoised
            if eta > 0:
                x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order method (an Euler step, then the average of both slopes); Euler on the last step."""
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _emit(callback, i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                   callback: Callback | None = None) -> torch.Tensor:
    """Heun++: up to three slope evaluations per step, weighted by the sigmas (sd-webui-samplers-scheduler)."""
    s_in = _ones(x)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _emit(callback, i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            w1 = 1 - w2
            x = x + (d * w1 + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            denoised_3 = model(x_3, sigmas[i + 2] * s_in)
            d_3 = to_d(x_3, sigmas[i + 2], denoised_3)
            w = 3 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w3 = sigmas[i + 2] / w
            w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                 callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver-2-style midpoint steps (the midpoint taken in log sigma)."""
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                           callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                           noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-2 midpoint steps down to ``sigma_down``, then fresh noise (flow models: ComfyUI's RF form, which
    rescales by ``alpha_next / alpha_down`` and renoises)."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    flow = is_flow(model)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if flow:
            sigma_down, rescale, sigma_up = _rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _emit(callback, i, denoised, x)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigma_down - sigmas[i])
            if flow:
                x = rescale * x
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _linear_multistep_coeff(order: int, t: Any, i: int, j: int) -> float:
    from scipy import integrate

    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
               callback: Callback | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep: integrates the Lagrange polynomial through the last ``order`` slopes."""
    s_in = _ones(x)
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [_linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
            x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


# --------------------------------------------------------------------------------------------
# DPM-Solver++ family (log-SNR time t = -log sigma)
# --------------------------------------------------------------------------------------------

def _sigma_fn(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t_fn(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                              callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                              noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(2S) single-step second order, ancestral (flow models: the RF form)."""
    if is_flow(model):
        return _sample_dpmpp_2s_ancestral_rf(model, x, sigmas, seed=seed, callback=callback, eta=eta,
                                             s_noise=s_noise, noise_sampler=noise_sampler)
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _emit(callback, i, denoised, x)
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _sample_dpmpp_2s_ancestral_rf(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None,
                                  callback: Callback | None, eta: float, s_noise: float,
                                  noise_sampler: NoiseSampler | None) -> torch.Tensor:
    """ComfyUI's ``sample_dpmpp_2s_ancestral_RF``: the midpoint in flow half-log-SNR, interpolation steps."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)

    def sigma_fn(lbda: torch.Tensor) -> torch.Tensor:
        return (lbda.exp() + 1) ** -1

    def lambda_fn(sigma: torch.Tensor) -> torch.Tensor:
        return ((1 - sigma) / sigma).log()

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, rescale, renoise = _rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s: Any = 0.9999
            else:
                t_i, t_down = lambda_fn(sigmas[i]), lambda_fn(sigma_down)
                sigma_s = sigma_fn(t_i + 0.5 * (t_down - t_i))
            ratio = sigma_s / sigmas[i]
            u = ratio * x + (1 - ratio) * denoised
            denoised_2 = model(u, sigma_s * s_in)
            ratio = sigma_down / sigmas[i]
            x = ratio * x + (1 - ratio) * denoised_2
        if sigmas[i + 1] > 0 and eta > 0:
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                     callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     noise_sampler: NoiseSampler | None = None, r: float = 1 / 2) -> torch.Tensor:
    """DPM-Solver++ stochastic (SDE) second order with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    noise_sampler = noise_sampler or _brownian(x, sigmas, seed)
    lambda_fn, sigma_fn = half_log_snr_fns(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_fn(lambda_s_1)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()

        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise_sampler(sigmas[i], sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1 * s_in)

        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in log-SNR time."""
    s_in = _ones(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                        callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        noise_sampler: NoiseSampler | None = None, solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE with Brownian-tree noise; ``solver_type`` is ``midpoint`` or ``heun``."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    noise_sampler = noise_sampler or _brownian(x, sigmas, seed)
    lambda_fn = half_log_snr_fns(model)[0]
    sigmas = offset_first_sigma_for_snr(sigmas, model)
    s_in = _ones(x)
    old_denoised = None
    h = h_last = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    return sample_dpmpp_2m_sde(model, x, sigmas, solver_type="heun", **kwargs)


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                        callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(3M) SDE with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    noise_sampler = noise_sampler or _brownian(x, sigmas, seed)
    lambda_fn = half_log_snr_fns(model)[0]
    sigmas = offset_first_sigma_for_snr(sigmas, model)
    s_in = _ones(x)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# --------------------------------------------------------------------------------------------
# DDPM, LCM and multistep Adams-type samplers
# --------------------------------------------------------------------------------------------

def _ddpm_step(x: torch.Tensor, sigma: torch.Tensor, sigma_prev: torch.Tensor, noise: torch.Tensor,
               noise_sampler: NoiseSampler) -> torch.Tensor:
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * noise / (1 - alpha_cumprod).sqrt())
    if sigma_prev > 0:
        mu += ((1 - alpha) * (1. - alpha_cumprod_prev) / (1. - alpha_cumprod)).sqrt() * noise_sampler(sigma, sigma_prev)
    return mu


@torch.no_grad()
def sample_ddpm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                callback: Callback | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Ancestral DDPM steps, computed in the variance-preserving space."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        x = _ddpm_step(x / torch.sqrt(1.0 + sigmas[i] ** 2.0), sigmas[i], sigmas[i + 1],
                       (x - denoised) / sigmas[i], noise_sampler)
        if sigmas[i + 1] != 0:
            x *= torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
               callback: Callback | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Latent-consistency sampling: jump to the denoised estimate, re-noise to the next sigma."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        x = denoised
        if sigmas[i + 1] > 0:  # the model sampling's noise mixing (flow: sigma*noise + (1-sigma)*x)
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            sampling = getattr(model, "sampling", None)
            if sampling is not None:
                x = sampling.noise_scaling(sigmas[i + 1].reshape(1), noise, x)
            else:
                x = x + noise * sigmas[i + 1]
    return x


@torch.no_grad()
def sample_ipndm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                 callback: Callback | None = None, max_order: int = 4) -> torch.Tensor:
    """Improved pseudo-numerical (Adams-Bashforth) multistep with fixed coefficients, up to 4th order."""
    s_in = _ones(x)
    buffer: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in)
        _emit(callback, i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x + (t_next - t_cur) * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t_cur) * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x_next = x + (t_next - t_cur) * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        buffer.append(d_cur)
        del buffer[:-(max_order - 1)]
        x = x_next
    return x


@torch.no_grad()
def sample_ipndm_v(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                   callback: Callback | None = None, max_order: int = 4) -> torch.Tensor:
    """iPNDM with coefficients for variable step sizes."""
    s_in = _ones(x)
    t_steps = sigmas
    buffer: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in)
        _emit(callback, i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif order == 2:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            coeff1 = (2 + (h_n / h_n_1)) / 2
            coeff2 = -(h_n / h_n_1) / 2
            x_next = x + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer[-1])
        elif order == 3:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            h_n_2 = t_steps[i - 1] - t_steps[i - 2]
            temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
            coeff3 = temp * h_n_1 / h_n_2
            x_next = x + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2])
        else:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            h_n_2 = t_steps[i - 1] - t_steps[i - 2]
            h_n_3 = t_steps[i - 2] - t_steps[i - 3]
            temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n
                     / (6 * (h_n + h_n_1 + h_n_2))) \
                * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
            ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + ratio) * temp2
            coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + ratio * (1 + h_n_2 / h_n_3)) * temp2
            coeff4 = -temp2 * ratio * h_n_1 / h_n_2
            x_next = x + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2]
                                             + coeff4 * buffer[-3])
        buffer.append(d_cur)
        del buffer[:-(max_order - 1)]
        x = x_next
    return x


def _deis_coefficients(sigmas: torch.Tensor, max_order: int, n: int = 10000) -> list[list[torch.Tensor]]:
    """DEIS 'tab' coefficients: the Lagrange basis through the previous steps, integrated numerically in the
    VP time of an EDM-style schedule (sigma 0.002..80), per step."""
    epsilon_s, sigma_min, sigma_max = 1e-3, 0.002, 80
    log_min = torch.log(torch.tensor(sigma_min) ** 2 + 1)
    log_max = torch.log(torch.tensor(sigma_max) ** 2 + 1)
    beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    beta_min = log_max - 0.5 * beta_d
    t_steps = ((beta_min ** 2 + 2 * beta_d * (sigmas.cpu() ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    beta_0, beta_1 = beta_min, beta_d + beta_min
    coefficients: list[list[torch.Tensor]] = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        order = min(i + 1, max_order)
        if order == 1:
            coefficients.append([])
            continue
        taus = torch.linspace(t_cur, t_next, n)
        dtau = (t_next - t_cur) / n
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        d_log_alpha = -(taus * (beta_1 - beta_0) + beta_0)
        integrand = -0.5 * d_log_alpha / torch.sqrt(alpha * (1 - alpha))
        previous = t_steps[[i - k for k in range(order)]]
        row = []
        for j in range(order):
            basis: Any = 1
            for k in range(order):
                if k != j:
                    basis = basis * (taus - previous[k]) / (previous[j] - previous[k])
            row.append(torch.sum(integrand * basis) * dtau)
        coefficients.append(row)
    return coefficients


@torch.no_grad()
def sample_deis(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                callback: Callback | None = None, max_order: int = 3) -> torch.Tensor:
    """DEIS (Zhang & Chen 2022), 'tab' variant: multistep with numerically integrated coefficients."""
    s_in = _ones(x)
    coefficients = _deis_coefficients(sigmas, max_order)
    buffer: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in)
        _emit(callback, i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            coeff = [c.to(x.device) for c in coefficients[i]]
            x_next = x + coeff[0] * d_cur
            for k in range(1, order):
                x_next = x_next + coeff[k] * buffer[-k]
        buffer.append(d_cur)
        del buffer[:-(max_order - 1)]
        x = x_next
    return x


@torch.no_grad()
def _res_multistep(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                   callback: Callback | None = None, eta: float = 0.0, s_noise: float = 1.0,
                   noise_sampler: NoiseSampler | None = None, cfg_pp: bool = False) -> torch.Tensor:
    """RES second-order multistep (Zhang et al. 2023, arXiv 2308.02157), optionally ancestral or CFG++."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)

    def phi1(t: torch.Tensor) -> torch.Tensor:
        return torch.expm1(t) / t

    def phi2(t: torch.Tensor) -> torch.Tensor:
        return (phi1(t) - 1.0) / t

    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond_denoised = _uncond(model) if cfg_pp else None
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _emit(callback, i, denoised, x)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond_denoised) * sigma_down
            else:
                d = to_d(x, sigmas[i], denoised)
                x = x + d * (sigma_down - sigmas[i])
        else:
            t, t_old, t_next, t_prev = (_t_fn(sigmas[i]), _t_fn(old_sigma_down), _t_fn(sigma_down),
                                        _t_fn(sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1_val, phi2_val = phi1(-h), phi2(-h)
            b1 = torch.nan_to_num(phi1_val - phi2_val / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2_val / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond_denoised)
                x = _sigma_fn(h) * x + h * (b1 * uncond_denoised + b2 * old_denoised)
            else:
                x = _sigma_fn(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond_denoised if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, eta=0.0, **kwargs)


@torch.no_grad()
def sample_res_multistep_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                                   **kwargs: Any) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, eta=kwargs.pop("eta", 1.0), **kwargs)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                                **kwargs: Any) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, eta=0.0, cfg_pp=True, **kwargs)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                                          **kwargs: Any) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, eta=kwargs.pop("eta", 1.0), cfg_pp=True, **kwargs)


@torch.no_grad()
def sample_gradient_estimation(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                               callback: Callback | None = None, ge_gamma: float = 2.0) -> torch.Tensor:
    """Euler with a gradient-estimation correction from the previous slope (Permenter & Yuan)."""
    s_in = _ones(x)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _emit(callback, i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


# --------------------------------------------------------------------------------------------
# DPM-Solver (Lu et al. 2022) with a fixed number of evaluations or adaptive steps
# --------------------------------------------------------------------------------------------

class _DPMSolver:
    """DPM-Solver-1/2/3 steps in t = -log(sigma) on the eps prediction of a denoiser."""

    def __init__(self, model: Denoiser, callback: Callback | None) -> None:
        self.model = model
        self.callback = callback

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            cache[key] = (x - self.model(x, self.sigma(t) * x.new_ones([x.shape[0]]))) / self.sigma(t)
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * eps - self.sigma(s2) * (r2 / r1) * \
            ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def fast(self, x: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor, nfe: int) -> torch.Tensor:
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache: dict = {}
            t, t_next = ts[i], ts[i + 1]
            eps = self.eps(cache, "eps", x, t)
            _emit(self.callback, i, x - self.sigma(t) * eps, x)
            x = (self.step_1, self.step_2, self.step_3)[order - 1](x, t, t_next, cache)
        return x

    def adaptive(self, x: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor, order: int = 3,
                 rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.,
                 icoeff: float = 1., dcoeff: float = 0., accept_safety: float = 0.81, eta: float = 0.,
                 s_noise: float = 1., noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
        forward = t_end > t_start
        h = abs(h_init) * (1 if forward else -1)
        atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
        b1, b2, b3 = (pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order
        errs: list[float] = []
        s, x_prev, steps = t_start, x, 0
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            cache: dict = {}
            t = torch.minimum(t_end, s + h) if forward else torch.maximum(t_end, s + h)
            if eta and noise_sampler is not None:  # an ancestral step: solve down to sigma_down, renoise
                sigma_down, _ = get_ancestral_step(self.sigma(s), self.sigma(t), eta)
                t_step = torch.minimum(t_end, self.t(sigma_down))
                sigma_up = (self.sigma(t) ** 2 - self.sigma(t_step) ** 2) ** 0.5
            else:
                t_step, sigma_up = t, 0.
            eps = self.eps(cache, "eps", x, s)
            denoised = x - self.sigma(s) * eps
            if order == 2:
                x_low = self.step_1(x, s, t_step, cache)
                x_high = self.step_2(x, s, t_step, cache)
            else:
                x_low = self.step_2(x, s, t_step, cache, r1=1 / 3)
                x_high = self.step_3(x, s, t_step, cache)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            # PID step-size control, as in k-diffusion
            inv_error = 1 / (float(error) + 1e-8)
            if not errs:
                errs = [inv_error, inv_error, inv_error]
            errs[0] = inv_error
            factor = 1 + math.atan(errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3 - 1)
            if factor >= accept_safety:
                errs[2], errs[1] = errs[1], errs[0]
                x_prev, x = x_low, x_high
                if sigma_up:
                    x = x + sigma_up * s_noise * noise_sampler(self.sigma(s), self.sigma(t))
                s = t
            h *= factor
            _emit(self.callback, steps, denoised, x)
            steps += 1
        return x


def _dpm_range(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return sigma_min, sigmas[0]


@torch.no_grad()
def sample_dpm_fast(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver-fast: ``len(sigmas) - 1`` evaluations spread over 3rd/2nd/1st-order steps, uniform in t.

    Like ComfyUI it uses only the schedule's end points (sigma_max and the smallest non-zero sigma)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _dpm_range(sigmas)
    solver = _DPMSolver(model, callback)
    return solver.fast(x, solver.t(sigma_max.clone()), solver.t(sigma_min.clone()), len(sigmas) - 1)


@torch.no_grad()
def sample_dpm_adaptive(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                        callback: Callback | None = None, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, pcoeff: float = 0., icoeff: float = 1., dcoeff: float = 0.,
                        accept_safety: float = 0.81, eta: float = 0., s_noise: float = 1.,
                        noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver-23 with adaptive step size between the schedule's end points (the step count is its own).

    The options are ComfyUI's (SamplerDPMAdaptative); with ``eta > 0`` each accepted step ends at the
    ancestral ``sigma_down`` and fresh noise is added (ComfyUI draws that noise unseeded; here it comes
    from the run's seed, so a run can be repeated)."""
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive: order must be 2 or 3, got {order}")
    sigma_min, sigma_max = _dpm_range(sigmas)
    solver = _DPMSolver(model, callback)
    if eta and noise_sampler is None:
        noise_sampler = SeededNoise(x, seed)
    return solver.adaptive(x, solver.t(sigma_max.clone()), solver.t(sigma_min.clone()), order=order, rtol=rtol,
                           atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff,
                           accept_safety=accept_safety, eta=eta, s_noise=s_noise, noise_sampler=noise_sampler)


# --------------------------------------------------------------------------------------------
# ER-SDE and SEEDS (stochastic exponential solvers in data prediction)
# --------------------------------------------------------------------------------------------

def er_sde_noise_scaler(v: torch.Tensor) -> torch.Tensor:
    """ER-SDE's default noise scaler phi(x) = x * (exp(x ** 0.3) + 10)."""
    return v * ((v ** 0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                  callback: Callback | None = None, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                  noise_scaler: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  max_stage: int = 3) -> torch.Tensor:
    """Extended reverse-time SDE solver, VP ER-SDE-Solver-3 (Cui et al. 2023, arXiv 2309.06169).

    ``noise_scaler`` is the solver's phi (SamplerER_SDE's ER-SDE / reverse-time SDE / ODE); the default is
    ER-SDE's ``x * (exp(x ** 0.3) + 10)``."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)
    noise_scaler = noise_scaler or er_sde_noise_scaler

    points = 200.0
    point_index = torch.arange(0, points, dtype=torch.float32, device=x.device)
    sigmas = offset_first_sigma_for_snr(sigmas, model)
    er_lambdas = half_log_snr_fns(model)[0](sigmas).neg().exp()  # sigma / alpha
    old_denoised = old_denoised_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            er_lambda_s, er_lambda_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = sigmas[i] / er_lambda_s
            alpha_t = sigmas[i + 1] / er_lambda_t
            r_alpha = alpha_t / alpha_s
            r = noise_scaler(er_lambda_t) / noise_scaler(er_lambda_s)
            x = r_alpha * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = er_lambda_t - er_lambda_s
                step = -dt / points
                positions = er_lambda_t + point_index * step
                scaled = noise_scaler(positions)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (er_lambda_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * noise_scaler(er_lambda_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((positions - er_lambda_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((er_lambda_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * noise_scaler(er_lambda_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * \
                    (er_lambda_t ** 2 - er_lambda_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_seeds_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                   callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                   noise_sampler: NoiseSampler | None = None, r: float = 0.5,
                   solver_type: str = "phi_1") -> torch.Tensor:
    """SEEDS-2 (Gonzalez et al. 2023, arXiv 2305.14267), stage 2; ``solver_type`` ``phi_1`` (the default)
    or ``phi_2`` (the second stage weighted by phi_2, ComfyUI's exp_heun_2_x0 at r = 1)."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"seeds_2: solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    lambda_fn, sigma_fn = half_log_snr_fns(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model)
    s_in = _ones(x)
    inject_noise = eta > 0 and s_noise > 0
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = sigma_fn(lambda_s_1)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        x_2 = sigma_s_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_s_1 * torch.expm1(-r * h_eta) * denoised
        if inject_noise:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)
        if solver_type == "phi_1":
            denoised_d = torch.lerp(denoised, denoised_2, fac)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * torch.expm1(-h_eta) * denoised_d
        else:
            b2 = (torch.expm1(-h_eta) + h_eta) / -h_eta / r
            b1 = torch.expm1(-h_eta) - b2
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject_noise:
            segment_factor = (r - 1) * h * eta
            sde_noise = sde_noise * segment_factor.exp()
            sde_noise = sde_noise + segment_factor.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                   callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                   noise_sampler: NoiseSampler | None = None, r_1: float = 1. / 3, r_2: float = 2. / 3) -> torch.Tensor:
    """SEEDS-3 (Gonzalez et al. 2023), stage 3: two intermediate evaluations per step."""
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    lambda_fn, sigma_fn = half_log_snr_fns(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model)
    s_in = _ones(x)
    inject_noise = eta > 0 and s_noise > 0

    def phi_2(h: torch.Tensor) -> torch.Tensor:
        return (torch.expm1(h) - h) / h

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r_1)
        lambda_s_2 = torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s_1, sigma_s_2 = sigma_fn(lambda_s_1), sigma_fn(lambda_s_2)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_s_2 = sigma_s_2 * lambda_s_2.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()

        x_2 = sigma_s_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_s_1 * torch.expm1(-r_1 * h_eta) * denoised
        if inject_noise:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)

        a3_2 = r_2 / r_1 * phi_2(-r_2 * h_eta)
        a3_1 = torch.expm1(-r_2 * h_eta) - a3_2
        x_3 = sigma_s_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_s_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject_noise:
            segment_factor = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * segment_factor.exp()
            sde_noise = sde_noise + segment_factor.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_1, sigma_s_2)
            x_3 = x_3 + sde_noise * sigma_s_2 * s_noise
        denoised_3 = model(x_3, sigma_s_2 * s_in)

        b3 = phi_2(-h_eta) / r_2
        b1 = torch.expm1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject_noise:
            segment_factor = (r_2 - 1) * h * eta
            sde_noise = sde_noise * segment_factor.exp()
            sde_noise = sde_noise + segment_factor.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


# --------------------------------------------------------------------------------------------
# SA-Solver (Xue et al. 2023, arXiv 2309.05019): stochastic Adams predictor-corrector
# --------------------------------------------------------------------------------------------

def _exponential_coeffs(s: torch.Tensor, t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """(1 + tau^2) * integral_s^t exp((1 + tau^2) x) x^p dx for p < order, with exp((1 + tau^2) t) factored out."""
    tau_mul = 1 + tau ** 2
    h = t - s
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    product_terms = t ** p - s ** p * (-tau_mul * h).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_factorial = (p + 1).lgamma()
    coeffs = log_factorial.unsqueeze(1) - log_factorial.unsqueeze(0)
    if tau > 0:
        coeffs = coeffs - depth * math.log(tau_mul)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (coeffs.exp() * signs).tril() @ product_terms


def _adams_b_coeffs(sigma_next: torch.Tensor, lambdas: torch.Tensor, lambda_s: torch.Tensor,
                    lambda_t: torch.Tensor, tau: float, simple_order_2: bool = False,
                    corrector: bool = False) -> torch.Tensor:
    """The b_i weights of the Lagrange interpolation through ``lambdas`` (SA-Solver eqs. 15 and 18); with
    ``simple_order_2`` two points use the paper's simplified order-2 weights (its Appendix D)."""
    n = lambdas.shape[0]
    if simple_order_2 and n == 2:
        tau_mul = 1 + tau ** 2
        h = lambda_t - lambda_s
        alpha_t = sigma_next * lambda_t.exp()
        if corrector:
            b_1 = alpha_t * (0.5 * tau_mul * h)
            b_2 = alpha_t * (-h * tau_mul).expm1().neg() - b_1
        else:
            b_2 = alpha_t * (0.5 * tau_mul * h ** 2) / (lambdas[-2] - lambda_s)
            b_1 = alpha_t * (-h * tau_mul).expm1().neg() - b_2
        return torch.stack([b_2, b_1])
    integrals = torch.linalg.solve(torch.vander(lambdas, n, increasing=True).T,
                                   _exponential_coeffs(lambda_s, lambda_t, n, tau))
    return sigma_next * lambda_t.exp() * integrals


@torch.no_grad()
def sample_sa_solver(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                     callback: Callback | None = None, s_noise: float = 1.0,
                     noise_sampler: NoiseSampler | None = None, predictor_order: int = 3, corrector_order: int = 4,
                     use_pece: bool = False, tau_func: Callable[[Any], float] | None = None,
                     simple_order_2: bool = False) -> torch.Tensor:
    """SA-Solver; by default stochastic (tau = 1) between 20 % and 80 % of the model's sigma range, as
    ComfyUI's default; ``tau_func(sigma)`` (SamplerSASolver's interval and eta) replaces that."""
    if len(sigmas) <= 1:
        return x
    from loom.nodes.runtime.model_sampling import ModelSampling

    noise_sampler = noise_sampler or SeededNoise(x, seed)
    s_in = _ones(x)
    sigmas = offset_first_sigma_for_snr(sigmas, model)
    lambdas = half_log_snr_fns(model)[0](sigmas)
    table = getattr(model, "sampling", None) or ModelSampling.scaled_linear()  # the model's own sampling
    start_sigma = float(table.percent_to_sigma(0.2))
    end_sigma = float(table.percent_to_sigma(0.8))

    def default_tau(sigma: torch.Tensor) -> float:
        return 1.0 if start_sigma >= float(sigma) >= end_sigma else 0.0

    tau_func = tau_func or default_tau

    max_order = max(predictor_order, corrector_order)
    x_pred = x
    h: Any = 0.0
    tau_t = 0.0
    noise: Any = 0.0
    preds: list[torch.Tensor] = []
    lower_order_to_end = float(sigmas[-1]) == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i] * s_in)
        _emit(callback, i, denoised, x_pred)
        preds.append(denoised)
        preds = preds[-max_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if lower_order_to_end:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            b = _adams_b_coeffs(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau_t,
                                simple_order_2, corrector=True)
            corr = torch.tensordot(torch.stack(preds[-c_order:], dim=1), b, dims=([1], [0]))
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t ** 2) * h).exp() * x + corr
            if tau_t > 0 and s_noise > 0:
                x = x + noise  # the predictor step's noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in)
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = _adams_b_coeffs(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau_t,
                                simple_order_2)
            pred = torch.tensordot(torch.stack(preds[-p_order:], dim=1), b, dims=([1], [0]))
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t ** 2) * h).exp() * x + pred
            if tau_t > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * tau_t ** 2 * h).expm1().neg().sqrt() * s_noise
                x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """SA-Solver in predict-evaluate-correct-evaluate mode (one more evaluation per step)."""
    return sample_sa_solver(model, x, sigmas, use_pece=True, **kwargs)


# --------------------------------------------------------------------------------------------
# CFG++ samplers (Chung et al. 2024): step along the unconditional prediction, re-add the guided one
# --------------------------------------------------------------------------------------------
# They read ``model.uncond_denoised`` after each call; the loop asks the denoiser to keep it (and to
# evaluate the negative even at cfg 1) for the samplers whose SamplerSpec says cfg_pp.

def _uncond(model: Denoiser) -> torch.Tensor:
    uncond = getattr(model, "uncond_denoised", None)
    if uncond is None:
        raise RuntimeError("CFG++ samplers need a denoiser that keeps its unconditional prediction")
    return uncond


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                  seed: int | None = None, callback: Callback | None = None, eta: float = 1.0,
                                  s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    noise_sampler = noise_sampler or SeededNoise(x, seed)
    lambda_fn = half_log_snr_fns(model)[0]
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond_denoised = _uncond(model)
        _emit(callback, i, denoised, x)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * lambda_fn(sigmas[i]).exp()
        alpha_t = sigmas[i + 1] * lambda_fn(sigmas[i + 1]).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond_denoised)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta=eta)
        sigma_down = alpha_t * sigma_down
        x = alpha_t * denoised + sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                        callback: Callback | None = None) -> torch.Tensor:
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, seed=seed, callback=callback, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                           callback: Callback | None = None) -> torch.Tensor:
    s_in = _ones(x)
    old_uncond_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond_denoised = _uncond(model)
        _emit(callback, i, denoised, x)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_uncond_denoised is None or sigmas[i + 1] == 0:
            denoised_mix = -torch.exp(-h) * uncond_denoised
        else:
            r = (t - _t_fn(sigmas[i - 1])) / h
            denoised_mix = -torch.exp(-h) * uncond_denoised - torch.expm1(-h) * (1 / (2 * r)) * \
                (denoised - old_uncond_denoised)
        x = denoised + denoised_mix + torch.exp(-h) * x
        old_uncond_denoised = uncond_denoised
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                      seed: int | None = None, callback: Callback | None = None,
                                      ge_gamma: float = 2.0) -> torch.Tensor:
    s_in = _ones(x)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], _uncond(model))
        _emit(callback, i, denoised, x)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1]
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


# --------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023), multistep predictor-corrector in the variance-preserving space
# --------------------------------------------------------------------------------------------

def _vp_log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_vp_log_alpha(sigma))


def _vp_std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1. - torch.exp(2. * _vp_log_alpha(sigma)))


def _vp_lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = _vp_log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1. - torch.exp(2. * log_alpha))


def _expand(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


class _UniPC:
    """UniPC with B(h) = h (``bh1``) or e^h - 1 (``bh2``), predicting data (x0), on VP latents."""

    def __init__(self, model: Denoiser, variant: str) -> None:
        self.model = model
        self.variant = variant

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 from the denoiser, via its eps prediction, for a VP latent ``x`` at sigma ``t``."""
        if t.reshape((-1,)).shape[0] == 1:
            t = t.expand((x.shape[0],))
        sigma = t.view(t.shape[:1] + (1,) * (x.ndim - 1))
        x_ve = x * ((sigma ** 2 + 1.0) ** 0.5)
        eps = (x_ve - self.model(x_ve, t)) / sigma
        dims = x.dim()
        return (x - _expand(_vp_std(t), dims) * eps) / _expand(_vp_alpha(t), dims)

    def update(self, x: torch.Tensor, model_prev: list[torch.Tensor], t_prev: list[torch.Tensor],
               t: torch.Tensor, order: int, use_corrector: bool = True):
        dims = x.dim()
        t_prev_0 = t_prev[-1]
        lambda_prev_0, lambda_t = _vp_lambda(t_prev_0), _vp_lambda(t)
        model_prev_0 = model_prev[-1]
        sigma_prev_0, sigma_t = _vp_std(t_prev_0), _vp_std(t)
        alpha_t = torch.exp(_vp_log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks, d1s = [], []
        for i in range(1, order):
            rk = ((_vp_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks.append(torch.tensor(1.0))
        rks_t = torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rks]).to(x.device)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_matrix = torch.stack(rows)
        b_vec = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in b]).to(x.device)

        d1 = torch.stack(d1s, dim=1) if d1s else None
        if d1 is not None:
            rhos_p = (torch.tensor([0.5], device=x.device) if order == 2
                      else torch.linalg.solve(r_matrix[:-1, :-1], b_vec[:-1]))
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(r_matrix, b_vec)

        x_t_ = _expand(sigma_t / sigma_prev_0, dims) * x - _expand(alpha_t * h_phi_1, dims) * model_prev_0
        pred_res = torch.einsum("k,bkchw->bchw", rhos_p, d1) if d1 is not None else 0
        x_t = x_t_ - _expand(alpha_t * b_h, dims) * pred_res
        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1) if d1 is not None else 0
            x_t = x_t_ - _expand(alpha_t * b_h, dims) * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t

    def sample(self, x: torch.Tensor, timesteps: torch.Tensor, order: int, callback: Callback | None):
        steps = len(timesteps) - 1
        model_prev: list[torch.Tensor] = []
        t_prev: list[torch.Tensor] = []
        for step_index in range(steps):
            if step_index == 0:
                vec_t = timesteps[0].expand((x.shape[0],))
                model_prev, t_prev = [self.data_prediction(x, vec_t)], [vec_t]
            elif step_index < order:  # warm-up: lower orders until there is enough history
                vec_t = timesteps[step_index].expand(x.shape[0])
                x, model_x = self.update(x, model_prev, t_prev, vec_t, step_index, use_corrector=True)
                if model_x is None:
                    model_x = self.data_prediction(x, vec_t)
                model_prev.append(model_x)
                t_prev.append(vec_t)
            else:
                last = step_index + (2 if step_index == steps - 1 else 1)
                for step in range(step_index, last):
                    vec_t = timesteps[step].expand(x.shape[0])
                    step_order = min(order, steps + 1 - step)  # lower order on the final steps
                    x, model_x = self.update(x, model_prev, t_prev, vec_t, step_order,
                                             use_corrector=step != steps)
                    for i in range(order - 1):
                        t_prev[i] = t_prev[i + 1]
                        model_prev[i] = model_prev[i + 1]
                    t_prev[-1] = vec_t
                    if step < steps:
                        if model_x is None:
                            model_x = self.data_prediction(x, vec_t)
                        model_prev[-1] = model_x
            _emit(callback, step_index, model_prev[-1], x)
        return x


def _sample_unipc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, variant: str,
                  callback: Callback | None) -> torch.Tensor:
    timesteps = sigmas.clone()
    if timesteps[-1] == 0:
        timesteps[-1] = 0.001  # UniPC's VP time cannot reach sigma 0
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    order = max(1, min(3, len(timesteps) - 2))
    x = _UniPC(model, variant).sample(x, timesteps, order, callback)
    return x / _vp_alpha(timesteps[-1])


@torch.no_grad()
def sample_uni_pc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                  callback: Callback | None = None) -> torch.Tensor:
    return _sample_unipc(model, x, sigmas, "bh1", callback)


@torch.no_grad()
def sample_uni_pc_bh2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int | None = None,
                      callback: Callback | None = None) -> torch.Tensor:
    return _sample_unipc(model, x, sigmas, "bh2", callback)


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------

Sampler = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """One ComfyUI sampler name: its function and what the sampling around it must do for it."""

    name: str
    function: Sampler | None
    """``sample(model, x, sigmas, *, seed, callback, **options)``; ``None``: not implemented in Loom yet."""
    cfg_pp: bool = False
    """CFG++: steps along the unconditional prediction, so the denoiser keeps it (and evaluates the negative
    even at cfg 1, ComfyUI's ``disable_cfg1_optimization``)."""
    random_inpaint_noise: bool = False
    """ComfyUI's ``inpaint_options={"random": True}``: a noise mask re-noises the kept latent from seed + 1."""
    discard_penultimate_sigma: bool = False
    """The KSampler gives it a schedule for one more step and drops the penultimate sigma."""


SAMPLER_TABLE: tuple[SamplerSpec, ...] = (
    SamplerSpec("euler", sample_euler),
    SamplerSpec("euler_cfg_pp", sample_euler_cfg_pp, cfg_pp=True),
    SamplerSpec("euler_ancestral", sample_euler_ancestral),
    SamplerSpec("euler_ancestral_cfg_pp", sample_euler_ancestral_cfg_pp, cfg_pp=True),
    SamplerSpec("heun", sample_heun),
    SamplerSpec("heunpp2", sample_heunpp2),
    SamplerSpec("dpm_2", sample_dpm_2, discard_penultimate_sigma=True),
    SamplerSpec("dpm_2_ancestral", sample_dpm_2_ancestral, discard_penultimate_sigma=True),
    SamplerSpec("lms", sample_lms),
    SamplerSpec("dpm_fast", sample_dpm_fast),
    SamplerSpec("dpm_adaptive", sample_dpm_adaptive),
    SamplerSpec("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral),
    SamplerSpec("dpmpp_2s_ancestral_cfg_pp", None, cfg_pp=True),
    SamplerSpec("dpmpp_sde", sample_dpmpp_sde),
    SamplerSpec("dpmpp_sde_gpu", sample_dpmpp_sde),
    SamplerSpec("dpmpp_2m", sample_dpmpp_2m),
    SamplerSpec("dpmpp_2m_cfg_pp", sample_dpmpp_2m_cfg_pp, cfg_pp=True),
    SamplerSpec("dpmpp_2m_sde", sample_dpmpp_2m_sde),
    SamplerSpec("dpmpp_2m_sde_gpu", sample_dpmpp_2m_sde),
    SamplerSpec("dpmpp_2m_sde_heun", sample_dpmpp_2m_sde_heun),
    SamplerSpec("dpmpp_2m_sde_heun_gpu", sample_dpmpp_2m_sde_heun),
    SamplerSpec("dpmpp_3m_sde", sample_dpmpp_3m_sde),
    SamplerSpec("dpmpp_3m_sde_gpu", sample_dpmpp_3m_sde),
    SamplerSpec("ddpm", sample_ddpm),
    SamplerSpec("lcm", sample_lcm),
    SamplerSpec("ipndm", sample_ipndm),
    SamplerSpec("ipndm_v", sample_ipndm_v),
    SamplerSpec("deis", sample_deis),
    SamplerSpec("res_multistep", sample_res_multistep),
    SamplerSpec("res_multistep_cfg_pp", sample_res_multistep_cfg_pp, cfg_pp=True),
    SamplerSpec("res_multistep_ancestral", sample_res_multistep_ancestral),
    SamplerSpec("res_multistep_ancestral_cfg_pp", sample_res_multistep_ancestral_cfg_pp, cfg_pp=True),
    SamplerSpec("gradient_estimation", sample_gradient_estimation),
    SamplerSpec("gradient_estimation_cfg_pp", sample_gradient_estimation_cfg_pp, cfg_pp=True),
    SamplerSpec("er_sde", sample_er_sde),
    SamplerSpec("seeds_2", sample_seeds_2),
    SamplerSpec("seeds_3", sample_seeds_3),
    SamplerSpec("sa_solver", sample_sa_solver),
    SamplerSpec("sa_solver_pece", sample_sa_solver_pece),
    # ComfyUI's "ddim" is Euler (the same update for eps models) with random inpaint noise
    SamplerSpec("ddim", sample_euler, random_inpaint_noise=True),
    SamplerSpec("uni_pc", sample_uni_pc, discard_penultimate_sigma=True),
    SamplerSpec("uni_pc_bh2", sample_uni_pc_bh2, discard_penultimate_sigma=True),
)
"""ComfyUI's ``KSampler.SAMPLERS`` (42 names), in its order, which the sampler combos show."""

SAMPLER_NAMES: tuple[str, ...] = tuple(spec.name for spec in SAMPLER_TABLE)

_BY_NAME: dict[str, SamplerSpec] = {spec.name: spec for spec in SAMPLER_TABLE}


def sampler_spec(name: str) -> SamplerSpec:
    """The implemented sampler ``name``, or a ``ValueError`` saying why it cannot be sampled with."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler '{name}'; the samplers are {', '.join(SAMPLER_NAMES)}")
    if spec.function is None:
        implemented = ", ".join(s.name for s in SAMPLER_TABLE if s.function is not None)
        raise ValueError(f"sampler '{name}' is a ComfyUI sampler that Loom does not implement yet; "
                         f"implemented samplers: {implemented}")
    return spec
