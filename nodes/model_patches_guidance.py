"""ComfyUI's UNet patches FreeU, FreeU_V2, PerturbedAttentionGuidance (``model_patches/unet``) and
SelfAttentionGuidance (``_for_testing``, experimental).

* **FreeU / FreeU_V2** add an output-block patch (``options["output_block_patch"]``, applied by
  :mod:`nodes.runtime.unet_patches`): where the hidden state entering an output block has
  ``model_channels * 4`` channels (b1, s1) or ``model_channels * 2`` (b2, s2), its first half of channels is
  scaled by b (V2: by ``(b - 1) * m + 1``, ``m`` the channel mean of the hidden state min-max normalised per
  sample) and the skip connection is Fourier-filtered: the centre 2x2 of its shifted spectrum scaled by s.
* **PerturbedAttentionGuidance** adds a post-CFG function that evaluates the positive conditioning once more
  with the middle block's self-attention replaced by its value passthrough and returns
  ``cfg_result + (cond_pred - pag_pred) * scale``.
* **SelfAttentionGuidance** records the negative's attention probabilities in the first self-attention of the
  middle block, blurs the negative's prediction where the averaged attention a token receives exceeds 1,
  re-noises it, evaluates the negative on it and returns ``cfg_result + (degraded - sag_pred) * scale``
  (the cfg = 1 shortcut is turned off so the negative is always evaluated).

The patch objects are small picklable classes; the MODEL handle is new, the input handle stays unpatched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from loom.nodes.model_patches import with_post_cfg_function
from loom.nodes.runtime.unet_patches import ATTN1_REPLACE, MIDDLE, OUTPUT_BLOCK_PATCH, ValuePassthroughProcessor
from loom.nodes.kernel.schema import Float, Node, Output, Schema, Socket, register

CATEGORY = "model_patches/unet"


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """FreeU's skip filter: the ``2*threshold`` square at the centre of the shifted 2-D spectrum times
    ``scale``; the real part back in ``x``'s dtype. A scale of 1 is the identity and returns ``x`` itself."""
    if scale == 1.0:
        return x
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones(spectrum.shape, device=x.device)
    rows, cols = spectrum.shape[-2] // 2, spectrum.shape[-1] // 2
    mask[..., rows - threshold:rows + threshold, cols - threshold:cols + threshold] = scale
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


def _model_channels(node: str, model: Any) -> int:
    config = getattr(model.unet, "config", None)
    channels = getattr(config, "block_out_channels", None)
    if not channels or getattr(model.unet, "up_blocks", None) is None:
        raise ValueError(f"{node}: input 'model' is a {model.family} model; {node} patches UNet models only")
    return int(channels[0])


@dataclass(frozen=True)
class FreeUPatch:
    """One FreeU output-block patch: ``{channels: (b, s)}``; ``v2`` for FreeU_V2's mean modulation."""

    scales: tuple[tuple[int, float, float], ...]
    v2: bool = False

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        found = next(((b, s) for width, b, s in self.scales if width == int(h.shape[1])), None)
        if found is None:
            return h, hsp
        b, s = found
        half = h.shape[1] // 2
        factor: Any = b
        if self.v2:
            mean = h.mean(1).unsqueeze(1)
            batch = mean.shape[0]
            high = torch.max(mean.view(batch, -1), dim=-1, keepdim=True)[0].unsqueeze(2).unsqueeze(3)
            low = torch.min(mean.view(batch, -1), dim=-1, keepdim=True)[0].unsqueeze(2).unsqueeze(3)
            factor = (b - 1) * ((mean - low) / (high - low)) + 1
        h = torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)
        return h, fourier_filter(hsp, threshold=1, scale=s)


def _freeu(node: type[Node], model: Any, b1: Any, b2: Any, s1: Any, s2: Any, v2: bool) -> Any:
    channels = _model_channels(node.schema().name, model)
    b1, b2, s1, s2 = (node.linked_float(n, v) for n, v in (("b1", b1), ("b2", b2), ("s1", s1), ("s2", s2)))
    patch = FreeUPatch(((channels * 4, b1, s1), (channels * 2, b2, s2)), v2=v2)
    patches = tuple(model.options.get(OUTPUT_BLOCK_PATCH, ())) + (patch,)
    return model.replace(options={**model.options, OUTPUT_BLOCK_PATCH: patches})


