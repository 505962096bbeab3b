"""ComfyUI's HypernetworkLoader (``comfy_extras/nodes_hypernetwork.py``): MODEL + a file of the
``hypernetworks`` model folder + strength → a MODEL whose attention key/value inputs the hypernetwork
reworks (:mod:`nodes.runtime.hypernetwork`), on self- and cross-attention alike (ComfyUI sets the one patch
as both ``attn1_patch`` and ``attn2_patch``).

As in ComfyUI the patch is added at any strength (0 leaves every input exactly as it was) and only a UNet's
attention reads it: SD3/FLUX networks never call ComfyUI's attention patches, so there it changes nothing.
Where ComfyUI logs an unsupported activation and returns the model unpatched, Loom raises an error naming
the node and input, as it does for a refused pickle and a file that is not laid out as a hypernetwork.
Category: mainline ComfyUI's model/... scheme (its ``loaders`` became ``model/loaders``).
"""
from __future__ import annotations

from typing import Any

from loom.nodes.kernel.schema import Combo, Float, Node, Output, Schema, Socket, register
from loom.nodes.loader_inputs import model_fingerprint, resolve_model

NODE = "HypernetworkLoader"
FOLDER = "hypernetworks"


@register
class HypernetworkLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(NODE, category="model/loaders",
                      inputs=[Socket("model", "MODEL"),
                              Combo("hypernetwork_name", folder=FOLDER),
                              Float("strength", default=1.0, min=-10.0, max=10.0, step=0.01)],
                      outputs=[Output("MODEL")])

    @classmethod
    def fingerprint(cls, hypernetwork_name: str = "", **_: Any) -> Any:
        return model_fingerprint(FOLDER, hypernetwork_name)

    @classmethod
    def execute(cls, model: Any, hypernetwork_name: str, strength: float) -> tuple:
        from loom.nodes.runtime.hypernetwork import HypernetworkError, load_hypernetwork
        from loom.nodes.runtime.unet_patches import ATTN1_KV_PATCH, ATTN2_KV_PATCH

        strength = cls.linked_float("strength", strength)
        path = resolve_model(NODE, "hypernetwork_name", FOLDER, hypernetwork_name)
        try:
            patch = load_hypernetwork(path, float(strength))
        except HypernetworkError as exc:
            raise ValueError(f"{NODE}: input 'hypernetwork_name': {exc}") from None
        options = dict(model.options)
        for key in (ATTN1_KV_PATCH, ATTN2_KV_PATCH):
            options[key] = tuple(options.get(key, ())) + (patch,)
        return (model.replace(options=options),)


__all__ = ["HypernetworkLoader"]
