"""Models loaded in parts, as ComfyUI's UNETLoader, CLIPLoader, DualCLIPLoader and TripleCLIPLoader do.

Text encoder files (``models/text_encoders/``, also ``clip/``) are recognised by their keys as ComfyUI's
``detect_te_model`` does: a transformers-layout CLIP (``text_model.*``) is CLIP-G with 31 or more layers,
CLIP-H with 23 or more, else CLIP-L; an OpenCLIP-layout file (``transformer.resblocks.*``) is CLIP-G; a
file with ``encoder.final_layer_norm.weight`` and ``encoder.block.*`` is a T5 encoder, loaded as the T5-XXL
of FLUX/SD3 whatever its size (as ComfyUI's DualCLIPLoader does). CLIP-L computes with
``quick_gelu``, CLIP-H and CLIP-G with ``gelu`` (ComfyUI's JSON configs). The CLIP type (``flux``,
``sd3``, ``sdxl``, ``stable_diffusion``) decides which family the CLIP handle belongs to, and so how its
encoders' outputs become a conditioning:

==========================  ===================  ==========================================
loader / type               files                CLIP handle
==========================  ===================  ==========================================
DualCLIPLoader flux         CLIP-L + T5-XXL      family ``flux``: ``l``, ``t5xxl`` (256 tokens)
DualCLIPLoader sd3          two of L / G / T5    family ``sd3`` (T5 with 77 tokens)
TripleCLIPLoader            L + G + T5           family ``sd3``
DualCLIPLoader sdxl         CLIP-L + CLIP-G      family ``sdxl``
CLIPLoader stable_diffusion CLIP-L / CLIP-H / G  ``sd1`` / ``sd2`` / ``sdxl_refiner``
CLIPLoader sd3              L, G or T5 alone     family ``sd3``
==========================  ===================  ==========================================

The files may come in either order. Diffusion-model files (``models/diffusion_models/``, also ``unet/``):
FLUX transformers in BFL's or diffusers' layout, bare or under ``model.diffusion_model.``, with UNETLoader's
``weight_dtype`` (fp8 storage computed in the compute dtype); any other registered family's network alone
(an SD3 MMDiT, a full-size SD1/SD2/SDXL UNet), bare or prefixed, detected and built by its family as
CheckpointLoaderSimple does (``weight_dtype`` ``default`` only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from loom.nodes.runtime import devices, model_cache
from loom.nodes.runtime.families import flux as flux_family
from loom.nodes.runtime.model_types import DiffusionModel, TextEncoderModel

log = logging.getLogger(__name__)

CLIP_KINDS = {"clip_l": "CLIP-L", "clip_h": "CLIP-H", "clip_g": "CLIP-G", "t5xxl": "T5"}


class SplitLoadError(ValueError):
    """A text encoder or diffusion model file that does not fit what the loader was asked for."""


@dataclass(frozen=True)
class TextEncoderFile:
    """What a text encoder file holds: its kind (:data:`CLIP_KINDS`), key prefix and layout."""

    path: Path
    kind: str
    prefix: str
    layout: str  # "hf" | "openclip" | "t5"

    @property
    def display(self) -> str:
        return f"{self.path.name} ({CLIP_KINDS[self.kind]})"


def identify_text_encoder(path: str | Path, shapes: Mapping[str, Sequence[int]]) -> TextEncoderFile:
    """The kind of text encoder in a file's ``shapes`` (ComfyUI's ``detect_te_model`` rules)."""
    from loom.nodes.runtime import t5

    path = Path(path)
    for base in ("", "transformer.", "text_model.", "model."):
        for prefix in (base + "text_model.", base):
            if prefix + "encoder.layers.0.mlp.fc1.weight" in shapes and \
                    prefix + "embeddings.token_embedding.weight" in shapes:
                hf_prefix = prefix[:-len("text_model.")] if prefix.endswith("text_model.") else prefix
                if prefix + "encoder.layers.30.mlp.fc1.weight" in shapes:
                    kind = "clip_g"
                elif prefix + "encoder.layers.22.mlp.fc1.weight" in shapes:
                    kind = "clip_h"
                else:
                    kind = "clip_l"
                return TextEncoderFile(path, kind, hf_prefix, "hf")
    if "transformer.resblocks.0.attn.in_proj_weight" in shapes and "token_embedding.weight" in shapes:
        return TextEncoderFile(path, "clip_g" if "transformer.resblocks.30.attn.in_proj_weight" in shapes else "clip_h",
                               "", "openclip")
    prefix = t5.find_prefix(shapes)
    if prefix is not None:  # the T5-XXL slot: ComfyUI loads any T5 file there (the width is read from it)
        return TextEncoderFile(path, "t5xxl", prefix, "t5")
    groups = sorted({".".join(k.split(".")[:2]) for k in shapes})[:6]
    raise SplitLoadError(f"{path.name} is not a text encoder Loom knows (CLIP-L, CLIP-H, CLIP-G in the transformers "
                         f"or OpenCLIP layout, or T5); its keys start with {', '.join(groups) or 'nothing'}")


def _build_clip(file: Any, info: TextEncoderFile, *, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """A stand-alone CLIP text encoder (transformers ``CLIPTextModel[WithProjection]``), every key used."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loom.nodes.runtime import checkpoint, families

    slot = families.TextEncoderSlot(info.kind.removeprefix("clip_"), info.prefix, info.layout)
    if info.layout == "openclip":
        return checkpoint.build_text_encoder(file, slot, dtype=dtype, device=device)
    shapes = file.shapes
    kwargs = families.clip_config(shapes, slot)
    kwargs["hidden_act"] = "quick_gelu" if info.kind == "clip_l" else "gelu"
    projection = shapes.get(info.prefix + "text_projection.weight")
    if projection is not None:
        kwargs["projection_dim"] = projection[0]
    config = CLIPTextConfig(**kwargs)
    tensors = file.read_prefixed(info.prefix, dtype, rename="")
    state = {}
    for key, tensor in tensors.items():
        if key.endswith("position_ids") or key == "logit_scale":
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        state[key] = tensor
    if projection is not None:
        model = checkpoint._instantiate(CLIPTextModelWithProjection, config)
    else:
        model = checkpoint._instantiate(CLIPTextModel, config)
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    checkpoint._load_exact(model, state, f"{CLIP_KINDS[info.kind]} text encoder", file.path.name)
    return model.to(device)


