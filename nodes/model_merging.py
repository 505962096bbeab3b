"""ComfyUI's merging nodes: ModelMergeSimple/Add/Subtract/Blocks, ModelMergeSDXL and CLIPMergeSimple/Add/Subtract.

Each returns the first handle with one more weight patch (:class:`loom.nodes.runtime.merging.MergePatch`),
ComfyUI's ``add_patches(model2's weights, strength_patch, strength_model)`` for every weight both models
have: Simple ``(1 - ratio, ratio)`` (ratio 1 keeps the first model), Add ``(1, 1)``, Subtract
``(-multiplier, multiplier)``; Blocks and SDXL choose the ratio of each UNet weight by the longest of
their input names that its ComfyUI key (``input_blocks.4.1...``) starts with, else the first ratio. The
handles given are never changed; the merge happens while the result samples or encodes.
"""
from __future__ import annotations

from typing import Any, Callable

from loom.nodes.kernel.schema import Float, Node, Output, Schema, Socket, register

_RATIO = dict(default=1.0, min=0.0, max=1.0, step=0.01)
_MULTIPLIER = dict(default=1.0, min=-10.0, max=10.0, step=0.01)


def _merged(node: str, first: Any, second: Any, strengths: Callable[[str], tuple[float, float]]) -> Any:
    from loom.nodes.runtime.merging import merge_patch

    patch = merge_patch(first, second, strengths, name=node)
    return first.replace(patches=tuple(first.patches) + (patch,))


def _model_inputs() -> list:
    return [Socket("model1", "MODEL"), Socket("model2", "MODEL")]


def _clip_inputs() -> list:
    return [Socket("clip1", "CLIP"), Socket("clip2", "CLIP")]


@register
class ModelMergeSimple(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelMergeSimple", category="advanced/model_merging",
                      inputs=_model_inputs() + [Float("ratio", **_RATIO)], outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model1: Any, model2: Any, ratio: float) -> tuple:
        return (_merged("ModelMergeSimple", model1, model2, lambda _key: (1.0 - ratio, ratio)),)


@register
class ModelMergeSubtract(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelMergeSubtract", category="advanced/model_merging",
                      inputs=_model_inputs() + [Float("multiplier", **_MULTIPLIER)], outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model1: Any, model2: Any, multiplier: float) -> tuple:
        return (_merged("ModelMergeSubtract", model1, model2, lambda _key: (-multiplier, multiplier)),)


@register
class ModelMergeAdd(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelMergeAdd", category="advanced/model_merging", inputs=_model_inputs(),
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model1: Any, model2: Any) -> tuple:
        return (_merged("ModelMergeAdd", model1, model2, lambda _key: (1.0, 1.0)),)


@register
class CLIPMergeSimple(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CLIPMergeSimple", category="advanced/model_merging",
                      inputs=_clip_inputs() + [Float("ratio", **_RATIO)], outputs=[Output("CLIP")])

    @classmethod
    def execute(cls, clip1: Any, clip2: Any, ratio: float) -> tuple:
        return (_merged("CLIPMergeSimple", clip1, clip2, lambda _key: (1.0 - ratio, ratio)),)


@register
class CLIPMergeSubtract(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CLIPMergeSubtract", category="advanced/model_merging",
                      inputs=_clip_inputs() + [Float("multiplier", **_MULTIPLIER)], outputs=[Output("CLIP")])

    @classmethod
    def execute(cls, clip1: Any, clip2: Any, multiplier: float) -> tuple:
        return (_merged("CLIPMergeSubtract", clip1, clip2, lambda _key: (-multiplier, multiplier)),)


@register
class CLIPMergeAdd(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CLIPMergeAdd", category="advanced/model_merging", inputs=_clip_inputs(),
                      outputs=[Output("CLIP")])

    @classmethod
    def execute(cls, clip1: Any, clip2: Any) -> tuple:
        return (_merged("CLIPMergeAdd", clip1, clip2, lambda _key: (1.0, 1.0)),)


def _block_merge(node: str, model1: Any, model2: Any, ratios: dict[str, float]) -> Any:
    from loom.nodes.runtime.merging import block_ratio

    def strengths(ldm_key: str) -> tuple[float, float]:
        ratio = block_ratio(ldm_key, ratios)
        return (1.0 - ratio, ratio)

    return _merged(node, model1, model2, strengths)


@register
class ModelMergeBlocks(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelMergeBlocks", category="advanced/model_merging",
                      inputs=_model_inputs() + [Float(name, **_RATIO) for name in ("input", "middle", "out")],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model1: Any, model2: Any, **ratios: float) -> tuple:
        ordered = {name: ratios[name] for name in ("input", "middle", "out") if name in ratios}
        return (_block_merge("ModelMergeBlocks", model1, model2, ordered),)


SDXL_BLOCK_INPUTS: tuple[str, ...] = (
    ("time_embed.", "label_emb.") + tuple(f"input_blocks.{i}" for i in range(9))
    + tuple(f"middle_block.{i}" for i in range(3)) + tuple(f"output_blocks.{i}" for i in range(9)) + ("out.",))
"""ModelMergeSDXL's ratio inputs, in ComfyUI's order (no dot after the block numbers, as ComfyUI names them)."""


@register
class ModelMergeSDXL(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelMergeSDXL", category="advanced/model_merging/model_specific",
                      inputs=_model_inputs() + [Float(name, **_RATIO) for name in SDXL_BLOCK_INPUTS],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model1: Any, model2: Any, **ratios: float) -> tuple:
        ordered = {name: ratios[name] for name in SDXL_BLOCK_INPUTS if name in ratios}
        return (_block_merge("ModelMergeSDXL", model1, model2, ordered),)
