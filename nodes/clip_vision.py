"""ComfyUI's image-prompt nodes: CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning, StyleModelLoader,
StyleModelApply (FLUX.1 Redux) and unCLIPCheckpointLoader.

The models are in :mod:`nodes.runtime.clip_vision` and :mod:`nodes.runtime.style_model`. unCLIPConditioning
only records ``unclip_conditioning`` entries on the conditioning, as ComfyUI does; a model that is not an
unCLIP model ignores them (ComfyUI's SD1/SDXL models do too). SD2.1 unCLIP checkpoints themselves are not
supported yet: their UNet takes the noise-augmented image embedding as an extra input, which Loom's SD2
model does not have, so unCLIPCheckpointLoader says so when it meets one.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.kernel import services
from loom.nodes.kernel.schema import Combo, Float, Node, Output, Schema, Socket, register
from loom.nodes.loader_inputs import load_error, model_fingerprint, removed_error, resolve_model
from loom.nodes.runtime.model_files import describe_clip_vision

services.register_model_describer("clip_vision", describe_clip_vision)

UNCLIP_MARKERS = ("embedder.model.visual.", "noise_augmentor.")


@register
class CLIPVisionLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CLIPVisionLoader", display_name="Load CLIP Vision", category="model/loaders",
                      inputs=[Combo("clip_name", folder="clip_vision")],
                      outputs=[Output("CLIP_VISION")])

    @classmethod
    def fingerprint(cls, clip_name: str = "", **_: Any) -> Any:
        return model_fingerprint("clip_vision", clip_name)

    @classmethod
    def execute(cls, clip_name: str) -> tuple:
        from loom.nodes.runtime.checkpoint import CheckpointError
        from loom.nodes.runtime.clip_vision import load_clip_vision

        path = resolve_model("CLIPVisionLoader", "clip_name", "clip_vision", clip_name)
        try:
            return (load_clip_vision(path),)
        except (FileNotFoundError, CheckpointError) as exc:  # ClipVisionError is a ValueError like CheckpointError
            if not path.exists():
                raise removed_error("CLIPVisionLoader", "clip_name", "clip_vision", clip_name) from None
            if isinstance(exc, FileNotFoundError):
                raise
            raise load_error("CLIPVisionLoader", "clip_name", clip_name, exc) from None
        except ValueError as exc:
            raise load_error("CLIPVisionLoader", "clip_name", clip_name, exc) from None


@register
class CLIPVisionEncode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CLIPVisionEncode", display_name="CLIP Vision Encode", category="model/conditioning",
                      inputs=[Socket("clip_vision", "CLIP_VISION"), Socket("image", "IMAGE"),
                              Combo("crop", options_source=("center", "none"))],
                      outputs=[Output("CLIP_VISION_OUTPUT")])

    @classmethod
    def execute(cls, clip_vision: Any, image: Any, crop: str) -> tuple:
        return (clip_vision.encode_image(image, crop=crop == "center"),)


@register
class unCLIPConditioning(Node):  # noqa: N801 (ComfyUI's name)
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("unCLIPConditioning", category="model/conditioning",
                      inputs=[Socket("conditioning", "CONDITIONING"),
                              Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
                              Float("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
                              Float("noise_augmentation", default=0.0, min=0.0, max=1.0, step=0.01)],
                      outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, clip_vision_output: Any, strength: float, noise_augmentation: float) -> tuple:
        if strength == 0:
            return (conditioning,)
        entry = {"clip_vision_output": clip_vision_output, "strength": strength,
                 "noise_augmentation": noise_augmentation}
        out = []
        for cond, options in conditioning:
            options = options.copy()
            previous = options.get("unclip_conditioning", None)
            options["unclip_conditioning"] = [entry] if previous is None else previous + [entry]
            out.append([cond, options])
        return (out,)


@register
class StyleModelLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("StyleModelLoader", display_name="Load Style Model", category="model/loaders",
                      inputs=[Combo("style_model_name", folder="style_models")],
                      outputs=[Output("STYLE_MODEL")])

    @classmethod
    def fingerprint(cls, style_model_name: str = "", **_: Any) -> Any:
        return model_fingerprint("style_models", style_model_name)

    @classmethod
    def execute(cls, style_model_name: str) -> tuple:
        from loom.nodes.runtime.style_model import load_style_model

        path = resolve_model("StyleModelLoader", "style_model_name", "style_models", style_model_name)
        try:
            return (load_style_model(path),)
        except FileNotFoundError:
            if not path.exists():
                raise removed_error("StyleModelLoader", "style_model_name", "style_models", style_model_name) from None
            raise
        except ValueError as exc:
            raise load_error("StyleModelLoader", "style_model_name", style_model_name, exc) from None


@register
class StyleModelApply(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("StyleModelApply", display_name="Apply Style Model", category="model/conditioning",
                      inputs=[Socket("conditioning", "CONDITIONING"), Socket("style_model", "STYLE_MODEL"),
                              Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
                              Float("strength", default=1.0, min=0.0, max=10.0, step=0.001),
                              Combo("strength_type", options_source=("multiply", "attn_bias"))],
                      outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, style_model: Any, clip_vision_output: Any, strength: float,
                strength_type: str) -> tuple:
        from loom.nodes.runtime.style_model import StyleModelError, apply_style

        node = "StyleModelApply"
        try:
            tokens = style_model.get_cond(clip_vision_output)
            return (apply_style(conditioning, tokens, strength, strength_type),)
        except StyleModelError as exc:
            raise ValueError(f"{node}: {exc}") from None


@register
class unCLIPCheckpointLoader(Node):  # noqa: N801 (ComfyUI's name)
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("unCLIPCheckpointLoader", display_name="Load unCLIP Checkpoint", category="model/loaders",
                      inputs=[Combo("ckpt_name", folder="checkpoints")],
                      outputs=[Output("MODEL"), Output("CLIP"), Output("VAE"), Output("CLIP_VISION")])

    @classmethod
    def fingerprint(cls, ckpt_name: str = "", **_: Any) -> Any:
        return model_fingerprint("checkpoints", ckpt_name)

    @classmethod
    def execute(cls, ckpt_name: str) -> tuple:
        from loom.nodes.runtime.checkpoint import CheckpointError, StateDictFile, load_checkpoint
        from loom.nodes.runtime.families import UnknownModelError

        node, name = "unCLIPCheckpointLoader", "ckpt_name"
        path = resolve_model(node, name, "checkpoints", ckpt_name)
        try:
            with StateDictFile(path) as file:
                markers = [m for m in UNCLIP_MARKERS if any(k.startswith(m) for k in file.shapes)]
            if markers:
                raise CheckpointError(
                    f"it is an SD2.1 unCLIP checkpoint ({', '.join(m + '*' for m in markers)}), which Loom cannot "
                    "run yet: its UNet takes the noise-augmented CLIP image embedding as an extra input "
                    "(label_emb), which Loom's SD2 model does not have")
            # ComfyUI gives the CLIP vision model of the families that carry one (SD2.1 unCLIP, SVD,
            # Stable Zero123); for the others the fourth output is None
            model, clip, vae = load_checkpoint(path)
        except (FileNotFoundError, CheckpointError, UnknownModelError) as exc:
            if not path.exists():
                raise removed_error(node, name, "checkpoints", ckpt_name) from None
            if isinstance(exc, FileNotFoundError):
                raise
            raise load_error(node, name, ckpt_name, exc) from None
        return (model, clip, vae, None)
