"""SD1.x: CLIP-L (``cond_stage_model.transformer.*``, transformers names) and an LDM UNet with 8 attention
heads and 768-wide cross-attention; SD1.5 latent format; discrete eps (or v with a ``v_pred`` marker)."""
from __future__ import annotations

from loom.nodes.runtime.families.base import EncoderConvention, Shapes, TextEncoderSlot
from loom.nodes.runtime.families.parts import clip_hf_prefix
from loom.nodes.runtime.families.unet import UNetFamily, context_dim
from loom.nodes.runtime.model_types import LatentFormat

CLIP_EOS = 49407

SD15_LATENT = LatentFormat(
    channels=4, scale_factor=0.18215,
    rgb_factors=((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                 (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
)


class SD1(UNetFamily):
    name = "sd1"
    display_name = "SD1.x"
    latent_format = SD15_LATENT
    detection_order = 20
    heads_rule = "8_heads"
    ip2p_channels = True  # ComfyUI's SD15_instructpix2pix

    def text_encoders(self, shapes: Shapes) -> list[TextEncoderSlot] | None:
        if clip_hf_prefix(shapes, "cond_stage_model.transformer."):
            return [TextEncoderSlot("l", "cond_stage_model.transformer.", "hf")]
        return None

    def matches_unet(self, shapes: Shapes, prefix: str) -> bool:
        return prefix + "label_emb.0.0.weight" not in shapes and context_dim(shapes, prefix) == 768

    def text_convention(self, encoder: str) -> EncoderConvention:
        if encoder == "l":  # the last layer, layer-normed; the unprojected pooled output
            return EncoderConvention(CLIP_EOS, None, True, False, "clip_l")
        return super().text_convention(encoder)


FAMILY = SD1()
