"""Writing MODEL + CLIP + VAE as one single-file checkpoint in the layout ComfyUI's ``save_checkpoint`` writes.

    state = checkpoint_state_dict(model, clip, vae)       # patches (LoRA, merges) baked in
    metadata = checkpoint_metadata(model, title="ComfyUI 1", prompt=..., extra_pnginfo=...)

Layouts per family (ComfyUI's ``process_*_state_dict_for_saving``): the UNet under
``model.diffusion_model.`` in the original (LDM) names, the VAE under ``first_stage_model.``, and the text
encoders as the family's original files hold them: SD1 ``cond_stage_model.transformer.text_model.*``;
SD2 OpenCLIP ``cond_stage_model.model.*``; SDXL ``conditioner.embedders.0.transformer.text_model.*``
(with ``position_ids``) and ``conditioner.embedders.1.model.*``; the SDXL refiner
``conditioner.embedders.0.model.*``. A v-prediction model gets the empty ``v_pred`` marker tensor.
Weights keep the dtype they compute in, except text encoders, which are written in float16 as ComfyUI
stores them. Metadata: ``modelspec.*`` for SDXL base/refiner, ``modelspec.predict_key``, ``prompt``
(JSON, ``""`` without one) and one JSON entry per ``extra_pnginfo`` key (``workflow``).
"""
from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import torch

from loom.nodes.runtime.ldm_layout import clip_to_hf_ldm, clip_to_openclip, unet_to_ldm, vae_to_ldm
from loom.nodes.runtime.model_sampling import ContinuousEDMSampling

TEXT_ENCODER_SAVE_DTYPE = torch.float16

_CLIP_LAYOUTS: dict[str, dict[str, tuple[str, str]]] = {
    # family -> encoder slot -> (layout, prefix)
    "sd1": {"l": ("hf", "cond_stage_model.transformer.")},
    "sd2": {"h": ("openclip", "cond_stage_model.model.")},
    "sdxl": {"l": ("hf", "conditioner.embedders.0.transformer."), "g": ("openclip", "conditioner.embedders.1.model.")},
    "sdxl_refiner": {"g": ("openclip", "conditioner.embedders.0.model.")},
}

_ARCHITECTURES = {"sdxl": "stable-diffusion-xl-v1-base", "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}


@contextlib.contextmanager
def _patched(handle: Any) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for patch in getattr(handle, "patches", ()):
            stack.enter_context(patch.applied(handle))
        yield


def _detached(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def clip_state_dict(clip: Any, family: str) -> dict[str, torch.Tensor]:
    layouts = _CLIP_LAYOUTS.get(family)
    if layouts is None:
        raise ValueError(f"saving the text encoders of a {family} checkpoint is not supported")
    out: dict[str, torch.Tensor] = {}
    with _patched(clip):
        for slot, (_tokenizer, module) in clip.encoders.items():
            if slot not in layouts:
                raise ValueError(f"a {family} checkpoint has no place for text encoder {slot!r}")
            layout, prefix = layouts[slot]
            state = {k: (v.to(TEXT_ENCODER_SAVE_DTYPE) if v.is_floating_point() else v)
                     for k, v in _detached(module).items()}
            out.update(clip_to_hf_ldm(state, prefix) if layout == "hf" else clip_to_openclip(state, prefix))
    if family == "sdxl" and "l" in clip.encoders:  # ComfyUI writes CLIP-L's position ids for SDXL
        out["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = \
            torch.arange(77).expand((1, -1)).contiguous()
    return out


def checkpoint_state_dict(model: Any, clip: Any | None = None, vae: Any | None = None) -> dict[str, torch.Tensor]:
    """The single-file state dict of the handles, with their weight patches applied."""
    family = model.family
    state: dict[str, torch.Tensor] = {}
    if clip is not None:
        state.update(clip_state_dict(clip, family))
    if vae is not None:
        state.update(vae_to_ldm(_detached(vae.vae), vae.vae.config))
    with _patched(model):
        state.update(unet_to_ldm(_detached(model.unet), model.unet.config))
    if isinstance(model.sampling, ContinuousEDMSampling):
        if model.sampling.prediction == "v":  # ComfyUI's marks of a v-prediction EDM model (CosXL)
            state["edm_vpred.sigma_max"] = model.sampling.sigma_max.clone().float()
            state["edm_vpred.sigma_min"] = model.sampling.sigma_min.clone().float()
    elif model.sampling.prediction == "v":
        state["v_pred"] = torch.tensor([])
    return {k: v.contiguous() for k, v in state.items()}


def checkpoint_metadata(model: Any, *, title: str, prompt: Any = None,
                        extra_pnginfo: dict[str, Any] | None = None, include_prompt: bool = True) -> dict[str, str]:
    """The ``__metadata__`` ComfyUI's CheckpointSave writes."""
    metadata: dict[str, str] = {}
    architecture = _ARCHITECTURES.get(model.family)
    if architecture is not None:
        metadata["modelspec.architecture"] = architecture
        metadata["modelspec.sai_model_spec"] = "1.0.0"
        metadata["modelspec.implementation"] = "sgm"
        metadata["modelspec.title"] = title
    prediction = None if isinstance(model.sampling, ContinuousEDMSampling) else model.sampling.prediction
    if prediction in ("eps", "v"):
        metadata["modelspec.predict_key"] = "epsilon" if prediction == "eps" else "v"
    if include_prompt:
        metadata["prompt"] = "" if prompt is None else json.dumps(prompt)
        if extra_pnginfo is not None:
            for key in extra_pnginfo:
                metadata[str(key)] = json.dumps(extra_pnginfo[key])
    return metadata
