"""The FLUX.1 transformer: BFL's file layout into diffusers' ``FluxTransformer2DModel``, and the call with
ComfyUI's inputs.

Layouts read (each with or without the ``model.diffusion_model.`` prefix):

* BFL's (``flux1-dev.safetensors``: ``img_in``, ``time_in``, ``vector_in``, ``guidance_in``, ``txt_in``,
  ``double_blocks.N.*``, ``single_blocks.N.*``, ``final_layer.*``);
* diffusers' (``x_embedder``, ``time_text_embed.*``, ``transformer_blocks.N.*``, ...): loaded as it is.

The config comes from the shapes, not from constants (diffusers' own converter fixes the width at 3072):
width and ``in_channels`` from ``img_in``, head width from the q-norm scale, heads = width / head width,
block counts, ``joint_attention_dim`` from ``txt_in``, ``pooled_projection_dim`` from ``vector_in``, and dev
(``guidance_in`` present) or schnell. RoPE axes are ComfyUI's (16, 56, 56) for the real 128-wide heads; other
head widths (test models) split as (d/8, 7d/16, 7d/16). BFL fuses q, k, v (and, in single blocks, the MLP
input) into one matrix; they are split here, and the final layer's ``(shift, scale)`` modulation is swapped to
diffusers' ``(scale, shift)``. Every tensor must be used and every parameter given.

``weight_dtype`` (UNETLoader): ``default`` keeps fp8 files in fp8 and stores anything else in the compute
dtype; ``fp8_e4m3fn`` / ``fp8_e4m3fn_fast`` / ``fp8_e5m2`` round every weight to that fp8 type. Weights in a
storage dtype other than the compute dtype are cast layer by layer when they run (:mod:`manual_cast`), as
ComfyUI does. ``fp8_e4m3fn_fast`` computes like ``fp8_e4m3fn`` (ComfyUI's fp8 matrix multiply needs fp8
compute hardware; without it ComfyUI does the same).

The network (:class:`FluxNetwork`) takes ComfyUI's inputs: the 16-channel latent ``[B, 16, H, W]`` (padded
circularly to even sides, packed 2x2 into ``[B, H/2 * W/2, 64]`` tokens in ``(c, ph, pw)`` order), the timestep
(= sigma for FLUX; diffusers multiplies it by 1000 as ComfyUI's ``time_factor`` does), the T5 context, the
pooled CLIP-L vector ``y`` and ``guidance`` (dev), with ``img_ids`` (0, row, column) and zero ``txt_ids``; it
returns the model's prediction in the latent layout, cropped to ``H x W``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

DIFFUSION_PREFIX = "model.diffusion_model."
PATCH = 2
ROPE_THETA = 10000

WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

Shapes = Mapping[str, Sequence[int]]


class FluxLoadError(ValueError):
    """A state dict that is not a FLUX transformer Loom can build; the message says what was found."""


# ---------------------------------------------------------------------------------------------
# Detection and config
# ---------------------------------------------------------------------------------------------

def detect_layout(shapes: Shapes) -> tuple[str, str] | None:
    """``("bfl" | "diffusers", prefix)`` of a FLUX transformer in ``shapes``, or ``None``."""
    for prefix in (DIFFUSION_PREFIX, ""):
        if prefix + "img_in.weight" in shapes and prefix + "final_layer.linear.weight" in shapes \
                and (prefix + "double_blocks.0.img_attn.qkv.weight" in shapes
                     or prefix + "single_blocks.0.linear1.weight" in shapes):
            return "bfl", prefix
        if prefix + "x_embedder.weight" in shapes and prefix + "time_text_embed.timestep_embedder.linear_1.weight" \
                in shapes and prefix + "norm_out.linear.weight" in shapes:
            return "diffusers", prefix
    return None


def _count(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for key in shapes if (m := regex.match(key))}
    if found != set(range(len(found))):
        raise FluxLoadError(f"FLUX blocks matching {pattern!r} are not numbered 0..{len(found) - 1}: {sorted(found)}")
    return len(found)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE axis widths for a head width: ComfyUI's (16, 56, 56) at 128, else (d/8, 7d/16, 7d/16)."""
    if head_dim == 128:
        return (16, 56, 56)
    first = head_dim // 8
    rest = (head_dim - first) // 2
    axes = (first, rest, head_dim - first - rest)
    if head_dim % 32:
        raise FluxLoadError(f"a FLUX head width of {head_dim} cannot be split into even RoPE axes "
                            "(it must be a multiple of 32)")
    return axes


