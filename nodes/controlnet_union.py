"""ComfyUI's SetUnionControlNetType: which kind of control image a union ControlNet is given.

The ``type`` combo is "auto" and then ComfyUI's ``UNION_CONTROLNET_TYPES`` in its order; the node returns a copy
of the CONTROL_NET (the same network) carrying the type's number, "auto" none. Union ControlNets (SDXL
ControlNet++ Union / ProMax, FLUX union) use it (:mod:`nodes.runtime.controlnet_union`); other ControlNets
ignore it, as in ComfyUI.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from loom.nodes.kernel.schema import Combo, Node, Output, Schema, Socket, register

UNION_CONTROLNET_TYPES: dict[str, int] = {  # ComfyUI's comfy/cldm/control_types.py, in its order
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}


@register
class SetUnionControlNetType(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SetUnionControlNetType", category="model/conditioning/controlnet",
            inputs=[Socket("control_net", "CONTROL_NET"),
                    Combo("type", options_source=("auto", *UNION_CONTROLNET_TYPES))],
            outputs=[Output("CONTROL_NET")])

    @classmethod
    def execute(cls, control_net: Any, type: str) -> tuple:  # noqa: A002 - ComfyUI's input name
        from loom.nodes.runtime.controlnet import ControlNetError
        from loom.nodes.runtime.controlnet_union import check_type

        number = UNION_CONTROLNET_TYPES.get(type, -1)
        control_type = (number,) if number >= 0 else ()
        try:
            check_type(control_net, control_type)
        except ControlNetError as exc:
            raise ValueError(f"SetUnionControlNetType: input 'type': '{type}' is type {number}; {exc}") from None
        return (dataclasses.replace(control_net, control_type=control_type),)
