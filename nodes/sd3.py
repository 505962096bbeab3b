"""ComfyUI's SD3 nodes (``comfy_extras/nodes_sd3.py``): EmptySD3LatentImage (16-channel latents) and
CLIPTextEncodeSD3 (one prompt per text encoder, with ComfyUI's empty-prompt padding rule)."""
from __future__ import annotations

from typing import Any

import torch

from loom.nodes.kernel.schema import MAX_RESOLUTION, Combo, Int, Node, Output, Schema, Socket, String, register


@register
class EmptySD3LatentImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "EmptySD3LatentImage", category="model/latent/sd3",
            inputs=[Int("width", default=1024, min=16, max=MAX_RESOLUTION, step=16),
                    Int("height", default=1024, min=16, max=MAX_RESOLUTION, step=16),
                    Int("batch_size", default=1, min=1, max=4096)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, width: int, height: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


@register
class CLIPTextEncodeSD3(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CLIPTextEncodeSD3", category="advanced/conditioning",
            inputs=[Socket("clip", "CLIP"),
                    String("clip_l", multiline=True, dynamic_prompts=True),
                    String("clip_g", multiline=True, dynamic_prompts=True),
                    String("t5xxl", multiline=True, dynamic_prompts=True),
                    Combo("empty_padding", options_source=("none", "empty_prompt"))],
            outputs=[Output("CONDITIONING")])

    @classmethod
    def execute(cls, clip: Any, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str) -> tuple:
        from loom.nodes.runtime.text_encoding import encode_tokens_extra, tokenize_for

        missing = {"l", "g"} - set(clip.encoders)
        if missing:
            raise ValueError(f"CLIPTextEncodeSD3: input 'clip' has no {' or '.join(sorted(missing)).upper()} text "
                             f"encoder (it is a {clip.family} CLIP); use an SD3 CLIP (CLIP-L + CLIP-G [+ T5])")
        no_padding = empty_padding == "none"
        tokens: dict[str, Any] = {"g": tokenize_for(clip, clip_g)["g"]}
        if len(clip_g) == 0 and no_padding:
            tokens["g"] = []
        tokens["l"] = [] if len(clip_l) == 0 and no_padding else tokenize_for(clip, clip_l)["l"]
        if "t5xxl" in clip.encoders:
            tokens["t5xxl"] = [] if len(t5xxl) == 0 and no_padding else tokenize_for(clip, t5xxl)["t5xxl"]
        if len(tokens["l"]) != len(tokens["g"]):  # ComfyUI evens them out with empty-prompt chunks
            empty = tokenize_for(clip, "")
            while len(tokens["l"]) < len(tokens["g"]):
                tokens["l"] = tokens["l"] + empty["l"]
            while len(tokens["l"]) > len(tokens["g"]):
                tokens["g"] = tokens["g"] + empty["g"]
        cond, pooled, extra = encode_tokens_extra(clip, tokens)
        return ([[cond, {"pooled_output": pooled, **extra}]],)
