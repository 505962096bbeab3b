"""The guided denoiser the samplers call: ``denoiser(x, sigma) -> denoised`` for a MODEL and its conditionings.

It does what ComfyUI's CFG guider does around any model family:

* **model call:** one :class:`~nodes.runtime.adapter.ModelAdapter` call per batch: the model sampling scales
  the input, turns sigma into the network's time input and the output into a denoised latent (eps, v, flow),
  the family calls its network (UNet, MMDiT, ...) with the batch's context and extra inputs;
* **conditioning:** each ``[cond, options]`` entry of a CONDITIONING is evaluated on its ``area`` (latent
  units, ``(h, w, y, x)`` or ``("percentage", h, w, y, x)``) or ``mask``, weighted by ``strength``, only
  inside its ``start_percent``..``end_percent`` range; the results are averaged by weight, area edges
  feathered over up to 8 latent pixels (a quarter of the area's side when that is less); every positive
  area gets a negative of the same area (and vice versa);
* **extra input channels:** UNets that take more input channels than the latent has get them appended to
  the scaled input: InstructPix2Pix (8) the options' ``concat_latent_image`` as encoded, inpainting models
  (9) a mask channel (``concat_mask``, else the latent's noise mask, else ones) and the masked image
  (``concat_latent_image`` in the model's space, else the sampled latent, else the latent of a blank
  image); a model without extra channels ignores these options, as ComfyUI does;
* **guidance:** ``uncond + (cond - uncond) * cfg``, or the MODEL's CFG patches (ComfyUI's
  ``sampler_cfg_function``/``sampler_post_cfg_function`` in ``options``, see :func:`combine_guidance`;
  ``sampler_calc_cond_batch_function`` replaces the evaluation of ``[positive, negative]``: it gets
  ComfyUI's args plus ``"denoiser"``, whose ``calc_cond_batch[_with_options]`` it calls);
  with ``cfg == 1`` the negative is not evaluated (unless ``options`` sets ``disable_cfg1_optimization``);
  positive and negative run as one batch when their shapes allow (for cross-attention UNets token counts are
  made equal by repeating the shorter context, which leaves attention unchanged; DiT families
  (``Family.batch_repeat_context`` false) batch only equal shapes);
* **extra inputs:** each entry's ``Family.extra_conds`` (SDXL's ``added_cond_kwargs``: ``text_embeds`` =
  ``pooled_output``, ``time_ids`` from the options' ``width``/``height``/``crop_*``/``target_*`` or the latent
  size, ``aesthetic_score`` for the refiner; SD3's pooled projection), batched with the context;
* **noise mask** (inpainting, SetLatentNoiseMask): outside the mask the latent is held at the input image,
  re-noised to the current sigma before each call and restored after it; a MODEL's
  ``denoise_mask_function`` (DifferentialDiffusion) may replace the mask at each call;
* **ControlNet hook:** an options entry ``control`` with ``residuals(x, sigma, timestep, context, added, model=)``
  returning ``(down_block_residuals, mid_block_residual)`` or ``None`` is called for the batch it belongs to.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from loom.nodes.runtime import families
from loom.nodes.runtime.adapter import ModelAdapter
from loom.nodes.runtime.model_types import DiffusionModel, ModelSampling

FEATHER = 8  # latent pixels over which an area's edges fade in (ComfyUI's "fuzz"), at most a quarter of its side

# The latent of an all-black image in SD1/SDXL's VAE space: an inpainting model's "masked image" input when
# there is neither a concat image nor a noise mask (ComfyUI's blank_inpaint_image_like).
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


# --------------------------------------------------------------------------------------------
# model-level helpers
# --------------------------------------------------------------------------------------------

def percent_to_sigma(sampling: Any, percent: float) -> float:
    """The sigma at ``percent`` of the sampling (0 → the start: +inf for discrete models, 1 for flow
    models; 1 → 0, to the end): the model sampling's own ``percent_to_sigma``."""
    return float(sampling.percent_to_sigma(percent))


