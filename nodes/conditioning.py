"""ComfyUI's text-conditioning nodes: CLIPSetLastLayer, CLIPTextEncode and the CONDITIONING editors.

A ``CONDITIONING`` is a list of ``[cond, options]`` pairs (see :mod:`nodes.runtime.model_types`).
Nodes never change the list or dicts they receive: they copy each options dict and set keys on the
copy, as ComfyUI's ``conditioning_set_values`` does.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.schema import MAX_RESOLUTION, Float, Int, Node, Output, Schema, Socket, String, register


def _check_conditioning(node: str, name: str, value: Any) -> list:
    if not isinstance(value, (list, tuple)) or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in value):
        raise ValueError(f"{node}: input '{name}' is not a CONDITIONING (a list of [tensor, options] pairs)")
    return list(value)


def _check_clip(node: str, clip: Any) -> Any:
    from loom.nodes.runtime.model_types import TextEncoderModel

    if clip is None:
        raise ValueError(f"{node}: input 'clip' is invalid: None. If the clip is from a checkpoint loader node, "
                         "the checkpoint does not contain a valid clip or text encoder model.")
    if not isinstance(clip, TextEncoderModel):
        raise ValueError(f"{node}: input 'clip' is not a CLIP model (got {type(clip).__name__})")
    return clip


def set_values(conditioning: list, values: dict[str, Any]) -> list:
    """Copies of the entries with ``values`` set in their options."""
    return [[cond, {**options, **values}] for cond, options in conditioning]


@register
class CLIPSetLastLayer(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CLIPSetLastLayer", display_name="CLIP Set Last Layer", category="conditioning",
            inputs=[Socket("clip", "CLIP"),
                    Int("stop_at_clip_layer", default=-1, min=-24, max=-1, step=1)],
            outputs=[Output("CLIP")])

    @classmethod
    def execute(cls, clip: Any, stop_at_clip_layer: int) -> tuple:
        clip = _check_clip("CLIPSetLastLayer", clip)
        return (clip.replace(layer_idx=int(stop_at_clip_layer)),)


@register
class CLIPTextEncode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CLIPTextEncode", display_name="CLIP Text Encode (Prompt)", category="conditioning",
            description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide "
                        "the diffusion model towards generating specific images.",
            inputs=[String("text", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded."),
                    Socket("clip", "CLIP", tooltip="The CLIP model used for encoding the text.")],
            outputs=[Output("CONDITIONING", tooltip="A conditioning containing the embedded text used to guide "
                                                    "the diffusion model.")])

    @classmethod
    def execute(cls, text: str, clip: Any) -> tuple:
        from loom.nodes.runtime.text_encoding import encode_text

        clip = _check_clip("CLIPTextEncode", clip)
        return (encode_text(clip, text),)


@register
class ConditioningCombine(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningCombine", display_name="Conditioning (Combine)", category="conditioning",
            inputs=[Socket("conditioning_1", "CONDITIONING"), Socket("conditioning_2", "CONDITIONING")],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning_1: Any, conditioning_2: Any) -> tuple:
        first = _check_conditioning("ConditioningCombine", "conditioning_1", conditioning_1)
        second = _check_conditioning("ConditioningCombine", "conditioning_2", conditioning_2)
        return (first + second,)


@register
class ConditioningSetArea(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningSetArea", display_name="Conditioning (Set Area)", category="conditioning",
            inputs=[Socket("conditioning", "CONDITIONING"),
                    Int("width", default=64, min=64, max=MAX_RESOLUTION, step=8),
                    Int("height", default=64, min=64, max=MAX_RESOLUTION, step=8),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, width: int, height: int, x: int, y: int, strength: float) -> tuple:
        conditioning = _check_conditioning("ConditioningSetArea", "conditioning", conditioning)
        # the area is kept in latent pixels: (height, width, y, x) / 8
        return (set_values(conditioning, {"area": (height // 8, width // 8, y // 8, x // 8),
                                          "strength": strength, "set_area_to_bounds": False}),)


@register
class ConditioningZeroOut(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ConditioningZeroOut", display_name="ConditioningZeroOut", category="advanced/conditioning",
            inputs=[Socket("conditioning", "CONDITIONING")],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any) -> tuple:
        import torch

        conditioning = _check_conditioning("ConditioningZeroOut", "conditioning", conditioning)
        out = []
        for cond, options in conditioning:
            options = dict(options)
            if options.get("pooled_output") is not None:
                options["pooled_output"] = torch.zeros_like(options["pooled_output"])
            out.append([torch.zeros_like(cond), options])
        return (out,)
