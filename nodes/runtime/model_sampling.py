"""Model-sampling objects: how a family's network relates noise levels (sigmas) to its inputs and outputs.

Every object has ComfyUI's ``model_sampling`` interface, which the schedules, samplers and the model adapter
read (and nothing else about the model):

* ``sigmas`` (ascending table), ``sigma_min``, ``sigma_max``;
* ``timestep(sigma)`` / ``sigma(timestep)``: the network's time input for a sigma and back;
* ``percent_to_sigma(percent)``: 0 → the start of sampling, 1 → the end (ConditioningSetTimestepRange,
  ControlNet start/end);
* ``calculate_input(sigma, x)``: what the network is given; ``calculate_denoised(sigma, output, x)``: the
  denoised estimate from its output;
* ``noise_scaling(sigma, noise, latent, max_denoise)`` / ``inverse_noise_scaling(sigma, latent)``: how the
  first noise is mixed in and what the sampler's result is turned back into;
* ``is_flow``: rectified-flow models (``CONST``), for the samplers' flow branches.

Kinds:

* :class:`ModelSampling` — discrete-time (1000 training steps): ``prediction`` ``eps`` | ``v`` | ``x0`` |
  ``img_to_img`` | ``lcm`` (SD1/SD2/SDXL; ModelSamplingDiscrete); :class:`DistilledSampling` is the LCM table
  (50 of the 1000 timesteps);
* :class:`FlowSampling` — ``sigma = s*t / (1 + (s-1)*t)`` with ``t = timestep / multiplier`` (SD3 shift 3,
  multiplier 1000; AuraFlow multiplier 1; FLUX schnell shift 1, multiplier 1);
* :class:`ContinuousEDMSampling` — continuous EDM noise levels (``ModelSamplingContinuousEDM``: CosXL, SVD):
  1000 sigmas log-spaced between sigma_min and sigma_max, time input ``0.25 * log(sigma)``, ``eps`` | ``v`` |
  ``edm`` predictions scaled by ``sigma_data``;
* :class:`FluxSampling` — FLUX dev's time shift ``e^mu / (e^mu + (1/t - 1))`` over a 10,000-entry table; the
  network gets sigma itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def _view(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.view(sigma.shape[:1] + (1,) * (like.ndim - 1))


def scaled_linear_sigmas(beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000,
                         zero_terminal_snr: bool = False) -> torch.Tensor:
    """SD's scaled-linear training sigmas (ascending, float32), optionally rescaled to zero terminal SNR."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        root = alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * (first / (first - last))
        alphas_cumprod = root ** 2
        alphas_cumprod[-1] = 4.8973451890853435e-08  # ComfyUI's floor: keeps the last sigma finite
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


