"""Seeded noise, drawn on the CPU so the same seed gives the same image on any machine.

* :func:`initial_noise` is the KSampler's starting noise: a CPU generator seeded with ``seed``, then one
  ``randn`` of the latent's shape; with a ``batch_index`` list each item takes the noise it would have had
  at that index of a bigger batch, so one image of a batch can be re-made alone.
* :class:`SeededNoise` is the extra noise of ancestral/stochastic samplers: a generator of its own,
  seeded with the same seed, drawing one tensor of the latent's shape per call.
* :class:`BrownianNoise` is the Brownian-tree noise of the SDE samplers (``dpmpp_sde``, ``dpmpp_2m_sde``,
  ...), built on ``torchsde`` as ComfyUI builds it, so their images match ComfyUI's for the same seed.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch


def initial_noise(latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """The starting noise for ``latent`` (``[B, C, H, W]``), float32 on the CPU."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    if batch_index is None:
        return torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout, generator=generator,
                           device="cpu")
    indices = [int(i) for i in batch_index]
    if any(i < 0 for i in indices):
        raise ValueError(f"batch_index must not be negative: {indices}")
    wanted = set(indices)
    item_shape = [1] + list(latent.size())[1:]
    drawn: dict[int, torch.Tensor] = {}
    for i in range(max(indices) + 1):  # draw in order so item i gets the noise it has in a full batch
        noise = torch.randn(item_shape, dtype=latent.dtype, layout=latent.layout, generator=generator, device="cpu")
        if i in wanted:
            drawn[i] = noise
    return torch.cat([drawn[i] for i in indices], dim=0)


class SeededNoise:
    """Fresh standard-normal noise shaped like ``x`` on each call, from a generator seeded with ``seed``."""

    def __init__(self, x: torch.Tensor, seed: int | None) -> None:
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.generator = torch.Generator(device=x.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    def __call__(self, sigma: torch.Tensor | None = None, sigma_next: torch.Tensor | None = None) -> torch.Tensor:
        return torch.randn(self.shape, dtype=self.dtype, device=self.device, generator=self.generator)


class BrownianNoise:
    """Increments of a Brownian motion over sigma, normalised to unit variance (a torchsde ``BrownianTree``).

    Asking for the same interval twice gives the same noise, which is what makes the SDE solvers'
    sub-steps consistent; the tree lives on the CPU and is seeded with ``seed``.
    """

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor, sigma_max: torch.Tensor, seed: int | None) -> None:
        try:
            import torchsde
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError("this sampler needs the 'torchsde' package (pip install torchsde)") from exc
        self.device, self.dtype = x.device, x.dtype
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        if seed is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, []).item())
        w0 = torch.zeros_like(x)
        self.tree = torchsde.BrownianTree(t0.cpu(), w0.cpu(), t1.cpu(), entropy=int(seed))

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        t0, t1, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with warnings.catch_warnings():  # torchsde warns about float rounding at the interval's ends
            warnings.filterwarnings("ignore", message="Should have")
            w = self.tree(t0.cpu().float(), t1.cpu().float()).to(dtype=t0.dtype, device=self.device)
        w = w * (self.sign * sign)
        return w / (t1 - t0).abs().sqrt()
