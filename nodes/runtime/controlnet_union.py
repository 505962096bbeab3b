"""Union ControlNets: one network for several kinds of control image, told the kind by SetUnionControlNetType.

    union, tensors = split_union(layout, tensors, source)   # at load time: the union parts, the rest
    with union_hooks(control_net):                          # around the SDXL ControlNet's call
        down, mid = control_net.model(...)

Two families, told apart from the file's keys as ComfyUI does:

* SDXL "ControlNet++ Union / ProMax" (xinsir): a diffusers-layout ControlNet with ``task_embedding``
  ``[types, width]``, ``control_add_embedding.linear_1/2``, ``transformer_layes.N.*`` (one pre-norm transformer
  block: ``nn.MultiheadAttention`` ``attn``, ``ln_1``, ``mlp.c_fc`` / ``mlp.c_proj`` with QuickGELU, ``ln_2``) and
  ``spatial_ch_projs``. As ComfyUI's ``cldm.ControlNet`` runs it: the time embedding always gets
  ``control_add_embedding`` of the one-hot type vector (each entry through the 256-wide sinusoidal timestep
  embedding, cos first, then concatenated), so "auto" (no type) embeds an all-zero vector; with a type, the hint
  encoder's features ``h`` become ``h + spatial_ch_projs(transformer(mean(h) + task_embedding[type]))`` (one token
  per image, broadcast over the pixels); with "auto" they are used as they are.
* FLUX union (InstantX / Shakker-Labs Union Pro): an InstantX FLUX ControlNet with
  ``controlnet_mode_embedder.weight`` ``[modes, width]``. With a type, ComfyUI's ``ControlNetFlux`` puts the mode's
  embedding in front of the embedded text tokens (and a copy of the first text position id in front of the
  ids); "auto" adds nothing.

The type is the number SetUnionControlNetType gives (the index in ComfyUI's ``UNION_CONTROLNET_TYPES``,
xinsir's order) for both families, as ComfyUI passes it: for the FLUX union, whose own modes are canny 0,
tile 1, depth 2, blur 3, pose 4, gray 5, low quality 6, "openpose" (0) selects canny.
"""
from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
from torch import nn

if TYPE_CHECKING:
    from loom.nodes.runtime.controlnet import ControlNet

SDXL_MARKER = "control_add_embedding.linear_1.bias"
FLUX_MARKER = "controlnet_mode_embedder.weight"
SDXL_UNION_PREFIXES = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")
TRANSFORMER_HEADS = 8  # ComfyUI's (and xinsir's) num_trans_head; the files do not record it


