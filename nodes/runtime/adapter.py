"""The model adapter: ``(x, sigma, one conditioning batch) -> denoised`` for a MODEL, the way k-diffusion's
denoiser wrappers (and ComfyUI's ``BaseModel.apply_model``) turn a network into a denoiser.

    adapter = ModelAdapter(model)
    denoised = adapter(x, sigma, context, extra, control=None, concat=None)

The model-sampling object scales the input (``calculate_input``), gives the network's time input
(``timestep(sigma)``: a discrete timestep, ``sigma * 1000`` for SD3, sigma for FLUX) and turns the output into
the denoised latent (``calculate_denoised``: eps, v, x0, flow velocity); the family calls its network
(``Family.apply_network``: UNet kwargs, DiT inputs, ControlNet residuals, extra channels). The guider
(:class:`nodes.runtime.denoiser.GuidedDenoiser`) only combines conditionings and never touches a network.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from loom.nodes.runtime import families
from loom.nodes.runtime.model_types import DiffusionModel


class ModelAdapter:
    """A MODEL as a denoiser of one conditioning batch."""

    def __init__(self, model: DiffusionModel) -> None:
        self.model = model
        self.family = families.get(model.family)
        self.calls = 0

    @property
    def sampling(self) -> Any:
        return self.model.sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                 extra: Mapping[str, torch.Tensor] | None = None, control: Any = None,
                 concat: torch.Tensor | None = None) -> torch.Tensor:
        """The denoised estimate for ``x`` at ``sigma`` (a ``[B]`` tensor); ``context``/``extra`` are batched
        like ``x``; ``concat`` (extra input channels) is appended to the scaled input."""
        sampling = self.model.sampling
        xc = sampling.calculate_input(sigma, x)
        timestep = sampling.timestep(sigma).float()
        self.calls += 1
        output = self.family.apply_network(self.model, xc, timestep, sigma, context, extra, control, concat)
        return sampling.calculate_denoised(sigma, output.float().to(x.device), x)