def _load_part(info: TextEncoderFile, *, device: torch.device, t5_min_length: int) -> tuple[Any, Any]:
    from loom.nodes.runtime import checkpoint, t5, tokenizer

    with checkpoint.StateDictFile(info.path) as file:
        if info.layout == "t5":
            return t5.load_t5_from_file(file, info.prefix, device=device, min_length=t5_min_length)
        model = _build_clip(file, info, dtype=devices.text_encoder_dtype(device), device=device)
    return tokenizer.clip_tokenizer(), model


# (loader, type) -> the family of the CLIP handle, allowed kinds per file count, T5 minimum length
_RECIPES: dict[str, tuple[str, int]] = {"flux": ("flux", 256), "sd3": ("sd3", 77), "sdxl": ("sdxl", 77),
                                        "stable_diffusion": ("sd1", 77)}
SUPPORTED_CLIP_TYPES = tuple(_RECIPES)
"""The text-encoder ``type`` values Loom builds a CLIP handle for."""
_ENCODER_NAMES = {"clip_l": "l", "clip_h": "h", "clip_g": "g", "t5xxl": "t5xxl"}


def plan_clip(node: str, clip_type: str, files: Sequence[TextEncoderFile]) -> tuple[str, int]:
    """``(family, T5 minimum length)`` for these files and type, or a clear error naming the node and files."""
    kinds = sorted(f.kind for f in files)
    names = ", ".join(f.display for f in files)
    if clip_type not in _RECIPES:
        raise SplitLoadError(f"{node}: type {clip_type!r} is not supported by Loom yet (supported: "
                             f"{', '.join(SUPPORTED_CLIP_TYPES)})")
    if len(set(kinds)) != len(kinds):
        raise SplitLoadError(f"{node}: the files are the same kind of text encoder twice: {names}")
    family, t5_length = _RECIPES[clip_type]
    wanted = {
        "flux": [["clip_l", "t5xxl"]],
        "sd3": [["clip_g", "clip_l", "t5xxl"], ["clip_g", "clip_l"], ["clip_l", "t5xxl"], ["clip_g", "t5xxl"],
                ["clip_l"], ["clip_g"], ["t5xxl"]],
        "sdxl": [["clip_g", "clip_l"]],
        "stable_diffusion": [["clip_l"], ["clip_h"], ["clip_g"]],
    }[clip_type]
    if kinds not in wanted:
        recipe = {"flux": "CLIP-L and T5-XXL", "sd3": "CLIP-L, CLIP-G and/or T5-XXL", "sdxl": "CLIP-L and CLIP-G",
                  "stable_diffusion": "one CLIP-L, CLIP-H or CLIP-G"}[clip_type]
        raise SplitLoadError(f"{node}: type {clip_type!r} needs {recipe}; got {names}")
    if clip_type == "stable_diffusion":
        family = {"clip_l": "sd1", "clip_h": "sd2", "clip_g": "sdxl_refiner"}[kinds[0]]
    return family, t5_length


