"""The model families and their registry: one module per family, each a :class:`~.base.Family`.

    family = families.get(model.family)            # the family of a MODEL/CLIP handle
    detected = families.detect(file.shapes, file.read, source=name)

Modules: :mod:`.base` (the interface and detection records), :mod:`.parts` (VAE/CLIP configs from shapes),
:mod:`.unet` (what the UNet families share), :mod:`.sd1`, :mod:`.sd2`, :mod:`.sdxl` (base and refiner),
:mod:`.sd3` (MMDiT). A new family is a new module whose :class:`Family` instance is passed to
:func:`register` here; nothing else in the runtime names families.

Detection asks every family, in ``detection_order``, to recognise the whole file (``loose=False``: its text
encoders and network), then the network alone (``loose=True``); the first that answers wins.
"""
from __future__ import annotations

from typing import Any, Callable

from loom.nodes.runtime.families.base import (Detected, EncoderConvention, Family, Shapes, TextEncoderSlot,
                                              UnknownModelError)
from loom.nodes.runtime.families.parts import clip_config, clip_width, key_groups, vae_config
from loom.nodes.runtime.families.unet import UNET_PREFIX, VAE_PREFIXES, unet_config
from loom.nodes.runtime.model_sampling import PREDICTIONS

FAMILIES: dict[str, Family] = {}
"""Every registered family by name, in detection order."""


def register(family: Family) -> Family:
    """Add a family to the registry (replacing one of the same name)."""
    FAMILIES[family.name] = family
    ordered = sorted(FAMILIES.values(), key=lambda f: f.detection_order)
    FAMILIES.clear()
    FAMILIES.update((f.name, f) for f in ordered)
    return family


def get(name: str) -> Family:
    """The family called ``name``; a clear error for one Loom does not know."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownModelError(f"unknown model family {name!r}; Loom knows {', '.join(FAMILIES)}") from None


def detect(shapes: Shapes, read: Callable[[str], Any] | None = None, *, prediction: str | None = None,
           source: str = "checkpoint") -> Detected:
    """Detect the family of a single-file checkpoint from its key names and shapes.

    ``read(key)`` returns one tensor (for guesses that need values, e.g. SD2 v-prediction). ``prediction``
    overrides the family's guess. Raises :class:`UnknownModelError` naming what was found.
    """
    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
    for loose in (False, True):
        for family in FAMILIES.values():
            found = family.detect(shapes, read, prediction=prediction, source=source, loose=loose)
            if found is not None:
                return found
    has_network = any(key.startswith(UNET_PREFIX) for key in shapes)
    what = "a diffusion model whose text encoders and shapes match no known family" if has_network else \
        "no diffusion model (model.diffusion_model.*)"
    raise UnknownModelError(
        f"Could not detect the model type of {source}: found {what}. Key groups: {key_groups(shapes)}. "
        f"Loom loads single-file {', '.join(f.display_name for f in FAMILIES.values())} checkpoints in the "
        "original layout (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*, "
        "conditioner.embedders.* or text_encoders.*).")


def model_sampling(detected: Detected) -> Any:
    """The model-sampling object of a detected checkpoint (its family decides)."""
    return detected.family.model_sampling(detected)


def _register_builtin() -> None:
    from loom.nodes.runtime.families import flux, sd1, sd2, sd3, sdxl

    for family in (sd1.FAMILY, sd2.FAMILY, sdxl.FAMILY, sdxl.REFINER, sd3.FAMILY, flux.FAMILY):
        register(family)


_register_builtin()

from loom.nodes.runtime.families.sd1 import SD15_LATENT  # noqa: E402
from loom.nodes.runtime.families.sdxl import SDXL_LATENT  # noqa: E402

__all__ = ["FAMILIES", "Detected", "EncoderConvention", "Family", "TextEncoderSlot", "UnknownModelError",
           "UNET_PREFIX", "VAE_PREFIXES", "SD15_LATENT", "SDXL_LATENT", "register", "get", "detect",
           "model_sampling", "unet_config", "vae_config", "clip_config", "clip_width"]