def _require(shapes: Shapes, key: str) -> Sequence[int]:
    if key not in shapes:
        raise FluxLoadError(f"the FLUX transformer lacks {key}, which its architecture is read from")
    return shapes[key]


def config_from_bfl(shapes: Shapes, prefix: str = "") -> dict[str, Any]:
    """Keyword arguments for ``FluxTransformer2DModel`` read off a BFL-layout transformer."""
    p = re.escape(prefix)
    hidden, in_channels = _require(shapes, prefix + "img_in.weight")
    doubles = _count(shapes, p + r"double_blocks\.(\d+)\.")
    singles = _count(shapes, p + r"single_blocks\.(\d+)\.")
    norm = prefix + ("double_blocks.0.img_attn.norm.query_norm.scale" if doubles else
                     "single_blocks.0.norm.query_norm.scale")
    head_dim = _require(shapes, norm)[0]
    if hidden % head_dim:
        raise FluxLoadError(f"the FLUX width {hidden} is not a multiple of its head width {head_dim}")
    if doubles:
        mlp = _require(shapes, prefix + "double_blocks.0.img_mlp.0.weight")[0]
        if prefix + "double_blocks.0.img_attn.qkv.bias" not in shapes:
            raise FluxLoadError("this FLUX transformer's attention has no qkv bias; diffusers' FLUX blocks need one")
    else:
        mlp = _require(shapes, prefix + "single_blocks.0.linear1.weight")[0] - 3 * hidden
    if mlp != 4 * hidden:
        raise FluxLoadError(f"the FLUX MLP width {mlp} is not 4 x the width {hidden}; diffusers' FLUX blocks fix "
                            "the ratio at 4")
    return dict(
        patch_size=1,
        in_channels=in_channels,
        out_channels=_require(shapes, prefix + "final_layer.linear.weight")[0],
        num_layers=doubles,
        num_single_layers=singles,
        attention_head_dim=head_dim,
        num_attention_heads=hidden // head_dim,
        joint_attention_dim=_require(shapes, prefix + "txt_in.weight")[1],
        pooled_projection_dim=_require(shapes, prefix + "vector_in.in_layer.weight")[1],
        guidance_embeds=prefix + "guidance_in.in_layer.weight" in shapes,
        axes_dims_rope=rope_axes(head_dim),
    )


def config_from_diffusers(shapes: Shapes, prefix: str = "") -> dict[str, Any]:
    """Keyword arguments for ``FluxTransformer2DModel`` read off a diffusers-layout transformer."""
    p = re.escape(prefix)
    hidden, in_channels = _require(shapes, prefix + "x_embedder.weight")
    doubles = _count(shapes, p + r"transformer_blocks\.(\d+)\.")
    singles = _count(shapes, p + r"single_transformer_blocks\.(\d+)\.")
    block = "transformer_blocks.0" if doubles else "single_transformer_blocks.0"
    head_dim = _require(shapes, f"{prefix}{block}.attn.norm_q.weight")[0]
    return dict(
        patch_size=1,
        in_channels=in_channels,
        out_channels=_require(shapes, prefix + "proj_out.weight")[0],
        num_layers=doubles,
        num_single_layers=singles,
        attention_head_dim=head_dim,
        num_attention_heads=hidden // head_dim,
        joint_attention_dim=_require(shapes, prefix + "context_embedder.weight")[1],
        pooled_projection_dim=_require(shapes, prefix + "time_text_embed.text_embedder.linear_1.weight")[1],
        guidance_embeds=prefix + "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        axes_dims_rope=rope_axes(head_dim),
    )


# ---------------------------------------------------------------------------------------------
# Key conversion
# ---------------------------------------------------------------------------------------------

