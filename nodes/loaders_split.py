"""Loading models in parts, and the FLUX conditioning nodes: UNETLoader, CLIPLoader, DualCLIPLoader,
TripleCLIPLoader, FluxGuidance and CLIPTextEncodeFlux, with ComfyUI's names, inputs and options.

The CLIP types ComfyUI lists that Loom cannot build yet (``stable_cascade``, ``mochi``, ``hidream``, ...) are
offered as in ComfyUI (the same ``/object_info``), and a prompt that picks one fails validation with a message
naming the model family Loom lacks and the types it supports (the node, run anyway, says the same). What each type builds is in :mod:`nodes.runtime.split_loading`; VAELoader (in
:mod:`nodes.loaders`) reads 16-channel VAEs (FLUX ``ae.safetensors``, SD3) as well.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.kernel import services
from loom.nodes.kernel.schema import Combo, Float, Node, Output, Schema, Socket, String, register
from loom.nodes.loader_inputs import load_error, model_fingerprint, removed_error, resolve_model
from loom.nodes.runtime.model_files import describe_checkpoint

services.register_model_describer("diffusion_models", describe_checkpoint)

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
DEVICES = ("default", "cpu")
TYPE_FAMILIES = {"stable_cascade": "Stable Cascade", "stable_audio": "Stable Audio", "mochi": "Mochi",
                 "ltxv": "LTX-Video", "pixart": "PixArt", "cosmos": "Cosmos", "lumina2": "Lumina 2", "wan": "Wan",
                 "hidream": "HiDream", "chroma": "Chroma", "ace": "ACE-Step", "omnigen2": "OmniGen2",
                 "qwen_image": "Qwen-Image", "hunyuan_image": "HunyuanImage", "hunyuan_video": "HunyuanVideo"}
"""The model family each text-encoder type of ComfyUI's lists is for, where Loom lacks it."""


def check_clip_type(clip_type: str) -> bool | str:
    """``validate_inputs`` of the CLIP loaders: True, or why Loom cannot build a text encoder of this type."""
    from loom.nodes.runtime.split_loading import SUPPORTED_CLIP_TYPES

    if clip_type in SUPPORTED_CLIP_TYPES:
        return True
    family = TYPE_FAMILIES.get(clip_type, clip_type)
    return (f"type {clip_type!r} is the text encoder of {family}, a model family Loom does not support yet "
            f"(supported types: {', '.join(SUPPORTED_CLIP_TYPES)})")

CLIP_LOADER_DESCRIPTION = (
    "[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\nstable_audio: "
    "t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n hidream: llama-3.1 "
    "(Recommend) or t5\nomnigen2: qwen vl 2.5 3B")
DUAL_CLIP_LOADER_DESCRIPTION = (
    "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\nhidream: "
    "at least one of t5 or llama, recommended t5 and llama\nhunyuan_image: qwen2.5vl 7b and byt5 small")
TRIPLE_CLIP_LOADER_DESCRIPTION = "[Recipes]\n\nsd3: clip-l, clip-g, t5"


def _clip_fingerprint(**names: Any) -> Any:
    return tuple(model_fingerprint("clip", name) for key, name in sorted(names.items())
                 if key.startswith("clip_name"))


def _load_clips(node: str, names: dict[str, str], clip_type: str, device: str) -> Any:
    from loom.nodes.runtime.checkpoint import CheckpointError
    from loom.nodes.runtime.split_loading import SplitLoadError, load_clip

    paths = [resolve_model(node, key, "clip", name) for key, name in names.items()]
    try:
        return load_clip(node, paths, clip_type, device="cpu" if device == "cpu" else None)
    except SplitLoadError as exc:
        raise ValueError(str(exc)) from None
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        for (key, name), path in zip(names.items(), paths):
            if not path.exists():
                raise removed_error(node, key, "clip", name) from None
        inputs = ", ".join(f"'{key}'" for key in names)
        raise ValueError(f"{node}: inputs {inputs}: could not load "
                         f"{', '.join(repr(n) for n in names.values())}: {exc}") from None


@register
class UNETLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "UNETLoader", display_name="Load Diffusion Model", category="advanced/loaders",
            inputs=[Combo("unet_name", folder="diffusion_models"),
                    Combo("weight_dtype", options_source=WEIGHT_DTYPES)],
            outputs=[Output("MODEL")])

    @classmethod
    def fingerprint(cls, unet_name: str = "", **_: Any) -> Any:
        return model_fingerprint("diffusion_models", unet_name)

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str) -> tuple:
        from loom.nodes.runtime.checkpoint import CheckpointError
        from loom.nodes.runtime.flux_layout import FluxLoadError
        from loom.nodes.runtime.split_loading import SplitLoadError, load_diffusion_model

        path = resolve_model("UNETLoader", "unet_name", "diffusion_models", unet_name)
        try:
            return (load_diffusion_model(path, weight_dtype),)
        except (FileNotFoundError, CheckpointError, FluxLoadError, SplitLoadError) as exc:
            if not path.exists():
                raise removed_error("UNETLoader", "unet_name", "diffusion_models", unet_name) from None
            if isinstance(exc, FileNotFoundError):
                raise
            raise load_error("UNETLoader", "unet_name", unet_name, exc) from None


