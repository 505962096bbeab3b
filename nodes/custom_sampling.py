"""ComfyUI's custom-sampling nodes (comfy_extras/nodes_custom_sampler.py), with its names, inputs and defaults.

The sampling is split into parts that travel as sockets: ``SIGMAS`` (a 1-D float tensor, descending, usually
ending in 0), ``SAMPLER`` (:class:`~nodes.runtime.custom_sampling.SamplerChoice`), ``NOISE``
(:class:`~nodes.runtime.custom_sampling.RandomNoise` / ``EmptyNoise``) and ``GUIDER`` (a model with its
conditionings and guidance, :class:`~nodes.runtime.custom_sampling.CFGGuider` and subclasses).
SamplerCustom and SamplerCustomAdvanced run them with :func:`nodes.runtime.sampling.sample_guided`, the loop
KSampler runs too, and return ``(output, denoised_output)``: the sampled latent and the last step's denoised
estimate (the output again when no step ran).

Categories follow mainline ComfyUI: ``model/sampling/{custom,schedulers,sigmas,samplers,guiders,noise}``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from loom.nodes.runtime.samplers import SAMPLER_NAMES
from loom.nodes.runtime.schedules import SCHEDULER_NAMES
from loom.nodes.sampling import sampler_name_problem
from loom.nodes.kernel.schema import SEED_MAX, Boolean, Combo, Float, Int, Node, Output, Schema, Socket, String, register

CUSTOM = "model/sampling/custom"
SCHEDULERS = "model/sampling/schedulers"
SIGMAS = "model/sampling/sigmas"
SAMPLERS = "model/sampling/samplers"
GUIDERS = "model/sampling/guiders"
NOISE = "model/sampling/noise"

SIGMA_MAX_DEFAULT = 14.614642  # SD1's sigma range, ComfyUI's defaults for the model-free schedulers
SIGMA_MIN_DEFAULT = 0.0291675


# --------------------------------------------------------------------------------------------
# input checks beyond the socket types (the executor checks those); every message names the node and input
# --------------------------------------------------------------------------------------------

def _sigmas(node: str, sigmas: torch.Tensor, name: str = "sigmas") -> torch.Tensor:
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"{node}: input '{name}' has values that are not finite: {sigmas.tolist()}")
    return sigmas


def _non_empty(node: str, name: str, value: Any) -> None:
    if not value:
        raise ValueError(f"{node}: input '{name}' is an empty CONDITIONING: there is nothing to guide the "
                         "sampling towards")


def _controls(node: str, model: Any, **conditionings: Any) -> None:
    """ControlNets on the conditionings must be made for the kind of model being sampled."""
    from loom.nodes.runtime.controlnet import check_controls

    for name, value in conditionings.items():
        check_controls(node, name, value, model)


def _positive(node: str, name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{node}: input '{name}' must be greater than 0 for this schedule, got {value}")
    return value


def _sampler_output(node: str, name: str, **options: Any) -> tuple:
    from loom.nodes.runtime.custom_sampling import SamplerChoice

    try:
        return (SamplerChoice(name, options),)
    except ValueError as exc:  # an unknown or unimplemented sampler name
        raise ValueError(f"{node}: {exc}") from None


# --------------------------------------------------------------------------------------------
# the samplers: SamplerCustom and SamplerCustomAdvanced
# --------------------------------------------------------------------------------------------

def _run(node: str, guider: Any, sampler: Any, noise_source: Any, sigmas: torch.Tensor, latent: dict,
         seed: int) -> tuple:
    """ComfyUI's SamplerCustom(Advanced).execute after the inputs are made: fit the latent's channels,
    make the noise, sample, and return ``(output, denoised_output)``."""
    from loom.nodes.runtime.sampling import fit_latent_channels, sample_guided

    model = guider.model
    latent = dict(latent)
    latent_image = fit_latent_channels(model, latent["samples"].float())
    latent["samples"] = latent_image
    noise = noise_source.generate(latent)
    x0_output: dict[str, torch.Tensor] = {}
    try:
        samples = sample_guided(guider, sampler, noise, latent_image, sigmas, seed=seed,
                                noise_mask=latent.get("noise_mask"), x0_output=x0_output)
    except ValueError as exc:  # conditioning problems found while the guider builds its denoiser
        raise ValueError(f"{node}: {exc}") from exc
    out = dict(latent)
    out.pop("downscale_ratio_spacial", None)
    out.pop("downscale_ratio_temporal", None)
    out["samples"] = samples
    if "x0" in x0_output:
        denoised = dict(out)
        denoised["samples"] = model.latent_format.process_out(x0_output["x0"].float()).cpu()
    else:
        denoised = out
    return (out, denoised)


@register
class SamplerCustom(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SamplerCustom", category=CUSTOM,
            inputs=[Socket("model", "MODEL"),
                    Boolean("add_noise", default=True, advanced=True),
                    Int("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
                    Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                    Socket("positive", "CONDITIONING"),
                    Socket("negative", "CONDITIONING"),
                    Socket("sampler", "SAMPLER"),
                    Socket("sigmas", "SIGMAS"),
                    Socket("latent_image", "LATENT")],
            outputs=[Output("LATENT", "output"), Output("LATENT", "denoised_output")])

    @classmethod
    def execute(cls, model: Any, add_noise: bool, noise_seed: int, cfg: float, positive: Any, negative: Any,
                sampler: Any, sigmas: Any, latent_image: Any) -> tuple:
        from loom.nodes.runtime.custom_sampling import CFGGuider, EmptyNoise, RandomNoise

        node = "SamplerCustom"
        _non_empty(node, "positive", positive)
        _controls(node, model, positive=positive, negative=negative)
        source = RandomNoise(int(noise_seed)) if add_noise else EmptyNoise()
        return _run(node, CFGGuider(model, positive, negative, cfg), sampler, source, _sigmas(node, sigmas),
                    latent_image, seed=int(noise_seed))


@register
class SamplerCustomAdvanced(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SamplerCustomAdvanced", category=CUSTOM,
            inputs=[Socket("noise", "NOISE"),
                    Socket("guider", "GUIDER"),
                    Socket("sampler", "SAMPLER"),
                    Socket("sigmas", "SIGMAS"),
                    Socket("latent_image", "LATENT")],
            outputs=[Output("LATENT", "output"), Output("LATENT", "denoised_output")])

    @classmethod
    def execute(cls, noise: Any, guider: Any, sampler: Any, sigmas: Any, latent_image: Any) -> tuple:
        node = "SamplerCustomAdvanced"
        return _run(node, guider, sampler, noise, _sigmas(node, sigmas), latent_image, seed=int(noise.seed))


# --------------------------------------------------------------------------------------------
# schedulers
# --------------------------------------------------------------------------------------------

def _steps(default: int = 20, max_: int = 10000) -> Int:
    return Int("steps", default=default, min=1, max=max_)


def _sigma_range() -> list:
    return [Float("sigma_max", default=SIGMA_MAX_DEFAULT, min=0.0, max=5000.0, step=0.01, round=False, advanced=True),
            Float("sigma_min", default=SIGMA_MIN_DEFAULT, min=0.0, max=5000.0, step=0.01, round=False, advanced=True)]


@register
class BasicScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "BasicScheduler", category=SCHEDULERS,
            inputs=[Socket("model", "MODEL"),
                    Combo("scheduler", options_source=SCHEDULER_NAMES),
                    _steps(),
                    Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, model: Any, scheduler: str, steps: int, denoise: float) -> tuple:
        from loom.nodes.runtime.schedules import calculate_sigmas

        total_steps = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return (torch.FloatTensor([]),)
            total_steps = int(steps / denoise)
        try:
            sigmas = calculate_sigmas(model.sampling, scheduler, total_steps).cpu()
        except ValueError as exc:
            raise ValueError(f"BasicScheduler: input 'scheduler': {exc}") from exc
        return (sigmas[-(steps + 1):],)


@register
class KarrasScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "KarrasScheduler", category=SCHEDULERS,
            inputs=[_steps(), *_sigma_range(),
                    Float("rho", default=7.0, min=0.0, max=100.0, step=0.01, round=False, advanced=True)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple:
        from loom.nodes.runtime.schedules import karras

        _positive("KarrasScheduler", "rho", rho)
        return (karras(steps, sigma_min, sigma_max, rho),)


@register
class ExponentialScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ExponentialScheduler", category=SCHEDULERS, inputs=[_steps(), *_sigma_range()],
                      outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, steps: int, sigma_max: float, sigma_min: float) -> tuple:
        from loom.nodes.runtime.schedules import exponential

        _positive("ExponentialScheduler", "sigma_max", sigma_max)
        _positive("ExponentialScheduler", "sigma_min", sigma_min)
        return (exponential(steps, sigma_min, sigma_max),)


@register
class PolyexponentialScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "PolyexponentialScheduler", category=SCHEDULERS,
            inputs=[_steps(), *_sigma_range(),
                    Float("rho", default=1.0, min=0.0, max=100.0, step=0.01, round=False, advanced=True)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple:
        from loom.nodes.runtime.schedules import polyexponential

        _positive("PolyexponentialScheduler", "sigma_max", sigma_max)
        _positive("PolyexponentialScheduler", "sigma_min", sigma_min)
        return (polyexponential(steps, sigma_min, sigma_max, rho),)


@register
class LaplaceScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LaplaceScheduler", category=SCHEDULERS,
            inputs=[_steps(), *_sigma_range(),
                    Float("mu", default=0.0, min=-10.0, max=10.0, step=0.1, round=False, advanced=True),
                    Float("beta", default=0.5, min=0.0, max=10.0, step=0.1, round=False, advanced=True)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, steps: int, sigma_max: float, sigma_min: float, mu: float, beta: float) -> tuple:
        from loom.nodes.runtime.schedules import laplace

        return (laplace(steps, sigma_min, sigma_max, mu, beta),)


@register
class VPScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "VPScheduler", category=SCHEDULERS,
            inputs=[_steps(),
                    Float("beta_d", default=19.9, min=0.0, max=5000.0, step=0.01, round=False, advanced=True),
                    Float("beta_min", default=0.1, min=0.0, max=5000.0, step=0.01, round=False, advanced=True),
                    Float("eps_s", default=0.001, min=0.0, max=1.0, step=0.0001, round=False, advanced=True)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, steps: int, beta_d: float, beta_min: float, eps_s: float) -> tuple:
        from loom.nodes.runtime.schedules import vp

        return (vp(steps, beta_d, beta_min, eps_s),)


@register
class SDTurboScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SDTurboScheduler", category=SCHEDULERS,
            inputs=[Socket("model", "MODEL"),
                    Int("steps", default=1, min=1, max=10),
                    Float("denoise", default=1.0, min=0, max=1.0, step=0.01)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, model: Any, steps: int, denoise: float) -> tuple:
        start_step = 10 - int(10 * denoise)
        timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start_step:start_step + steps]
        sigmas = model.sampling.sigma(timesteps)
        return (torch.cat([sigmas, sigmas.new_zeros([1])]),)


@register
class BetaSamplingScheduler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "BetaSamplingScheduler", category=SCHEDULERS,
            inputs=[Socket("model", "MODEL"), _steps(),
                    Float("alpha", default=0.6, min=0.0, max=50.0, step=0.01, round=False, advanced=True),
                    Float("beta", default=0.6, min=0.0, max=50.0, step=0.01, round=False, advanced=True)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, model: Any, steps: int, alpha: float, beta: float) -> tuple:
        from loom.nodes.runtime.schedules import beta as beta_schedule

        _positive("BetaSamplingScheduler", "alpha", alpha)
        _positive("BetaSamplingScheduler", "beta", beta)
        return (beta_schedule(model.sampling, steps, alpha=alpha, beta_=beta),)


# --------------------------------------------------------------------------------------------
# sigma tools
# --------------------------------------------------------------------------------------------

@register
class SplitSigmas(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SplitSigmas", category=SIGMAS,
            inputs=[Socket("sigmas", "SIGMAS"), Int("step", default=0, min=0, max=10000)],
            outputs=[Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")])

    @classmethod
    def execute(cls, sigmas: Any, step: int) -> tuple:
        sigmas = _sigmas("SplitSigmas", sigmas)
        return (sigmas[:step + 1], sigmas[step:])


@register
class SplitSigmasDenoise(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SplitSigmasDenoise", category=SIGMAS,
            inputs=[Socket("sigmas", "SIGMAS"), Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01)],
            outputs=[Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")])

    @classmethod
    def execute(cls, sigmas: Any, denoise: float) -> tuple:
        sigmas = _sigmas("SplitSigmasDenoise", sigmas)
        steps = max(sigmas.shape[-1] - 1, 0)
        total_steps = round(steps * denoise)
        # as ComfyUI: with total_steps 0 the high part is sigmas[:-0], i.e. empty, and the low part the last sigma
        return (sigmas[:-total_steps], sigmas[-(total_steps + 1):])


@register
class FlipSigmas(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("FlipSigmas", category=SIGMAS, inputs=[Socket("sigmas", "SIGMAS")], outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, sigmas: Any) -> tuple:
        sigmas = _sigmas("FlipSigmas", sigmas)
        if len(sigmas) == 0:
            return (sigmas,)
        sigmas = sigmas.flip(0)
        if sigmas[0] == 0:
            sigmas[0] = 0.0001
        return (sigmas,)


@register
class SetFirstSigma(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SetFirstSigma", category=SIGMAS,
            inputs=[Socket("sigmas", "SIGMAS"),
                    Float("sigma", default=136.0, min=0.0, max=20000.0, step=0.001, round=False)],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, sigmas: Any, sigma: float) -> tuple:
        sigmas = _sigmas("SetFirstSigma", sigmas)
        if len(sigmas) == 0:
            raise ValueError("SetFirstSigma: input 'sigmas' is empty, there is no first sigma to set")
        sigmas = sigmas.clone()
        sigmas[0] = sigma
        return (sigmas,)


@register
class ExtendIntermediateSigmas(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ExtendIntermediateSigmas", category=SIGMAS,
            inputs=[Socket("sigmas", "SIGMAS"),
                    Int("steps", default=2, min=1, max=100),
                    Float("start_at_sigma", default=-1.0, min=-1.0, max=20000.0, step=0.01, round=False),
                    Float("end_at_sigma", default=12.0, min=0.0, max=20000.0, step=0.01, round=False),
                    Combo("spacing", options_source=("linear", "cosine", "sine"))],
            outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, sigmas: Any, steps: int, start_at_sigma: float, end_at_sigma: float, spacing: str) -> tuple:
        sigmas = _sigmas("ExtendIntermediateSigmas", sigmas)
        if start_at_sigma < 0:
            start_at_sigma = float("inf")
        interpolate = {"linear": lambda v: v,
                       "cosine": lambda v: torch.sin(v * math.pi / 2),
                       "sine": lambda v: 1 - torch.cos(v * math.pi / 2)}[spacing]
        spaced = interpolate(torch.linspace(0, 1, steps + 1, device=sigmas.device)[1:-1])
        extended: list[Any] = []
        for i in range(len(sigmas) - 1):
            current, following = sigmas[i], sigmas[i + 1]
            extended.append(current)
            if end_at_sigma <= current <= start_at_sigma:
                extended.extend((spaced * (following - current) + current).tolist())
        if len(sigmas) > 0:
            extended.append(sigmas[-1])
        return (torch.FloatTensor([float(v) for v in extended]),)


@register
class SamplingPercentToSigma(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SamplingPercentToSigma", category=SIGMAS,
            inputs=[Socket("model", "MODEL"),
                    Float("sampling_percent", default=0.0, min=0.0, max=1.0, step=0.0001),
                    Boolean("return_actual_sigma", default=False,
                            tooltip="Return the actual sigma value instead of the value used for interval checks.\n"
                                    "This only affects results at 0.0 and 1.0.")],
            outputs=[Output("FLOAT", "sigma_value")])

    @classmethod
    def execute(cls, model: Any, sampling_percent: float, return_actual_sigma: bool) -> tuple:
        sigma = float(model.sampling.percent_to_sigma(sampling_percent))
        if return_actual_sigma:
            if sampling_percent == 0.0:
                sigma = float(model.sampling.sigma_max)
            elif sampling_percent == 1.0:
                sigma = float(model.sampling.sigma_min)
        return (sigma,)


@register
class ManualSigmas(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ManualSigmas", category=SIGMAS, experimental=True,
                      inputs=[String("sigmas", default="1, 0.5", multiline=False)], outputs=[Output("SIGMAS")])

    @classmethod
    def execute(cls, sigmas: str) -> tuple:
        values = [float(v) for v in re.findall(r"[-+]?(?:\d*\.*\d+)", sigmas)]
        return (torch.FloatTensor(values),)


# --------------------------------------------------------------------------------------------
# samplers (SAMPLER)
# --------------------------------------------------------------------------------------------

@register
class KSamplerSelect(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("KSamplerSelect", category=SAMPLERS,
                      inputs=[Combo("sampler_name", options_source=SAMPLER_NAMES)], outputs=[Output("SAMPLER")])

    @classmethod
    def validate_inputs(cls, sampler_name: str) -> bool | str:
        return sampler_name_problem(sampler_name) or True

    @classmethod
    def execute(cls, sampler_name: str) -> tuple:
        return _sampler_output("KSamplerSelect", sampler_name)


def _eta(max_: float = 100.0, advanced: bool = True, default: float = 1.0, tooltip: str | None = None) -> Float:
    return Float("eta", default=default, min=0.0, max=max_, step=0.01, round=False, advanced=advanced, tooltip=tooltip)


def _s_noise(max_: float = 100.0, advanced: bool = True) -> Float:
    return Float("s_noise", default=1.0, min=0.0, max=max_, step=0.01, round=False, advanced=advanced)


def _noise_device() -> Combo:
    return Combo("noise_device", options_source=("gpu", "cpu"), advanced=True)


@register
class SamplerDPMPP_3M_SDE(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerDPMPP_3M_SDE", category=SAMPLERS, inputs=[_eta(), _s_noise(), _noise_device()],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, eta: float, s_noise: float, noise_device: str) -> tuple:
        name = "dpmpp_3m_sde" if noise_device == "cpu" else "dpmpp_3m_sde_gpu"
        return _sampler_output("SamplerDPMPP_3M_SDE", name, eta=eta, s_noise=s_noise)


@register
class SamplerDPMPP_2M_SDE(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerDPMPP_2M_SDE", category=SAMPLERS,
                      inputs=[Combo("solver_type", options_source=("midpoint", "heun")), _eta(), _s_noise(),
                              _noise_device()],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, solver_type: str, eta: float, s_noise: float, noise_device: str) -> tuple:
        name = "dpmpp_2m_sde" if noise_device == "cpu" else "dpmpp_2m_sde_gpu"
        return _sampler_output("SamplerDPMPP_2M_SDE", name, eta=eta, s_noise=s_noise, solver_type=solver_type)


@register
class SamplerDPMPP_SDE(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerDPMPP_SDE", category=SAMPLERS,
                      inputs=[_eta(), _s_noise(),
                              Float("r", default=0.5, min=0.0, max=100.0, step=0.01, round=False, advanced=True),
                              _noise_device()],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, eta: float, s_noise: float, r: float, noise_device: str) -> tuple:
        name = "dpmpp_sde" if noise_device == "cpu" else "dpmpp_sde_gpu"
        return _sampler_output("SamplerDPMPP_SDE", name, eta=eta, s_noise=s_noise, r=r)


@register
class SamplerDPMPP_2S_Ancestral(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerDPMPP_2S_Ancestral", category=SAMPLERS,
                      inputs=[_eta(advanced=False), _s_noise(advanced=False)], outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, eta: float, s_noise: float) -> tuple:
        return _sampler_output("SamplerDPMPP_2S_Ancestral", "dpmpp_2s_ancestral", eta=eta, s_noise=s_noise)


@register
class SamplerEulerAncestral(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerEulerAncestral", category=SAMPLERS, inputs=[_eta(), _s_noise()],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, eta: float, s_noise: float) -> tuple:
        return _sampler_output("SamplerEulerAncestral", "euler_ancestral", eta=eta, s_noise=s_noise)


@register
class SamplerEulerAncestralCFGPP(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerEulerAncestralCFGPP", display_name="SamplerEulerAncestralCFG++", category=SAMPLERS,
                      inputs=[_eta(max_=1.0, advanced=False), _s_noise(max_=10.0, advanced=False)],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, eta: float, s_noise: float) -> tuple:
        return _sampler_output("SamplerEulerAncestralCFGPP", "euler_ancestral_cfg_pp", eta=eta, s_noise=s_noise)


@register
class SamplerLMS(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerLMS", category=SAMPLERS, inputs=[Int("order", default=4, min=1, max=100, advanced=True)],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, order: int) -> tuple:
        return _sampler_output("SamplerLMS", "lms", order=order)


@register
class SamplerDPMAdaptative(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        def number(name: str, default: float) -> Float:
            return Float(name, default=default, min=0.0, max=100.0, step=0.01, round=False, advanced=True)

        return Schema("SamplerDPMAdaptative", category=SAMPLERS,
                      inputs=[Int("order", default=3, min=2, max=3, advanced=True),
                              number("rtol", 0.05), number("atol", 0.0078), number("h_init", 0.05),
                              number("pcoeff", 0.0), number("icoeff", 1.0), number("dcoeff", 0.0),
                              number("accept_safety", 0.81), number("eta", 0.0), number("s_noise", 1.0)],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, order: int, rtol: float, atol: float, h_init: float, pcoeff: float, icoeff: float,
                dcoeff: float, accept_safety: float, eta: float, s_noise: float) -> tuple:
        if h_init <= 0:
            raise ValueError(f"SamplerDPMAdaptative: input 'h_init' must be greater than 0, got {h_init}")
        return _sampler_output("SamplerDPMAdaptative", "dpm_adaptive", order=order, rtol=rtol, atol=atol,
                               h_init=h_init, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff,
                               accept_safety=accept_safety, eta=eta, s_noise=s_noise)


@dataclass(frozen=True)
class ERSDENoiseScaler:
    """SamplerER_SDE's noise scaler psi(x) = x^(1 - eta) * phi(x)^eta, by solver type (mainline ComfyUI):
    ER-SDE ``x * (exp(x ** 0.3) + 10) ** eta``, reverse-time SDE ``x ** (eta + 1)``, ODE ``x``."""

    solver_type: str
    eta: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.solver_type == "ER-SDE":
            return x * ((x ** 0.3).exp() + 10.0) ** self.eta
        if self.solver_type == "Reverse-time SDE":
            return x ** (self.eta + 1)
        return x


@register
class SamplerER_SDE(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerER_SDE", category=SAMPLERS,
                      inputs=[Combo("solver_type", options_source=("ER-SDE", "Reverse-time SDE", "ODE")),
                              Int("max_stage", default=3, min=1, max=3, advanced=True),
                              _eta(max_=10.0, tooltip="Stochastic strength of SDEs.\nWhen eta=0, they reduce to "
                                   "deterministic ODE.\nLarge eta may cause invalid outputs. If this occurs, try "
                                   "decreasing this value."),
                              _s_noise()],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, solver_type: str, max_stage: int, eta: float, s_noise: float) -> tuple:
        if solver_type == "ODE" or eta == 0:
            solver_type, s_noise = "ODE", 0.0
        return _sampler_output("SamplerER_SDE", "er_sde", s_noise=s_noise, max_stage=max_stage,
                               noise_scaler=ERSDENoiseScaler(solver_type, eta))


@dataclass(frozen=True)
class SATauInterval:
    """SA-Solver's stochasticity: ``eta`` for sigmas in ``[end_sigma, start_sigma]``, else 0 (an ODE step);
    ComfyUI's ``get_tau_interval_func``."""

    start_sigma: float
    end_sigma: float
    eta: float = 1.0

    def __call__(self, sigma: Any) -> float:
        if self.eta <= 0:
            return 0.0
        value = float(sigma)
        return self.eta if self.start_sigma >= value >= self.end_sigma else 0.0