def _factor_inputs(b1: float, b2: float) -> list[Any]:
    return [Socket("model", "MODEL"),
            Float("b1", default=b1, min=0.0, max=10.0, step=0.01),
            Float("b2", default=b2, min=0.0, max=10.0, step=0.01),
            Float("s1", default=0.9, min=0.0, max=10.0, step=0.01),
            Float("s2", default=0.2, min=0.0, max=10.0, step=0.01)]


@register
class FreeU(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("FreeU", display_name="FreeU", category=CATEGORY, inputs=_factor_inputs(1.1, 1.2),
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, b1: float, b2: float, s1: float, s2: float) -> tuple:
        return (_freeu(cls, model, b1, b2, s1, s2, v2=False),)


@register
class FreeU_V2(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("FreeU_V2", display_name="FreeU (v2)", category=CATEGORY, inputs=_factor_inputs(1.3, 1.4),
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, b1: float, b2: float, s1: float, s2: float) -> tuple:
        return (_freeu(cls, model, b1, b2, s1, s2, v2=True),)


@dataclass(frozen=True)
class PAGFunction:
    """PAG's post-CFG function: the positive conditioning again with the middle block's self-attention as
    value passthrough; ``cfg_result + (cond_pred - pag_pred) * scale`` (the input unchanged at scale 0)."""

    scale: float

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        cfg_result = args["denoised"]
        if self.scale == 0:
            return cfg_result
        denoiser = args.get("denoiser")
        evaluate = getattr(denoiser, "calc_cond_batch_with_options", None)
        if evaluate is None:
            raise ValueError("PerturbedAttentionGuidance: this guider cannot evaluate the perturbed pass")
        options = dict(args["model_options"])
        replace = dict(options.get(ATTN1_REPLACE, {}) or {})
        replace[MIDDLE] = ValuePassthroughProcessor()
        options[ATTN1_REPLACE] = replace
        (pag,) = evaluate(options, [args["cond"]], args["input"], args["sigma"])
        return cfg_result + (args["cond_denoised"] - pag) * self.scale


@register
class PerturbedAttentionGuidance(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PerturbedAttentionGuidance", category=CATEGORY,
                      inputs=[Socket("model", "MODEL"),
                              Float("scale", default=3.0, min=0.0, max=100.0, step=0.01, round=0.01)],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, scale: float) -> tuple:
        node = "PerturbedAttentionGuidance"
        _model_channels(node, model)
        scale = cls.linked_float("scale", scale)
        return (with_post_cfg_function(model, PAGFunction(scale)),)




# ---------------------------------------------------------------------------------------------
# SelfAttentionGuidance
# ---------------------------------------------------------------------------------------------

class AttentionRecorder:
    """Where SAG's attention processor leaves the negative's self-attention scores of the last call."""

    def __init__(self) -> None:
        self.scores: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"scores": None}


class RecordingAttentionProcessor:
    """Plain softmax attention that, in a batch holding the negative conditioning, records the negative's
    attention probabilities ``[batch * heads, tokens, tokens]`` (ComfyUI's SAG ``attn_and_record``)."""

    def __init__(self, recorder: AttentionRecorder) -> None:
        self.recorder = recorder

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        from loom.nodes.runtime.unet_patches import current_cond_or_uncond

        which = current_cond_or_uncond()
        if 1 not in which or hidden_states.ndim != 3 or encoder_hidden_states is not None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        batch, tokens, width = q.shape
        heads = attn.heads
        head_dim = width // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, -1, heads, head_dim).permute(0, 2, 1, 3).reshape(batch * heads, -1, head_dim)

        q, k, v = split(q), split(k), split(v)
        if getattr(attn, "upcast_attention", False):
            q, k = q.float(), k.float()
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * (head_dim ** -0.5)
        sim = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", sim.to(v.dtype), v)
        out = out.reshape(batch, heads, -1, head_dim).permute(0, 2, 1, 3).reshape(batch, -1, heads * head_dim)
        slices = heads * (batch // len(which))
        index = which.index(1)
        self.recorder.scores = sim[slices * index:slices * (index + 1)]
        out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / getattr(attn, "rescale_output_factor", 1.0)


def gaussian_blur_2d(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """A separable Gaussian kernel applied per channel, with reflect padding (SAG's blur)."""
    import torch.nn.functional as F

    half = (kernel_size - 1) * 0.5
    grid = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (grid / sigma).pow(2))
    kernel = (pdf / pdf.sum()).to(device=image.device, dtype=image.dtype)
    kernel2d = torch.mm(kernel[:, None], kernel[None, :]).expand(image.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    image = F.pad(image, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(image, kernel2d, groups=image.shape[-3])


def blur_map(x0: torch.Tensor, attention: torch.Tensor, sigma: float, threshold: float = 1.0) -> torch.Tensor:
    """``x0`` blurred where the head-averaged attention a token receives exceeds ``threshold`` (SAG's mask,
    reshaped to the attention's grid with the latent's aspect ratio and upsampled, nearest, to ``x0``)."""
    import torch.nn.functional as F

    _, queries, keys = attention.shape
    b, _, lh, lw = x0.shape
    received = attention.reshape(b, -1, queries, keys).mean(1).sum(1) > threshold
    total = received.shape[-1]
    guess = round(math.sqrt((lh / lw) * total))
    rows = None
    for i in range(math.floor(math.sqrt(total) / 2)):
        for j in (guess + i, max(1, guess - i)):
            if total % j == 0:
                rows = j
                break
        if rows is not None:
            break
    if rows is None:
        raise ValueError(f"SelfAttentionGuidance: cannot lay {total} attention tokens out on a grid")
    mask = received.reshape(b, rows, total // rows).unsqueeze(1).type(attention.dtype)
    mask = F.interpolate(mask, (lh, lw))
    blurred = gaussian_blur_2d(x0, kernel_size=9, sigma=sigma)
    return blurred * mask + x0 * (1 - mask)


@dataclass(frozen=True)
class SAGFunction:
    """SAG's post-CFG function: the negative's prediction blurred where its middle-block self-attention
    looks, re-noised and evaluated again with the negative; ``cfg_result + (degraded - sag) * scale``."""

    scale: float
    blur_sigma: float
    recorder: AttentionRecorder

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        cfg_result = args["denoised"]
        if min(cfg_result.shape[2:]) <= 4:  # too small for the blur's padding
            return cfg_result
        scores, uncond = self.recorder.scores, args["uncond"]
        evaluate = getattr(args.get("denoiser"), "calc_cond_batch_with_options", None)
        if scores is None or uncond is None or evaluate is None:
            raise ValueError("SelfAttentionGuidance: the negative conditioning was not evaluated with the "
                             "recording attention (use it with a CFG sampler and a UNet with a middle attention)")
        uncond_pred, x = args["uncond_denoised"], args["input"]
        degraded = blur_map(uncond_pred, scores, self.blur_sigma, 1.0)
        (sag,) = evaluate(dict(args["model_options"]), [uncond], degraded + x - uncond_pred, args["sigma"])
        return cfg_result + (degraded - sag) * self.scale



@register
class SelfAttentionGuidance(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SelfAttentionGuidance", display_name="Self-Attention Guidance", category="_for_testing",
                      experimental=True,
                      inputs=[Socket("model", "MODEL"),
                              Float("scale", default=0.5, min=-2.0, max=5.0, step=0.01),
                              Float("blur_sigma", default=2.0, min=0.0, max=10.0, step=0.1)],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, scale: float, blur_sigma: float) -> tuple:
        node = "SelfAttentionGuidance"
        _model_channels(node, model)
        scale = cls.linked_float("scale", scale)
        blur_sigma = cls.linked_float("blur_sigma", blur_sigma)
        recorder = AttentionRecorder()
        replace = dict(model.options.get(ATTN1_REPLACE, {}) or {})
        replace[MIDDLE + (0,)] = RecordingAttentionProcessor(recorder)
        patched = with_post_cfg_function(model, SAGFunction(scale, blur_sigma, recorder))
        return (patched.replace(options={**patched.options, ATTN1_REPLACE: replace,
                                         "disable_cfg1_optimization": True}),)


__all__ = ["FreeU", "FreeU_V2", "PerturbedAttentionGuidance", "SelfAttentionGuidance", "FreeUPatch", "PAGFunction",
           "SAGFunction", "fourier_filter", "blur_map", "gaussian_blur_2d"]