def _error(message: str) -> Exception:
    from loom.nodes.runtime.controlnet import ControlNetError

    return ControlNetError(message)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """xinsir's residual attention block (CLIP's layout) over the condition tokens."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=_QuickGELU(),
                                             c_proj=nn.Linear(width * 4, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class SDXLUnion(nn.Module):
    """The union parts of an SDXL ControlNet++ file, under the file's own names."""

    def __init__(self, types: int, width: int, layers: int, embed_width: int, time_width: int,
                 projection: int) -> None:
        from diffusers.models.embeddings import TimestepEmbedding

        super().__init__()
        self.types = types
        self.embed_width = embed_width
        self.task_embedding = nn.Parameter(torch.empty(types, width))
        self.control_add_embedding = TimestepEmbedding(embed_width * types, time_width)
        self.transformer_layes = nn.Sequential(*[_Block(width, TRANSFORMER_HEADS) for _ in range(layers)])
        self.spatial_ch_projs = nn.Linear(width, projection)

    def type_embedding(self, control_type: tuple[int, ...], dtype: torch.dtype, device: torch.device
                       ) -> torch.Tensor:
        """``[1, time width]``: what the chosen types add to the time embedding (also for "auto")."""
        from diffusers.models.embeddings import get_timestep_embedding

        one_hot = torch.zeros(self.types, device=device)
        one_hot[list(control_type)] = 1.0
        embedded = get_timestep_embedding(one_hot, self.embed_width, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.control_add_embedding(embedded.reshape(1, -1).to(dtype))

    def fuse(self, features: torch.Tensor, control_type: tuple[int, ...]) -> torch.Tensor:
        """The hint features told their type: ComfyUI's ``union_controlnet_merge`` for one control image."""
        tokens = features.mean(dim=(2, 3)) + self.task_embedding[control_type[0]]
        tokens = self.transformer_layes(tokens.unsqueeze(1))
        return features + self.spatial_ch_projs(tokens[:, 0])[:, :, None, None]


class FluxUnion(nn.Module):
    """The mode embedding of a FLUX union ControlNet."""

    def __init__(self, modes: int, width: int) -> None:
        super().__init__()
        self.types = modes
        self.controlnet_mode_embedder = nn.Embedding(modes, width)


def split_union(layout: str, tensors: dict[str, torch.Tensor], source: str
                ) -> tuple[nn.Module | None, dict[str, torch.Tensor]]:
    """``(union parts or None, the other tensors)`` for a ControlNet file's tensors (``layout`` as detected)."""
    from loom.nodes.runtime import checkpoint

    if layout == "diffusers" and SDXL_MARKER in tensors:
        own = {k: v for k, v in tensors.items() if k.startswith(SDXL_UNION_PREFIXES)}
        rest = {k: v for k, v in tensors.items() if k not in own}
        try:
            module: nn.Module = _sdxl_union(own)
        except KeyError as exc:
            raise _error(f"{source}: the union ControlNet lacks the tensor {exc.args[0]} (damaged file?)") from None
    elif layout == "flux" and FLUX_MARKER in tensors:
        own = {FLUX_MARKER: tensors[FLUX_MARKER]}
        rest = {k: v for k, v in tensors.items() if k != FLUX_MARKER}
        with torch.device("meta"):
            module = FluxUnion(*own[FLUX_MARKER].shape)
    else:
        return None, tensors
    try:
        checkpoint._load_exact(module, own, "union ControlNet", source)
    except checkpoint.CheckpointError as exc:
        raise _error(str(exc)) from None
    return module, rest


def _sdxl_union(own: Mapping[str, torch.Tensor]) -> SDXLUnion:
    types, width = own["task_embedding"].shape
    time_width, embed_in = own["control_add_embedding.linear_1.weight"].shape
    if embed_in % types:
        raise _error(f"the union ControlNet's type embedding takes {embed_in} features, not a multiple of its "
                     f"{types} control types")
    if width % TRANSFORMER_HEADS:
        raise _error(f"the union ControlNet's condition transformer is {width} wide, which its "
                     f"{TRANSFORMER_HEADS} heads do not divide")
    layers = len({m.group(1) for k in own if (m := re.match(r"transformer_layes\.(\d+)\.", k))})
    with torch.device("meta"):
        return SDXLUnion(types, width, layers, embed_in // types, time_width,
                         own["spatial_ch_projs.weight"].shape[0])


def check_type(control_net: "ControlNet", control_type: tuple[int, ...]) -> None:
    """A clear error when a union ControlNet does not know a chosen type (ProMax knows 8, the first Union 6)."""
    union = control_net.union
    if union is not None and any(t >= union.types for t in control_type):
        raise _error(f"this union ControlNet knows {union.types} control types (0..{union.types - 1}), not "
                     f"type {max(control_type)}")


@contextlib.contextmanager
def union_hooks(control_net: "ControlNet") -> Iterator[None]:
    """While inside, an SDXL union ControlNet's model call uses the chosen type (nothing for other ControlNets)."""
    union = control_net.union
    if not isinstance(union, SDXLUnion):
        yield
        return
    model = control_net.model
    control_type = tuple(control_net.control_type)

    def add_type(_module: nn.Module, _inputs: Any, emb: torch.Tensor) -> torch.Tensor:
        return emb + union.type_embedding(control_type, emb.dtype, emb.device)

    def fuse(_module: nn.Module, _inputs: Any, features: torch.Tensor) -> torch.Tensor:
        return union.fuse(features, control_type)

    hooks = [model.time_embedding.register_forward_hook(add_type)]
    if control_type:
        hooks.append(model.controlnet_cond_embedding.register_forward_hook(fuse))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def flux_mode(control_net: "ControlNet", kwargs: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The FLUX ControlNet's call kwargs for the chosen mode (longer text ids), with the mode token put in front
    of the embedded text while inside; the kwargs unchanged for "auto" and for other ControlNets."""
    union = control_net.union
    control_type = tuple(control_net.control_type)
    if not isinstance(union, FluxUnion) or not control_type:
        yield kwargs
        return

    def prepend(_module: nn.Module, _inputs: Any, text: torch.Tensor) -> torch.Tensor:
        modes = torch.tensor(control_type, device=text.device)
        token = union.controlnet_mode_embedder(modes).to(text.dtype)
        return torch.cat([token.unsqueeze(0).expand(text.shape[0], -1, -1), text], dim=1)

    txt_ids = kwargs["txt_ids"]
    longer = {**kwargs, "txt_ids": torch.cat([txt_ids[:1].expand(len(control_type), -1), txt_ids], dim=0)}
    hook = control_net.model.context_embedder.register_forward_hook(prepend)
    try:
        yield longer
    finally:
        hook.remove()

