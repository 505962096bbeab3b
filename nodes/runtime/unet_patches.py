"""Patches inside a diffusers UNet call, as ComfyUI's ``transformer_options`` patches do for its UNet.

A MODEL handle's ``options`` may carry:

* ``"output_block_patch"``: a sequence of ``fn(h, hsp, transformer_options) -> (h, hsp)`` called, in order,
  before every output block (diffusers: every resnet of an up block) with the hidden state ``h`` and the skip
  connection ``hsp`` popped for it, just before they are concatenated (ComfyUI's
  ``set_model_output_block_patch``; FreeU uses it);
* ``"attn1_replace"``: ``{("middle", 0): processor}``, a diffusers attention processor that replaces the
  self-attention (``attn1``) of every transformer block of the middle block (ComfyUI's
  ``set_model_options_patch_replace(..., "attn1", "middle", 0)``; PerturbedAttentionGuidance uses it), or
  ``{("middle", 0, i): processor}`` for the middle block's ``i``-th transformer block only (SAG's);
* ``"attn1_kv_patch"`` / ``"attn2_kv_patch"``: sequences of objects with ``key(x)`` and ``value(x)`` that
  rework, in order, the key and value inputs of every transformer block's self-attention (``attn1``: the
  normed hidden states) or cross-attention (``attn2``: the context), just before their projections
  (ComfyUI's ``attn1_patch``/``attn2_patch`` as its HypernetworkLoader uses them, on ``k`` and ``v``).

:func:`cond_or_uncond` tells processors which conditioning each chunk of the current batch belongs to
(0 = positive, 1 = negative: ComfyUI's ``transformer_options["cond_or_uncond"]``); the guided denoiser
sets it around every model call.

:func:`applied` installs them on the UNet for the duration of one call and removes them afterwards, so the
network module shared by every handle of a checkpoint is never left patched.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Mapping

import torch

OUTPUT_BLOCK_PATCH = "output_block_patch"
ATTN1_REPLACE = "attn1_replace"
ATTN1_KV_PATCH = "attn1_kv_patch"
ATTN2_KV_PATCH = "attn2_kv_patch"
MIDDLE = ("middle", 0)


_COND_OR_UNCOND: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar("cond_or_uncond", default=())


@contextlib.contextmanager
def cond_or_uncond(which: tuple[int, ...]) -> Iterator[None]:
    """The conditioning kind of each chunk of the batch the body of the ``with`` evaluates."""
    token = _COND_OR_UNCOND.set(tuple(which))
    try:
        yield
    finally:
        _COND_OR_UNCOND.reset(token)


def current_cond_or_uncond() -> tuple[int, ...]:
    """What :func:`cond_or_uncond` set for the current model call (empty outside the guided denoiser)."""
    return _COND_OR_UNCOND.get()


class ValuePassthroughProcessor:
    """Self-attention replaced by its value projection: ``to_out(to_v(x))`` (ComfyUI's PAG
    ``perturbed_attention(q, k, v) -> v``, which replaces only the attention product, keeping the output
    projection)."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape = hidden_states.shape
        if hidden_states.ndim == 4:
            b, c, h, w = shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = attn.to_out[0](attn.to_v(source))
        out = attn.to_out[1](out)
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / getattr(attn, "rescale_output_factor", 1.0)


def middle_self_attentions(unet: torch.nn.Module) -> list[Any]:
    """The ``attn1`` modules of the middle block's transformer blocks."""
    mid = getattr(unet, "mid_block", None)
    found: list[Any] = []
    for attention in getattr(mid, "attentions", None) or ():
        for block in getattr(attention, "transformer_blocks", ()):
            if getattr(block, "attn1", None) is not None:
                found.append(block.attn1)
    return found


