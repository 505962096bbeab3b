"""SDXL base (CLIP-L ``conditioner.embedders.0.transformer.*`` + OpenCLIP bigG ``conditioner.embedders.1.model.*``)
and the SDXL refiner (bigG alone at ``conditioner.embedders.0.model.*``): LDM UNets with the ``label_emb``
added conditioning (pooled bigG output + 6 or 5 size/crop/aesthetic numbers), SDXL latent format."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from loom.nodes.runtime.families.base import EncoderConvention, Shapes, TextEncoderSlot
from loom.nodes.runtime.families.parts import clip_hf_prefix, has_prefix
from loom.nodes.runtime.families.sd1 import CLIP_EOS
from loom.nodes.runtime.families.unet import UNetFamily, context_dim
from loom.nodes.runtime.model_types import LatentFormat

SDXL_LATENT = LatentFormat(
    channels=4, scale_factor=0.13025,
    rgb_factors=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                 (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    rgb_bias=(0.1084, -0.0175, -0.0011),
)

CLIP_L_PENULTIMATE = EncoderConvention(CLIP_EOS, -2, False, False, "clip_l")
CLIP_G_PENULTIMATE = EncoderConvention(0, -2, False, True, "clip_g")


class SDXL(UNetFamily):
    name = "sdxl"
    display_name = "SDXL"
    latent_format = SDXL_LATENT
    detection_order = 10
    adm = "sdxl"
    time_ids = 6
    ip2p_channels = True  # ComfyUI's SDXL_instructpix2pix

    def text_encoders(self, shapes: Shapes) -> list[TextEncoderSlot] | None:
        if clip_hf_prefix(shapes, "conditioner.embedders.0.transformer.") and \
                has_prefix(shapes, "conditioner.embedders.1.model."):
            return [TextEncoderSlot("l", "conditioner.embedders.0.transformer.", "hf"),
                    TextEncoderSlot("g", "conditioner.embedders.1.model.", "openclip")]
        return None

    def matches_unet(self, shapes: Shapes, prefix: str) -> bool:
        adm = shapes.get(prefix + "label_emb.0.0.weight")
        return adm is not None and context_dim(shapes, prefix) == 2048 and adm[1] == 2816

    def text_convention(self, encoder: str) -> EncoderConvention:
        if encoder == "l":
            return CLIP_L_PENULTIMATE
        if encoder == "g":
            return CLIP_G_PENULTIMATE
        return super().text_convention(encoder)

    def combine_text(self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        if set(outputs) != {"l", "g"}:
            return super().combine_text(outputs)
        (l_out, _), (g_out, g_pooled) = outputs["l"], outputs["g"]
        cut = min(l_out.shape[1], g_out.shape[1])
        return torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1), g_pooled, {}


class SDXLRefiner(UNetFamily):
    name = "sdxl_refiner"
    display_name = "SDXL refiner"
    latent_format = SDXL_LATENT
    detection_order = 11
    adm = "sdxl_refiner"
    time_ids = 5

    def text_encoders(self, shapes: Shapes) -> list[TextEncoderSlot] | None:
        if has_prefix(shapes, "conditioner.embedders.0.model.") and \
                not has_prefix(shapes, "conditioner.embedders.1."):
            return [TextEncoderSlot("g", "conditioner.embedders.0.model.", "openclip")]
        return None

    def matches_unet(self, shapes: Shapes, prefix: str) -> bool:
        adm = shapes.get(prefix + "label_emb.0.0.weight")
        channels = shapes[prefix + "input_blocks.0.0.weight"][0]
        return adm is not None and context_dim(shapes, prefix) == 1280 and adm[1] == 2560 and channels == 384

    def text_convention(self, encoder: str) -> EncoderConvention:
        if encoder == "g":
            return CLIP_G_PENULTIMATE
        return super().text_convention(encoder)


FAMILY = SDXL()
REFINER = SDXLRefiner()
