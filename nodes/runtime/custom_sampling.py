"""The values of ComfyUI's custom-sampling nodes: SAMPLER, NOISE and GUIDER.

* :class:`SamplerChoice` (``SAMPLER``) is a sampler of :mod:`~nodes.runtime.samplers` by its ComfyUI name
  plus the options its node set (``eta``, ``s_noise``, ``order``, ...), like ComfyUI's ``KSAMPLER``.
* :class:`RandomNoise` / :class:`EmptyNoise` (``NOISE``) make the starting noise for a LATENT: the
  KSampler's seeded CPU noise (:func:`~nodes.runtime.noise.initial_noise`, so seeds match), or zeros.
  Their ``seed`` also seeds the samplers' extra noise (0 for the empty noise, as ComfyUI).
* :class:`CFGGuider`, :class:`BasicGuider` and :class:`DualCFGGuider` (``GUIDER``) hold a MODEL and its
  conditionings and build, for one sampling run, the denoiser the samplers call: the existing
  :class:`~nodes.runtime.denoiser.GuidedDenoiser` (CFG, areas, masks, ControlNet, CFG patches), or for
  the dual guider a subclass that evaluates three conditionings in one batch as ComfyUI's
  ``Guider_DualCFG``.

The sampling loop that runs a guider, a sampler and a noise over sigmas is
:func:`nodes.runtime.sampling.sample_guided`; the KSampler goes through it too.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from loom.nodes.kernel import sockets
from loom.nodes.runtime.denoiser import (GuidedDenoiser, add_matching_areas, combine_guidance,
                                         resolve_conditioning, share_control_with_negative)
from loom.nodes.runtime.model_types import DiffusionModel
from loom.nodes.runtime.noise import initial_noise
from loom.nodes.runtime.samplers import Sampler, SamplerSpec, sampler_spec


# --------------------------------------------------------------------------------------------
# SAMPLER
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerChoice:
    """``SAMPLER``: a sampler by ComfyUI name, with the keyword options its node gave it."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sampler_spec(self.name)  # refuses an unknown or unimplemented name

    @property
    def spec(self) -> SamplerSpec:
        """The sampler's function and what the sampling loop must do for it (CFG++, inpaint noise)."""
        return sampler_spec(self.name)

    def function(self) -> Sampler:
        """``sample(model, x, sigmas, *, seed, callback)`` with this choice's options bound."""
        sampler = self.spec.function
        assert sampler is not None  # sampler_spec refuses unimplemented names
        return functools.partial(sampler, **self.options) if self.options else sampler


sockets.SAMPLER.register(SamplerChoice)


# --------------------------------------------------------------------------------------------
# NOISE
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandomNoise:
    """``NOISE`` from RandomNoise: the KSampler's noise for ``seed`` (per item with ``batch_index``)."""

    seed: int

    def generate(self, latent: Mapping[str, Any]) -> torch.Tensor:
        samples = latent["samples"]
        return initial_noise(samples, int(self.seed), latent.get("batch_index"))


@dataclass(frozen=True)
class EmptyNoise:
    """``NOISE`` from DisableNoise: zeros shaped like the latent; seed 0 for the samplers' own noise."""

    seed: int = 0

    def generate(self, latent: Mapping[str, Any]) -> torch.Tensor:
        samples = latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


sockets.NOISE.register(RandomNoise, EmptyNoise)


Noise = RandomNoise | EmptyNoise


# --------------------------------------------------------------------------------------------
# GUIDER
# --------------------------------------------------------------------------------------------