_RENAMES = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE_RENAMES = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}


def convert_bfl(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                source: str = "FLUX") -> dict[str, torch.Tensor]:
    """BFL-layout tensors (prefix removed) → diffusers ``FluxTransformer2DModel`` names.

    Raises :class:`FluxLoadError` naming any tensor the conversion does not use.
    """
    left = dict(tensors)
    out: dict[str, torch.Tensor] = {}
    hidden = config["attention_head_dim"] * config["num_attention_heads"]

    def take(key: str) -> torch.Tensor:
        if key not in left:
            raise FluxLoadError(f"{source}: the FLUX transformer lacks {key}")
        return left.pop(key)

    def linear(old: str, new: str) -> None:
        out[new + ".weight"] = take(old + ".weight")
        if old + ".bias" in left:
            out[new + ".bias"] = take(old + ".bias")

    def split(old: str, news: Sequence[str], sizes: Sequence[int]) -> None:
        for suffix in (".weight", ".bias"):
            if old + suffix not in left:
                continue
            tensor = take(old + suffix)
            if tensor.shape[0] != sum(sizes):
                raise FluxLoadError(f"{source}: {old}{suffix} has {tensor.shape[0]} rows, expected {sum(sizes)}")
            for new, part in zip(news, torch.split(tensor, list(sizes), dim=0)):
                out[new + suffix] = part

    for old, new in _RENAMES.items():
        if old.startswith("guidance_in") and not config["guidance_embeds"]:
            continue
        linear(old, new)
    shift, scale = take("final_layer.adaLN_modulation.1.weight").chunk(2, dim=0)
    out["norm_out.linear.weight"] = torch.cat([scale, shift], dim=0)
    shift, scale = take("final_layer.adaLN_modulation.1.bias").chunk(2, dim=0)
    out["norm_out.linear.bias"] = torch.cat([scale, shift], dim=0)

    for i in range(config["num_layers"]):
        old, new = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for a, b in _DOUBLE_RENAMES.items():
            linear(old + a, new + b)
        for a, b in _DOUBLE_NORMS.items():
            out[new + b] = take(old + a)
        split(old + "img_attn.qkv", [new + "attn.to_q", new + "attn.to_k", new + "attn.to_v"], [hidden] * 3)
        split(old + "txt_attn.qkv", [new + "attn.add_q_proj", new + "attn.add_k_proj", new + "attn.add_v_proj"],
              [hidden] * 3)
    for i in range(config["num_single_layers"]):
        old, new = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        linear(old + "modulation.lin", new + "norm.linear")
        linear(old + "linear2", new + "proj_out")
        out[new + "attn.norm_q.weight"] = take(old + "norm.query_norm.scale")
        out[new + "attn.norm_k.weight"] = take(old + "norm.key_norm.scale")
        split(old + "linear1", [new + "attn.to_q", new + "attn.to_k", new + "attn.to_v", new + "proj_mlp"],
              [hidden] * 3 + [4 * hidden])
    if left:
        names = sorted(left)
        raise FluxLoadError(f"{source}: {len(names)} FLUX tensors were not understood by the converter "
                            f"(e.g. {', '.join(names[:5])})")
    return out


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

