"""ComfyUI's DiffControlNetLoader ("Load ControlNet Model (diff)"): a ControlNet file loaded against a MODEL.

A diff ControlNet stores its weights as differences to its base model's UNet; the loader adds the MODEL's
UNet weights (patches applied) to them (:mod:`nodes.runtime.controlnet_diff`). Any other ControlNet file loads
as with ControlNetLoader, the MODEL unused, as in ComfyUI.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.kernel.schema import Combo, Node, Output, Schema, Socket, register
from loom.nodes.loader_inputs import load_error, model_fingerprint, resolve_model


@register
class DiffControlNetLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "DiffControlNetLoader", display_name="Load ControlNet Model (diff)", category="model/loaders",
            inputs=[Socket("model", "MODEL"), Combo("control_net_name", folder="controlnet")],
            outputs=[Output("CONTROL_NET")])

    @classmethod
    def fingerprint(cls, control_net_name: str = "", **_: Any) -> Any:
        return model_fingerprint("controlnet", control_net_name)

    @classmethod
    def execute(cls, model: Any, control_net_name: str) -> tuple:
        from loom.nodes.runtime.controlnet import ControlNetError, load_controlnet
        path = resolve_model("DiffControlNetLoader", "control_net_name", "controlnet", control_net_name)
        try:
            return (load_controlnet(path, model=model),)
        except ControlNetError as exc:
            raise load_error("DiffControlNetLoader", "control_net_name", control_net_name, exc) from None
