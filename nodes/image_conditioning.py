"""Conditionings that carry an image for models with extra input channels: InstructPixToPixConditioning
(8-channel InstructPix2Pix UNets) and InpaintModelConditioning (9-channel inpainting UNets).

Both encode the image with the VAE and store it in each entry's options as ``concat_latent_image``
(InpaintModelConditioning also ``concat_mask``, the mask at the image's resolution); the denoiser appends
them to the UNet input (:func:`nodes.runtime.denoiser.concat_input`). A model without extra channels
ignores them, as in ComfyUI, so InpaintModelConditioning on a plain model is an img2img with a noise mask.
Both crop the image to a multiple of 8 pixels, centred, as ComfyUI does.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.conditioning import set_values
from loom.nodes.kernel.schema import Boolean, Node, Output, Schema, Socket, register
from loom.nodes.vae import run_for_node


def _encode(node: str, vae: Any, pixels: Any) -> Any:
    from loom.nodes.runtime import vae as vae_runtime

    return run_for_node(node, vae_runtime.encode, vae, pixels)


def _crop_to_8(pixels: Any) -> tuple[Any, int, int, int, int]:
    """``pixels`` cropped to a multiple of 8, and the crop's (y, x, height, width)."""
    height = (pixels.shape[1] // 8) * 8
    width = (pixels.shape[2] // 8) * 8
    y = x = 0
    if pixels.shape[1] != height or pixels.shape[2] != width:
        y = (pixels.shape[1] % 8) // 2
        x = (pixels.shape[2] % 8) // 2
        pixels = pixels[:, y:y + height, x:x + width, :]
    return pixels, y, x, height, width


@register
class InstructPixToPixConditioning(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "InstructPixToPixConditioning", category="conditioning/instructpix2pix",
            inputs=[Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
                    Socket("pixels", "IMAGE")],
            outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"),
                     Output("LATENT", "latent")])

    @classmethod
    def execute(cls, positive: Any, negative: Any, pixels: Any, vae: Any) -> tuple:
        import torch

        node = "InstructPixToPixConditioning"
        pixels, *_ = _crop_to_8(pixels)
        concat_latent = _encode(node, vae, pixels)
        values = {"concat_latent_image": concat_latent}
        return (set_values(positive, values), set_values(negative, values),
                {"samples": torch.zeros_like(concat_latent)})


@register
class InpaintModelConditioning(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "InpaintModelConditioning", category="model/conditioning",
            inputs=[Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
                    Socket("pixels", "IMAGE"), Socket("mask", "MASK"),
                    Boolean("noise_mask", default=True,
                            tooltip="Add a noise mask to the latent so sampling will only happen within the mask. "
                                    "Might improve results or completely break things depending on the model.")],
            outputs=[Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"),
                     Output("LATENT", "latent")])

    @classmethod
    def execute(cls, positive: Any, negative: Any, pixels: Any, vae: Any, mask: Any,
                noise_mask: bool = True) -> tuple:
        """The latent of the whole image (with the mask as its noise mask), and conditionings carrying the
        latent of the image with the masked pixels set to grey plus the mask."""
        import torch.nn.functional as F

        node = "InpaintModelConditioning"
        mask = F.interpolate(mask.float().reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                             size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        grey, y, x, height, width = _crop_to_8(pixels.clone())
        mask = mask[:, :, y:y + height, x:x + width]

        keep = (1.0 - mask.round()).squeeze(1)
        for channel in range(3):  # masked pixels become grey (0.5)
            grey[:, :, :, channel] -= 0.5
            grey[:, :, :, channel] *= keep
            grey[:, :, :, channel] += 0.5
        concat_latent = _encode(node, vae, grey)
        latent: dict[str, Any] = {"samples": _encode(node, vae, pixels)}
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return set_values(positive, values), set_values(negative, values), latent
