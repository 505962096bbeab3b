"""Fixtures for the sampling tests: a tiny random diffusers UNet wrapped as a MODEL, and analytic denoisers."""
from __future__ import annotations

import pytest
import torch

from loom.nodes.runtime.model_types import DiffusionModel, LatentFormat, ModelSampling


def tiny_unet(cross_attention_dim: int = 32, seed: int = 0, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32,
                                **extra)
    with torch.no_grad():  # diffusers zero-initialises conv_out; give the output some signal
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet.eval()


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and records the batch size of every call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.batches: list[int] = []

    def forward(self, sample, timestep, **kwargs):
        self.batches.append(sample.shape[0])
        return self.inner(sample, timestep, **kwargs)


@pytest.fixture(scope="session")
def tiny_model() -> DiffusionModel:
    return DiffusionModel(unet=CountingUNet(tiny_unet()), family="sd1", sampling=ModelSampling.scaled_linear(),
                          latent_format=LatentFormat())


@pytest.fixture(scope="session")
def tiny_conds():
    generator = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 77, 32, generator=generator), {}]]
    negative = [[torch.randn(1, 77, 32, generator=generator), {}]]
    return positive, negative


class GaussianDenoiser:
    """The exact denoiser for data ~ N(0, s^2): ``E[x0 | x] = x * s^2 / (s^2 + sigma^2)``."""

    def __init__(self, s: float = 0.5) -> None:
        self.s2 = s * s
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.view(-1, *([1] * (x.ndim - 1)))
        return x * self.s2 / (self.s2 + sigma ** 2)

    def ode_solution(self, x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
        """Where the probability-flow ODE takes ``x_start`` from ``sigma_start`` to ``sigma_end``."""
        return x_start * ((self.s2 + sigma_end ** 2) / (self.s2 + sigma_start ** 2)) ** 0.5