def _install_output_block_patches(unet: torch.nn.Module, patches: tuple[Any, ...],
                                  transformer_options: dict[str, Any]) -> list[Any]:
    handles: list[Any] = []
    for up_block in getattr(unet, "up_blocks", ()):
        skips: dict[str, tuple[torch.Tensor, ...]] = {}

        def capture(_module: Any, args: tuple, kwargs: dict, skips: dict = skips) -> None:
            tuple_ = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
            skips["tuple"] = tuple(tuple_) if tuple_ is not None else ()

        handles.append(up_block.register_forward_pre_hook(capture, with_kwargs=True))
        for index, resnet in enumerate(up_block.resnets):
            def patch(_module: Any, args: tuple, index: int = index, skips: dict = skips) -> tuple:
                stored = skips.get("tuple", ())
                if index >= len(stored):
                    return args
                width = int(stored[-1 - index].shape[1])
                x = args[0]
                h, hsp = x[:, :x.shape[1] - width], x[:, x.shape[1] - width:]
                for fn in patches:
                    h, hsp = fn(h, hsp, transformer_options)
                return (torch.cat([h, hsp], dim=1),) + tuple(args[1:])

            handles.append(resnet.register_forward_pre_hook(patch))
    return handles


def _install_kv_patches(unet: torch.nn.Module, attn1: tuple[Any, ...], attn2: tuple[Any, ...]) -> list[Any]:
    from diffusers.models.attention import BasicTransformerBlock

    def hook(patches: tuple[Any, ...], method: str) -> Any:
        def rework(_module: Any, args: tuple) -> tuple:
            x = args[0]
            for patch in patches:
                x = getattr(patch, method)(x)
            return (x,) + tuple(args[1:])
        return rework

    handles: list[Any] = []
    for block in unet.modules():
        if not isinstance(block, BasicTransformerBlock):
            continue
        for attn, patches in ((block.attn1, attn1), (getattr(block, "attn2", None), attn2)):
            if attn is None or not patches:
                continue
            handles.append(attn.to_k.register_forward_pre_hook(hook(patches, "key")))
            handles.append(attn.to_v.register_forward_pre_hook(hook(patches, "value")))
    return handles


@contextlib.contextmanager
def applied(unet: torch.nn.Module, options: Mapping[str, Any]) -> Iterator[None]:
    """The handle's UNet patches installed on ``unet`` for the body of the ``with``."""
    output_patches = tuple(options.get(OUTPUT_BLOCK_PATCH, ()))
    replace = dict(options.get(ATTN1_REPLACE, {}) or {})
    kv_patches = tuple(options.get(ATTN1_KV_PATCH, ())), tuple(options.get(ATTN2_KV_PATCH, ()))
    if not output_patches and not replace and not any(kv_patches):
        yield
        return
    handles: list[Any] = []
    swapped: list[tuple[Any, Any]] = []
    try:
        if output_patches:
            handles = _install_output_block_patches(unet, output_patches, {"patches": dict(options)})
        if any(kv_patches):
            handles += _install_kv_patches(unet, *kv_patches)
        # a whole-block replacement first, so that one for a single transformer block wins (ComfyUI's lookup)
        for block, processor in sorted(replace.items(), key=lambda item: len(tuple(item[0]))):
            block = tuple(block)
            if block[:2] != MIDDLE or len(block) > 3:
                raise ValueError(f"attn1 replacement for UNet block {block!r} is not supported (only {MIDDLE})")
            attns = middle_self_attentions(unet)
            if len(block) == 3:
                attns = attns[block[2]:block[2] + 1]
            for attn in attns:
                swapped.append((attn, attn.processor))
                attn.processor = processor
        yield
    finally:
        for handle in handles:
            handle.remove()
        for attn, processor in reversed(swapped):
            attn.processor = processor


__all__ = ["OUTPUT_BLOCK_PATCH", "ATTN1_REPLACE", "ATTN1_KV_PATCH", "ATTN2_KV_PATCH", "MIDDLE", "ValuePassthroughProcessor", "applied",
           "cond_or_uncond", "current_cond_or_uncond",
           "middle_self_attentions"]