def default_compute_dtype(device: torch.device) -> torch.dtype:
    """float32 on the CPU (or when forced); bfloat16 on GPUs that have it (ComfyUI's first choice for FLUX),
    else float16."""
    from loom.nodes.runtime import devices

    if devices.diffusion_dtype(device) == torch.float32:
        return torch.float32
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def storage_dtype_for(file_dtype: torch.dtype, weight_dtype: str, compute_dtype: torch.dtype) -> torch.dtype:
    """Where the weights live: the chosen fp8 type, an fp8 file's own type, else the compute dtype."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}, not {weight_dtype!r}")
    chosen = WEIGHT_DTYPES[weight_dtype]
    if chosen is not None:
        return chosen
    return file_dtype if file_dtype in FP8_DTYPES else compute_dtype


def build_transformer(tensors: Mapping[str, torch.Tensor], *, source: str = "FLUX",
                      device: torch.device | str = "cpu", compute_dtype: torch.dtype = torch.float32,
                      weight_dtype: str = "default") -> tuple[torch.nn.Module, dict[str, Any]]:
    """``FluxTransformer2DModel`` from a FLUX state dict in any of the layouts above."""
    from diffusers import FluxTransformer2DModel
    from loom.nodes.runtime import checkpoint, manual_cast

    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    found = detect_layout(shapes)
    if found is None:
        raise FluxLoadError(f"{source} is not a FLUX transformer: no img_in/double_blocks (BFL) or "
                            "x_embedder/transformer_blocks (diffusers) tensors")
    layout, prefix = found
    tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if layout == "bfl":
        config = config_from_bfl(shapes)
        state = convert_bfl(tensors, config, source)
    else:
        config = config_from_diffusers(shapes)
        state = dict(tensors)
    file_dtype = _main_dtype(tensors.values())
    storage = storage_dtype_for(file_dtype, weight_dtype, compute_dtype)
    state = {k: v.to(storage) if v.is_floating_point() else v for k, v in state.items()}
    model = checkpoint._instantiate(FluxTransformer2DModel, **config)
    checkpoint._load_exact(model, state, "FLUX transformer", source)
    if storage != compute_dtype:
        manual_cast.compute_in(model, compute_dtype)
    return model.to(device), dict(config, layout=layout, storage_dtype=str(storage).removeprefix("torch."))


def file_dtype(file: Any) -> torch.dtype:
    """The dtype a FLUX file stores its weights in (read off one small tensor)."""
    found = detect_layout(file.shapes)
    prefix = found[1] if found else ""
    for key in (prefix + "img_in.bias", prefix + "x_embedder.bias"):
        if key in file.shapes:
            return file.read(key).dtype
    return torch.float32


def _main_dtype(tensors: Any) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for tensor in tensors:
        counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def load_transformer(path: str | Path, *, device: torch.device | str | None = None,
                     compute_dtype: torch.dtype | None = None,
                     weight_dtype: str = "default") -> tuple["FluxNetwork", dict[str, Any]]:
    """A FLUX transformer file (``diffusion_models/``) as a :class:`FluxNetwork` and the config it was built with."""
    from loom.nodes.runtime import checkpoint, devices

    path = Path(path)
    device = torch.device(device) if device is not None else devices.compute_device()
    compute_dtype = compute_dtype or default_compute_dtype(device)
    with checkpoint.StateDictFile(path) as file:
        # read straight into the storage dtype: one copy, converted in large blocks while reading
        tensors = file.read_prefixed("", storage_dtype_for(file_dtype(file), weight_dtype, compute_dtype))
    module, config = build_transformer(tensors, source=path.name, device=device, compute_dtype=compute_dtype,
                                       weight_dtype=weight_dtype)
    return FluxNetwork(module, compute_dtype), config


# ---------------------------------------------------------------------------------------------
# Calling the model with ComfyUI's inputs
# ---------------------------------------------------------------------------------------------

def pad_to_patch(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """ComfyUI's ``pad_to_patch_size``: circular padding at the bottom/right to a multiple of ``patch``."""
    pad_h = (patch - x.shape[-2] % patch) % patch
    pad_w = (patch - x.shape[-1] % patch) % patch
    if pad_h == 0 and pad_w == 0:
        return x
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="circular")


