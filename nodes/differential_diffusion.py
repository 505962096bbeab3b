"""DifferentialDiffusion: a MODEL patch that turns a soft noise mask into a per-step hard one.

At each model call the patched MODEL's ``options["denoise_mask_function"]`` (read by the sampler's masked
denoiser) replaces the latent's noise mask by ``mask >= threshold``, where the threshold falls from 1 to 0
with the training timestep of the current sigma between those of the run's first sigma and its last (or the model's
smallest sigma): pixels with mask value ``m`` are repainted only for the last ``m`` of the run. With
``strength < 1`` the hard mask is blended with the soft one. Without a noise mask it does nothing.
These are ComfyUI's ``comfy_extras/nodes_differential_diffusion.py`` maths.
"""
from __future__ import annotations

import functools
from typing import Any

from loom.nodes.kernel.schema import Float, Node, Output, Schema, Socket, register


def differential_mask(sigma: Any, denoise_mask: Any, extra_options: dict[str, Any], strength: float = 1.0) -> Any:
    """The noise mask to use at ``sigma``; ``extra_options`` holds the ``model`` and the run's ``sigmas``."""
    sampling = extra_options["model"].sampling
    step_sigmas = extra_options["sigmas"]
    sigma_to = sampling.sigma_min
    if step_sigmas[-1] > sigma_to:
        sigma_to = step_sigmas[-1]
    sigma_from = step_sigmas[0]

    ts_from = sampling.timestep(sigma_from)
    ts_to = sampling.timestep(sigma_to)
    current_ts = sampling.timestep(sigma[0])
    threshold = (current_ts - ts_to) / (ts_from - ts_to)

    binary_mask = (denoise_mask >= threshold).to(denoise_mask.dtype)
    if strength and strength < 1:
        return strength * binary_mask + (1 - strength) * denoise_mask
    return binary_mask


@register
class DifferentialDiffusion(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "DifferentialDiffusion", display_name="Differential Diffusion", category="experimental",
            experimental=True,
            inputs=[Socket("model", "MODEL"),
                    Float("strength", default=1.0, min=0.0, max=1.0, step=0.0001, optional=True)],
            outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, strength: float = 1.0) -> tuple:
        function = functools.partial(differential_mask, strength=strength)
        return (model.replace(options={**model.options, "denoise_mask_function": function}),)
