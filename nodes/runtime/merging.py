"""Model merging as weight patches: ComfyUI's ``add_patches(model2's weights, strength_patch, strength_model)``.

    patch = merge_patch(model1, model2, lambda ldm_key: (1.0 - ratio, ratio), kind="unet")
    merged = model1.replace(patches=model1.patches + (patch,))

Each weight of the first model that the second one also has becomes, when the patch is applied,
``w1 * strength_model + strength_patch * w2`` (ComfyUI's ``calculate_weight`` "diff" step: the multiply
only when ``strength_model != 1``, the add only when ``strength_patch != 0``, in float32, cast to the
weight's dtype once). ``w1`` is the weight as the patches before this one left it, ``w2`` the second
model's weight with its own patches (a LoRA on it) applied, captured when the merge node runs, by
reference: the base models are never changed in place, so no copy is needed. Shapes that differ are
skipped with a warning, as ComfyUI does. Like a LoRA, the patch is never baked into the shared module:
:meth:`MergePatch.applied` swaps patched copies in for one sampling or encoding run.

Weights are matched by ComfyUI's names: UNet parameters by their original (LDM) key
``diffusion_model.input_blocks...`` (from :func:`loom.nodes.runtime.ldm_layout.unet_to_ldm`), which is
also the name the per-block ratios of ModelMergeBlocks/ModelMergeSDXL are chosen by; text encoders by
encoder slot (``l``/``g``/``h``, ComfyUI's ``clip_l.``/``clip_g.``/``clip_h.``) and parameter path.
Text-encoder results are rounded through float16, the precision ComfyUI stores them in (as LoRA does).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from loom.nodes.runtime.lora import TEXT_ENCODER_STORAGE_DTYPE, _components

log = logging.getLogger(__name__)

# what ComfyUI's CLIP merges leave out
CLIP_SKIPPED_SUFFIXES = (".position_ids", ".logit_scale")


@dataclass(frozen=True)
class MergeEntry:
    component: str  # "unet" or a text-encoder slot
    path: str  # parameter path inside the component
    source: torch.Tensor  # the second model's weight
    strength_patch: float
    strength_model: float


@dataclass(frozen=True)
class MergePatch:
    """One merge node's weight patches; applied in the order the handle's ``patches`` hold them."""

    name: str
    entries: tuple[MergeEntry, ...]

    @contextlib.contextmanager
    def applied(self, handle: Any) -> Iterator[None]:
        components = _components(handle)
        storage = TEXT_ENCODER_STORAGE_DTYPE if hasattr(handle, "encoders") else None
        originals: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
        try:
            with torch.no_grad():
                for entry in self.entries:
                    module_path, _, attr = entry.path.rpartition(".")
                    module = components[entry.component].get_submodule(module_path)
                    parameter = module._parameters[attr]
                    patched = merged_weight(parameter, entry, storage)
                    if patched is None:
                        continue
                    originals.append((module, attr, parameter))
                    module._parameters[attr] = torch.nn.Parameter(patched, requires_grad=False)
            yield
        finally:
            for module, attr, parameter in reversed(originals):
                module._parameters[attr] = parameter


def merged_weight(weight: torch.Tensor, entry: MergeEntry, storage: torch.dtype | None = None) -> torch.Tensor | None:
    """ComfyUI's ``calculate_weight`` for one ``(strength_patch, (w2,), strength_model)`` patch; ``None``
    when it leaves the weight as it is."""
    if entry.strength_model == 1.0 and entry.strength_patch == 0.0:
        return None
    patched = weight.detach().to(torch.float32, copy=True)
    if entry.strength_model != 1.0:
        patched *= entry.strength_model
    if entry.strength_patch != 0.0:
        if tuple(entry.source.shape) != tuple(weight.shape):
            log.warning("shape mismatch %s: weight not merged %s != %s", entry.path, tuple(entry.source.shape),
                        tuple(weight.shape))
        else:
            patched += entry.strength_patch * entry.source.to(device=weight.device, dtype=torch.float32)
    if storage is not None:
        patched = patched.to(storage)
    return patched.to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# Building a merge
# ---------------------------------------------------------------------------------------------

def effective_parameters(handle: Any) -> dict[tuple[str, str], torch.Tensor]:
    """``(component, parameter path) → tensor`` of a handle with its own patches applied (references)."""
    with contextlib.ExitStack() as stack:
        for patch in handle.patches:
            stack.enter_context(patch.applied(handle))
        return {(component, path): parameter.detach()
                for component, module in _components(handle).items()
                for path, parameter in module.named_parameters()}


def unet_ldm_names(unet: torch.nn.Module) -> dict[str, str]:
    """Diffusers UNet parameter path → ComfyUI's key without the model prefix (``input_blocks.1.1...``)."""
    from loom.nodes.runtime.ldm_layout import unet_to_ldm

    paths = {path: path for path, _ in unet.named_parameters()}
    return {path: ldm.removeprefix("model.diffusion_model.") for ldm, path in unet_to_ldm(paths, unet.config).items()}


def merge_patch(first: Any, second: Any, strengths: Callable[[str], tuple[float, float]], *,
                name: str) -> MergePatch:
    """The patch that merges ``second``'s weights into ``first`` (two MODEL or two CLIP handles).

    ``strengths(key)`` gives ``(strength_patch, strength_model)`` for ComfyUI's key of each weight: the
    LDM key without ``diffusion_model.`` for a UNet, ``clip_<slot>.<path>`` for a text encoder.
    """
    is_unet = hasattr(first, "unet")
    if is_unet != hasattr(second, "unet"):
        raise ValueError(f"{name}: cannot merge a MODEL with a CLIP")
    sources = effective_parameters(second)
    entries: list[MergeEntry] = []
    if is_unet:
        first_names = unet_ldm_names(first.unet)
        second_by_ldm = {ldm: path for path, ldm in unet_ldm_names(second.unet).items()}
        for path, ldm in first_names.items():
            other = second_by_ldm.get(ldm)
            if other is None:
                continue
            strength_patch, strength_model = strengths(ldm)
            entries.append(MergeEntry("unet", path, sources[("unet", other)], float(strength_patch),
                                      float(strength_model)))
    else:
        for component, (_tokenizer, module) in first.encoders.items():
            for path, _parameter in module.named_parameters():
                source = sources.get((component, path))
                if source is None or path.endswith(CLIP_SKIPPED_SUFFIXES):
                    continue
                strength_patch, strength_model = strengths(f"clip_{component}.{path}")
                entries.append(MergeEntry(component, path, source, float(strength_patch), float(strength_model)))
    return MergePatch(name, tuple(entries))


def block_ratio(ldm_key: str, ratios: dict[str, float]) -> float:
    """ModelMergeBlocks' choice: the ratio of the longest input name that ``ldm_key`` starts with, else
    the first ratio."""
    ratio = next(iter(ratios.values()))
    longest = 0
    for prefix, value in ratios.items():
        if ldm_key.startswith(prefix) and longest < len(prefix):
            ratio = value
            longest = len(prefix)
    return ratio