@register
class CLIPLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CLIPLoader", display_name="Load CLIP", category="advanced/loaders",
            description=CLIP_LOADER_DESCRIPTION,
            inputs=[Combo("clip_name", folder="clip"),
                    Combo("type", options_source=CLIP_TYPES),
                    Combo("device", options_source=DEVICES, optional=True, advanced=True)],
            outputs=[Output("CLIP")])

    @classmethod
    def fingerprint(cls, **inputs: Any) -> Any:
        return _clip_fingerprint(**inputs)

    @classmethod
    def validate_inputs(cls, type: str) -> bool | str:
        return check_clip_type(type)

    @classmethod
    def execute(cls, clip_name: str, type: str = "stable_diffusion", device: str = "default") -> tuple:
        return (_load_clips("CLIPLoader", {"clip_name": clip_name}, type, device),)


@register
class DualCLIPLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "DualCLIPLoader", category="advanced/loaders", description=DUAL_CLIP_LOADER_DESCRIPTION,
            inputs=[Combo("clip_name1", folder="clip"),
                    Combo("clip_name2", folder="clip"),
                    Combo("type", options_source=DUAL_CLIP_TYPES),
                    Combo("device", options_source=DEVICES, optional=True, advanced=True)],
            outputs=[Output("CLIP")])

    @classmethod
    def fingerprint(cls, **inputs: Any) -> Any:
        return _clip_fingerprint(**inputs)

    @classmethod
    def validate_inputs(cls, type: str) -> bool | str:
        return check_clip_type(type)

    @classmethod
    def execute(cls, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple:
        return (_load_clips("DualCLIPLoader", {"clip_name1": clip_name1, "clip_name2": clip_name2}, type, device),)


@register
class TripleCLIPLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "TripleCLIPLoader", category="advanced/loaders", description=TRIPLE_CLIP_LOADER_DESCRIPTION,
            inputs=[Combo("clip_name1", folder="clip"),
                    Combo("clip_name2", folder="clip"),
                    Combo("clip_name3", folder="clip")],
            outputs=[Output("CLIP")])

    @classmethod
    def fingerprint(cls, **inputs: Any) -> Any:
        return _clip_fingerprint(**inputs)

    @classmethod
    def execute(cls, clip_name1: str, clip_name2: str, clip_name3: str) -> tuple:
        names = {"clip_name1": clip_name1, "clip_name2": clip_name2, "clip_name3": clip_name3}
        return (_load_clips("TripleCLIPLoader", names, "sd3", "default"),)


def set_guidance(conditioning: list, guidance: float | None) -> list:
    """ComfyUI's ``conditioning_set_values(conditioning, {"guidance": guidance})``: new entries, same tensors."""
    return [[cond, {**options, "guidance": guidance}] for cond, options in conditioning]


@register
class FluxGuidance(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "FluxGuidance", category="advanced/conditioning/flux",
            inputs=[Socket("conditioning", "CONDITIONING"),
                    Float("guidance", default=3.5, min=0.0, max=100.0, step=0.1)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: list, guidance: float) -> tuple:
        return (set_guidance(conditioning, float(guidance)),)


@register
class CLIPTextEncodeFlux(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CLIPTextEncodeFlux", category="advanced/conditioning/flux",
            inputs=[Socket("clip", "CLIP"),
                    String("clip_l", multiline=True, dynamic_prompts=True),
                    String("t5xxl", multiline=True, dynamic_prompts=True),
                    Float("guidance", default=3.5, min=0.0, max=100.0, step=0.1)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, clip: Any, clip_l: str, t5xxl: str, guidance: float) -> tuple:
        from loom.nodes.runtime.text_encoding import encode_tokens_extra, tokenize_for

        if "t5xxl" not in clip.encoders:
            raise ValueError(f"CLIPTextEncodeFlux: input 'clip' has no T5-XXL text encoder (it is a {clip.family} "
                             "CLIP); load CLIP-L and T5-XXL with DualCLIPLoader type flux")
        tokens = tokenize_for(clip, clip_l)
        tokens["t5xxl"] = tokenize_for(clip, t5xxl)["t5xxl"]
        cond, pooled, extra = encode_tokens_extra(clip, tokens)
        return ([[cond, {"pooled_output": pooled, **extra, "guidance": float(guidance)}]],)