@register
class SamplerSASolver(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerSASolver", category=SAMPLERS,
                      inputs=[Socket("model", "MODEL"),
                              _eta(max_=10.0),
                              Float("sde_start_percent", default=0.2, min=0.0, max=1.0, step=0.001, advanced=True),
                              Float("sde_end_percent", default=0.8, min=0.0, max=1.0, step=0.001, advanced=True),
                              _s_noise(),
                              Int("predictor_order", default=3, min=1, max=6, advanced=True),
                              Int("corrector_order", default=4, min=0, max=6, advanced=True),
                              Boolean("use_pece", default=False, advanced=True),
                              Boolean("simple_order_2", default=False, advanced=True)],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, model: Any, eta: float, sde_start_percent: float, sde_end_percent: float, s_noise: float,
                predictor_order: int, corrector_order: int, use_pece: bool, simple_order_2: bool) -> tuple:
        tau = SATauInterval(float(model.sampling.percent_to_sigma(sde_start_percent)),
                            float(model.sampling.percent_to_sigma(sde_end_percent)), eta)
        return _sampler_output("SamplerSASolver", "sa_solver", tau_func=tau, s_noise=s_noise,
                               predictor_order=predictor_order, corrector_order=corrector_order,
                               use_pece=bool(use_pece), simple_order_2=bool(simple_order_2))


