"""ComfyUI's ControlNet nodes: ControlNetLoader, ControlNetApply (old), ControlNetApplyAdvanced, ControlNetApplySD3
(the same with a required VAE), and Canny.

Applying a ControlNet runs nothing: it stores a :class:`nodes.runtime.controlnet.ControlApplication`
(hint image, strength, start/end percent, the ControlNet already on that entry) under ``control`` in a
copy of each conditioning entry's options; the denoiser asks it for residuals at every model call.
Like ComfyUI, ControlNetApplyAdvanced gives the positive and negative entries that had the same previous
ControlNet one shared application, so they still run as one batch; strength 0 returns the inputs as they were.
SD3 and FLUX ControlNets take their image as VAE latents, so they need the ``vae`` input (UNet ControlNets
ignore it, as ComfyUI's).
"""
from __future__ import annotations

from typing import Any

from loom.nodes.loader_inputs import load_error, model_fingerprint, resolve_model
from loom.nodes.kernel.schema import Combo, Float, Node, Output, Schema, Socket, register


def _rgb(node: str, image: Any) -> Any:
    """The image without its alpha channel; a hint has 1 (grey), 3 or 4 channels."""
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{node}: input 'image' has {image.shape[-1]} channels; a hint image has 1, 3 or 4")
    return image[..., :3] if image.shape[-1] == 4 else image


def _check_vae(node: str, control_net: Any, vae: Any) -> Any:
    """SD3/FLUX ControlNets need a VAE whose latents their hint embedder takes; UNet ones ignore it."""
    from loom.nodes.runtime.controlnet_dit import KIND_NAMES

    if control_net.kind == "unet":
        return None
    what = KIND_NAMES[control_net.kind]
    if vae is None:
        raise ValueError(f"{node}: input 'vae' is missing: this {what} ControlNet encodes its image with the "
                         "model's VAE; connect the VAE")
    config = control_net.model.config
    channels = config.in_channels // 4 if control_net.kind == "flux" else \
        config.in_channels + config.extra_conditioning_channels
    if vae.latent_format.channels not in (channels, channels - 1):
        raise ValueError(f"{node}: input 'vae' gives {vae.latent_format.channels}-channel latents; this {what} "
                         f"ControlNet takes {channels}-channel ones (connect the {what} model's VAE)")
    return vae


def _hint(image: Any) -> Any:
    hint = image.movedim(-1, 1)
    return hint.repeat(1, 3, 1, 1) if hint.shape[1] == 1 else hint


@register
class ControlNetLoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ControlNetLoader", display_name="Load ControlNet Model", category="model/loaders",
            inputs=[Combo("control_net_name", folder="controlnet")],
            outputs=[Output("CONTROL_NET")])

    @classmethod
    def fingerprint(cls, control_net_name: str = "", **_: Any) -> Any:
        return model_fingerprint("controlnet", control_net_name)

    @classmethod
    def execute(cls, control_net_name: str) -> tuple:
        from loom.nodes.runtime.controlnet import ControlNetError, load_controlnet

        path = resolve_model("ControlNetLoader", "control_net_name", "controlnet", control_net_name)
        try:
            return (load_controlnet(path),)
        except ControlNetError as exc:
            raise load_error("ControlNetLoader", "control_net_name", control_net_name, exc) from None


@register
class ControlNetApply(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ControlNetApply", display_name="Apply ControlNet (DEPRECATED)", category="model/conditioning/controlnet",
            deprecated=True,
            inputs=[Socket("conditioning", "CONDITIONING"), Socket("control_net", "CONTROL_NET"),
                    Socket("image", "IMAGE"),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01)],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, conditioning: Any, control_net: Any, image: Any, strength: float) -> tuple:
        from loom.nodes.runtime.controlnet import ControlApplication

        image = _rgb("ControlNetApply", image)
        if control_net.kind != "unet":
            raise ValueError("ControlNetApply: input 'control_net' is an SD3/FLUX ControlNet, which needs a VAE; use "
                             "Apply ControlNet (ControlNetApplyAdvanced) with its vae input")
        if strength == 0:
            return (conditioning,)
        hint = _hint(image)
        out = []
        for cond, options in conditioning:
            applied = ControlApplication(control_net, hint, strength, previous=options.get("control"))
            out.append([cond, {**options, "control": applied, "control_apply_to_uncond": True}])
        return (out,)


@register
class ControlNetApplyAdvanced(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ControlNetApplyAdvanced", display_name="Apply ControlNet", category="model/conditioning/controlnet",
            inputs=[Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                    Socket("control_net", "CONTROL_NET"), Socket("image", "IMAGE"),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01),
                    Float("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                    Float("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
                    Socket("vae", "VAE", optional=True)],
            outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative")])

    @classmethod
    def execute(cls, positive: Any, negative: Any, control_net: Any, image: Any, strength: float,
                start_percent: float, end_percent: float, vae: Any = None) -> tuple:
        return _apply_advanced("ControlNetApplyAdvanced", positive, negative, control_net, image, strength,
                               start_percent, end_percent, vae)


def _apply_advanced(node: str, positive: Any, negative: Any, control_net: Any, image: Any, strength: float,
                    start_percent: float, end_percent: float, vae: Any) -> tuple:
    from loom.nodes.runtime.controlnet import ControlApplication

    image = _rgb(node, image)
    vae = _check_vae(node, control_net, vae)
    if strength == 0:
        return (positive, negative)
    hint = _hint(image)
    shared: dict[int, ControlApplication] = {}  # one application per previous ControlNet

    def apply(conditioning: list) -> list:
        out = []
        for cond, options in conditioning:
            previous = options.get("control")
            if id(previous) not in shared:
                shared[id(previous)] = ControlApplication(control_net, hint, strength, start_percent,
                                                          end_percent, previous=previous, vae=vae)
            out.append([cond, {**options, "control": shared[id(previous)], "control_apply_to_uncond": False}])
        return out

    return (apply(positive), apply(negative))


@register
class ControlNetApplySD3(ControlNetApplyAdvanced):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ControlNetApplySD3", display_name="Apply Controlnet with VAE", category="model/conditioning/controlnet",
            deprecated=True,
            inputs=[Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                    Socket("control_net", "CONTROL_NET"), Socket("vae", "VAE"), Socket("image", "IMAGE"),
                    Float("strength", default=1.0, min=0.0, max=10.0, step=0.01),
                    Float("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                    Float("end_percent", default=1.0, min=0.0, max=1.0, step=0.001)],
            outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative")])

    @classmethod
    def execute(cls, positive: Any, negative: Any, control_net: Any, vae: Any, image: Any, strength: float,
                start_percent: float, end_percent: float) -> tuple:
        return _apply_advanced("ControlNetApplySD3", positive, negative, control_net, image, strength,
                               start_percent, end_percent, vae)


@register
class Canny(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "Canny", display_name="Canny", category="image/preprocessors",
            inputs=[Socket("image", "IMAGE"),
                    Float("low_threshold", default=0.4, min=0.01, max=0.99, step=0.01),
                    Float("high_threshold", default=0.8, min=0.01, max=0.99, step=0.01)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: Any, low_threshold: float, high_threshold: float) -> tuple:
        from loom.nodes.runtime.canny import canny

        image = _rgb("Canny", image)
        if low_threshold > high_threshold:
            raise ValueError(f"Canny: input 'low_threshold' ({low_threshold}) is above 'high_threshold' "
                             f"({high_threshold})")
        edges = canny(image.movedim(-1, 1).float(), low_threshold, high_threshold)
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)