class _SigmaTable:
    """What every sampling object shares: ``sigmas``, ascending, whose ends are the noise range, and
    ComfyUI's default (EPS-style) noise scaling, noise times sigma added to the latent and nothing to undo at
    the end (rectified flow overrides both)."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        s = _view(sigma, noise)
        scale = torch.sqrt(1.0 + s ** 2.0) if max_denoise else s
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent


PREDICTIONS = ("eps", "v", "x0", "img_to_img", "lcm")


@dataclass
class ModelSampling(_SigmaTable):
    """Discrete-time sampling (1000 training timesteps) as a sigma table, with its prediction type."""

    sigmas: torch.Tensor  # ascending, float32, one per training timestep
    prediction: str = "eps"  # one of PREDICTIONS
    is_flow: bool = field(default=False, init=False)

    @classmethod
    def scaled_linear(cls, prediction: str = "eps", beta_start: float = 0.00085, beta_end: float = 0.012,
                      timesteps: int = 1000, zero_terminal_snr: bool = False) -> "ModelSampling":
        return cls(sigmas=scaled_linear_sigmas(beta_start, beta_end, timesteps, zero_terminal_snr),
                   prediction=prediction)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (nearest) training timestep of a sigma, as ComfyUI's ``ModelSamplingDiscrete.timestep``."""
        log_sigma = sigma.log()
        dists = log_sigma.to(self.sigmas.device) - self.sigmas.log()[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(timestep.float().to(self.sigmas.device), min=0, max=len(self.sigmas) - 1)
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigmas = self.sigmas.log()
        log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.prediction == "img_to_img":
            return x
        return x / (_view(sigma, x) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           x: torch.Tensor) -> torch.Tensor:
        s = _view(sigma, model_output)
        if self.prediction == "eps":
            return x - model_output * s
        if self.prediction == "v":
            return x * 1.0 / (s ** 2 + 1.0) - model_output * s * 1.0 / (s ** 2 + 1.0) ** 0.5
        if self.prediction in ("x0", "img_to_img"):
            return model_output
        if self.prediction == "lcm":
            timestep = _view(self.timestep(sigma), model_output)
            x0 = x - model_output * s
            sigma_data = 0.5
            scaled = timestep * 10.0
            c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
            c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
            return c_out * x0 + c_skip * x
        raise ValueError(f"unsupported prediction type {self.prediction!r}")


@dataclass
class DistilledSampling(ModelSampling):
    """ComfyUI's ``ModelSamplingDiscreteDistilled`` (LCM): 50 of the 1000 training sigmas."""

    skip_steps: int = 20

    @classmethod
    def from_full(cls, full: torch.Tensor, prediction: str = "lcm", original_timesteps: int = 50
                  ) -> "DistilledSampling":
        skip = len(full) // original_timesteps
        valid = torch.zeros(original_timesteps, dtype=torch.float32)
        for i in range(original_timesteps):
            valid[original_timesteps - 1 - i] = full[len(full) - 1 - i * skip]
        return cls(sigmas=valid, prediction=prediction, skip_steps=skip)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().to(self.sigmas.device) - self.sigmas.log()[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip_steps + (self.skip_steps - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = ((timestep.float().to(self.sigmas.device) - (self.skip_steps - 1)) / self.skip_steps).float()
        t = torch.clamp(t, min=0, max=len(self.sigmas) - 1)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self.sigmas.log()
        return ((1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]).exp().to(timestep.device)


EDM_PREDICTIONS = ("eps", "v", "edm")


class ContinuousEDMSampling(_SigmaTable):
    """ComfyUI's ``ModelSamplingContinuousEDM`` with ``EPS``, ``V_PREDICTION`` or ``EDM``: a continuous noise
    level, 1000 table entries evenly spaced in ``log(sigma)`` (for the schedules that read the table), the
    network's time input ``0.25 * log(sigma)``, inputs and outputs scaled with ``sigma_data``."""

    is_flow = False

    def __init__(self, prediction: str = "v", sigma_min: float = 0.002, sigma_max: float = 120.0,
                 sigma_data: float = 1.0) -> None:
        if prediction not in EDM_PREDICTIONS:
            raise ValueError(f"unsupported prediction type {prediction!r}; expected one of {', '.join(EDM_PREDICTIONS)}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"sigma_min ({sigma_min}) must be above 0 and below sigma_max ({sigma_max})")
        self.prediction = prediction
        self.sigma_data = float(sigma_data)
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()

    def __repr__(self) -> str:
        return (f"ContinuousEDMSampling({self.prediction}, sigma {float(self.sigma_min):g}..{float(self.sigma_max):g}, "
                f"sigma_data {self.sigma_data:g})")

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(float(self.sigma_min))
        return math.exp((math.log(float(self.sigma_max)) - log_min) * (1.0 - percent) + log_min)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x / (_view(sigma, x) ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           x: torch.Tensor) -> torch.Tensor:
        s, data = _view(sigma, model_output), self.sigma_data
        if self.prediction == "eps":
            return x - model_output * s
        skip = x * data ** 2 / (s ** 2 + data ** 2)
        scaled = model_output * s * data / (s ** 2 + data ** 2) ** 0.5
        return skip - scaled if self.prediction == "v" else skip + scaled


def time_snr_shift(alpha: float, t: torch.Tensor | float) -> torch.Tensor | float:
    """``alpha * t / (1 + (alpha - 1) * t)``: the flow models' shifted time."""
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


class _Const(_SigmaTable):
    """Rectified flow (ComfyUI's ``CONST``): x_sigma = sigma*noise + (1-sigma)*x0, output is a velocity."""

    is_flow = True
    prediction = "flow"

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           x: torch.Tensor) -> torch.Tensor:
        return x - model_output * _view(sigma, model_output)

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        s = _view(sigma, noise)
        return s * noise + (1.0 - s) * latent_image

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent / (1.0 - _view(sigma, latent))


class FlowSampling(_Const):
    """ComfyUI's ``ModelSamplingDiscreteFlow`` with ``CONST``: ``sigma(t) = shift*t' / (1 + (shift-1)*t')``,
    ``t' = t / multiplier``; the network's time input is ``sigma * multiplier``."""

    def __init__(self, shift: float = 1.0, multiplier: float = 1000, timesteps: int = 1000) -> None:
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        self.sigmas = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * self.multiplier)

    def __repr__(self) -> str:
        return f"FlowSampling(shift={self.shift}, multiplier={self.multiplier})"

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return time_snr_shift(self.shift, timestep / self.multiplier)  # type: ignore[return-value]

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_snr_shift(self.shift, 1.0 - percent))


def flux_time_shift(mu: float, sigma: float, t: torch.Tensor | float) -> torch.Tensor | float:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


class FluxSampling(_Const):
    """ComfyUI's ``ModelSamplingFlux``: ``sigma(t) = e^mu / (e^mu + (1/t - 1))`` over 10,000 entries; the
    network's time input is sigma itself. ``shift`` is mu (1.15 for FLUX dev; ModelSamplingFlux sets it
    from the image size)."""

    def __init__(self, shift: float = 1.15, timesteps: int = 10000) -> None:
        self.shift = float(shift)
        self.multiplier = 1.0
        self.sigmas = self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps)

    def __repr__(self) -> str:
        return f"FluxSampling(mu={self.shift})"

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return flux_time_shift(self.shift, 1.0, timestep)  # type: ignore[return-value]

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, 1.0, 1.0 - percent))


def flux_mu(width: int, height: int, max_shift: float = 1.15, base_shift: float = 0.5) -> float:
    """ModelSamplingFlux's mu for an image size: linear in the number of 2x2 latent patches (256 → base,
    4096 → max)."""
    x1, x2 = 256, 4096
    m = (max_shift - base_shift) / (x2 - x1)
    b = base_shift - m * x1
    return (width * height / (8 * 8 * 2 * 2)) * m + b
