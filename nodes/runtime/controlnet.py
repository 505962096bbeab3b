"""ControlNets: loading the files people have, and running them inside the denoising loop.

    control_net = load_controlnet("models/controlnet/control_v11p_sd15_canny.safetensors")
    applied = ControlApplication(control_net, hint_image, strength=0.7, start_percent=0.0, end_percent=0.8)
    positive = [[cond, {**options, "control": applied}]]

Layouts read: the original one (``control_model.input_blocks.*``, ``zero_convs.*``, ``input_hint_block.*``,
``middle_block_out.*``), the same without the ``control_model.`` prefix (how ControlNet 1.1 ``.pth`` files
name their tensors, also when re-saved as safetensors), and the diffusers one (``down_blocks.*``,
``controlnet_down_blocks.*``, ``controlnet_cond_embedding.*``); the SD3 and FLUX ControlNets
(``controlnet_blocks.*`` with ``pos_embed_input.*`` / ``controlnet_x_embedder.*``) are
:mod:`nodes.runtime.controlnet_dit`'s, diff ControlNets (built from a MODEL's weights)
:mod:`nodes.runtime.controlnet_diff`'s and union ControlNets' type parts :mod:`nodes.runtime.controlnet_union`'s.
The architecture (levels, depths, cross-attention width, hint encoder widths, SDXL's added embedding) is read
off the tensor shapes and a diffusers ``ControlNetModel`` is built from it; heads follow the UNet conventions
(SD1 8 heads, SD2/SDXL 64 channels per head).

At each model call the guided denoiser asks the conditioning's ``control`` for residuals
(:meth:`ControlApplication.residuals`), as ComfyUI's ``get_control`` does: a ControlNet is used only while
``percent_to_sigma(start) >= sigma >= percent_to_sigma(end)``; the hint (the IMAGE, channels first) is
resized to the latent size × 8 with nearest-exact and a center crop; the ControlNet sees the same scaled
input, timestep, text context and SDXL added conditioning as the UNet; its outputs are multiplied by
``strength``; chained ControlNets (``previous``) are evaluated first and their residuals summed.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from loom.nodes.kernel import sockets
from loom.nodes.runtime import devices, model_cache

log = logging.getLogger(__name__)

LDM_PREFIX = "control_model."


class ControlNetError(ValueError):
    """A file that is not a ControlNet Loom can run."""


@dataclass
class ControlNet:
    """``CONTROL_NET``: a loaded ControlNet model and where it came from."""

    model: torch.nn.Module  # diffusers ControlNetModel, SD3ControlNetModel or FluxControlNetModel
    options: dict[str, Any] = field(default_factory=dict)  # source, layout, config
    kind: str = "unet"  # the models it steers: "unet" (SD1/SD2/SDXL), "sd3", "flux"
    union: torch.nn.Module | None = None  # a union ControlNet's type parts (nodes.runtime.controlnet_union)
    control_type: tuple[int, ...] = ()  # SetUnionControlNetType's choice; () is "auto"


sockets.CONTROL_NET.register(ControlNet)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def detect_layout(keys: list[str]) -> str:
    """``"ldm"`` (``control_model.``), ``"ldm_bare"`` (no prefix), ``"diffusers"``, or the DiT ControlNets'
    ``"sd3"`` / ``"flux"``; else a clear error."""
    from loom.nodes.runtime import controlnet_dit

    names = set(keys)
    dit = controlnet_dit.detect_layout(names)
    if dit is not None:
        return dit
    if LDM_PREFIX + "zero_convs.0.0.weight" in names:
        return "ldm"
    if "zero_convs.0.0.weight" in names:
        return "ldm_bare"
    if "controlnet_cond_embedding.conv_in.weight" in names:
        return "diffusers"
    if "lora_controlnet" in names:
        raise ControlNetError("is a Control-LoRA, which Loom does not run yet; use a full ControlNet")
    if any(k.startswith(("adapter.", "body.0.", "conv_in.weight")) for k in names) and \
            not any(k.startswith("down_blocks.") for k in names):
        raise ControlNetError("looks like a T2I-Adapter, which Loom does not run yet; use a ControlNet")
    groups = sorted({".".join(k.split(".")[:2]) for k in keys})[:8]
    raise ControlNetError(f"is not a ControlNet in a known layout (found {', '.join(groups) or 'no tensors'})")


def _layers_per_block(shapes: Mapping[str, tuple[int, ...]]) -> int:
    downsamplers = sorted(int(m.group(1)) for k in shapes if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    if downsamplers:
        return downsamplers[0] - 1
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    return max(blocks)  # a single level: every block after conv_in belongs to it


def ldm_to_diffusers(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Original-layout ControlNet tensors (prefix removed) under diffusers' ``ControlNetModel`` names."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    converted = convert_controlnet_checkpoint(tensors, {"layers_per_block": _layers_per_block(shapes)})
    for old, new in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
        for leaf in ("weight", "bias"):
            if f"{old}.{leaf}" in tensors:
                converted[f"{new}.{leaf}"] = tensors[f"{old}.{leaf}"]
    converted = {k: v for k, v in converted.items() if v is not None}
    used = {id(v) for v in converted.values()}
    left = sorted(k for k, v in tensors.items() if id(v) not in used)
    if left:
        raise ControlNetError(f"{source}: {len(left)} ControlNet tensors were not understood "
                              f"(e.g. {', '.join(left[:5])})")
    return converted


def _count(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def controlnet_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.ControlNetModel`` read off diffusers-layout tensor shapes."""
    conv_in = shapes["conv_in.weight"]
    levels = _count(shapes, r"down_blocks\.(\d+)\.")
    layers_per_block = _count(shapes, r"down_blocks\.0\.resnets\.(\d+)\.")
    block_out = [shapes[f"down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(levels)]
    depths = [_count(shapes, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") for i in range(levels)]
    mid_depth = _count(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), 768)
    adm = shapes.get("add_embedding.linear_1.weight")
    if adm is not None or context in (1024, 1280, 2048):
        heads: int | list[int] = [max(1, ch // 64) for ch in block_out]  # SD2/SDXL: 64 channels per head
    else:
        heads = 8  # SD1
    layers = [d if d else (mid_depth or 1) for d in depths]
    if mid_depth and layers[-1] != mid_depth:
        layers[-1] = mid_depth  # diffusers gives the middle block the last level's depth
    hint_blocks = _count(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    hint_widths = [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + \
        [shapes[f"controlnet_cond_embedding.blocks.{2 * k + 1}.weight"][0] for k in range(hint_blocks // 2)]
    config: dict[str, Any] = dict(
        in_channels=conv_in[1],
        conditioning_channels=shapes["controlnet_cond_embedding.conv_in.weight"][1],
        down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
        block_out_channels=tuple(block_out),
        layers_per_block=layers_per_block,
        transformer_layers_per_block=tuple(layers),
        cross_attention_dim=context,
        attention_head_dim=heads,  # diffusers' historical name for the number of heads
        use_linear_projection=any(len(s) == 2 for k, s in shapes.items() if k.endswith(".proj_in.weight")),
        upcast_attention=context == 1024,
        conditioning_embedding_out_channels=tuple(hint_widths),
        norm_num_groups=32,
    )
    if adm is not None:
        # the time-id width has no weights; ComfyUI leaves it to the base model, so do we (see _added)
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=adm[1])
    return config


def load_controlnet(path: str | Path, *, model: Any = None, device: torch.device | str | None = None,
                    use_cache: bool = True) -> ControlNet:
    """Load a ControlNet file (kept in the model cache like checkpoints). ``model``: the MODEL whose UNet weights
    a diff ControlNet's differences are added to (DiffControlNetLoader); other files do not use it."""
    from loom.nodes.runtime import controlnet_diff

    device = torch.device(device) if device is not None else devices.compute_device()
    if model is not None and controlnet_diff.file_is_diff(path):
        return _load(Path(path), device, base_model=model)  # built from the model's weights: not cached by file
    if not use_cache:
        return _load(Path(path), device)
    key = ("controlnet", model_cache.file_key(path), str(device))
    size = Path(path).stat().st_size
    return model_cache.models.get_or_load(key, lambda: _load(Path(path), device),
                                          expected_bytes=size * 2 if device.type == "cpu" else size, device=device)


def _load(path: Path, device: torch.device, base_model: Any = None) -> ControlNet:
    from diffusers import ControlNetModel

    from loom.nodes.runtime import checkpoint, controlnet_diff, controlnet_union

    started = time.perf_counter()
    dtype = devices.diffusion_dtype(device)
    try:
        with checkpoint.StateDictFile(path) as file:
            layout = detect_layout(file.keys())
            diff = controlnet_diff.is_diff(file.keys(), layout)
            if diff and base_model is None:
                raise ControlNetError("is a diff ControlNet (differences to a model's UNet weights); load it with "
                                      "Load ControlNet Model (diff), which takes the MODEL")
            prefix = LDM_PREFIX if layout == "ldm" else ""
            tensors = {k[len(prefix):]: v for k, v in file.read_prefixed(prefix, dtype).items()}
    except checkpoint.CheckpointError as exc:
        raise ControlNetError(str(exc)) from None
    except ControlNetError as exc:
        raise ControlNetError(f"{path.name} {exc}") from None
    union, tensors = controlnet_union.split_union(layout, tensors, path.name)
    union = union.to(device) if union is not None else None
    if layout in ("sd3", "flux"):
        from loom.nodes.runtime import controlnet_dit

        model, config = controlnet_dit.build(layout, tensors, path.name)
        log.info("loaded %s ControlNet %s in %.2fs", layout, path.name, time.perf_counter() - started)
        return ControlNet(model=model.to(device), options={"source": str(path), "layout": layout, "config": config},
                          kind=layout, union=union)
    if layout != "diffusers":
        tensors = ldm_to_diffusers(tensors, path.name)
    if diff:
        tensors = controlnet_diff.add_unet_weights(tensors, base_model, path.name)
    try:
        config = controlnet_config({k: tuple(v.shape) for k, v in tensors.items()})
    except KeyError as exc:
        raise ControlNetError(f"{path.name}: the ControlNet lacks the tensor {exc.args[0]} (damaged file?)") from None
    with torch.device("meta"):
        model = ControlNetModel(**config)
    try:
        checkpoint._load_exact(model, tensors, "ControlNet", path.name)
    except checkpoint.CheckpointError as exc:
        raise ControlNetError(str(exc)) from None
    log.info("loaded ControlNet %s (%s layout) in %.2fs", path.name, layout, time.perf_counter() - started)
    return ControlNet(model=model.to(device), options={"source": str(path), "layout": layout, "config": config},
                      union=union)


# ---------------------------------------------------------------------------------------------
# Running inside the denoiser
# ---------------------------------------------------------------------------------------------

def _broadcast_hint(hint: torch.Tensor, batch: int) -> torch.Tensor:
    """A one-image hint broadcasts by itself; a batch of hints is repeated over the conds of the batch."""
    if hint.shape[0] == 1 or hint.shape[0] == batch:
        return hint
    repeats = -(-batch // hint.shape[0])
    return hint.repeat(repeats, 1, 1, 1)[:batch]


class ControlApplication:
    """A ControlNet applied to a conditioning: hint, strength, step range and the ControlNet before it.

    One object is shared by every conditioning entry it was applied to (positive and negative), so
    the guided denoiser can batch them into one ControlNet call.
    """

    def __init__(self, control_net: ControlNet, hint: torch.Tensor, strength: float, start_percent: float = 0.0,
                 end_percent: float = 1.0, previous: "ControlApplication | None" = None, vae: Any = None) -> None:
        self.control_net = control_net
        self.vae = vae  # the VAE that encodes the hint for SD3/FLUX ControlNets (ComfyUI: ignored for UNet ones)
        self.hint = hint  # [B, C, H, W] in 0..1 (the IMAGE moved channels-first)
        self.strength = float(strength)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.previous = previous
        self._resized: tuple[tuple[int, ...], torch.Tensor] | None = None

    def chain(self) -> list["ControlApplication"]:
        """This application and the ones before it, first applied first."""
        out: list[ControlApplication] = []
        node: ControlApplication | None = self
        while node is not None:
            out.append(node)
            node = node.previous
        return out[::-1]

    def _active(self, sigma: float, sampling: Any) -> bool:
        from loom.nodes.runtime.denoiser import percent_to_sigma

        return percent_to_sigma(sampling, self.end_percent) <= sigma <= percent_to_sigma(sampling, self.start_percent)

    def _hint_for(self, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        from loom.nodes.runtime.resample import common_upscale

        size = (int(x.shape[2]) * 8, int(x.shape[3]) * 8)
        if self._resized is None or self._resized[0] != size:
            resized = common_upscale(self.hint.float(), size[1], size[0], "nearest-exact", "center")
            self._resized = (size, resized)
        return _broadcast_hint(self._resized[1], x.shape[0]).to(device=device, dtype=dtype)

    def _added(self, model: torch.nn.Module, added: Mapping[str, torch.Tensor] | None, device: torch.device,
               dtype: torch.dtype) -> dict[str, Any]:
        if getattr(model.config, "addition_embed_type", None) != "text_time":
            return {}
        if not added:
            raise ControlNetError("this ControlNet is for SDXL and needs SDXL conditioning (pooled text and size)")
        pooled, time_ids = added["text_embeds"], added["time_ids"]
        # the base model decides the width of each size/crop number's embedding
        width = (model.config.projection_class_embeddings_input_dim - pooled.shape[-1]) // time_ids.shape[-1]
        if model.add_time_proj.num_channels != width:
            model.add_time_proj.num_channels = width
        return {"added_cond_kwargs": {k: v.to(device=device, dtype=dtype) for k, v in added.items()}}

    def _own_residuals(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                       added: Mapping[str, torch.Tensor] | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = self.control_net.model
        parameter = next(model.parameters())
        device, dtype = parameter.device, parameter.dtype
        extra = self._added(model, added, device, dtype)
        from loom.nodes.runtime.controlnet_union import union_hooks

        with torch.no_grad(), union_hooks(self.control_net):
            down, mid = model(x.to(device=device, dtype=dtype), timestep.to(device),
                              encoder_hidden_states=context.to(device=device, dtype=dtype),
                              controlnet_cond=self._hint_for(x, device, dtype), conditioning_scale=self.strength,
                              return_dict=False, **extra)
        return list(down), mid

    def residuals(self, x: torch.Tensor, sigma: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                  added: Mapping[str, torch.Tensor] | None = None, *, model: Any = None,
                  ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """``(down_block_additional_residuals, mid_block_additional_residual)`` for this call, or ``None``.

        ``x`` is the UNet's (scaled) input, ``sigma`` the noise level per latent, ``model`` the MODEL being
        sampled (its noise schedule turns the start/end percentages into sigmas).
        """
        if model is None:
            raise ControlNetError("ControlNet residuals need the MODEL being sampled (for start/end percent)")
        from loom.nodes.runtime.controlnet_dit import check_kind

        for application in self.chain():
            check_kind(application.control_net.kind, "unet")
        current = float(sigma[0])
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for application in self.chain():
            if application.strength == 0 or not application._active(current, model.sampling):
                continue
            own_down, own_mid = application._own_residuals(x, timestep, context, added)
            if down is None:
                down, mid = own_down, own_mid
            else:
                if len(own_down) != len(down):
                    raise ControlNetError("chained ControlNets have different block layouts (one is for another "
                                          "model family)")
                down = [prev + cur for prev, cur in zip(down, own_down)]
                mid = mid + own_mid
        if down is None:
            return None
        return down, mid



def model_kind(model: Any) -> str | None:
    """Which ControlNets a MODEL takes: ``"unet"`` for the UNet families, else its family's ``controlnet_kind``."""
    from loom.nodes.runtime import families
    from loom.nodes.runtime.families.unet import UNetFamily

    family = families.get(model.family)
    return "unet" if isinstance(family, UNetFamily) else getattr(family, "controlnet_kind", None)


def check_controls(node: str, name: str, conditioning: Any, model: Any) -> None:
    """A clear error (naming ``node`` and input ``name``) when a ControlNet on ``conditioning`` was made for
    another kind of model than ``model``; sampler nodes call it before sampling."""
    from loom.nodes.runtime.controlnet_dit import check_kind

    if not isinstance(conditioning, (list, tuple)) or not hasattr(model, "family"):
        return
    kind = model_kind(model)
    for entry in conditioning:
        options = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
        control = options.get("control") if isinstance(options, dict) else None
        if not isinstance(control, ControlApplication):
            continue
        try:
            for application in control.chain():
                check_kind(application.control_net.kind, kind)
        except ControlNetError as exc:
            raise ValueError(f"{node}: input '{name}': {exc}") from None