def patchify(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """``[B, C, H, W]`` (sides multiples of ``patch``) → ``[B, H/p * W/p, C * p * p]`` in ``(c, ph, pw)`` order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, rows: int, cols: int, patch: int = PATCH) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[B, rows * cols, C * p * p]`` → ``[B, C, rows * p, cols * p]``."""
    b, n, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.reshape(b, rows, cols, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * patch, cols * patch)


def image_ids(rows: int, cols: int, *, index: float = 0.0, row_offset: int = 0, col_offset: int = 0,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[rows * cols, 3]`` position ids ``(index, row, column)`` as ComfyUI's ``process_img`` makes them."""
    ids = torch.zeros(rows, cols, 3, dtype=dtype, device=device)
    ids[:, :, 0] = index
    ids[:, :, 1] = torch.linspace(row_offset, rows - 1 + row_offset, rows, dtype=dtype, device=device)[:, None]
    ids[:, :, 2] = torch.linspace(col_offset, cols - 1 + col_offset, cols, dtype=dtype, device=device)[None, :]
    return ids.reshape(rows * cols, 3)


class FluxNetwork(torch.nn.Module):
    """A built ``FluxTransformer2DModel`` (``.transformer``) called with ComfyUI's FLUX inputs (see the module
    docstring). It takes latents in the latent layout, so it has no diffusers ``config`` of its own: the
    transformer's (whose ``in_channels`` counts packed 2x2 patches) is :attr:`transformer_config`."""

    def __init__(self, transformer: torch.nn.Module, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.transformer = transformer
        self.compute_dtype = compute_dtype

    @property
    def transformer_config(self) -> Any:
        return self.transformer.config

    @property
    def latent_channels(self) -> int:
        """The channels of the latent it denoises (its output; diffusers' ``out_channels`` is unset or None when
        it equals ``in_channels``)."""
        config = self.transformer.config
        return (getattr(config, "out_channels", None) or config.in_channels) // (PATCH * PATCH)

    @property
    def input_channels(self) -> int:
        """The channels it takes: the latent's, plus the Fill/Canny/Depth models' extra input (``concat``)."""
        return self.transformer.config.in_channels // (PATCH * PATCH)

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, guidance: torch.Tensor | float | None = None,
                control: Any = None, references: Sequence[torch.Tensor] = (),
                reference_method: str = "offset", concat: torch.Tensor | None = None) -> torch.Tensor:
        """Prediction ``[B, C, H, W]`` (float32) for latent ``x`` at ``timestep`` (sigma for FLUX). ``control``
        (ControlNets, :func:`nodes.runtime.controlnet_dit.flux_control`) maps the transformer's call kwargs to
        extra kwargs (its residuals). ``references`` (Kontext's reference latents, ``[B, C, h, w]`` each, in the
        model's latent space) are appended to the image tokens with the position ids :func:`reference_ids`
        gives them; only the latent's own tokens are read back. ``concat`` (the Fill/Canny/Depth models' extra
        input channels, :meth:`nodes.runtime.families.flux.Flux.concat_input`) is appended to the latent's
        channels before patching, as ComfyUI's ``Flux.forward`` does."""
        if x.ndim != 4:
            raise ValueError(f"a FLUX latent must be [batch, channels, height, width], got {tuple(x.shape)}")
        config = self.transformer.config
        if x.shape[1] != self.latent_channels:
            raise ValueError(f"this FLUX model takes {self.latent_channels}-channel latents; the latent has "
                             f"{x.shape[1]}")
        extra = 0 if concat is None else concat.shape[1]
        if x.shape[1] + extra != self.input_channels:
            raise ValueError(f"this FLUX model takes {self.input_channels} input channels; the latent has "
                             f"{x.shape[1]} and the extra input {extra}")
        if context.shape[-1] != config.joint_attention_dim:
            raise ValueError(f"this FLUX model takes a {config.joint_attention_dim}-wide text context (T5-XXL); "
                             f"the conditioning is {context.shape[-1]} wide (is it from another model's text encoder?)")
        device, dtype = self.device, self.compute_dtype
        batch, _, height, width = x.shape
        padded = pad_to_patch(x if concat is None else torch.cat([x, concat.to(x)], dim=1))
        rows, cols = padded.shape[-2] // PATCH, padded.shape[-1] // PATCH
        tokens = patchify(padded).to(device=device, dtype=dtype)
        ids = image_ids(rows, cols, device=device)
        image_tokens = tokens.shape[1]
        if references:
            extra_tokens, extra_ids = [tokens], [ids]
            for reference, (index, row_offset, col_offset) in zip(references, reference_ids(
                    height, width, [tuple(r.shape[-2:]) for r in references], reference_method)):
                padded_ref = pad_to_patch(reference)
                ref_rows, ref_cols = padded_ref.shape[-2] // PATCH, padded_ref.shape[-1] // PATCH
                extra_tokens.append(patchify(padded_ref).to(device=device, dtype=dtype).expand(batch, -1, -1))
                extra_ids.append(image_ids(ref_rows, ref_cols, index=index, row_offset=row_offset,
                                           col_offset=col_offset, device=device))
            tokens, ids = torch.cat(extra_tokens, dim=1), torch.cat(extra_ids, dim=0)
        timestep = _per_item(timestep, batch).to(device=device, dtype=dtype)
        if y is None:
            y = torch.zeros(batch, config.pooled_projection_dim)
        y = y[:, :config.pooled_projection_dim].to(device=device, dtype=dtype)
        kwargs: dict[str, Any] = dict(
            hidden_states=tokens, encoder_hidden_states=context.to(device=device, dtype=dtype),
            pooled_projections=y, timestep=timestep,
            img_ids=ids, txt_ids=torch.zeros(context.shape[1], 3, device=device),
            return_dict=False)
        with torch.no_grad():
            if self.guidance_embeds and guidance is not None:
                kwargs["guidance"] = _per_item(guidance, batch).to(device=device, dtype=dtype)
            if control is not None:
                kwargs.update(control(kwargs))
            if self.guidance_embeds and guidance is not None:
                out = self.transformer(**kwargs)[0]
            elif self.guidance_embeds:
                with _without_guidance(self.transformer):  # FluxDisableGuidance: no guidance embedding at all
                    out = self.transformer(**kwargs)[0]
            else:
                out = self.transformer(**kwargs)[0]
        return unpatchify(out[:, :image_tokens].float(), rows, cols)[:, :, :height, :width]


def reference_ids(height: int, width: int, sizes: Sequence[tuple[int, int]],
                  method: str = "offset") -> list[tuple[float, int, int]]:
    """``(index, row offset, column offset)`` of each reference latent's position ids, in patches, for a latent of
    ``height`` × ``width`` and references of ``sizes`` (latent pixels), as ComfyUI's ``Flux._forward``:

    * ``offset`` (FLUX.1's default): index 1, each reference placed after the previous ones along the side
      that keeps the references' bounding box squarest;
    * ``index``: index 1, 2, ... and no offset;
    * ``uxo``: index 0, shifted diagonally past the latent and the previous references.
    """
    rows, cols = (height + PATCH // 2) // PATCH, (width + PATCH // 2) // PATCH
    placed: list[tuple[float, int, int]] = []
    h = w = 0
    index = 0
    for ref_h, ref_w in sizes:
        if method == "index":
            index += 1
            h_offset = w_offset = 0
        elif method == "uxo":
            index = 0
            h_offset, w_offset = rows * PATCH + h, cols * PATCH + w
            h, w = h + ref_h, w + ref_w
        else:
            index = 1
            h_offset = w_offset = 0
            if ref_h + h > ref_w + w:
                w_offset = w
            else:
                h_offset = h
            h, w = max(h, ref_h + h_offset), max(w, ref_w + w_offset)
        placed.append((float(index), (h_offset + PATCH // 2) // PATCH, (w_offset + PATCH // 2) // PATCH))
    return placed


def _per_item(value: torch.Tensor | float, batch: int) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=torch.float32).flatten()
    if value.numel() == 1:
        return value.expand(batch)
    if value.numel() != batch:
        raise ValueError(f"expected one value or one per batch item ({batch}), got {value.numel()}")
    return value


class _TimeAndText(torch.nn.Module):
    """A dev model's time/text embedding without the guidance term (the submodules are the model's own)."""

    def __init__(self, combined: torch.nn.Module) -> None:
        super().__init__()
        self.time_proj = combined.time_proj
        self.timestep_embedder = combined.timestep_embedder
        self.text_embedder = combined.text_embedder

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        projected = self.time_proj(timestep)
        embedded = self.timestep_embedder(projected.to(dtype=pooled.dtype))
        return embedded + self.text_embedder(pooled)


class _without_guidance:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.saved = self.module.time_text_embed
        self.module.time_text_embed = _TimeAndText(self.saved)

    def __exit__(self, *exc: Any) -> None:
        self.module.time_text_embed = self.saved