def calculate_input(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The discrete eps/v models' input scaling ``x / sqrt(sigma**2 + 1)``."""
    return ModelSampling(sigmas=torch.ones(1)).calculate_input(sigma, x)


def calculate_denoised(prediction: str, sigma: torch.Tensor, model_output: torch.Tensor,
                       x: torch.Tensor) -> torch.Tensor:
    """The discrete models' denoised estimate for a prediction type (``eps``, ``v``, ``x0``)."""
    if prediction not in ("eps", "v", "x0"):
        raise ValueError(f"unsupported prediction type {prediction!r}")
    return ModelSampling(sigmas=torch.ones(1), prediction=prediction).calculate_denoised(sigma, model_output, x)


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        repeats = [math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.ndim - 1)
        return tensor.repeat(repeats)[:batch_size]
    return tensor


def prepare_noise_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A LATENT's ``noise_mask`` (pixel or latent resolution) resized and repeated to the latent's shape."""
    mask = mask.float().reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    mask = F.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    mask = torch.cat([mask] * shape[1], dim=1)
    return repeat_to_batch_size(mask, shape[0])


def resize_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ComfyUI's ``resize_to_batch_size``: pick evenly spaced items to shrink, repeat items in order to grow."""
    in_batch = tensor.shape[0]
    if in_batch == batch_size:
        return tensor
    if batch_size <= 1:
        return tensor[:batch_size]
    output = torch.empty([batch_size] + list(tensor.shape)[1:], dtype=tensor.dtype, device=tensor.device)
    if batch_size < in_batch:
        scale = (in_batch - 1) / (batch_size - 1)
        for i in range(batch_size):
            output[i] = tensor[min(round(i * scale), in_batch - 1)]
    else:
        scale = in_batch / batch_size
        for i in range(batch_size):
            output[i] = tensor[min(math.floor((i + 0.5) * scale), in_batch - 1)]
    return output


def extra_input_channels(model: DiffusionModel) -> str | None:
    """What a UNet with more input channels than the latent expects appended: ``"ip2p"`` (an
    InstructPix2Pix model: the image latent), ``"inpaint"`` (mask and masked-image latent) or ``None``."""
    in_channels = getattr(getattr(model.unet, "config", None), "in_channels", None)
    latent_channels = model.latent_format.channels
    if in_channels is None or in_channels <= latent_channels:
        return None
    if in_channels == 2 * latent_channels and families.get(model.family).ip2p_channels:
        return "ip2p"  # ComfyUI's SD15/SDXL_instructpix2pix (8 input channels)
    return "inpaint"  # ComfyUI calls set_inpaint() on every other model with extra input channels


def _upscale_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    from loom.nodes.runtime.resample import common_upscale

    return common_upscale(tensor, int(shape[-1]), int(shape[-2]), "bilinear", "center")


def concat_input(model: DiffusionModel, options: dict[str, Any], shape: Sequence[int],
                 latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The channels one conditioning entry appends to the UNet input (``None`` for a plain model), at the
    latent's full size and batch: ComfyUI's ``concat_cond`` of the model's class.

    ``latent_image`` is the sampled latent in the model's space, ``denoise_mask`` the latent's noise mask as
    the sampler prepared it (``[B, C, h, w]``), or ``None``."""
    kind = extra_input_channels(model)
    if kind is None:
        return None
    shape = tuple(int(v) for v in shape)
    image = options.get("concat_latent_image")
    if kind == "ip2p":  # the VAE latent as encoded, not shifted into the model's space
        image = torch.zeros(shape) if image is None else image.float()
        if tuple(image.shape[1:]) != shape[1:]:
            image = _upscale_to(image, shape)
        return resize_to_batch_size(image, shape[0])

    if image is not None:
        image = model.latent_format.process_in(image.float())
    elif latent_image is not None:
        image = latent_image.float()
    else:
        image = torch.zeros(shape)
    if tuple(image.shape[1:]) != shape[1:]:
        image = _upscale_to(image, shape)
    image = resize_to_batch_size(image, shape[0])

    mask = options.get("concat_mask", denoise_mask)
    if mask is None:  # nothing to inpaint: everything is masked, over a blank image
        blank = torch.ones(shape)
        for channel, value in enumerate(BLANK_INPAINT_LATENT[:shape[1]]):
            blank[:, channel] *= value
        return torch.cat([torch.ones(shape)[:, :1], blank], dim=1)
    mask = mask.float()
    if mask.ndim == len(shape):
        mask = mask[:, :1]
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
    if tuple(mask.shape[-2:]) != shape[-2:]:
        mask = _upscale_to(mask, shape)
    mask = resize_to_batch_size(mask.round(), shape[0])
    return torch.cat([mask.to(image.device), image], dim=1)


# --------------------------------------------------------------------------------------------
# conditioning entries
# --------------------------------------------------------------------------------------------

@dataclass
class CondEntry:
    """One ``[cond, options]`` pair of a CONDITIONING, resolved for one sampling run."""

    context: torch.Tensor  # [b, tokens, dim]
    options: dict[str, Any]
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x) in latent pixels
    strength: float = 1.0
    mask: torch.Tensor | None = None  # [b, H, W] at latent resolution
    mask_strength: float = 1.0
    sigma_start: float | None = None  # skip while sigma > sigma_start
    sigma_end: float | None = None  # skip while sigma < sigma_end
    added: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL added_cond_kwargs (batch 1 or b)
    control: Any = None
    concat: torch.Tensor | None = None  # extra UNet input channels [B, c, H, W] (full latent size)
    uid: uuid.UUID = field(default_factory=uuid.uuid4)

    def copy_for(self, other: "CondEntry") -> "CondEntry":
        """This entry's model inputs (context, added conditioning, concat channels) on ``other``'s area,
        weights, sigma range and control: ComfyUI copies the other entry and takes only the model
        conditionings of this one."""
        return CondEntry(context=self.context, options=self.options, area=other.area, strength=other.strength,
                         mask=other.mask, mask_strength=other.mask_strength, sigma_start=other.sigma_start,
                         sigma_end=other.sigma_end, added=self.added, control=other.control, concat=self.concat)


def _resolve_area(area: Any, dims: tuple[int, int]) -> tuple[int, int, int, int]:
    area = tuple(area)
    if area and area[0] == "percentage":
        a = area[1:]
        return (max(1, round(a[0] * dims[0])), max(1, round(a[1] * dims[1])),
                round(a[2] * dims[0]), round(a[3] * dims[1]))
    if len(area) != 4:
        raise ValueError(f"conditioning area must be (height, width, y, x) in latent pixels, got {area!r}")
    return tuple(int(v) for v in area)  # type: ignore[return-value]


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    bounds = torch.max(torch.abs(mask), dim=0).values
    ys, xs = torch.nonzero(bounds, as_tuple=True)
    if len(ys) == 0:
        return (8, 8, 0, 0)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def resolve_conditioning(model: DiffusionModel, conditioning: Sequence[Any], latent_shape: Sequence[int],
                         prompt_type: str, latent_image: torch.Tensor | None = None,
                         denoise_mask: torch.Tensor | None = None) -> list[CondEntry]:
    """Turn a CONDITIONING list into entries with areas, masks, sigma ranges and extra input channels
    resolved for this latent (``latent_image`` in the model's space, ``denoise_mask`` the prepared noise mask:
    what an inpainting model falls back to without ``concat_latent_image``/``concat_mask``)."""
    dims = (int(latent_shape[2]), int(latent_shape[3]))
    family = families.get(model.family)
    entries: list[CondEntry] = []
    for item in conditioning:
        try:
            context, options = item[0], dict(item[1])
        except (TypeError, IndexError, KeyError):
            raise ValueError("a CONDITIONING must be a list of [tensor, options] pairs") from None
        if not isinstance(context, torch.Tensor) or context.ndim != 3:
            shape = getattr(context, "shape", context)
            raise ValueError(f"conditioning tensor must be [batch, tokens, dim], got {shape}")
        entry = CondEntry(context=context.float(), options=options, strength=float(options.get("strength", 1.0)),
                          control=options.get("control"))
        if options.get("area") is not None:
            entry.area = _resolve_area(options["area"], dims)
        if options.get("mask") is not None:
            mask = options["mask"].float()
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[1:]) != dims:
                mask = F.interpolate(mask.unsqueeze(1), size=dims, mode="bilinear").squeeze(1)
            entry.mask = mask
            entry.mask_strength = float(options.get("mask_strength", 1.0))
            if options.get("set_area_to_bounds", False):
                entry.area = _mask_bounds(mask)
        if "start_percent" in options:
            entry.sigma_start = percent_to_sigma(model.sampling, float(options["start_percent"]))
        if "end_percent" in options:
            entry.sigma_end = percent_to_sigma(model.sampling, float(options["end_percent"]))
        entry.added = family.extra_conds(model, options, latent_shape, prompt_type)
        entry.concat = family.concat_input(model, options, latent_shape, latent_image, denoise_mask)
        entries.append(entry)
    return entries


def _area_inside(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether area ``a`` lies inside area ``b`` (both ``(h, w, y, x)``)."""
    for i in range(2):
        if a[2 + i] < b[2 + i]:
            return False
    for i in range(2):
        if a[i] + a[2 + i] > b[i] + b[2 + i]:
            return False
    return True


def add_matching_areas(conds: list[CondEntry], other: CondEntry) -> None:
    """Give ``conds`` an entry on ``other``'s area if none has exactly it (ComfyUI's rule: copy the
    smallest entry that encloses the area, or an area-less one, with ``other``'s area and weights)."""
    if other.area is None:
        return
    smallest: CondEntry | None = None
    for c in conds:
        if c.area is not None:
            if _area_inside(other.area, c.area):
                if smallest is None or smallest.area is None or \
                        math.prod(smallest.area[:2]) > math.prod(c.area[:2]):
                    smallest = c
        elif smallest is None:
            smallest = c
    if smallest is None or (smallest.area is not None and smallest.area == other.area):
        return
    conds.append(smallest.copy_for(other))


def share_control_with_negative(positive: list[CondEntry], negative: list[CondEntry]) -> None:
    """Controls set with ``control_apply_to_uncond`` (the old ControlNetApply) also steer the negative:
    the full-frame negative entries take them in turn, unless one of them already has a control."""
    controls = [c.control for c in positive if c.area is None and c.control is not None
                and c.options.get("control_apply_to_uncond", False)]
    if not controls or any(c.area is None and c.control is not None for c in negative):
        return
    plain = [c for c in negative if c.area is None]
    for i, control in enumerate(controls if plain else ()):
        plain[i % len(plain)].control = control


# --------------------------------------------------------------------------------------------
# the denoiser
# --------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """One entry evaluated at one step: its input crop, weight map and where the result goes."""

    entry: CondEntry
    which: int  # 0 = positive, 1 = negative
    x: torch.Tensor
    mult: torch.Tensor
    area: tuple[int, int, int, int] | None
    concat: torch.Tensor | None = None  # the entry's extra input channels, cropped to the area


class GuidedDenoiser:
    """``(x, sigma) -> denoised`` with classifier-free guidance over a MODEL's conditionings."""

    def __init__(self, model: DiffusionModel, positive: Sequence[Any], negative: Sequence[Any], cfg: float,
                 latent_shape: Sequence[int], *, disable_cfg1_optimization: bool = False,
                 keep_uncond: bool = False, latent_image: torch.Tensor | None = None,
                 denoise_mask: torch.Tensor | None = None) -> None:
        self.model = model
        self.sampling = model.sampling  # samplers may read the model's sigma table
        self.cfg = float(cfg)
        self.disable_cfg1_optimization = disable_cfg1_optimization or \
            bool(model.options.get("disable_cfg1_optimization", False))  # a CFG patch may ask for it
        self.keep_uncond = keep_uncond
        self.uncond_denoised: torch.Tensor | None = None
        self.positive = resolve_conditioning(model, positive, latent_shape, "positive", latent_image, denoise_mask)
        self.negative = resolve_conditioning(model, negative, latent_shape, "negative", latent_image, denoise_mask)
        if not self.positive:
            raise ValueError("the positive conditioning is empty")
        for c in list(self.positive):
            add_matching_areas(self.negative, c)
        for c in list(self.negative):
            add_matching_areas(self.positive, c)
        share_control_with_negative(self.positive, self.negative)
        self._batch_cache: dict[tuple, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.adapter = ModelAdapter(model)
        self.repeat_context = self.adapter.family.batch_repeat_context
        self.unet_calls = 0

    # -- one UNet call --------------------------------------------------------------------------

    def apply_model(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                    added: dict[str, torch.Tensor] | None = None, control: Any = None,
                    concat: torch.Tensor | None = None) -> torch.Tensor:
        """The model's denoised estimate for ``x`` at ``sigma`` (a ``[B]`` tensor) and one context batch:
        the MODEL's :class:`~nodes.runtime.adapter.ModelAdapter`; ``concat`` (extra input channels) is
        appended to the scaled input."""
        self.unet_calls += 1
        return self.adapter(x, sigma, context, added or None, control, concat)

    def calc_cond_batch_with_options(self, options: dict[str, Any], conds: Sequence[list[CondEntry] | None],
                                     x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`calc_cond_batch` with the MODEL's ``options`` replaced for this evaluation (ComfyUI's
        ``calc_cond_batch(model, conds, x, sigma, model_options)``, as PerturbedAttentionGuidance calls it)."""
        adapter = self.adapter
        self.adapter = ModelAdapter(self.model.replace(options=options))
        try:
            return self.calc_cond_batch(conds, x, sigma)
        finally:
            self.adapter = adapter

    # -- conditioning batches -------------------------------------------------------------------

    def _prepare(self, entry: CondEntry, which: int, x: torch.Tensor, sigma: torch.Tensor) -> _Run | None:
        s = float(sigma[0])
        if entry.sigma_start is not None and s > entry.sigma_start:
            return None
        if entry.sigma_end is not None and s < entry.sigma_end:
            return None
        area = None
        crop = x
        if entry.area is not None:
            h, w, y, x0 = entry.area
            h = min(x.shape[2] - y, h)
            w = min(x.shape[3] - x0, w)
            area = (h, w, y, x0)
            crop = x[:, :, y:y + h, x0:x0 + w]
        if entry.mask is not None:
            mask = entry.mask[:crop.shape[0]]
            if area is not None:
                mask = mask[:, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
            mask = (mask * entry.mask_strength).unsqueeze(1)
            mult = mask.repeat(crop.shape[0] // mask.shape[0], crop.shape[1], 1, 1) * entry.strength
        else:
            mult = torch.ones_like(crop) * entry.strength
            if area is not None:
                h, w, y, x0 = area
                rows, cols = min(FEATHER, h // 4), min(FEATHER, w // 4)
                for t in range(rows):
                    fade = (1.0 / rows) * (t + 1)
                    if y != 0:
                        mult[:, :, t:t + 1, :] *= fade
                    if h + y < x.shape[2]:
                        mult[:, :, h - 1 - t:h - t, :] *= fade
                for t in range(cols):
                    fade = (1.0 / cols) * (t + 1)
                    if x0 != 0:
                        mult[:, :, :, t:t + 1] *= fade
                    if w + x0 < x.shape[3]:
                        mult[:, :, :, w - 1 - t:w - t] *= fade
        concat = entry.concat
        if concat is not None:
            if area is not None:
                concat = concat[:, :, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
            concat = repeat_to_batch_size(concat, crop.shape[0]).to(crop.device)
        return _Run(entry, which, crop, mult, area, concat)

    def _can_batch(self, a: _Run, b: _Run) -> bool:
        """Whether two runs share one model call: same latent crop, control and extra inputs, and contexts
        that are equal in shape or (cross-attention UNets only: ComfyUI's CONDCrossAttn) differ in token
        count by at most a factor 4 of their least common multiple."""
        if a.x.shape != b.x.shape or a.entry.control is not b.entry.control:
            return False
        ca, cb = a.entry.context.shape, b.entry.context.shape
        if ca[2] != cb[2]:
            return False
        if ca[1] != cb[1] and (not self.repeat_context or math.lcm(ca[1], cb[1]) // min(ca[1], cb[1]) > 4):
            return False
        if (a.concat is None) != (b.concat is None) or (a.concat is not None and a.concat.shape != b.concat.shape):
            return False
        if set(a.entry.added) != set(b.entry.added):
            return False
        return all(a.entry.added[k].shape[1:] == b.entry.added[k].shape[1:] for k in a.entry.added)

    def _batch_conditioning(self, runs: list[_Run], batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The context and added conditioning of a batch of runs, built once per batch composition."""
        key = (batch,) + tuple(id(r.entry) for r in runs)
        cached = self._batch_cache.get(key)
        if cached is not None:
            return cached
        tokens = 1
        for r in runs:
            tokens = math.lcm(tokens, r.entry.context.shape[1])
        contexts = []
        for r in runs:
            c = repeat_to_batch_size(r.entry.context, batch)
            if c.shape[1] < tokens:  # repeating the context leaves cross-attention unchanged
                c = c.repeat(1, tokens // c.shape[1], 1)
            contexts.append(c)
        added = {k: torch.cat([repeat_to_batch_size(r.entry.added[k], batch) for r in runs])
                 for k in runs[0].entry.added}
        self._batch_cache[key] = (torch.cat(contexts), added)
        return self._batch_cache[key]

    def _run_batch(self, runs: list[_Run], sigma: torch.Tensor) -> list[torch.Tensor]:
        context, added = self._batch_conditioning(runs, runs[0].x.shape[0])
        x_in = torch.cat([r.x for r in runs])
        sigma_in = sigma.repeat(len(runs))  # one sigma per latent of each run
        concat = torch.cat([r.concat for r in runs]) if runs[0].concat is not None else None
        from loom.nodes.runtime.unet_patches import cond_or_uncond

        with cond_or_uncond(tuple(r.which for r in runs)):  # what attention patches see (SAG records the negative)
            output = self.apply_model(x_in, sigma_in, context, added or None, runs[0].entry.control, concat)
        return list(output.chunk(len(runs)))

    def calc_cond_batch(self, conds: Sequence[list[CondEntry] | None], x: torch.Tensor,
                        sigma: torch.Tensor) -> list[torch.Tensor]:
        """The weighted average of the model outputs of each conditioning list (None: skipped, zeros)."""
        out = [torch.zeros_like(x) for _ in conds]
        counts = [torch.ones_like(x) * 1e-37 for _ in conds]
        to_run: list[_Run] = []
        for which, entries in enumerate(conds):
            for entry in entries or ():
                run = self._prepare(entry, which, x, sigma)
                if run is not None:
                    to_run.append(run)
        while to_run:
            first = to_run[0]
            # ComfyUI batches the compatible runs last-first (so the negative comes before the positive)
            chosen = [i for i in range(len(to_run)) if self._can_batch(to_run[i], first)][::-1]
            batch = [to_run[i] for i in chosen]
            for i in sorted(chosen, reverse=True):
                to_run.pop(i)
            outputs = self._run_batch(batch, sigma)
            for run, output in zip(batch, outputs):
                if run.area is None:
                    out[run.which] += output * run.mult
                    counts[run.which] += run.mult
                else:
                    h, w, y, x0 = run.area
                    out[run.which][:, :, y:y + h, x0:x0 + w] += output * run.mult
                    counts[run.which][:, :, y:y + h, x0:x0 + w] += run.mult
        return [o / c for o, c in zip(out, counts)]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        skip_uncond = math.isclose(self.cfg, 1.0) and not self.disable_cfg1_optimization
        conds = [self.positive, None if skip_uncond else self.negative]
        calc_function = self.model.options.get("sampler_calc_cond_batch_function")
        if calc_function is None:
            cond, uncond = self.calc_cond_batch(conds, x, sigma)
        else:  # ComfyUI's set_model_sampler_calc_cond_batch_function (SkipLayerGuidanceDiTSimple)
            cond, uncond = calc_function({"conds": conds, "input": x, "sigma": sigma, "model": self.model,
                                          "model_options": self.model.options, "denoiser": self})
        if self.keep_uncond:
            self.uncond_denoised = uncond
        return combine_guidance(self, cond, uncond, x, sigma, skip_uncond)


def combine_guidance(denoiser: "GuidedDenoiser", cond: torch.Tensor, uncond: torch.Tensor, x: torch.Tensor,
                     sigma: torch.Tensor, uncond_skipped: bool = False) -> torch.Tensor:
    """Classifier-free guidance of the positive and negative predictions, with the MODEL's CFG patches.

    Without patches: ``uncond + (cond - uncond) * cfg``. A MODEL's ``options`` may carry ComfyUI's
    ``sampler_cfg_function`` (replaces the combination; called with the args dict ComfyUI gives it, in
    which ``cond``/``uncond`` are ``x - denoised``, and its result is subtracted from ``x``) and
    ``sampler_post_cfg_function`` (a sequence, applied in order to the combined ``denoised``; besides ComfyUI's
    args they get ``"denoiser"``, whose ``calc_cond_batch_with_options`` evaluates extra passes).
    """
    options = denoiser.model.options
    cfg_function = options.get("sampler_cfg_function")
    post_functions = options.get("sampler_post_cfg_function", ())
    if cfg_function is None:
        result = uncond + (cond - uncond) * denoiser.cfg
    else:
        result = x - cfg_function({
            "cond": x - cond, "uncond": x - uncond, "cond_scale": denoiser.cfg, "timestep": sigma, "input": x,
            "sigma": sigma, "cond_denoised": cond, "uncond_denoised": uncond, "model": denoiser.model,
            "model_options": options, "input_cond": denoiser.positive,
            "input_uncond": None if uncond_skipped else denoiser.negative})
    for function in post_functions:
        result = function({
            "denoised": result, "cond": denoiser.positive, "uncond": None if uncond_skipped else denoiser.negative,
            "cond_scale": denoiser.cfg, "model": denoiser.model, "uncond_denoised": uncond, "cond_denoised": cond,
            "sigma": sigma, "model_options": options, "input": x, "denoiser": denoiser})
    return result


class MaskedDenoiser:
    """Holds the latent outside ``mask`` at the input image (re-noised to each sigma) around a denoiser.

    ``mask_function`` (a MODEL's ``denoise_mask_function``) is called as ``fn(sigma, mask, extra_options)``
    with ``extra_options = {"model": MODEL, "sigmas": the run's sigmas}`` before every model call and
    returns the mask to use for that call (ComfyUI's ``KSamplerX0Inpaint``)."""

    def __init__(self, inner: GuidedDenoiser, mask: torch.Tensor, latent_image: torch.Tensor,
                 noise: torch.Tensor, *, sigmas: torch.Tensor | None = None,
                 mask_function: Callable[..., torch.Tensor] | None = None) -> None:
        self.inner = inner
        self.mask = mask
        self.latent_image = latent_image
        self.noise = noise
        self.sigmas = sigmas
        self.mask_function = mask_function

    def __getattr__(self, name: str) -> Any:  # samplers may read e.g. ``uncond_denoised``
        return getattr(self.inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if self.mask_function is not None:
            mask = self.mask_function(sigma, mask, extra_options={"model": self.inner.model, "sigmas": self.sigmas})
        keep = 1.0 - mask
        sampling = self.inner.model.sampling
        s = sigma.reshape([sigma.shape[0]] + [1] * (self.noise.ndim - 1))
        x = x * mask + sampling.noise_scaling(s, self.noise, self.latent_image) * keep
        out = self.inner(x, sigma)
        return out * mask + self.latent_image * keep