@register
class SamplerSEEDS2(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SamplerSEEDS2", category=SAMPLERS,
                      description="This sampler node can represent multiple samplers:\n\nseeds_2\n- default setting\n\n"
                                  "exp_heun_2_x0\n- solver_type=phi_2, r=1.0, eta=0.0\n\nexp_heun_2_x0_sde\n"
                                  "- solver_type=phi_2, r=1.0, eta=1.0, s_noise=1.0",
                      inputs=[Combo("solver_type", options_source=("phi_1", "phi_2")),
                              _eta(tooltip="Stochastic strength"),
                              Float("s_noise", default=1.0, min=0.0, max=100.0, step=0.01, round=False,
                                    tooltip="SDE noise multiplier", advanced=True),
                              Float("r", default=0.5, min=0.01, max=1.0, step=0.01, round=False,
                                    tooltip="Relative step size for the intermediate stage (c2 node)", advanced=True)],
                      outputs=[Output("SAMPLER")])

    @classmethod
    def execute(cls, solver_type: str, eta: float, s_noise: float, r: float) -> tuple:
        return _sampler_output("SamplerSEEDS2", "seeds_2", eta=eta, s_noise=s_noise, r=r, solver_type=solver_type)


# --------------------------------------------------------------------------------------------
# guiders (GUIDER)
# --------------------------------------------------------------------------------------------

