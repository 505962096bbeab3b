"""CLIP vision encoders (ComfyUI's ``CLIP_VISION``): detection from key shapes, loading, preprocessing, encoding.

    vision = load_clip_vision("models/clip_vision/clip_vision_h.safetensors")
    output = vision.encode_image(image, crop=True)      # CLIP_VISION_OUTPUT

The network is transformers' ``CLIPVisionModelWithProjection`` (OpenAI/OpenCLIP ViT-L, ViT-H, ViT-bigG) or
``SiglipVisionModel`` (SigLIP so400m, as FLUX Redux uses), configured from the file's shapes. ComfyUI
(``comfy/clip_vision.py``) decides the kind the same way: by how many encoder layers there are (48: bigG,
31+: ViT-H, 23+: ViT-L or, at width 1152, SigLIP), the position count telling ViT-L 224 from ViT-L 336 and
SigLIP 384 from SigLIP 512. What the shapes cannot say comes from the kind, as in ComfyUI's JSON configs:
16 attention heads, the activation (quick_gelu for ViT-L, gelu for ViT-H/bigG, tanh-gelu for SigLIP), the
normalisation (OpenAI's mean/std for CLIP, 0.5/0.5 for SigLIP), SigLIP's input size, and LayerNorm eps 1e-5
(ComfyUI's LayerNorm default, also for SigLIP).

Two key layouts load: transformers' (``vision_model.*`` + ``visual_projection.weight``, what ComfyUI's
clip_vision folder holds) and OpenCLIP's (``visual.*`` with fused ``in_proj`` attention), converted as
ComfyUI's ``convert_to_transformers`` does; an unCLIP checkpoint's ``embedder.model.visual.*`` uses the same
conversion. Weights are rounded to the text-encoder dtype (fp16 on a GPU) as ComfyUI stores them, and kept in
float32 for the forward pass, as ComfyUI's ``manual_cast`` layers compute in the float32 input's dtype.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from loom.nodes.kernel import sockets
from loom.nodes.runtime import devices, model_cache

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

OPENCLIP_MARKER = "transformer.resblocks.0.attn.in_proj_weight"

# Keys a CLIP vision file may carry that no vision encoder output uses (ComfyUI loads with strict=False and
# drops them): a whole CLIPModel's text half, SigLIP's pooling head, a LLaVA projector, position ids.
_IGNORED = re.compile(r"^(text_model\.|text_projection\.|logit_scale$|logit_bias$|vision_model\.head\.|"
                      r"multi_modal_projector\.|.*position_ids$)")


class ClipVisionError(ValueError):
    """A file that is not a CLIP vision model Loom can load; the message says what it is."""


@dataclass(frozen=True)
class VisionArchitecture:
    """What was detected, with the transformers config built from it."""

    kind: str                      # "vit-l" | "vit-l-336" | "vit-h" | "vit-bigg" | "siglip-384" | "siglip-512"
    model_type: str                # "clip_vision_model" | "siglip_vision_model" (ComfyUI's model_type)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    patch_size: int
    image_size: int
    projection_dim: int | None     # None: no projection (SigLIP: image_embeds is the normed last hidden state)
    hidden_act: str
    num_heads: int = 16
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def is_siglip(self) -> bool:
        return self.model_type == "siglip_vision_model"

    def transformers_config(self) -> Any:
        common = dict(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                      num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads, num_channels=3,
                      image_size=self.image_size, patch_size=self.patch_size, hidden_act=self.hidden_act,
                      layer_norm_eps=1e-5, attention_dropout=0.0)
        if self.is_siglip:
            from transformers import SiglipVisionConfig
            return SiglipVisionConfig(**common, vision_use_head=False)
        from transformers import CLIPVisionConfig
        return CLIPVisionConfig(**common, projection_dim=self.projection_dim)


DISPLAY_NAMES = {"vit-l": "CLIP ViT-L/14", "vit-l-336": "CLIP ViT-L/14 336px", "vit-h": "OpenCLIP ViT-H/14",
                 "vit-bigg": "OpenCLIP ViT-bigG/14", "siglip-384": "SigLIP so400m 384px",
                 "siglip-512": "SigLIP so400m 512px"}


# ---------------------------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------------------------

def is_openclip_layout(keys: Any, prefix: str = "visual.") -> bool:
    return prefix + OPENCLIP_MARKER in keys


def convert_openclip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP ``{prefix}*`` vision tensors under transformers' names (ComfyUI's ``convert_to_transformers``).

    Keys outside ``prefix`` are dropped. The fused ``in_proj`` attention weight splits into q, k, v thirds;
    ``proj`` ([width, dim]) becomes ``visual_projection.weight`` transposed.
    """
    renames = {"class_embedding": "vision_model.embeddings.class_embedding",
               "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
               "positional_embedding": "vision_model.embeddings.position_embedding.weight",
               "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
               "ln_post.weight": "vision_model.post_layernorm.weight",
               "ln_post.bias": "vision_model.post_layernorm.bias"}
    block_renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                     "attn.out_proj": "self_attn.out_proj"}
    block = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
    fused = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in renames:
            out[renames[name]] = tensor
        elif name == "proj":
            out["visual_projection.weight"] = tensor.transpose(0, 1)
        elif m := fused.match(name):
            third = tensor.shape[0] // 3
            for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"vision_model.encoder.layers.{m.group(1)}.self_attn.{part}.{m.group(2)}"] = \
                    tensor[third * i:third * (i + 1)]
        elif (m := block.match(name)) and m.group(2) in block_renames:
            out[f"vision_model.encoder.layers.{m.group(1)}.{block_renames[m.group(2)]}.{m.group(3)}"] = tensor
        else:
            out["unconverted." + name] = tensor  # reported as not understood
    return out


