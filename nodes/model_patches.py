"""ComfyUI's CFG patches: RescaleCFG, CFGZeroStar and CFGNorm.

Each returns a new MODEL handle whose ``options`` carry ComfyUI's ``sampler_cfg_function`` (RescaleCFG:
it replaces the guidance combination) or an entry appended to ``sampler_post_cfg_function`` (CFGZeroStar,
CFGNorm: they rework the combined prediction). :func:`loom.nodes.runtime.denoiser.combine_guidance`
calls them with the args dict ComfyUI builds. The functions are small picklable classes, not closures,
and compute exactly what ComfyUI's do, in the same order of operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from loom.nodes.kernel.schema import Float, Node, Output, Schema, Socket, register


def with_cfg_function(model: Any, function: Any) -> Any:
    """ComfyUI's ``set_model_sampler_cfg_function`` on a new handle (replacing any earlier one)."""
    return model.replace(options={**model.options, "sampler_cfg_function": function})


def with_post_cfg_function(model: Any, function: Any) -> Any:
    """ComfyUI's ``set_model_sampler_post_cfg_function``: appended after the handle's earlier ones."""
    post = tuple(model.options.get("sampler_post_cfg_function", ())) + (function,)
    return model.replace(options={**model.options, "sampler_post_cfg_function": post})


@dataclass(frozen=True)
class RescaleCFGFunction:
    """Rescaled CFG (Lin et al.) computed on the v-prediction of the outputs, as ComfyUI does."""

    multiplier: float

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        cond, uncond, cond_scale = args["cond"], args["uncond"], args["cond_scale"]
        sigma = args["sigma"]
        sigma = sigma.view(sigma.shape[:1] + (1,) * (cond.ndim - 1))
        x_orig = args["input"]
        x = x_orig / (sigma * sigma + 1.0)
        cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / (sigma)
        uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / (sigma)
        x_cfg = uncond + cond_scale * (cond - uncond)
        ro_pos = torch.std(cond, dim=(1, 2, 3), keepdim=True)
        ro_cfg = torch.std(x_cfg, dim=(1, 2, 3), keepdim=True)
        x_rescaled = x_cfg * (ro_pos / ro_cfg)
        x_final = self.multiplier * x_rescaled + (1.0 - self.multiplier) * x_cfg
        return x_orig - (x - x_final * sigma / (sigma * sigma + 1.0) ** 0.5)


def optimized_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s per-sample projection ``<v_cond, v_uncond> / ||v_uncond||^2``."""
    positive_flat = positive.reshape(positive.shape[0], -1)
    negative_flat = negative.reshape(negative.shape[0], -1)
    dot_product = torch.sum(positive_flat * negative_flat, dim=1, keepdim=True)
    squared_norm = torch.sum(negative_flat ** 2, dim=1, keepdim=True) + 1e-8
    return (dot_product / squared_norm).reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


@dataclass(frozen=True)
class CFGZeroStarFunction:
    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        guidance_scale = args["cond_scale"]
        x = args["input"]
        cond_p, uncond_p = args["cond_denoised"], args["uncond_denoised"]
        out = args["denoised"]
        alpha = optimized_scale(x - cond_p, x - uncond_p)
        return out + uncond_p * (alpha - 1.0) + guidance_scale * uncond_p * (1.0 - alpha)


@dataclass(frozen=True)
class CFGNormFunction:
    strength: float

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        cond_p = args["cond_denoised"]
        pred_text_ = args["denoised"]
        norm_full_cond = torch.norm(cond_p, dim=1, keepdim=True)
        norm_pred_text = torch.norm(pred_text_, dim=1, keepdim=True)
        scale = (norm_full_cond / (norm_pred_text + 1e-8)).clamp(min=0.0, max=1.0)
        return pred_text_ * scale * self.strength


@register
class RescaleCFG(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("RescaleCFG", category="advanced/model",
                      inputs=[Socket("model", "MODEL"),
                              Float("multiplier", default=0.7, min=0.0, max=1.0, step=0.01)],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, multiplier: float) -> tuple:
        return (with_cfg_function(model, RescaleCFGFunction(float(multiplier))),)


@register
class CFGZeroStar(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CFGZeroStar", category="advanced/guidance",
                      inputs=[Socket("model", "MODEL")],
                      outputs=[Output("MODEL", name="patched_model")])

    @classmethod
    def execute(cls, model: Any) -> tuple:
        return (with_post_cfg_function(model, CFGZeroStarFunction()),)


@register
class CFGNorm(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CFGNorm", category="advanced/guidance", experimental=True,
                      inputs=[Socket("model", "MODEL"),
                              Float("strength", default=1.0, min=0.0, max=100.0, step=0.01)],
                      outputs=[Output("MODEL", name="patched_model")])

    @classmethod
    def execute(cls, model: Any, strength: float) -> tuple:
        return (with_post_cfg_function(model, CFGNormFunction(float(strength))),)