def load_clip(node: str, paths: Sequence[str | Path], clip_type: str, *, device: torch.device | str | None = None,
              use_cache: bool = True) -> TextEncoderModel:
    """A CLIP handle from separate text encoder files (see the table above)."""
    from loom.nodes.runtime import checkpoint

    device = torch.device(device) if device is not None else devices.compute_device()
    infos = []
    for path in paths:
        with checkpoint.StateDictFile(path) as file:
            infos.append(identify_text_encoder(path, file.shapes))
    family, t5_length = plan_clip(node, clip_type, infos)

    def load() -> TextEncoderModel:
        encoders: dict[str, Any] = {}
        for info in sorted(infos, key=lambda i: list(_ENCODER_NAMES).index(i.kind)):
            encoders[_ENCODER_NAMES[info.kind]] = _load_part(info, device=device, t5_min_length=t5_length)
        return TextEncoderModel(encoders=encoders, family=family,
                                options={"source": [str(p) for p in paths], "clip_type": clip_type})

    if not use_cache:
        return load()
    key = ("clip_files", tuple(model_cache.file_key(p) for p in paths), clip_type, str(device))
    # CLIP files widen to the device's text-encoder dtype (float32 on the CPU); T5 keeps its file dtype
    widen = 2 if devices.text_encoder_dtype(device) == torch.float32 else 1
    size = sum(info.path.stat().st_size * (1 if info.layout == "t5" else widen) for info in infos)
    return model_cache.models.get_or_load(key, load, expected_bytes=size, device=device)


# ---------------------------------------------------------------------------------------------
# Diffusion models
# ---------------------------------------------------------------------------------------------

def load_diffusion_model(path: str | Path, weight_dtype: str = "default", *, device: torch.device | str | None = None,
                         use_cache: bool = True) -> DiffusionModel:
    """A ``diffusion_models/`` file as a MODEL (see the module docstring for what it may hold)."""
    from loom.nodes.runtime import flux_layout

    if weight_dtype not in flux_layout.WEIGHT_DTYPES:
        raise SplitLoadError(f"weight_dtype must be one of {', '.join(flux_layout.WEIGHT_DTYPES)}, not {weight_dtype!r}")
    path = Path(path)
    device = torch.device(device) if device is not None else devices.compute_device()

    def load() -> DiffusionModel:
        return _load_diffusion_model(path, weight_dtype, device)

    if not use_cache:
        return load()
    key = ("diffusion_model", model_cache.file_key(path), weight_dtype, str(device))
    size = path.stat().st_size
    expected = size // 2 if weight_dtype != "default" else (size * 2 if device.type == "cpu" else size)
    return model_cache.models.get_or_load(key, load, expected_bytes=expected, device=device)


