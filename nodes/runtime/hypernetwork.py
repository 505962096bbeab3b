"""Hypernetworks (the A1111 format ComfyUI's HypernetworkLoader reads): small MLPs that rework the key and
value inputs of a UNet's attention layers.

A hypernetwork file maps layer widths to a pair of modules, ``{320: [key_state, value_state], 640: [...],
768: [...], 1280: [...]}``, beside options: ``activation_func`` (default ``"linear"``), ``is_layer_norm``,
``use_dropout``, ``activate_output``, ``last_layer_dropout`` (and bookkeeping such as ``layer_structure``,
``weight_initialization``, ``name``, ``step`` that inference does not need). Each state dict holds the
``linear.N.weight``/``.bias`` of an ``nn.Sequential``, read as ComfyUI does: the ``.weight`` entries in order
(indices compared as numbers), each a ``Linear``, followed by the activation unless it is the last entry and
``activate_output`` is off, then, with ``is_layer_norm``, the next entry as a ``LayerNorm``. (ComfyUI counts
the layer norms when it decides which entry is last, so with layer norms the last ``Linear`` is activated too;
so does Loom.) Dropout is a training layer: ComfyUI builds its modules in training mode, so its dropout
(p = 0.3) stays random at inference; Loom evaluates the modules as at inference, without it.

Files: pickled ``.pt``/``.ckpt`` (what trainers write) load only under Loom's pickle rule
(:mod:`loom.nodes.kernel.config` ``allow_pickle``, ``--allow-pickle``) with ``torch.load(weights_only=True)``;
``.safetensors`` files hold the same modules as flat keys ``"{width}.{0 key | 1 value}.{module key}"``
(``"768.0.linear.0.weight"``) and the options as metadata strings (booleans ``"true"``/``"false"``).

The patch (:class:`HypernetworkPatch`, ComfyUI's ``hypernetwork_patch``) is applied to the key and value
inputs of every self- and cross-attention: where the input's width has modules,
``k + key_module(k) * strength`` and ``v + value_module(v) * strength``
(``attn1_kv_patch`` and ``attn2_kv_patch`` of :mod:`nodes.runtime.unet_patches`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from loom.nodes.kernel import config

ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,  # ComfyUI's mapping (A1111 means SiLU; the files' behaviour follows ComfyUI)
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "softsign": torch.nn.Softsign,
    "mish": torch.nn.Mish,
}
OPTIONS = ("activation_func", "is_layer_norm", "use_dropout", "activate_output", "last_layer_dropout")
PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


class HypernetworkError(ValueError):
    """A hypernetwork file that cannot be read or is not laid out as one; the message says why."""


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"\.", name))


def _module(width: int, which: str, state: Any, activation: str, layer_norm: bool,
            activate_output: bool, source: str) -> torch.nn.Sequential:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HypernetworkError(f"{source}: the {which} module of width {width} is not a state dict of tensors")
    names = sorted((key[:-len(".weight")] for key in state if key.endswith(".weight")), key=_natural)
    layers: list[torch.nn.Module] = []
    i = 0
    while i < len(names):
        last = i == len(names) - 1
        weight, bias = state[names[i] + ".weight"], state.get(names[i] + ".bias")
        if weight.ndim != 2 or bias is None or tuple(bias.shape) != (weight.shape[0],):
            raise HypernetworkError(f"{source}: {names[i]} of the {which} module of width {width} is not a linear "
                                    f"layer with a bias (weight {tuple(weight.shape)})")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        layers.append(linear)
        if activation != "linear" and (not last or activate_output):
            layers.append(ACTIVATIONS[activation]())
        if layer_norm:
            i += 1
            norm_weight = state[names[i] + ".weight"] if i < len(names) else None
            norm_bias = state.get(names[i] + ".bias") if i < len(names) else None
            if norm_weight is None or norm_bias is None or norm_weight.ndim != 1:
                raise HypernetworkError(f"{source}: is_layer_norm is set but the {which} module of width {width} "
                                        f"has no layer norm after {names[i - 1]}")
            norm = torch.nn.LayerNorm(norm_weight.shape[0])
            norm.load_state_dict({"weight": norm_weight.float(), "bias": norm_bias.float()})
            layers.append(norm)
        i += 1
    linears = [layer for layer in layers if isinstance(layer, torch.nn.Linear)]
    if not linears or linears[0].in_features != width or linears[-1].out_features != width:
        shapes = [(layer.in_features, layer.out_features) for layer in linears]
        raise HypernetworkError(f"{source}: the {which} module of width {width} must map {width} features to "
                                f"{width}; its linear layers are {shapes}")
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


def build(state: Mapping[Any, Any], source: str) -> dict[int, tuple[torch.nn.Sequential, torch.nn.Sequential]]:
    """The ``{width: (key module, value module)}`` of a hypernetwork state in ComfyUI's format."""
    activation = state.get("activation_func", "linear")
    if activation not in ACTIVATIONS:
        raise HypernetworkError(f"{source}: unsupported activation_func {activation!r}; expected one of "
                                f"{', '.join(ACTIVATIONS)}")
    layer_norm = bool(state.get("is_layer_norm", False))
    activate_output = bool(state.get("activate_output", False))
    modules: dict[int, tuple[torch.nn.Sequential, torch.nn.Sequential]] = {}
    for key, pair in state.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HypernetworkError(f"{source}: layer width {width} must hold [key module, value module]")
        modules[width] = (_module(width, "key", pair[0], activation, layer_norm, activate_output, source),
                          _module(width, "value", pair[1], activation, layer_norm, activate_output, source))
    if not modules:
        raise HypernetworkError(f"{source} holds no hypernetwork layers (integer layer widths mapping to "
                                "[key module, value module]); is it a hypernetwork?")
    return modules