def _tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in a conditioning (lists of ``[tensor, options]``, options' tensors included)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


class CFGGuider:
    """``GUIDER`` from CFGGuider: classifier-free guidance of ``positive`` over ``negative`` at ``cfg``."""

    def __init__(self, model: DiffusionModel, positive: Sequence[Any], negative: Sequence[Any] | None,
                 cfg: float = 1.0) -> None:
        self.model = model
        self.positive = positive
        self.negative = negative if negative is not None else []
        self.cfg = float(cfg)

    def loom_nbytes(self) -> int:
        """Bytes for the output cache: the conditionings' tensors. The model is counted by the cache entry of
        the MODEL output it came from, which holds the same weights."""
        return sum(_tensor_bytes(value) for value in vars(self).values() if value is not self.model)

    def denoiser(self, latent_shape: Sequence[int], latent_image: torch.Tensor | None,
                 denoise_mask: torch.Tensor | None, *, cfg_pp: bool = False) -> GuidedDenoiser:
        """The ``(x, sigma) -> denoised`` function for one run over a latent of ``latent_shape``
        (``latent_image`` in the model's space, ``denoise_mask`` the prepared noise mask or ``None``)."""
        denoiser = GuidedDenoiser(self.model, self.positive, self.negative, self.cfg, latent_shape,
                                  disable_cfg1_optimization=cfg_pp, keep_uncond=cfg_pp,
                                  latent_image=latent_image, denoise_mask=denoise_mask)
        overrides = self.model.options.get(CFG_OVERRIDES_OPTION)
        return CFGOverrideDenoiser(denoiser, overrides) if overrides else denoiser


sockets.GUIDER.register(CFGGuider)


CFG_OVERRIDES_OPTION = "cfg_overrides"
"""MODEL.options key: ``((sigma_low, sigma_high, cfg), ...)`` from CFGOverride nodes, in the order applied."""


class CFGOverrideDenoiser:
    """A CFG guider's denoiser whose cfg is replaced while ``sigma_low < sigma <= sigma_high`` (CFGOverride).

    ComfyUI wraps ``predict_noise`` once per CFGOverride, the first-applied outermost, and each wrapper sets
    ``guider.cfg`` for the call: on overlapping ranges the last-applied override (the one nearest the
    sampler) wins. The dual-CFG guider does not read ``cfg``, so it is never wrapped."""

    def __init__(self, inner: GuidedDenoiser, overrides: Sequence[tuple[float, float, float]]) -> None:
        self.inner = inner
        self.overrides = tuple(overrides)

    def __getattr__(self, name: str) -> Any:  # samplers may read e.g. ``uncond_denoised`` or ``sampling``
        return getattr(self.inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        value = float(sigma.flatten()[0])
        cfg = None
        for low, high, override in self.overrides:
            if low < value <= high:
                cfg = override
        if cfg is None:
            return self.inner(x, sigma)
        saved = self.inner.cfg
        self.inner.cfg = float(cfg)
        try:
            return self.inner(x, sigma)
        finally:
            self.inner.cfg = saved


class BasicGuider(CFGGuider):
    """``GUIDER`` from BasicGuider: the conditioning alone, no negative, cfg 1 (ComfyUI's ``Guider_Basic``)."""

    def __init__(self, model: DiffusionModel, conditioning: Sequence[Any]) -> None:
        super().__init__(model, conditioning, None, 1.0)


@dataclass
class _GuidanceArgs:
    """What :func:`~nodes.runtime.denoiser.combine_guidance` reads of a denoiser, for one of the dual
    guider's two combinations (its own cfg and the pair of conditionings it combines)."""

    model: DiffusionModel
    cfg: float
    positive: Any
    negative: Any


class DualCFGDenoiser(GuidedDenoiser):
    """Two guidance scales over three conditionings, as ComfyUI's ``Guider_DualCFG.predict_noise``.

    ``regular``: ``cfg_function(middle, negative, cfg2) + (positive - middle) * cfg1``, with the negative
    skipped at ``cfg2 == 1`` and the middle as well when also ``cfg1 == 1`` (unless cfg1 optimisation is
    disabled); ``nested``: ``negative + cfg2 * (cfg_function(positive, middle, cfg1) - negative)``.
    """

    def __init__(self, model: DiffusionModel, positive: Sequence[Any], middle: Sequence[Any],
                 negative: Sequence[Any], cfg1: float, cfg2: float, nested: bool, latent_shape: Sequence[int], *,
                 disable_cfg1_optimization: bool = False, keep_uncond: bool = False,
                 latent_image: torch.Tensor | None = None, denoise_mask: torch.Tensor | None = None) -> None:
        super().__init__(model, positive, negative, cfg2, latent_shape,
                         disable_cfg1_optimization=disable_cfg1_optimization, keep_uncond=keep_uncond,
                         latent_image=latent_image, denoise_mask=denoise_mask)
        self.cfg1, self.cfg2, self.nested = float(cfg1), float(cfg2), nested
        # resolved again so that every pair of the three lists gets matching areas, in ComfyUI's order
        # (positive, middle, negative); the middle is encoded as a negative prompt (its prompt_type)
        conds = {
            "positive": resolve_conditioning(model, positive, latent_shape, "positive", latent_image, denoise_mask),
            "middle": resolve_conditioning(model, middle, latent_shape, "negative", latent_image, denoise_mask),
            "negative": resolve_conditioning(model, negative, latent_shape, "negative", latent_image, denoise_mask),
        }
        for key, entries in conds.items():
            for entry in list(entries):
                for other_key, others in conds.items():
                    if other_key != key:
                        add_matching_areas(others, entry)
        share_control_with_negative(conds["positive"], conds["middle"])
        share_control_with_negative(conds["positive"], conds["negative"])
        self.positive, self.middle, self.negative = conds["positive"], conds["middle"], conds["negative"]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        negative: Any = self.negative
        middle: Any = self.middle
        if self.nested:
            out = self.calc_cond_batch([negative, middle, self.positive], x, sigma)
            if self.keep_uncond:
                self.uncond_denoised = out[1]
            text = combine_guidance(_GuidanceArgs(self.model, self.cfg1, self.positive, middle),  # type: ignore[arg-type]
                                    out[2], out[1], x, sigma)
            return out[0] + self.cfg2 * (text - out[0])
        if not self.disable_cfg1_optimization and math.isclose(self.cfg2, 1.0):
            negative = None
            if math.isclose(self.cfg1, 1.0):
                middle = None
        out = self.calc_cond_batch([negative, middle, self.positive], x, sigma)
        if self.keep_uncond:
            self.uncond_denoised = out[0]
        guided = combine_guidance(_GuidanceArgs(self.model, self.cfg2, middle, negative),  # type: ignore[arg-type]
                                  out[1], out[0], x, sigma, uncond_skipped=negative is None)
        return guided + (out[2] - out[1]) * self.cfg1


class DualCFGGuider(CFGGuider):
    """``GUIDER`` from DualCFGGuider: ``cond1`` over ``cond2`` at ``cfg_conds``, ``cond2`` over ``negative``
    at ``cfg_cond2_negative``, combined ``regular`` or ``nested``."""

    def __init__(self, model: DiffusionModel, cond1: Sequence[Any], cond2: Sequence[Any], negative: Sequence[Any],
                 cfg_conds: float, cfg_cond2_negative: float, nested: bool = False) -> None:
        super().__init__(model, cond1, negative, cfg_cond2_negative)
        self.middle = cond2
        self.cfg1 = float(cfg_conds)
        self.nested = nested

    def denoiser(self, latent_shape: Sequence[int], latent_image: torch.Tensor | None,
                 denoise_mask: torch.Tensor | None, *, cfg_pp: bool = False) -> GuidedDenoiser:
        return DualCFGDenoiser(self.model, self.positive, self.middle, self.negative, self.cfg1, self.cfg,
                               self.nested, latent_shape, disable_cfg1_optimization=cfg_pp, keep_uncond=cfg_pp,
                               latent_image=latent_image, denoise_mask=denoise_mask)


Guider = CFGGuider
"""Every GUIDER is a :class:`CFGGuider` (``model`` plus ``denoiser(...)``)."""
