"""SD2.x: OpenCLIP ViT-H (``cond_stage_model.model.*``) and an LDM UNet with 64 channels per head, linear
projections and upcast attention; SD1.5 latent format; 768-v models are v-prediction, guessed as ComfyUI
does from the spread of the last output block's norm bias."""
from __future__ import annotations

import re

from loom.nodes.runtime.families.base import EncoderConvention, Reader, Shapes, TextEncoderSlot
from loom.nodes.runtime.families.parts import has_prefix
from loom.nodes.runtime.families.sd1 import SD15_LATENT
from loom.nodes.runtime.families.unet import UNetFamily, context_dim


class SD2(UNetFamily):
    name = "sd2"
    display_name = "SD2.x"
    latent_format = SD15_LATENT
    detection_order = 21

    def text_encoders(self, shapes: Shapes) -> list[TextEncoderSlot] | None:
        if has_prefix(shapes, "cond_stage_model.model.transformer."):
            return [TextEncoderSlot("h", "cond_stage_model.model.", "openclip")]
        return None

    def matches_unet(self, shapes: Shapes, prefix: str) -> bool:
        return prefix + "label_emb.0.0.weight" not in shapes and context_dim(shapes, prefix) == 1024

    def _prediction(self, shapes: Shapes, read: Reader | None, prefix: str, override: str | None
                    ) -> tuple[str, str]:
        chosen = super()._prediction(shapes, read, prefix, override)
        if chosen[1] != "family default" or read is None or shapes[prefix + "input_blocks.0.0.weight"][1] != 4:
            return chosen
        key = _last_output_norm_bias(shapes, prefix)
        if key is None:
            return chosen
        import torch

        bias = read(key).float()
        return ("v" if torch.std(bias, unbiased=False) > 0.09 else "eps"), "norm statistics"

    def text_convention(self, encoder: str) -> EncoderConvention:
        if encoder == "h":  # penultimate layer, layer-normed; the projected pooled output
            return EncoderConvention(0, -2, True, True, "clip_h")
        return super().text_convention(encoder)


def _last_output_norm_bias(shapes: Shapes, prefix: str) -> str | None:
    """ComfyUI looks at ``output_blocks.11.1.transformer_blocks.0.norm1.bias``: the last output block."""
    pattern = re.compile(re.escape(prefix) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")
    found = [(int(m.group(1)), key) for key in shapes if (m := pattern.match(key))]
    return max(found)[1] if found else None


FAMILY = SD2()
