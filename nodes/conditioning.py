"""ComfyUI's text-conditioning nodes: CLIPSetLastLayer, CLIPTextEncode and the CONDITIONING editors
(Combine, Average, Concat, SetArea, SetAreaPercentage, SetAreaStrength, SetMask, ZeroOut).

A ``CONDITIONING`` is a list of ``[cond, options]`` pairs (see :mod:`nodes.runtime.model_types`).
Nodes never change the list or dicts they receive: they copy each options dict and set keys on the
copy, as ComfyUI's ``conditioning_set_values`` does. What the options mean at sampling time (areas,
strengths, masks) is the denoiser's business (:mod:`nodes.runtime.denoiser`).
"""
from __future__ import annotations

import logging
from typing import Any

from loom.nodes.kernel.schema import MAX_RESOLUTION, Combo, Float, Int, Node, Output, Schema, Socket, String, register

logger = logging.getLogger(__name__)


def set_values(conditioning: list, values: dict[str, Any]) -> list:
    """Copies of the entries with ``values`` set in their options."""
    return [[cond, {**options, **values}] for cond, options in conditioning]


@register
class CLIPSetLastLayer(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CLIPSetLastLayer", display_name="CLIP Set Last Layer", category="model/conditioning",
            inputs=[Socket("clip", "CLIP"),
                    Int("stop_at_clip_layer", default=-1, min=-24, max=-1, step=1, advanced=True)],
            outputs=[Output("CLIP")])

    @classmethod
    def execute(cls, clip: Any, stop_at_clip_layer: int) -> tuple:
        return (clip.replace(layer_idx=int(stop_at_clip_layer)),)


@register
class CLIPTextEncode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CLIPTextEncode", display_name="CLIP Text Encode (Prompt)", category="model/conditioning",
            description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide "
                        "the diffusion model towards generating specific images.",
            inputs=[String("text", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded."),
                    Socket("clip", "CLIP", tooltip="The CLIP model used for encoding the text.")],
            outputs=[Output("CONDITIONING", tooltip="A conditioning containing the embedded text used to guide "
                                                    "the diffusion model.")])

    @classmethod
    def execute(cls, text: str, clip: Any) -> tuple:
        from loom.nodes.runtime.text_encoding import encode_text

        return (encode_text(clip, text),)


@register
class ConditioningCombine(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningCombine", display_name="Conditioning (Combine)", category="model/conditioning/transform",
            inputs=[Socket("conditioning_1", "CONDITIONING"), Socket("conditioning_2", "CONDITIONING")],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning_1: Any, conditioning_2: Any) -> tuple:
        return (list(conditioning_1) + list(conditioning_2),)