def _metadata_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _read_safetensors(path: Path) -> dict[Any, Any]:
    from loom.nodes.runtime.checkpoint import CheckpointError, StateDictFile

    try:
        with StateDictFile(path) as file:
            tensors = {key: file.read(key) for key in file.keys()}
            metadata = dict(file.metadata)
    except CheckpointError as exc:
        raise HypernetworkError(str(exc)) from None
    state: dict[Any, Any] = {name: _metadata_value(metadata[name]) for name in OPTIONS if name in metadata}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(\d+)\.([01])\.(.+)", key)
        if match is None:
            raise HypernetworkError(f"{path.name}: tensor {key!r} is not named '<width>.<0 key | 1 value>.<module "
                                    "key>' (e.g. '768.0.linear.0.weight')")
        pair = state.setdefault(int(match.group(1)), [{}, {}])
        pair[int(match.group(2))][match.group(3)] = tensor
    return state


def _read_pickle(path: Path, allow_pickle: bool | None) -> Any:
    allowed = config.current().allow_pickle if allow_pickle is None else allow_pickle
    if not allowed:
        raise HypernetworkError(f"{path.name} is pickled ({path.suffix}); pickles can run code when loaded, so Loom "
                                "reads them only when started with --allow-pickle (and then with weights_only=True). "
                                "Prefer a .safetensors version of this hypernetwork.")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HypernetworkError(f"{path.name} could not be read with torch.load(weights_only=True): {exc}") from None
    if not isinstance(loaded, Mapping):
        raise HypernetworkError(f"{path.name} does not hold a hypernetwork dict (got {type(loaded).__name__})")
    return loaded


def load_hypernetwork(path: str | Path, strength: float, *, allow_pickle: bool | None = None) -> "HypernetworkPatch":
    """The patch of the hypernetwork file at ``path`` at ``strength``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state = _read_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        state = _read_pickle(path, allow_pickle)
    else:
        raise HypernetworkError(f"{path.name}: unknown hypernetwork file type {suffix!r}; expected one of "
                                f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}")
    return HypernetworkPatch(build(state, path.name), float(strength))


class HypernetworkPatch:
    """ComfyUI's ``hypernetwork_patch``: ``key(k)`` and ``value(v)`` add the modules of the input's width
    times ``strength`` (inputs of other widths pass unchanged). The modules run in float32 on the input's
    device; the result is cast back to the input's dtype."""

    def __init__(self, modules: Mapping[int, tuple[torch.nn.Module, torch.nn.Module]], strength: float) -> None:
        self.modules = dict(modules)
        self.strength = float(strength)
        self._placed: dict[torch.device, dict[int, tuple[torch.nn.Module, torch.nn.Module]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"modules": self.modules, "strength": self.strength, "_placed": {}}

    def widths(self) -> set[int]:
        return set(self.modules)

    def _on(self, device: torch.device) -> dict[int, tuple[torch.nn.Module, torch.nn.Module]]:
        placed = self._placed.get(device)
        if placed is None:
            placed = self.modules if device.type == "cpu" else \
                {w: (k.to(device), v.to(device)) for w, (k, v) in self.modules.items()}
            self._placed[device] = placed
        return placed

    def _apply(self, x: torch.Tensor, which: int) -> torch.Tensor:
        pair = self._on(x.device).get(int(x.shape[-1]))
        if pair is None:
            return x
        return x + (pair[which](x.float()) * self.strength).to(x.dtype)

    def key(self, k: torch.Tensor) -> torch.Tensor:
        return self._apply(k, 0)

    def value(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(v, 1)


__all__ = ["ACTIVATIONS", "HypernetworkError", "HypernetworkPatch", "build", "load_hypernetwork"]