def openclip_shapes(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    """The transformers-layout shapes of an OpenCLIP vision tower, without reading any tensor."""
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(prefix)}
    return {k: tuple(v.shape) for k, v in convert_openclip(fake, prefix).items()}


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

def _layer_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    pattern = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.weight$")
    found = [int(m.group(1)) for k in shapes if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def _what_it_is(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """A name for image encoders ComfyUI's clip_vision loader knows that Loom does not build."""
    if "encoder.layer.39.layer_scale2.lambda1" in shapes or "encoder.layer.23.layer_scale2.lambda1" in shapes:
        return "a DINOv2 image encoder"
    if "layer.0.mlp.gate_proj.weight" in shapes or "layer.23.attention.o_proj.bias" in shapes:
        return "a DINOv3 image encoder"
    if any(k.startswith("text_model.") for k in shapes) and not any(k.startswith("vision_model.") for k in shapes):
        return "a CLIP text encoder (it belongs in models/text_encoders)"
    if any(k.startswith(("model.diffusion_model.", "double_blocks.", "joint_blocks.")) for k in shapes):
        return "a diffusion model or checkpoint"
    if "redux_down.weight" in shapes or "style_embedding" in shapes:
        return "a style model (it belongs in models/style_models)"
    return None


def _groups(shapes: Mapping[str, tuple[int, ...]]) -> str:
    counts: dict[str, int] = {}
    for key in shapes:
        group = ".".join(key.split(".")[:2])
        counts[group] = counts.get(group, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{g}.* ({n})" for g, n in top) or "no tensors"


def detect(shapes: Mapping[str, tuple[int, ...]], source: str = "file") -> VisionArchitecture:
    """The architecture of a transformers-layout vision tower from its shapes, decided as ComfyUI does."""
    layers = _layer_count(shapes)
    required = ("vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
                "vision_model.encoder.layers.0.mlp.fc1.weight")
    if layers < 23 or any(k not in shapes for k in required):
        what = _what_it_is(shapes)
        found = f"it is {what}" if what else f"found {layers} vision encoder layers; key groups: {_groups(shapes)}"
        raise ClipVisionError(
            f"clip vision file is invalid and does not contain a valid vision model: {source}: {found}. Loom (like "
            "ComfyUI) loads CLIP ViT-L/14 (224 or 336 px), OpenCLIP ViT-H/14 and ViT-bigG/14, and SigLIP so400m "
            "(384 or 512 px) vision models, in the transformers (vision_model.*) or OpenCLIP (visual.*) layout")
    width = shapes["vision_model.encoder.layers.0.layer_norm1.weight"][0]
    intermediate = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
    patch = shapes["vision_model.embeddings.patch_embedding.weight"]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    projection = shapes.get("visual_projection.weight")
    common = dict(hidden_size=width, intermediate_size=intermediate, num_layers=layers)

    if layers < 31 and width == 1152:  # SigLIP (ComfyUI's clip_vision_siglip_*.json)
        if len(patch) == 2:
            raise ClipVisionError(f"{source} is a SigLIP2 NaFlex vision model (flattened patch embedding), which "
                                  "Loom does not support")
        sizes = {729: ("siglip-384", 384), 1024: ("siglip-512", 512)}
        if positions not in sizes:
            raise ClipVisionError(f"{source} looks like a SigLIP vision model but has {positions} positions; "
                                  "only the 384 px (729 positions) and 512 px (1024 positions) variants are known")
        kind, size = sizes[positions]
        return VisionArchitecture(kind=kind, model_type="siglip_vision_model", patch_size=patch[-1], image_size=size,
                                  projection_dim=None, hidden_act="gelu_pytorch_tanh", mean=SIGLIP_MEAN,
                                  std=SIGLIP_STD, **common)

    if "vision_model.embeddings.class_embedding" not in shapes or projection is None:
        missing = "class_embedding" if projection is not None else "visual_projection.weight"
        raise ClipVisionError(f"{source}: a CLIP vision model needs vision_model.embeddings.class_embedding and "
                              f"visual_projection.weight; {missing} is missing (an incomplete file?)")
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise ClipVisionError(f"{source}: {positions} position embeddings is not a square grid plus the class token")
    if layers >= 48:
        kind, act = "vit-bigg", "gelu"
    elif layers >= 31:
        kind, act = "vit-h", "gelu"
    else:
        kind, act = ("vit-l-336" if positions == 577 else "vit-l"), "quick_gelu"
    return VisionArchitecture(kind=kind, model_type="clip_vision_model", patch_size=patch[-1],
                              image_size=side * patch[-1], projection_dim=projection[0], hidden_act=act, **common)


# ---------------------------------------------------------------------------------------------
# Preprocessing and output
# ---------------------------------------------------------------------------------------------

def clip_preprocess(image: torch.Tensor, size: int, mean: tuple[float, ...] = CLIP_MEAN,
                    std: tuple[float, ...] = CLIP_STD, crop: bool = True) -> torch.Tensor:
    """``[B, H, W, C]`` in 0..1 → normalised ``[B, 3, size, size]`` pixels, as ComfyUI's ``clip_preprocess``.

    Alpha is dropped. A picture that is not already ``size``×``size`` is resized bicubically with antialias:
    with ``crop`` its short side to ``size`` and the centre cut out, without it squashed to ``size``×``size``.
    Values are quantised to 8 bits before normalising.
    """
    image = image[:, :, :, :3] if image.shape[3] > 3 else image
    mean_t = torch.tensor(mean, device=image.device, dtype=image.dtype)
    std_t = torch.tensor(std, device=image.device, dtype=image.dtype)
    image = image.movedim(-1, 1)
    if not (image.shape[2] == size and image.shape[3] == size):
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            scaled = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            scaled = (size, size)
        image = torch.nn.functional.interpolate(image, size=scaled, mode="bicubic", antialias=True)
        top = (image.shape[2] - size) // 2
        left = (image.shape[3] - size) // 2
        image = image[:, :, top:top + size, left:left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    return (image - mean_t.view([3, 1, 1])) / std_t.view([3, 1, 1])


class ClipVisionOutput:
    """``CLIP_VISION_OUTPUT``: ComfyUI's ``Output``, read by attribute or by key.

    ``last_hidden_state`` [B, tokens, width] (CLIP: before the post-LayerNorm; SigLIP: after it),
    ``image_embeds`` (CLIP: the projected, post-normed class token [B, dim]; SigLIP: the last hidden state),
    ``penultimate_hidden_states`` (the second-to-last layer's output), ``image_sizes``, ``mm_projected`` (None:
    no LLaVA projector) and, for SigLIP, ``all_hidden_states`` [B, layers, tokens, width].
    """

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.__dict__

    def keys(self) -> list[str]:
        return list(self.__dict__)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return f"ClipVisionOutput({shapes})"


sockets.CLIP_VISION_OUTPUT.register(ClipVisionOutput)


@dataclass
class ClipVisionModel:
    """``CLIP_VISION``: a vision tower with its preprocessing."""

    module: torch.nn.Module
    architecture: VisionArchitecture
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.architecture.image_size

    def preprocess(self, image: torch.Tensor, crop: bool = True) -> torch.Tensor:
        arch = self.architecture
        return clip_preprocess(image, arch.image_size, arch.mean, arch.std, crop=crop).float()

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        device = next(self.module.parameters()).device
        pixel_values = self.preprocess(image.to(device), crop=crop)
        return self.encode_pixels(pixel_values)

    @torch.no_grad()
    def encode_pixels(self, pixel_values: torch.Tensor) -> ClipVisionOutput:
        """The forward pass on already-preprocessed ``[B, 3, size, size]`` pixels."""
        device = next(self.module.parameters()).device
        pixel_values = pixel_values.to(device=device, dtype=torch.float32)
        out = self.module(pixel_values=pixel_values, output_hidden_states=True)
        target = devices.intermediate_device()
        result = ClipVisionOutput()
        result["last_hidden_state"] = out.last_hidden_state.to(target)
        if self.architecture.is_siglip:
            result["image_embeds"] = out.last_hidden_state.to(target)
        else:
            result["image_embeds"] = out.image_embeds.to(target)
        result["image_sizes"] = [pixel_values.shape[1:]] * pixel_values.shape[0]
        result["penultimate_hidden_states"] = out.hidden_states[-2].to(target)
        if self.architecture.is_siglip:
            result["all_hidden_states"] = torch.stack(out.hidden_states[1:], dim=1).to(target)
        result["mm_projected"] = None
        return result


sockets.CLIP_VISION.register(ClipVisionModel)


# ---------------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------------

def build(state: Mapping[str, torch.Tensor], architecture: VisionArchitecture, *, device: torch.device | str,
          storage_dtype: torch.dtype, source: str = "file") -> ClipVisionModel:
    """A :class:`ClipVisionModel` from transformers-layout tensors; every needed tensor must be there."""
    from transformers import CLIPVisionModelWithProjection, SiglipVisionModel

    from loom.nodes.runtime.checkpoint import CheckpointError, _instantiate, _load_exact

    config = architecture.transformers_config()
    cls = SiglipVisionModel if architecture.is_siglip else CLIPVisionModelWithProjection
    module = _instantiate(cls, config)
    expected = set(module.state_dict())
    flattened = not any(k.startswith("vision_model.") for k in expected)  # newer transformers' SigLIP
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if _IGNORED.match(key):
            continue
        name = key.removeprefix("vision_model.") if flattened else key
        # rounded as ComfyUI stores them, computed in float32 as its manual_cast layers do
        weights[name] = tensor.to(storage_dtype).to(torch.float32)
    try:
        _load_exact(module, weights, f"{DISPLAY_NAMES[architecture.kind]} vision model", source)
    except CheckpointError as exc:
        raise ClipVisionError(str(exc)) from None
    module.to(device)
    return ClipVisionModel(module=module, architecture=architecture, options={"source": source})


def load_clip_vision(path: str | Path, *, device: torch.device | str | None = None,
                     use_cache: bool = True) -> ClipVisionModel:
    """Load a clip_vision file (transformers or OpenCLIP layout); cached like the other models."""
    device = torch.device(device) if device is not None else devices.compute_device()
    if not use_cache:
        return _load(Path(path), device)
    key = ("clip_vision", model_cache.file_key(path), str(device))
    size = Path(path).stat().st_size
    return model_cache.models.get_or_load(key, lambda: _load(Path(path), device),
                                          expected_bytes=size * 2, device=device)


def _load(path: Path, device: torch.device) -> ClipVisionModel:
    from loom.nodes.runtime.checkpoint import StateDictFile

    with StateDictFile(path) as file:
        if is_openclip_layout(file.shapes, "visual."):
            return load_from_state_dict(file, "visual.", device=device, source=path.name)
        return load_from_state_dict(file, "", device=device, source=path.name)


def load_from_state_dict(file: Any, prefix: str, *, device: torch.device, source: str) -> ClipVisionModel:
    """The vision tower under ``prefix`` of an open :class:`~loom.nodes.runtime.checkpoint.StateDictFile`.

    An OpenCLIP tower (``{prefix}transformer.resblocks.*``) is converted; otherwise ``prefix`` is stripped
    from transformers-layout names (ComfyUI's ``load_clipvision_from_sd``).
    """
    shapes = file.shapes
    openclip = is_openclip_layout(shapes, prefix)
    if openclip:
        converted_shapes = openclip_shapes(shapes, prefix)
    else:
        converted_shapes = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
    architecture = detect(converted_shapes, source)
    storage = devices.text_encoder_dtype(device)
    tensors = {k: file.read(k) for k in shapes if k.startswith(prefix)}
    if openclip:
        state = convert_openclip(tensors, prefix)
        leftovers = sorted(k.removeprefix("unconverted.") for k in state if k.startswith("unconverted."))
        if leftovers:
            raise ClipVisionError(f"{source}: {len(leftovers)} OpenCLIP vision tensors were not understood "
                                  f"(e.g. {', '.join(leftovers[:5])})")
    else:
        state = {k[len(prefix):]: v for k, v in tensors.items()}
    log.info("loading %s as %s (%d layers, width %d, %d px)", source, DISPLAY_NAMES[architecture.kind],
             architecture.num_layers, architecture.hidden_size, architecture.image_size)
    return build(state, architecture, device=device, storage_dtype=storage, source=source)
