"""Reference images for edit models (FLUX.1 Kontext): ComfyUI's ReferenceLatent
(``comfy_extras/nodes_edit_model.py``), FluxKontextImageScale and FluxKontextMultiReferenceLatentMethod
(``comfy_extras/nodes_flux.py``).

ReferenceLatent appends a latent to the conditioning's ``reference_latents`` list; at sampling time a FLUX
model sees each one as extra image tokens after the latent's own (:mod:`nodes.runtime.families.flux`), laid
out by ``reference_latents_method`` ("offset", ComfyUI's default for FLUX.1, "index" or "uxo"). Models of
other families leave the references out, as ComfyUI's do.
"""
from __future__ import annotations

import torch

from loom.nodes.kernel.schema import Combo, Node, Output, Schema, Socket, register

PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)
"""(width, height) pairs FLUX.1 Kontext was trained on (ComfyUI's ``PREFERED_KONTEXT_RESOLUTIONS``)."""

REFERENCE_METHODS = ("offset", "index", "uxo/uno")


@register
class ReferenceLatent(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ReferenceLatent", category="advanced/conditioning/edit_models",
            description="This node sets the guiding latent for an edit model. If the model supports it you can "
                        "chain multiple to set multiple reference images.",
            inputs=[Socket("conditioning", "CONDITIONING"), Socket("latent", "LATENT", optional=True)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: list, latent: dict | None = None) -> tuple:
        if latent is None:
            return (conditioning,)
        samples = latent["samples"]
        if samples.ndim != 4:
            raise ValueError(f"ReferenceLatent: input 'latent' has {samples.ndim}-dimensional samples; it takes an "
                             "image LATENT ([batch, channels, height, width] samples)")
        return ([[cond, {**options, "reference_latents": [*options.get("reference_latents", ()), samples]}]
                 for cond, options in conditioning],)


@register
class FluxKontextImageScale(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "FluxKontextImageScale", category="advanced/conditioning/flux",
            description="This node resizes the image to one that is more optimal for flux kontext.",
            inputs=[Socket("image", "IMAGE")], outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor) -> tuple:
        from loom.nodes.runtime.resample import common_upscale

        width, height = kontext_size(image.shape[2], image.shape[1])
        scaled = common_upscale(image.movedim(-1, 1), width, height, "lanczos", "center").movedim(1, -1)
        return (scaled,)


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The preferred Kontext resolution closest in aspect ratio to ``width`` × ``height`` (first one on ties)."""
    aspect = width / height
    _, best_width, best_height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return best_width, best_height


@register
class FluxKontextMultiReferenceLatentMethod(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "FluxKontextMultiReferenceLatentMethod", category="advanced/conditioning/flux",
            inputs=[Socket("conditioning", "CONDITIONING"),
                    Combo("reference_latents_method", options_source=REFERENCE_METHODS)],
            outputs=[Output("CONDITIONING")], experimental=True)

    @classmethod
    def execute(cls, conditioning: list, reference_latents_method: str) -> tuple:
        method = "uxo" if "uxo" in reference_latents_method or "uso" in reference_latents_method \
            else reference_latents_method
        return ([[cond, {**options, "reference_latents_method": method}] for cond, options in conditioning],)