@register
class ConditioningSetArea(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningSetArea", display_name="Conditioning (Set Area)", category="model/conditioning/transform",
            inputs=[Socket("conditioning", "CONDITIONING"),
                    Int("width", default=64, min=64, max=MAX_RESOLUTION, step=8),
                    Int("height", default=64, min=64, max=MAX_RESOLUTION, step=8),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, width: int, height: int, x: int, y: int, strength: float) -> tuple:
        # the area is kept in latent pixels: (height, width, y, x) / 8
        return (set_values(conditioning, {"area": (height // 8, width // 8, y // 8, x // 8),
                                          "strength": strength, "set_area_to_bounds": False}),)


@register
class ConditioningZeroOut(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningZeroOut", display_name="Conditioning Zero Out", category="model/conditioning/transform",
            inputs=[Socket("conditioning", "CONDITIONING")],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any) -> tuple:
        import torch

        out = []
        for cond, options in conditioning:
            options = dict(options)
            if options.get("pooled_output") is not None:
                options["pooled_output"] = torch.zeros_like(options["pooled_output"])
            out.append([torch.zeros_like(cond), options])
        return (out,)


def _first_entry(node: str, conditioning_from: list) -> Any:
    if not conditioning_from:
        raise ValueError(f"{node}: input 'conditioning_from' is an empty CONDITIONING")
    if len(conditioning_from) > 1:
        logger.warning("Warning: %s conditioning_from contains more than 1 cond, only the first one will actually "
                       "be applied to conditioning_to.", node)
    return conditioning_from[0]


@register
class ConditioningAverage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningAverage", display_name="Conditioning (Average)", category="model/conditioning/transform",
            inputs=[Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING"),
                    Float("conditioning_to_strength", default=1.0, min=0.0, max=1.0, step=0.01)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning_to: Any, conditioning_from: Any, conditioning_to_strength: float) -> tuple:
        """``to * s + from * (1 - s)`` per entry of ``conditioning_to``, with the first entry of
        ``conditioning_from`` cut or zero-padded to each one's token count; pooled outputs likewise."""
        import torch

        node = "ConditioningAverage"
        source, source_options = _first_entry(node, conditioning_from)
        strength = conditioning_to_strength
        pooled_from = source_options.get("pooled_output", None)
        out = []
        for target, options in conditioning_to:
            pooled_to = options.get("pooled_output", pooled_from)
            blended_from = source[:, :target.shape[1]]
            if blended_from.shape[1] < target.shape[1]:  # ComfyUI pads with one batch item of zeros
                padding = torch.zeros((1, target.shape[1] - blended_from.shape[1], target.shape[2]),
                                      device=blended_from.device)
                blended_from = torch.cat([blended_from, padding], dim=1)
            mixed = torch.mul(target, strength) + torch.mul(blended_from, 1.0 - strength)
            options = dict(options)
            if pooled_from is not None and pooled_to is not None:
                options["pooled_output"] = torch.mul(pooled_to, strength) + torch.mul(pooled_from, 1.0 - strength)
            elif pooled_from is not None:
                options["pooled_output"] = pooled_from
            out.append([mixed, options])
        return (out,)


@register
class ConditioningConcat(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningConcat", display_name="Conditioning (Concat)", category="model/conditioning/transform",
            inputs=[Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING")],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning_to: Any, conditioning_from: Any) -> tuple:
        """The first entry of ``conditioning_from`` appended to each entry's tokens; options are ``to``'s."""
        import torch

        node = "ConditioningConcat"
        source, _ = _first_entry(node, conditioning_from)
        return ([[torch.cat((target, source), 1), dict(options)] for target, options in conditioning_to],)


@register
class ConditioningSetAreaPercentage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        fraction = dict(min=0, max=1.0, step=0.01)
        return Schema(
            "ConditioningSetAreaPercentage", display_name="Conditioning (Set Area with Percentage)",
            category="model/conditioning/transform",
            inputs=[Socket("conditioning", "CONDITIONING"),
                    Float("width", default=1.0, **fraction), Float("height", default=1.0, **fraction),
                    Float("x", default=0, **fraction), Float("y", default=0, **fraction),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, width: float, height: float, x: float, y: float,
                strength: float) -> tuple:
        # fractions of the latent, resolved when sampling starts: ("percentage", h, w, y, x)
        return (set_values(conditioning, {"area": ("percentage", height, width, y, x), "strength": strength,
                                          "set_area_to_bounds": False}),)


@register
class ConditioningSetAreaStrength(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningSetAreaStrength", display_name="Conditioning (Set Area Strength)",
            category="model/conditioning/transform",
            inputs=[Socket("conditioning", "CONDITIONING"),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, strength: float) -> tuple:
        return (set_values(conditioning, {"strength": strength}),)


@register
class ConditioningSetTimestepRange(Node):
    """ComfyUI's node: the entries act only from ``start`` to ``end`` of the sampling (fractions; the model's
    sampling turns them into sigmas when it runs, so flow models get their own ranges)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningSetTimestepRange", category="model/conditioning/transform",
            inputs=[Socket("conditioning", "CONDITIONING"),
                    Float("start", default=0.0, min=0.0, max=1.0, step=0.001),
                    Float("end", default=1.0, min=0.0, max=1.0, step=0.001)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, start: float, end: float) -> tuple:
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


@register
class ConditioningSetMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningSetMask", display_name="Conditioning (Set Mask)", category="model/conditioning/transform",
            inputs=[Socket("conditioning", "CONDITIONING"), Socket("mask", "MASK"),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01),
                    Combo("set_cond_area", options_source=("default", "mask bounds"))],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, mask: Any, strength: float, set_cond_area: str) -> tuple:
        """The mask weights the entry per pixel (times ``strength``, stored as ``mask_strength``);
        ``mask bounds`` also evaluates the entry only on the mask's bounding box."""
        if mask.ndim not in (2, 3):
            raise ValueError(f"ConditioningSetMask: input 'mask' has {mask.ndim} dimensions; it takes a "
                             "[batch, height, width] or [height, width] MASK")
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        return (set_values(conditioning, {"mask": mask, "set_area_to_bounds": set_cond_area != "default",
                                          "mask_strength": strength}),)
