"""Style models (ComfyUI's ``STYLE_MODEL``): FLUX.1 Redux, and StyleModelApply's token maths.

Redux (``comfy/ldm/flux/redux.py``) is two linear layers, ``redux_down(silu(redux_up(x)))``, applied to a
SigLIP vision output's ``last_hidden_state``: each image gives ``tokens`` (729 for SigLIP 384) text-width
(4096) tokens that StyleModelApply appends to every conditioning entry. The widths come from the file's
shapes. ComfyUI's other style model, the SD1 T2I-Adapter style adapter (``style_embedding``), is reported
as unsupported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loom.nodes.kernel import sockets
from loom.nodes.runtime import devices, model_cache


class StyleModelError(ValueError):
    """A file that is not a style model Loom can load."""


class ReduxImageEncoder(torch.nn.Module):
    def __init__(self, redux_dim: int, hidden: int, txt_in_features: int) -> None:
        super().__init__()
        self.redux_up = torch.nn.Linear(redux_dim, hidden)
        self.redux_down = torch.nn.Linear(hidden, txt_in_features)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.redux_down(torch.nn.functional.silu(self.redux_up(embeds)))


@dataclass
class StyleModel:
    """``STYLE_MODEL``: ``get_cond(clip_vision_output)`` gives the tokens to append, [B, tokens, width]."""

    module: ReduxImageEncoder
    kind: str = "flux_redux"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def input_width(self) -> int:
        return self.module.redux_up.in_features

    @torch.no_grad()
    def get_cond(self, clip_vision_output: Any) -> torch.Tensor:
        hidden = clip_vision_output.last_hidden_state
        if hidden.shape[-1] != self.input_width:
            raise StyleModelError(
                f"the CLIP vision output has width {hidden.shape[-1]}, this Redux model takes {self.input_width} "
                "(FLUX Redux expects the SigLIP so400m vision model, sigclip_vision_patch14_384)")
        device = self.module.redux_up.weight.device
        return self.module(hidden.to(device=device, dtype=torch.float32)).to(devices.intermediate_device())


sockets.STYLE_MODEL.register(StyleModel)


def load_style_model(path: str | Path, *, device: torch.device | str | None = None,
                     use_cache: bool = True) -> StyleModel:
    device = torch.device(device) if device is not None else devices.compute_device()
    if not use_cache:
        return _load(Path(path), device)
    key = ("style_model", model_cache.file_key(path), str(device))
    return model_cache.models.get_or_load(key, lambda: _load(Path(path), device),
                                          expected_bytes=Path(path).stat().st_size * 2, device=device)


def _load(path: Path, device: torch.device) -> StyleModel:
    from loom.nodes.runtime.checkpoint import StateDictFile

    with StateDictFile(path) as file:
        shapes = file.shapes
        if "style_embedding" in shapes:
            raise StyleModelError(f"{path.name} is a T2I-Adapter style model (SD1.x 'style_embedding'), which Loom "
                                  "does not support; FLUX.1 Redux style models load")
        needed = ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias")
        if "redux_down.weight" not in shapes:
            found = ", ".join(sorted(shapes)[:5]) or "no tensors"
            raise StyleModelError(f"invalid style model {path.name}: neither a FLUX.1 Redux model (redux_up/"
                                  f"redux_down) nor a T2I-Adapter style model; found e.g. {found}")
        missing = [k for k in needed if k not in shapes]
        extra = sorted(set(shapes) - set(needed))
        if missing or extra:
            raise StyleModelError(f"{path.name}: a Redux style model has exactly {', '.join(needed)}; "
                                  + (f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra[:5])}"))
        hidden, redux_dim = shapes["redux_up.weight"]
        txt, down_in = shapes["redux_down.weight"]
        if down_in != hidden:
            raise StyleModelError(f"{path.name}: redux_down takes {down_in} features but redux_up gives {hidden}")
        from loom.nodes.runtime.checkpoint import _instantiate, _load_exact
        module = _instantiate(ReduxImageEncoder, redux_dim, hidden, txt)
        # ComfyUI builds Redux in float32 and keeps it there
        state = {k: file.read(k, torch.float32) for k in needed}
        _load_exact(module, state, "Redux style model", path.name)
    return StyleModel(module=module.to(device), options={"source": str(path)})


def apply_style(conditioning: list, tokens: torch.Tensor, strength: float, strength_type: str) -> list:
    """StyleModelApply: ``tokens`` [B, n, width] flattened to one [1, B*n, width] row, appended to every entry.

    ``multiply`` scales the tokens. ``attn_bias`` (strength ≠ 1), or an entry that already has an
    ``attention_mask``, grows the entry's float16 attention mask (``[B, txt+ref, txt+ref]`` around the
    ``attention_mask_img_shape`` reference-image tokens) with log(strength) as the bias of text and reference
    queries towards the new tokens (log(1) = 0 for multiply), as ComfyUI does.
    """
    cond = tokens.flatten(start_dim=0, end_dim=1).unsqueeze(dim=0)
    if strength_type == "multiply":
        cond = cond * strength
    n = cond.shape[1]
    out = []
    for txt, keys in conditioning:
        keys = keys.copy()
        if "attention_mask" in keys or (strength_type == "attn_bias" and strength != 1.0):
            attn_bias = torch.log(torch.tensor([strength if strength_type == "attn_bias" else 1.0]))
            ref_shape = keys.get("attention_mask_img_shape", (1, 1))
            n_ref = ref_shape[0] * ref_shape[1]
            n_txt = txt.shape[1]
            mask = keys.get("attention_mask", None)
            if mask is None:
                mask = torch.zeros((txt.shape[0], n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
            if mask.dtype == torch.bool:
                mask = torch.log(mask.to(dtype=torch.float16))
            grown = torch.zeros((txt.shape[0], n_txt + n + n_ref, n_txt + n + n_ref), dtype=torch.float16)
            grown[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
            grown[:, :n_txt, n_txt + n:] = mask[:, :n_txt, n_txt:]
            grown[:, n_txt + n:, :n_txt] = mask[:, n_txt:, :n_txt]
            grown[:, n_txt + n:, n_txt + n:] = mask[:, n_txt:, n_txt:]
            grown[:, :n_txt, n_txt:n_txt + n] = attn_bias
            grown[:, n_txt + n:, n_txt:n_txt + n] = attn_bias
            keys["attention_mask"] = grown.to(txt.device)
            keys["attention_mask_img_shape"] = ref_shape
        if txt.shape[0] != 1 or txt.shape[2] != cond.shape[2]:
            raise StyleModelError(f"the style tokens [1, {n}, {cond.shape[2]}] cannot be appended to a conditioning "
                                  f"of shape {list(txt.shape)}: ComfyUI concatenates along the tokens, so the "
                                  "conditioning needs batch 1 and the same width (FLUX.1's 4096 for Redux)")
        out.append([torch.cat((txt, cond.to(txt.device)), dim=1), keys])
    return out
