"""ComfyUI's VAE nodes: VAEDecode, VAEEncode, VAEEncodeForInpaint and the tiled VAEDecodeTiled, VAEEncodeTiled.

The conversions themselves are in :mod:`nodes.runtime.vae` (imported when a node runs).
``VAEEncodeForInpaint`` follows ComfyUI: the mask is resized to the image, both are centre-cropped to
a multiple of the VAE's downscale factor, masked pixels are set to grey (0.5) before encoding, and
the returned ``noise_mask`` is the rounded mask grown by ``grow_mask_by`` pixels.
"""
from __future__ import annotations

import math
from typing import Any

from loom.nodes.kernel.schema import Int, Node, Output, Schema, Socket, register


def run_for_node(node: str, function: Any, *args: Any) -> Any:
    """``function(*args)``; a ValueError it raises is raised again with ``node``'s name in front."""
    try:
        return function(*args)
    except ValueError as exc:
        raise ValueError(f"{node}: {exc}") from None


@register
class VAEDecode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "VAEDecode", display_name="VAE Decode", category="model/latent",
            description="Decodes latent images back into pixel space images.",
            inputs=[Socket("samples", "LATENT", tooltip="The latent to be decoded."),
                    Socket("vae", "VAE", tooltip="The VAE model used for decoding the latent.")],
            outputs=[Output("IMAGE", tooltip="The decoded image.")])

    @classmethod
    def execute(cls, samples: Any, vae: Any) -> tuple:
        from loom.nodes.runtime import vae as vae_runtime

        return (run_for_node("VAEDecode", vae_runtime.decode, vae, samples["samples"]),)


@register
class VAEEncode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "VAEEncode", display_name="VAE Encode", category="model/latent",
            inputs=[Socket("pixels", "IMAGE"), Socket("vae", "VAE")],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, pixels: Any, vae: Any) -> tuple:
        from loom.nodes.runtime import vae as vae_runtime

        return ({"samples": run_for_node("VAEEncode", vae_runtime.encode, vae, pixels[:, :, :, :3])},)


@register
class VAEEncodeForInpaint(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "VAEEncodeForInpaint", display_name="VAE Encode (for Inpainting)", category="model/latent",
            inputs=[Socket("pixels", "IMAGE"), Socket("vae", "VAE"), Socket("mask", "MASK"),
                    Int("grow_mask_by", default=6, min=0, max=64, step=1)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, pixels: Any, vae: Any, mask: Any, grow_mask_by: int = 6) -> tuple:
        import torch
        import torch.nn.functional as F
        from loom.nodes.runtime import vae as vae_runtime

        node = "VAEEncodeForInpaint"
        factor = vae.downscale
        height = (pixels.shape[1] // factor) * factor
        width = (pixels.shape[2] // factor) * factor
        if height == 0 or width == 0:
            raise ValueError(f"{node}: input 'pixels': the image is smaller than the VAE's {factor}-pixel block")
        mask = F.interpolate(mask.float().reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                             size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        pixels = pixels.clone()
        if pixels.shape[1] != height or pixels.shape[2] != width:
            y = (pixels.shape[1] % factor) // 2
            x = (pixels.shape[2] % factor) // 2
            pixels = pixels[:, y:y + height, x:x + width, :]
            mask = mask[:, :, y:y + height, x:x + width]

        if grow_mask_by == 0:
            grown = mask
        else:  # grow the mask so the seam lies inside the repainted area in latent space
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            padding = math.ceil((grow_mask_by - 1) / 2)
            grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=padding), 0, 1)

        keep = (1.0 - mask.round()).squeeze(1)
        pixels = pixels[:, :, :, :3]
        pixels = (pixels - 0.5) * keep.unsqueeze(-1) + 0.5
        samples = run_for_node(node, vae_runtime.encode, vae, pixels)
        return ({"samples": samples, "noise_mask": grown[:, :, :height, :width].round()},)


def _tile_inputs(kind: str, tile_step: int) -> list:
    return [Int("tile_size", default=512, min=64, max=4096, step=tile_step, advanced=True),
            Int("overlap", default=64, min=0, max=4096, step=32, advanced=True),
            Int("temporal_size", default=64, min=8, max=4096, step=4, advanced=True,
                tooltip=f"Only used for video VAEs: Amount of frames to {kind} at a time."),
            Int("temporal_overlap", default=8, min=4, max=4096, step=4, advanced=True,
                tooltip="Only used for video VAEs: Amount of frames to overlap.")]


@register
class VAEDecodeTiled(Node):
    """Decode in overlapping tiles (sizes in pixels), blended as ComfyUI blends them.

    The temporal inputs only matter for video VAEs, which Loom does not have: a video latent's
    frames are decoded one by one, like :class:`VAEDecode` does.
    """

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "VAEDecodeTiled", display_name="VAE Decode (Tiled)", category="model/latent",
            inputs=[Socket("samples", "LATENT"), Socket("vae", "VAE")] + _tile_inputs("decode", 32),
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, samples: Any, vae: Any, tile_size: int, overlap: int = 64, temporal_size: int = 64,
                temporal_overlap: int = 8) -> tuple:
        from loom.nodes.runtime import vae as vae_runtime

        if tile_size < overlap * 4:
            overlap = tile_size // 4
        factor = vae.downscale
        return (run_for_node("VAEDecodeTiled", vae_runtime.decode_tiled, vae, samples["samples"],
                             tile_size // factor, tile_size // factor, overlap // factor),)


@register
class VAEEncodeTiled(Node):
    """Encode in overlapping tiles (sizes in pixels), blended as ComfyUI blends them."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "VAEEncodeTiled", display_name="VAE Encode (Tiled)", category="model/latent",
            inputs=[Socket("pixels", "IMAGE"), Socket("vae", "VAE")] + _tile_inputs("encode", 64),
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, pixels: Any, vae: Any, tile_size: int, overlap: int, temporal_size: int = 64,
                temporal_overlap: int = 8) -> tuple:
        from loom.nodes.runtime import vae as vae_runtime

        return ({"samples": run_for_node("VAEEncodeTiled", vae_runtime.encode_tiled, vae, pixels[:, :, :, :3],
                                         tile_size, tile_size, overlap)},)
