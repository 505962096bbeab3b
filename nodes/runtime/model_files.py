"""What the loaders' own detection sees in a model file: ``(family, detail)`` for the editor's Models panel.

The loader node modules register these as the describers of their folders
(:func:`loom.nodes.kernel.services.register_model_describer`). They read a file's header (and, for a
v-prediction guess, one tensor) and raise when the file cannot be read or is not understood. The detection
modules are imported on first use, so registering a describer costs nothing.
"""
from __future__ import annotations

from os import PathLike


def describe_checkpoint(path: str | PathLike) -> tuple[str | None, str]:
    """A whole checkpoint, or a diffusion network alone: its family and the prediction type."""
    from loom.nodes.runtime import checkpoint

    detected = checkpoint.inspect_checkpoint(path)
    family = detected.family
    name = getattr(family, "display_name", None) or getattr(family, "name", None)
    prediction = getattr(detected, "prediction", None)
    return (str(name) if name else None), (f"{prediction} prediction" if prediction else "")


def describe_clip_vision(path: str | PathLike) -> tuple[str | None, str]:
    """A CLIP vision encoder: its architecture (``"ViT-L"``, ...) and model type."""
    from loom.nodes.runtime import clip_vision
    from loom.nodes.runtime.checkpoint import StateDictFile

    with StateDictFile(path) as file:
        shapes = file.shapes
        if clip_vision.is_openclip_layout(shapes, "visual."):
            shapes = clip_vision.openclip_shapes(shapes, "visual.")
        architecture = clip_vision.detect(shapes, str(path))
    return architecture.kind, architecture.model_type
