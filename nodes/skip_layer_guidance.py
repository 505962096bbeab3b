"""ComfyUI's skip-layer guidance (``comfy_extras/nodes_slg.py``, ``advanced/guidance``, experimental):
SkipLayerGuidanceDiT and SkipLayerGuidanceDiTSimple.

Both read the block indices as every run of digits in ``double_layers`` / ``single_layers`` (ComfyUI's
``re.findall(r"\\d+")``: ``"7, 8, 9"`` → 7, 8, 9; no digits → nothing) and, with neither list holding any,
return the MODEL unchanged. The percents become sigmas with the MODEL's sampling when the node runs; a step
is inside the window when ``sigma_end < sigma <= sigma_start``.

* **SkipLayerGuidanceDiT** adds a post-CFG function: inside the window and with ``scale > 0`` it evaluates
  the positive conditioning once more with the named blocks skipped (:mod:`nodes.runtime.dit_patches`) and
  returns ``cfg_result + (cond_pred - skipped_pred) * scale``; a non-zero ``rescaling_scale`` then multiplies
  that by ``rescaling_scale * std(cond_pred) / std(result) + (1 - rescaling_scale)`` (standard deviations
  over the whole batch).
* **SkipLayerGuidanceDiTSimple** replaces the evaluation of the conditionings: inside the window, when the
  negative is evaluated at all, the positive runs as usual and the negative with the named blocks skipped,
  so the CFG combines ``cond`` with the skipped-block ``uncond``; outside it nothing changes.

Skipping blocks is a DiT patch: SD3's joint blocks are double blocks and it has no single ones; FLUX has
both. A UNet (SD1.x, SD2, SDXL) never reads it, as ComfyUI's UNet never reads ``patches_replace["dit"]``, so
there the extra pass equals the plain positive one and the guidance adds only what batching changes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from loom.nodes.kernel.schema import Float, Node, Output, Schema, Socket, String, register
from loom.nodes.model_patches import with_post_cfg_function
from loom.nodes.runtime.dit_patches import with_skipped_blocks

CATEGORY = "advanced/guidance"


def parse_layers(text: Any) -> tuple[int, ...]:
    """Every run of digits in ``text`` as a block index (ComfyUI's rule)."""
    return tuple(int(digits) for digits in re.findall(r"\d+", str(text)))


def _window(node: type[Node], model: Any, start_percent: Any, end_percent: Any) -> tuple[float, float]:
    start = node.linked_float("start_percent", start_percent)
    end = node.linked_float("end_percent", end_percent)
    return float(model.sampling.percent_to_sigma(start)), float(model.sampling.percent_to_sigma(end))


def _evaluator(node: str, denoiser: Any) -> Any:
    evaluate = getattr(denoiser, "calc_cond_batch_with_options", None)
    if evaluate is None:
        raise ValueError(f"{node}: this guider cannot evaluate the skipped-block pass")
    return evaluate


@dataclass(frozen=True)
class SkipLayerGuidanceFunction:
    """SkipLayerGuidanceDiT's post-CFG function (see the module docstring)."""

    double: tuple[int, ...]
    single: tuple[int, ...]
    scale: float
    sigma_start: float
    sigma_end: float
    rescaling_scale: float

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        cfg_result = args["denoised"]
        sigma = args["sigma"]
        if not (self.scale > 0 and self.sigma_end < float(sigma[0]) <= self.sigma_start):
            return cfg_result
        evaluate = _evaluator("SkipLayerGuidanceDiT", args.get("denoiser"))
        options = with_skipped_blocks(args["model_options"], self.double, self.single)
        (skipped,) = evaluate(options, [args["cond"]], args["input"], sigma)
        cond_pred = args["cond_denoised"]
        cfg_result = cfg_result + (cond_pred - skipped) * self.scale
        if self.rescaling_scale != 0:
            factor = cond_pred.std() / cfg_result.std()
            cfg_result = cfg_result * (self.rescaling_scale * factor + (1 - self.rescaling_scale))
        return cfg_result


@dataclass(frozen=True)
class SkipLayerUncondFunction:
    """SkipLayerGuidanceDiTSimple's evaluation of ``[positive, negative]`` (see the module docstring)."""

    double: tuple[int, ...]
    single: tuple[int, ...]
    sigma_start: float
    sigma_end: float

    def __call__(self, args: dict[str, Any]) -> list[torch.Tensor]:
        denoiser, conds, x, sigma = args["denoiser"], args["conds"], args["input"], args["sigma"]
        options = args["model_options"]
        evaluate = _evaluator("SkipLayerGuidanceDiTSimple", denoiser)
        cond, uncond = conds
        if self.sigma_end < float(sigma[0]) <= self.sigma_start and uncond is not None:
            cond_out, _ = evaluate(options, [cond, None], x, sigma)
            skipped = with_skipped_blocks(options, self.double, self.single)
            _, uncond_out = evaluate(skipped, [None, uncond], x, sigma)
            return [cond_out, uncond_out]
        return evaluate(options, conds, x, sigma)


def _layer_inputs() -> list[Any]:
    return [Socket("model", "MODEL"),
            String("double_layers", default="7, 8, 9", advanced=True),
            String("single_layers", default="7, 8, 9", advanced=True)]


@register
class SkipLayerGuidanceDiT(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SkipLayerGuidanceDiT", category=CATEGORY, experimental=True,
            description="Generic version of SkipLayerGuidance node that can be used on every DiT model.",
            inputs=_layer_inputs() + [
                Float("scale", default=3.0, min=0.0, max=10.0, step=0.1),
                Float("start_percent", default=0.01, min=0.0, max=1.0, step=0.001, advanced=True),
                Float("end_percent", default=0.15, min=0.0, max=1.0, step=0.001, advanced=True),
                Float("rescaling_scale", default=0.0, min=0.0, max=10.0, step=0.01)],
            outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, scale: float, start_percent: float, end_percent: float,
                double_layers: str = "", single_layers: str = "", rescaling_scale: float = 0.0) -> tuple:
        scale = cls.linked_float("scale", scale)
        rescaling_scale = cls.linked_float("rescaling_scale", rescaling_scale)
        sigma_start, sigma_end = _window(cls, model, start_percent, end_percent)
        double, single = parse_layers(double_layers), parse_layers(single_layers)
        if not double and not single:
            return (model,)
        function = SkipLayerGuidanceFunction(double, single, scale, sigma_start, sigma_end, rescaling_scale)
        return (with_post_cfg_function(model, function),)


@register
class SkipLayerGuidanceDiTSimple(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SkipLayerGuidanceDiTSimple", category=CATEGORY, experimental=True,
            description="Simple version of the SkipLayerGuidanceDiT node that only modifies the uncond pass.",
            inputs=_layer_inputs() + [
                Float("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, advanced=True),
                Float("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, advanced=True)],
            outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, start_percent: float, end_percent: float, double_layers: str = "",
                single_layers: str = "") -> tuple:
        sigma_start, sigma_end = _window(cls, model, start_percent, end_percent)
        double, single = parse_layers(double_layers), parse_layers(single_layers)
        if not double and not single:
            return (model,)
        function = SkipLayerUncondFunction(double, single, sigma_start, sigma_end)
        return (model.replace(options={**model.options, "sampler_calc_cond_batch_function": function}),)


__all__ = ["SkipLayerGuidanceDiT", "SkipLayerGuidanceDiTSimple", "SkipLayerGuidanceFunction",
           "SkipLayerUncondFunction", "parse_layers"]
