"""``SaveImageWebsocket``: send each image to the client that queued the prompt, over its WebSocket.

Stock ComfyUI ships this node in ``custom_nodes/websocket_image_save.py`` and its
``script_examples/websockets_api_example_ws_images.py`` (and the many scripts copied from it) queue it.
It saves nothing: during execution each image of the batch is reported as a progress step whose preview
is ``("PNG", image, None)`` (step ``i`` of ``len(images)``, counting from 0, as ComfyUI does); the server
sends that as a binary frame to the prompt's client only — for a client without
``supports_preview_metadata`` ComfyUI's 8-byte header (uint32 1 = ``PREVIEW_IMAGE``, uint32 2 = PNG) and
the PNG, else a type 4 frame with ``image_type: "image/png"``. It returns no ``ui``, so history has no
outputs for it, and it runs on every prompt (never cached), like ComfyUI's ``IS_CHANGED = time.time()``.
"""
from __future__ import annotations

import torch

from loom.nodes.image_ops import tensor_to_pil
from loom.nodes.kernel.progress import report_progress
from loom.nodes.kernel.schema import ALWAYS_RERUN, Node, NodeOutput, Schema, Socket, register

PYTHON_MODULE = "custom_nodes.websocket_image_save"  # where ComfyUI's /object_info says it comes from


@register
class SaveImageWebsocket(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SaveImageWebsocket", display_name="SaveImageWebsocket", category="image",
            description="Sends the images to the client that queued the prompt, as binary WebSocket "
                        "frames (PNG); saves nothing.",
            output_node=True, inputs=[Socket("images", "IMAGE")], outputs=[])

    @classmethod
    def fingerprint(cls, **inputs: object) -> object:
        return ALWAYS_RERUN  # runs on every prompt: the client wants its images each time

    @classmethod
    def execute(cls, images: torch.Tensor) -> NodeOutput:
        total = int(images.shape[0])
        for step, image in enumerate(images):
            report_progress(step, total, ("PNG", tensor_to_pil(image), None))
        return NodeOutput()
