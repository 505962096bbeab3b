"""ComfyUI's image batch nodes: batch any number of images, take a run out of a batch, repeat a batch.

``BatchImagesNode`` has ComfyUI's growing input (``COMFY_AUTOGROW_V3``): the editor shows
``image0``, ``image1`` and adds a socket as each is linked, up to 50; a prompt names them
``images.image0``, ``images.image1``, ... (see :class:`loom.nodes.kernel.schema.Autogrow`).
"""
from __future__ import annotations

from typing import Any

import torch

from loom.nodes.image_ops import batch_images
from loom.nodes.kernel.schema import MAX_RESOLUTION, Autogrow, Int, Node, Output, Schema, Socket, autogrow_values, register


@register
class BatchImagesNode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "BatchImagesNode", display_name="Batch Images", category="image/batch",
            inputs=[Autogrow("images", template=Socket("image", "IMAGE"), prefix="image", min=2, max=50)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, **inputs: Any) -> tuple:
        return (batch_images(list(autogrow_values("images", inputs).values())),)


@register
class ImageFromBatch(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageFromBatch", display_name="Get Image from Batch", category="image/batch",
            inputs=[Socket("image", "IMAGE"),
                    Int("batch_index", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
                    Int("length", default=1, min=1, max=4096)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, batch_index: int, length: int) -> tuple:
        count = image.shape[0]
        if batch_index < 0:
            batch_index += count  # -1 is the last image
        batch_index = max(0, min(count - 1, batch_index))
        length = min(count - batch_index, length)
        return (image[batch_index:batch_index + length].clone(),)


@register
class RepeatImageBatch(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "RepeatImageBatch", display_name="Repeat Image Batch", category="image/batch",
            inputs=[Socket("image", "IMAGE"), Int("amount", default=1, min=1, max=4096)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, amount: int) -> tuple:
        return (image.repeat((amount, 1, 1, 1)),)