@register
class BasicGuider(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("BasicGuider", display_name="Basic Guider", category=GUIDERS,
                      inputs=[Socket("model", "MODEL"), Socket("conditioning", "CONDITIONING")],
                      outputs=[Output("GUIDER")])

    @classmethod
    def execute(cls, model: Any, conditioning: Any) -> tuple:
        from loom.nodes.runtime.custom_sampling import BasicGuider as Guider

        _non_empty("BasicGuider", "conditioning", conditioning)
        _controls("BasicGuider", model, conditioning=conditioning)
        return (Guider(model, conditioning),)


@register
class CFGGuider(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CFGGuider", display_name="CFG Guider", category=GUIDERS,
                      inputs=[Socket("model", "MODEL"), Socket("positive", "CONDITIONING"),
                              Socket("negative", "CONDITIONING"),
                              Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)],
                      outputs=[Output("GUIDER")])

    @classmethod
    def execute(cls, model: Any, positive: Any, negative: Any, cfg: float) -> tuple:
        from loom.nodes.runtime.custom_sampling import CFGGuider as Guider

        _non_empty("CFGGuider", "positive", positive)
        _controls("CFGGuider", model, positive=positive, negative=negative)
        return (Guider(model, positive, negative, cfg),)


@register
class DualCFGGuider(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("DualCFGGuider", display_name="Dual CFG Guider", category=GUIDERS,
                      inputs=[Socket("model", "MODEL"), Socket("cond1", "CONDITIONING"),
                              Socket("cond2", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                              Float("cfg_conds", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                              Float("cfg_cond2_negative", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                              Combo("style", options_source=("regular", "nested"))],
                      outputs=[Output("GUIDER")])

    @classmethod
    def execute(cls, model: Any, cond1: Any, cond2: Any, negative: Any, cfg_conds: float, cfg_cond2_negative: float,
                style: str) -> tuple:
        from loom.nodes.runtime.custom_sampling import DualCFGGuider as Guider

        node = "DualCFGGuider"
        _non_empty(node, "cond1", cond1)
        _controls(node, model, cond1=cond1, cond2=cond2, negative=negative)
        return (Guider(model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, nested=style == "nested"),)


@register
class CFGOverride(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CFGOverride", display_name="CFG Override", category=GUIDERS,
                      description="Override cfg to a fixed value over a [start, end] percent (sigma) range. "
                                  "With multiple overrides, the one nearest the sampler wins on overlap.",
                      inputs=[Socket("model", "MODEL"),
                              Float("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01),
                              Float("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                              Float("end_percent", default=1.0, min=0.0, max=1.0, step=0.001)],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, cfg: float, start_percent: float, end_percent: float) -> tuple:
        from loom.nodes.runtime.custom_sampling import CFG_OVERRIDES_OPTION

        sigma_high = float(model.sampling.percent_to_sigma(start_percent))  # percent -> sigma decreases
        sigma_low = float(model.sampling.percent_to_sigma(end_percent))
        overrides = tuple(model.options.get(CFG_OVERRIDES_OPTION, ())) + ((sigma_low, sigma_high, float(cfg)),)
        return (model.replace(options={**model.options, CFG_OVERRIDES_OPTION: overrides}),)


# --------------------------------------------------------------------------------------------
# noise (NOISE)
# --------------------------------------------------------------------------------------------

@register
class DisableNoise(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("DisableNoise", category=NOISE, inputs=[], outputs=[Output("NOISE")])

    @classmethod
    def execute(cls) -> tuple:
        from loom.nodes.runtime.custom_sampling import EmptyNoise

        return (EmptyNoise(),)


@register
class RandomNoise(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("RandomNoise", category=NOISE,
                      inputs=[Int("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True)],
                      outputs=[Output("NOISE")])

    @classmethod
    def execute(cls, noise_seed: int) -> tuple:
        from loom.nodes.runtime.custom_sampling import RandomNoise as Noise

        return (Noise(int(noise_seed)),)


@register
class AddNoise(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("AddNoise", category=NOISE, experimental=True,
                      inputs=[Socket("model", "MODEL"), Socket("noise", "NOISE"), Socket("sigmas", "SIGMAS"),
                              Socket("latent_image", "LATENT")],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, model: Any, noise: Any, sigmas: Any, latent_image: Any) -> tuple:
        node = "AddNoise"
        sigmas = _sigmas(node, sigmas)
        latent = latent_image
        if len(sigmas) == 0:
            return (latent,)
        noisy = noise.generate(latent)
        scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
        samples = latent["samples"]
        if torch.count_nonzero(samples) > 0:  # an empty latent is not shifted into the model's space
            samples = model.latent_format.process_in(samples)
        noisy = model.latent_format.process_out(model.sampling.noise_scaling(scale.reshape(1), noisy, samples))
        out = dict(latent)
        out["samples"] = torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)
        return (out,)
