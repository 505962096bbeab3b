"""ComfyUI's ``ImageCompare``: an output node that shows two images (or batches) under a slider.

It writes each side to the temp directory as previews (``comfy.compare.a_temp_xxxxx_00001_.png``,
no embedded workflow, as ComfyUI calls PreviewImage without one) and returns them in its ``ui`` as
``{"a_images": [...], "b_images": [...]}`` (an absent or empty side is ``[]``). ``compare_view`` is
ComfyUI's socketless ``IMAGECOMPARE`` widget: the editor's slider, whose value the node ignores.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from loom.nodes.image import save_images
from loom.nodes.kernel.schema import HIDDEN_PROMPT, InputSpec, Node, NodeOutput, Schema, Socket, register


@dataclass
class CompareView(InputSpec):
    """The ``IMAGECOMPARE`` widget: drawn by the editor, no socket, any value."""

    type: str = "IMAGECOMPARE"
    widget_type: ClassVar[bool] = True

    def options(self) -> dict[str, Any]:
        return {"socketless": True} | super().options()


def _preview(images: torch.Tensor | None, side: str) -> list[dict[str, str]]:
    if images is None or len(images) == 0:
        return []
    suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return save_images(images, f"comfy.compare.{side}_temp_{suffix}", kind="temp", compress_level=1)


@register
class ImageCompare(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageCompare", display_name="Image Compare", category="image", output_node=True, experimental=True,
            description="Compares two images side by side with a slider.",
            inputs=[Socket("image_a", "IMAGE", optional=True), Socket("image_b", "IMAGE", optional=True),
                    CompareView("compare_view")],
            hidden=[HIDDEN_PROMPT],  # ComfyUI adds it to every output node
            outputs=[])

    @classmethod
    def execute(cls, image_a: torch.Tensor | None = None, image_b: torch.Tensor | None = None,
                compare_view: Any = None, prompt: Any = None) -> NodeOutput:
        return NodeOutput(ui={"a_images": _preview(image_a, "a"), "b_images": _preview(image_b, "b")})
