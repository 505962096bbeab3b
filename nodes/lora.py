"""ComfyUI's LoRA nodes: LoraLoader (model + CLIP) and LoraLoaderModelOnly.

Each node returns new MODEL/CLIP handles whose ``patches`` carry the LoRA (see
:mod:`nodes.runtime.lora`); the handles it received, and the models behind them, are never changed.
Strengths of 0 pass the handle through untouched, so the result is bit-identical to no LoRA.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.loader_inputs import model_fingerprint, resolve_model
from loom.nodes.kernel.schema import Combo, Float, Node, Output, Schema, Socket, register

_STRENGTH = dict(default=1.0, min=-100.0, max=100.0, step=0.01)


def _load(node: str, lora_name: str):
    from loom.nodes.runtime.lora import LoraError, load_lora_file

    path = resolve_model(node, "lora_name", "loras", lora_name)
    try:
        return load_lora_file(path)
    except LoraError as exc:
        raise ValueError(f"{node}: input 'lora_name': {exc}") from None


def apply_lora(node: str, lora_name: str, model: Any, clip: Any | None, strength_model: float,
               strength_clip: float) -> tuple[Any, Any]:
    """``(model, clip)`` handles with the LoRA file ``lora_name`` added at the given strengths."""
    from loom.nodes.runtime.lora import LoraError, LoraPatch, with_lora

    lora = _load(node, lora_name)
    try:
        unet_updates, te_updates = lora.for_models(model, clip)
    except LoraError as exc:
        raise ValueError(f"{node}: input 'lora_name': {exc}") from None
    if strength_model != 0 and unet_updates:
        model = model.replace(patches=with_lora(model.patches, LoraPatch(lora_name, float(strength_model),
                                                                          unet_updates)))
    if clip is not None and strength_clip != 0 and te_updates:
        clip = clip.replace(patches=with_lora(clip.patches, LoraPatch(lora_name, float(strength_clip), te_updates)))
    return model, clip


@register
class LoraLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LoraLoader", display_name="Load LoRA (Model and CLIP)", category="model/loaders",
            description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
                        "denoised such as applying styles. Multiple LoRA nodes can be linked together.",
            inputs=[Socket("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
                    Socket("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to.",
                           takes_none=True),  # a checkpoint without a text encoder: the model still gets the LoRA
                    Combo("lora_name", folder="loras", tooltip="The name of the LoRA."),
                    Float("strength_model", **_STRENGTH,
                          tooltip="How strongly to modify the diffusion model. This value can be negative."),
                    Float("strength_clip", **_STRENGTH,
                          tooltip="How strongly to modify the CLIP model. This value can be negative.")],
            outputs=[Output("MODEL", tooltip="The modified diffusion model."),
                     Output("CLIP", tooltip="The modified CLIP model.")])

    @classmethod
    def fingerprint(cls, lora_name: str = "", **_: Any) -> Any:
        return model_fingerprint("loras", lora_name)

    @classmethod
    def execute(cls, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float) -> tuple:
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        return apply_lora("LoraLoader", lora_name, model, clip, strength_model, strength_clip)


@register
class LoraLoaderModelOnly(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LoraLoaderModelOnly", display_name="Load LoRA", category="model/loaders",
            description="LoRAs are used to modify diffusion models, altering the way in which latents are denoised "
                        "such as applying styles. Multiple LoRA nodes can be linked together.",
            inputs=[Socket("model", "MODEL"),
                    Combo("lora_name", folder="loras"),
                    Float("strength_model", **_STRENGTH)],
            outputs=[Output("MODEL")])

    @classmethod
    def fingerprint(cls, lora_name: str = "", **_: Any) -> Any:
        return model_fingerprint("loras", lora_name)

    @classmethod
    def execute(cls, model: Any, lora_name: str, strength_model: float) -> tuple:
        if strength_model == 0:
            return (model,)
        model, _clip = apply_lora("LoraLoaderModelOnly", lora_name, model, None, strength_model, 0.0)
        return (model,)
