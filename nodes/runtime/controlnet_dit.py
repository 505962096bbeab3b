"""ControlNets for the diffusion transformers: SD3's and FLUX's, in the single-file layouts people have.

Layouts read (as ComfyUI's ``load_controlnet_state_dict`` tells them apart):

* ``"sd3"``: diffusers' ``SD3ControlNetModel`` (InstantX SD3 ControlNets: ``pos_embed.*``,
  ``pos_embed_input.*``, ``time_text_embed.*``, ``context_embedder.*``, ``transformer_blocks.N.*``,
  ``controlnet_blocks.N.*``);
* ``"flux"``: diffusers' ``FluxControlNetModel`` (InstantX FLUX ControlNets: ``x_embedder``,
  ``controlnet_x_embedder``, ``transformer_blocks.N.*``, ``single_transformer_blocks.N.*``,
  ``controlnet_blocks.N.*``, ``controlnet_single_blocks.N.*``).

The XLabs / Mistoline FLUX layouts and Stability's SD3.5 ControlNets are recognised and refused with a clear
message; a FLUX union ControlNet's mode embedding is :mod:`nodes.runtime.controlnet_union`'s. Configs come from
the shapes.

As ComfyUI computes them (``comfy/controlnet.py``, ``comfy/cldm/mmdit.py``, ``comfy/ldm/flux/controlnet.py``):

* the hint IMAGE is resized to the latent size x 8 (nearest-exact, center crop), VAE-encoded and put into the
  model's latent space with the family's ``process_in`` (SD3 ControlNets: scale 1.5305 and *no* shift); a
  ControlNet whose hint embedder takes one channel more (inpainting) gets a mask of ones appended;
* the ControlNet gets the same scaled input, timestep and text context as the model; SD3 ControlNets get a
  zero pooled vector, FLUX ControlNets the pooled vector and guidance;
* SD3: block ``i``'s output is used ``depth // blocks`` times in a row (the last one once less), where
  ``depth`` is the ControlNet's width / 64; the model adds entry ``i`` to joint block ``i``'s image tokens;
* FLUX: each double block's output is repeated ``ceil(19 / doubles)`` times (19 entries), each single
  block's ``ceil(38 / singles)`` times (38 entries); the model adds entry ``i`` to double / single block ``i``'s
  image tokens;
* outputs are multiplied by ``strength``; chained ControlNets add entry by entry.

The residuals go into diffusers' transformer calls as one entry per block (blocks without one get zeros, so
diffusers' own spreading of shorter lists never applies); SD3's last joint block, which diffusers leaves out,
takes its entry through a forward hook.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from loom.nodes.runtime.controlnet import ControlApplication
    from loom.nodes.runtime.model_types import DiffusionModel, LatentFormat

KIND_NAMES = {"unet": "UNet (SD1/SD2/SDXL)", "sd3": "SD3", "flux": "FLUX"}
FLUX_MAIN_DOUBLE = 19  # ComfyUI's ControlNetFlux sizes its outputs for FLUX.1's 19 + 38 blocks
FLUX_MAIN_SINGLE = 38

Shapes = Mapping[str, Sequence[int]]


def _error(message: str) -> Exception:
    from loom.nodes.runtime.controlnet import ControlNetError

    return ControlNetError(message)


def detect_layout(names: set[str]) -> str | None:
    """``"sd3"`` / ``"flux"`` for a DiT ControlNet Loom runs, ``None`` if the file is not one; a clear error for
    DiT ControlNets in layouts Loom does not run yet."""
    if "controlnet_blocks.0.linear.weight" in names:
        raise _error("is a Mistoline FLUX ControlNet, which Loom does not run yet; use an InstantX FLUX ControlNet")
    if "controlnet_blocks.0.weight" not in names:
        return None
    if "double_blocks.0.img_attn.norm.key_norm.scale" in names:
        raise _error("is an XLabs FLUX ControlNet, which Loom does not run yet; use an InstantX FLUX ControlNet")
    if "pos_embed_input.proj.weight" in names:
        if "transformer_blocks.0.adaLN_modulation.1.bias" in names:
            raise _error("is a Stability SD3.5 ControlNet, which Loom does not run yet; use an SD3 ControlNet in "
                         "diffusers' layout")
        if "context_embedder.weight" not in names:
            raise _error("is an SD3 ControlNet without a text context embedder, which Loom does not run yet")
        return "sd3"
    if "controlnet_x_embedder.weight" in names:
        return "flux"  # a union one's mode embedding is nodes.runtime.controlnet_union's
    return None


def _count(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def sd3_config(shapes: Shapes) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.SD3ControlNetModel`` read off its tensor shapes."""
    hidden, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
    positions = shapes["pos_embed.pos_embed"][1]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise _error(f"the SD3 ControlNet's position table has {positions} entries, not a square grid")
    context = shapes["context_embedder.weight"]
    dual = tuple(sorted({int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.attn2\.", k))}))
    return dict(
        sample_size=128, patch_size=patch, in_channels=in_channels,
        num_layers=_count(shapes, r"transformer_blocks\.(\d+)\."),
        attention_head_dim=64, num_attention_heads=max(1, hidden // 64),
        joint_attention_dim=context[1], caption_projection_dim=context[0],
        pooled_projection_dim=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        out_channels=in_channels, pos_embed_max_size=grid,
        extra_conditioning_channels=shapes["pos_embed_input.proj.weight"][1] - in_channels,
        dual_attention_layers=dual,
        qk_norm="rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in shapes else None,
    )


def flux_config(shapes: Shapes) -> dict[str, Any]:
    """Keyword arguments for ``diffusers.FluxControlNetModel`` read off its tensor shapes."""
    from loom.nodes.runtime.flux_layout import rope_axes

    hidden, in_channels = shapes["x_embedder.weight"]
    doubles = _count(shapes, r"transformer_blocks\.(\d+)\.")
    singles = _count(shapes, r"single_transformer_blocks\.(\d+)\.")
    block = "transformer_blocks.0" if doubles else "single_transformer_blocks.0"
    head_dim = shapes[f"{block}.attn.norm_q.weight"][0]
    hint = shapes["controlnet_x_embedder.weight"][1]
    if hint != in_channels:
        raise _error(f"the FLUX ControlNet's hint embedder takes {hint} features and its image embedder "
                     f"{in_channels}; Loom runs InstantX FLUX ControlNets whose hints are latents like the image")
    return dict(
        patch_size=1, in_channels=in_channels, num_layers=doubles, num_single_layers=singles,
        attention_head_dim=head_dim, num_attention_heads=hidden // head_dim,
        joint_attention_dim=shapes["context_embedder.weight"][1],
        pooled_projection_dim=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        axes_dims_rope=rope_axes(head_dim),
    )


def build(kind: str, tensors: dict[str, torch.Tensor], source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The diffusers ControlNet for ``kind`` with every tensor of the file loaded (strict)."""
    from diffusers import FluxControlNetModel, SD3ControlNetModel

    from loom.nodes.runtime import checkpoint

    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    try:
        config = sd3_config(shapes) if kind == "sd3" else flux_config(shapes)
    except KeyError as exc:
        raise _error(f"{source}: the {KIND_NAMES[kind]} ControlNet lacks the tensor {exc.args[0]} "
                     "(damaged file?)") from None
    cls = SD3ControlNetModel if kind == "sd3" else FluxControlNetModel
    with torch.device("meta"):
        model = cls(**config)
    try:
        checkpoint._load_exact(model, tensors, f"{KIND_NAMES[kind]} ControlNet", source)
    except checkpoint.CheckpointError as exc:
        raise _error(str(exc)) from None
    return model, config


# ---------------------------------------------------------------------------------------------
# The hint: VAE latents in the model's latent space
# ---------------------------------------------------------------------------------------------

def hint_latent_format(kind: str, model_format: "LatentFormat") -> "LatentFormat":
    """The latent format a ControlNet's hint is put into (SD3's without its shift, as ComfyUI's)."""
    import dataclasses

    return dataclasses.replace(model_format, shift_factor=0.0) if kind == "sd3" else model_format


def encoded_hint(application: "ControlApplication", latent: torch.Tensor, model: "DiffusionModel",
                 channels: int) -> torch.Tensor:
    """The hint for a latent like ``latent``: resized to its size x 8, VAE-encoded, ``process_in``; cached."""
    from loom.nodes.runtime.resample import common_upscale
    from loom.nodes.runtime import vae as vae_runtime

    vae = application.vae
    if vae is None:
        raise _error(f"this {KIND_NAMES[application.control_net.kind]} ControlNet needs a VAE to encode its image; "
                     "connect the VAE to the Apply ControlNet node")
    size = (int(latent.shape[-2]) * vae.downscale, int(latent.shape[-1]) * vae.downscale)
    key = ("latent", size)
    if application._resized is None or application._resized[0] != key:
        pixels = common_upscale(application.hint.float(), size[1], size[0], "nearest-exact", "center")
        encoded = vae_runtime.encode(vae, pixels.movedim(1, -1))
        encoded = hint_latent_format(application.control_net.kind, model.latent_format).process_in(encoded)
        if encoded.shape[1] + 1 == channels:  # inpainting ControlNets: ComfyUI's default mask of ones
            encoded = torch.cat([encoded, torch.ones_like(encoded[:, :1])], dim=1)
        if encoded.shape[1] != channels:
            raise _error(f"the VAE gives {encoded.shape[1]}-channel latents; this ControlNet takes {channels}")
        application._resized = (key, encoded)
    from loom.nodes.runtime.controlnet import _broadcast_hint

    return _broadcast_hint(application._resized[1], latent.shape[0])


def _pad(x: torch.Tensor, patch: int) -> torch.Tensor:
    pad_h, pad_w = (patch - x.shape[-2] % patch) % patch, (patch - x.shape[-1] % patch) % patch
    return F.pad(x, (0, pad_w, 0, pad_h), mode="circular") if pad_h or pad_w else x


def _active_chain(control: "ControlApplication", sigma: torch.Tensor, model: "DiffusionModel", kind: str
                  ) -> list["ControlApplication"]:
    current = float(sigma[0])
    chain = control.chain()
    for application in chain:
        check_kind(application.control_net.kind, kind)
    return [a for a in chain if a.strength != 0 and a._active(current, model.sampling)]


def check_kind(control_kind: str, model_kind: str | None) -> None:
    """A clear error when a ControlNet is for another kind of model than the one being sampled."""
    if control_kind != model_kind:
        target = KIND_NAMES.get(model_kind or "", "this")
        raise _error(f"a {KIND_NAMES.get(control_kind, control_kind)} ControlNet is applied to the conditioning, "
                     f"but the MODEL being sampled is {target}; use a ControlNet made for the {target} model")


def _merge(total: list[torch.Tensor | None], own: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """ComfyUI's ``control_merge`` of one key: entry-by-entry sums, the longer list's tail kept."""
    out: list[torch.Tensor | None] = list(own)
    for i, previous in enumerate(total):
        if i >= len(out):
            out.append(previous)
        elif previous is not None:
            out[i] = previous + out[i]
    return out


def _per_block(entries: Sequence[torch.Tensor | None], blocks: int, like: torch.Tensor) -> list[torch.Tensor]:
    """One residual per model block (zeros where the ControlNet has none)."""
    zeros = torch.zeros_like(like)
    return [entries[i] if i < len(entries) and entries[i] is not None else zeros for i in range(blocks)]


# ---------------------------------------------------------------------------------------------
# SD3
# ---------------------------------------------------------------------------------------------

def sd3_outputs(net: torch.nn.Module, x: torch.Tensor, hint: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor, pooled: torch.Tensor) -> list[torch.Tensor]:
    """ComfyUI's SD3 ControlNet outputs (before strength): block outputs repeated ``depth // blocks`` times."""
    (samples,) = net(hidden_states=x, controlnet_cond=hint, conditioning_scale=1.0, encoder_hidden_states=context,
                     pooled_projections=torch.zeros_like(pooled), timestep=timestep, return_dict=False)
    blocks = len(samples)
    depth = net.config.num_attention_heads * net.config.attention_head_dim // 64
    out: list[torch.Tensor] = []
    for i, sample in enumerate(samples):
        count = depth // blocks - (1 if i == blocks - 1 else 0)
        out.extend([sample] * count)
    return out


@contextlib.contextmanager
def sd3_control(control: "ControlApplication | None", model: "DiffusionModel", x: torch.Tensor,
                sigma: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
                ) -> Iterator[dict[str, Any]]:
    """Keyword arguments for ``SD3Transformer2DModel`` carrying the ControlNets' residuals (``x``: the padded,
    scaled input in the network's dtype); the last joint block's residual is added by a hook while inside."""
    network = model.unet
    if control is None:
        yield {}
        return
    active = _active_chain(control, sigma, model, "sd3")
    entries: list[torch.Tensor | None] = []
    with torch.no_grad():
        for application in active:
            net = application.control_net.model
            parameter = next(net.parameters())
            device, dtype = parameter.device, parameter.dtype
            hint = encoded_hint(application, x, model, net.config.in_channels + net.config.extra_conditioning_channels)
            own = sd3_outputs(net, x.to(device=device, dtype=dtype),
                              _pad(hint, net.config.patch_size).to(device=device, dtype=dtype),
                              timestep.to(device=device, dtype=dtype), context.to(device=device, dtype=dtype),
                              pooled.to(device=device, dtype=dtype))
            entries = _merge(entries, [o * application.strength for o in own])
    if not any(e is not None for e in entries):
        yield {}
        return
    parameter = next(network.parameters())
    entries = [e.to(device=parameter.device, dtype=parameter.dtype) if e is not None else None for e in entries]
    blocks = len(network.transformer_blocks)
    tokens = (x.shape[-2] // network.config.patch_size) * (x.shape[-1] // network.config.patch_size)
    like = torch.zeros(x.shape[0], tokens, network.inner_dim, device=parameter.device, dtype=parameter.dtype)
    per_block = _per_block(entries, blocks, like)
    hook = None
    last = network.transformer_blocks[-1]
    if blocks - 1 < len(entries) and entries[blocks - 1] is not None and last.context_pre_only:
        extra = entries[blocks - 1]
        hook = last.register_forward_hook(lambda _m, _i, out: (out[0], out[1] + extra))
    try:
        yield {"block_controlnet_hidden_states": per_block}
    finally:
        if hook is not None:
            hook.remove()


# ---------------------------------------------------------------------------------------------
# FLUX
# ---------------------------------------------------------------------------------------------

def _repeated(samples: Sequence[torch.Tensor] | None, total: int) -> list[torch.Tensor]:
    if not samples:
        return []
    repeat = math.ceil(total / len(samples))
    return [s for s in samples for _ in range(repeat)][:total]


def flux_outputs(net: torch.nn.Module, kwargs: Mapping[str, Any], hint_tokens: torch.Tensor
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """ComfyUI's InstantX FLUX ControlNet outputs (before strength) for the transformer's call ``kwargs``."""
    parameter = next(net.parameters())
    device, dtype = parameter.device, parameter.dtype
    call = {k: (v.to(device=device, dtype=dtype) if torch.is_floating_point(v) and k not in ("img_ids", "txt_ids")
                else v.to(device)) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    if net.config.guidance_embeds and "guidance" not in call:
        raise _error("this FLUX ControlNet needs the guidance value (FLUX dev conditioning); the conditioning has "
                     "none (FluxDisableGuidance?)")
    if not net.config.guidance_embeds:
        call.pop("guidance", None)
    double, single = net(controlnet_cond=hint_tokens.to(device=device, dtype=dtype), conditioning_scale=1.0,
                         return_dict=False, **call)
    return _repeated(double, FLUX_MAIN_DOUBLE), _repeated(single, FLUX_MAIN_SINGLE)


def flux_control(control: "ControlApplication | None", model: "DiffusionModel", x: torch.Tensor,
                 sigma: torch.Tensor) -> Callable[[Mapping[str, Any]], dict[str, Any]] | None:
    """For ``FluxNetwork(control=...)``: a function of the transformer's call kwargs giving the extra kwargs
    (``controlnet_block_samples``, ``controlnet_single_block_samples``), or ``None`` when nothing is active."""
    from loom.nodes.runtime import controlnet_union
    from loom.nodes.runtime.flux_layout import PATCH, patchify

    if control is None:
        return None
    active = _active_chain(control, sigma, model, "flux")
    if not active:
        return None

    def residuals(kwargs: Mapping[str, Any]) -> dict[str, Any]:
        transformer = model.unet.transformer
        doubles: list[torch.Tensor | None] = []
        singles: list[torch.Tensor | None] = []
        with torch.no_grad():
            for application in active:
                net = application.control_net.model
                hint = encoded_hint(application, x, model, net.config.in_channels // (PATCH * PATCH))
                with controlnet_union.flux_mode(application.control_net, kwargs) as call:
                    own_double, own_single = flux_outputs(net, call, patchify(_pad(hint, PATCH)))
                doubles = _merge(doubles, [o * application.strength for o in own_double])
                singles = _merge(singles, [o * application.strength for o in own_single])
        hidden = kwargs["hidden_states"]
        like = torch.zeros(*hidden.shape[:2], transformer.inner_dim, device=hidden.device, dtype=hidden.dtype)
        out: dict[str, Any] = {}
        if any(d is not None for d in doubles) and len(transformer.transformer_blocks):
            out["controlnet_block_samples"] = [t.to(like) for t in
                                               _per_block(doubles, len(transformer.transformer_blocks), like)]
        if any(s is not None for s in singles) and len(transformer.single_transformer_blocks):
            out["controlnet_single_block_samples"] = [t.to(like) for t in
                                                      _per_block(singles, len(transformer.single_transformer_blocks),
                                                                 like)]
        return out

    return residuals