def _load_diffusion_model(path: Path, weight_dtype: str, device: torch.device) -> DiffusionModel:
    import time

    from loom.nodes.runtime import checkpoint, flux_layout

    started = time.perf_counter()
    with checkpoint.StateDictFile(path) as file:
        found = flux_layout.detect_layout(file.shapes)
        if found is None:
            return _load_family_network(file, path, weight_dtype, device)
        dev = flux_family.is_dev(file.shapes, found[1])
        compute = flux_layout.default_compute_dtype(device)
        tensors = file.read_prefixed("", flux_layout.storage_dtype_for(flux_layout.file_dtype(file), weight_dtype,
                                                                        compute))
    module, config = flux_layout.build_transformer(tensors, source=path.name, device=device, compute_dtype=compute,
                                                   weight_dtype=weight_dtype)
    del tensors
    config["compute_dtype"] = str(compute).removeprefix("torch.")
    log.info("loaded %s as FLUX.1 %s (%s layout, weights %s, compute %s) in %.2fs", path.name,
             "dev" if dev else "schnell", config["layout"], config["storage_dtype"], config["compute_dtype"],
             time.perf_counter() - started)
    network = flux_layout.FluxNetwork(module, compute)
    return DiffusionModel(unet=network, family=flux_family.FAMILY.name, sampling=flux_family.sampling_for(dev),
                          latent_format=flux_family.FLUX_LATENT,
                          options={"source": str(path), "prediction_source": "dev" if dev else "schnell",
                                   "weight_dtype": weight_dtype, "unet_config": config})


def _load_family_network(file: Any, path: Path, weight_dtype: str, device: torch.device) -> DiffusionModel:
    """Another registered family's network alone (an SD1/SD2/SDXL UNet, an SD3 MMDiT), with its keys bare or
    under ``model.diffusion_model.``: detected and built by the family as CheckpointLoaderSimple does."""
    from loom.nodes.runtime import families
    from loom.nodes.runtime.families.unet import UNET_PREFIX

    shapes = file.shapes
    prefixed = any(key.startswith(UNET_PREFIX) for key in shapes)
    view = shapes if prefixed else {UNET_PREFIX + key: shape for key, shape in shapes.items()}

    def read(key: str) -> torch.Tensor:
        return file.read(key if prefixed else key[len(UNET_PREFIX):])

    try:
        detected = families.detect(view, read, source=path.name)
    except families.UnknownModelError as exc:
        raise SplitLoadError(f"{path.name} is not a diffusion model Loom can load on its own (FLUX.1 in BFL or "
                             f"diffusers layout, or a network of {', '.join(families.FAMILIES)}): {exc}") from None
    family = detected.family
    if weight_dtype != "default":
        raise SplitLoadError(f"weight_dtype {weight_dtype!r} is supported for FLUX transformers; load this "
                             f"{family.display_name} network with 'default'")
    if detected.unet_prefix is None:
        raise SplitLoadError(f"{path.name} holds no {family.display_name} diffusion network")
    if not prefixed:
        detected.unet_prefix = ""
    family.import_code()
    dtype = devices.diffusion_dtype(device)
    network, config = family.build_diffusion(file, detected, dtype=dtype, device=device)
    return DiffusionModel(unet=network, family=family.name, sampling=families.model_sampling(detected),
                          latent_format=family.latent_format,
                          options={"source": str(path), "prediction_source": detected.prediction_source,
                                   "adm": family.adm, "weight_dtype": weight_dtype, "unet_config": config})
