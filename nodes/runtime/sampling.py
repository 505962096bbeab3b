"""The denoising loop behind KSampler and KSamplerAdvanced, with ComfyUI's semantics.

:func:`sample` takes a MODEL, positive/negative CONDITIONING and a LATENT dict and returns the new latent
tensor (in the VAE's space, like the input):

1. noise: a CPU generator seeded with ``seed`` (per-item with ``batch_index``), or zeros when disabled;
2. sigmas: the scheduler's schedule (``denoise < 1``: ``int(steps / denoise)`` steps, the last
   ``steps + 1`` kept), cut to ``start_step``..``last_step`` (KSamplerAdvanced), the last set to 0 when
   ``force_full_denoise``;
3. the latent enters the model's space (``process_in``, skipped for an all-zero latent) and the noise is
   mixed in by the model sampling's ``noise_scaling`` (discrete: ``latent + noise * sigma``, or
   ``sqrt(1 + sigma**2)`` when starting from pure noise; flow: ``sigma * noise + (1 - sigma) * latent``);
4. the sampler runs over the sigmas with the guided denoiser (and the noise mask, if the latent has one:
   an inpainting model also takes it as its mask channel unless the conditioning sets ``concat_mask``),
   reporting each step to :class:`loom.nodes.kernel.progress.ProgressBar` with a latent preview;
5. ``inverse_noise_scaling`` at the last sigma, then the result leaves the model's space (``process_out``).

Steps 3-5 are :func:`sample_guided`, which the custom-sampling nodes (SamplerCustom,
SamplerCustomAdvanced) call with their own GUIDER, SAMPLER, NOISE and SIGMAS; the KSampler calls it
with a CFG guider, so both paths compute the same latents for the same settings.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Sequence

import torch

from loom.nodes.kernel import progress
from loom.nodes.runtime import fast
from loom.nodes.runtime.custom_sampling import CFGGuider, SamplerChoice
from loom.nodes.runtime.denoiser import MaskedDenoiser, prepare_noise_mask
from loom.nodes.runtime.model_types import DiffusionModel
from loom.nodes.runtime.noise import initial_noise
from loom.nodes.runtime.preview import latent_preview
from loom.nodes.runtime.schedules import sampling_sigmas


def cut_sigmas(sigmas: torch.Tensor, start_step: int | None, last_step: int | None,
               force_full_denoise: bool) -> torch.Tensor | None:
    """The part of the schedule from ``start_step`` to ``last_step``; ``None`` if nothing is left to run."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas


def fit_latent_channels(model: DiffusionModel, latent: torch.Tensor) -> torch.Tensor:
    """An empty latent made for another family gets this model's channel count (ComfyUI does the same)."""
    channels = model.latent_format.channels
    if latent.shape[1] != channels and torch.count_nonzero(latent) == 0:
        return torch.zeros((latent.shape[0], channels) + tuple(latent.shape[2:]), dtype=latent.dtype)
    return latent


def _model_device(model: DiffusionModel) -> torch.device:
    try:
        return next(model.unet.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def sample(model: DiffusionModel, positive: Sequence[Any], negative: Sequence[Any], latent: dict[str, Any], *,
           seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, denoise: float = 1.0,
           disable_noise: bool = False, start_step: int | None = None, last_step: int | None = None,
           force_full_denoise: bool = False) -> torch.Tensor:
    """Run a sampler on ``latent`` and return the resulting latent tensor (VAE space, on the CPU)."""
    sampler = SamplerChoice(sampler_name)
    latent_image = fit_latent_channels(model, latent["samples"].float())
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, device="cpu")
    else:
        noise = initial_noise(latent_image, seed, latent.get("batch_index"))

    sigmas = sampling_sigmas(model.sampling, scheduler, steps, denoise, sampler_name)
    sigmas = cut_sigmas(sigmas, start_step, last_step, force_full_denoise)
    if sigmas is None or sigmas.shape[-1] == 0:
        return latent_image
    return sample_guided(CFGGuider(model, positive, negative, cfg), sampler, noise, latent_image, sigmas,
                         seed=seed, noise_mask=latent.get("noise_mask"))


def sample_guided(guider: CFGGuider, sampler: SamplerChoice, noise: torch.Tensor, latent_image: torch.Tensor,
                  sigmas: torch.Tensor, *, seed: int, noise_mask: torch.Tensor | None = None,
                  x0_output: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Run ``sampler`` with ``guider``'s denoiser over ``sigmas``: ComfyUI's ``CFGGuider.sample``.

    ``latent_image`` and the returned latent are in the VAE's space (``latent_image`` with the model's
    channel count); ``noise`` is unscaled standard noise (or zeros). An empty ``sigmas`` returns
    ``latent_image`` as it is. ``x0_output``, when given, receives the last step's denoised estimate
    (model space) under ``"x0"``, as ComfyUI's preview callback records it for ``denoised_output``.
    With the fast path on (:mod:`nodes.runtime.fast`) the guider samples with the MODEL's fast network.
    """
    if sigmas.shape[-1] == 0:
        return latent_image
    model = fast.sampling_model(guider.model)  # the guider's own MODEL unless the fast path is on
    if model is not guider.model:
        guider = copy.copy(guider)
        guider.model = model
    sample_function = sampler.function()
    device = _model_device(model)
    if torch.count_nonzero(latent_image) > 0:  # an empty latent is not shifted into the model's space
        latent_image = model.latent_format.process_in(latent_image)
    latent_image = latent_image.to(device)
    noise = noise.to(device)
    sigmas = sigmas.to(device)

    mask = None
    if noise_mask is not None:
        mask = prepare_noise_mask(noise_mask, noise.shape).to(device)
    denoiser: Any = guider.denoiser(latent_image.shape, latent_image, mask, cfg_pp=sampler.spec.cfg_pp)
    if mask is not None:
        inpaint_noise = noise
        if sampler.spec.random_inpaint_noise:
            generator = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
            inpaint_noise = torch.randn(noise.shape, generator=generator, device="cpu").to(device)
        denoiser = MaskedDenoiser(denoiser, mask, latent_image, inpaint_noise, sigmas=sigmas,
                                  mask_function=model.options.get("denoise_mask_function"))

    sigma_max = float(model.sampling.sigma_max)
    first = float(sigmas[0])
    from_pure_noise = math.isclose(sigma_max, first, rel_tol=1e-05) or first > sigma_max
    # discrete: latent + noise * sigma (sqrt(1 + sigma**2) from pure noise); flow: sigma*noise + (1-sigma)*latent
    x = model.sampling.noise_scaling(sigmas[0].reshape(1), noise, latent_image, from_pure_noise)

    total = len(sigmas) - 1
    bar = progress.ProgressBar(total)

    def on_step(i: int, denoised: torch.Tensor, _x: torch.Tensor) -> None:
        if x0_output is not None:
            x0_output["x0"] = denoised
        preview = None
        if progress.current() is not None:
            preview = latent_preview(denoised, model.family, model.latent_format)
        bar.update_absolute(i + 1, preview)

    progress.check_interrupted()
    with contextlib.ExitStack() as patched:  # weight patches (LoRA) live only while this model samples
        for patch in model.patches:
            patched.enter_context(patch.applied(model))
        samples = sample_function(denoiser, x, sigmas, seed=int(seed), callback=on_step)
    samples = model.sampling.inverse_noise_scaling(sigmas[-1].reshape(1), samples.float())
    return model.latent_format.process_out(samples).cpu()
