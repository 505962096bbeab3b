"""Socket types: the ComfyUI types that travel over links (MODEL, LATENT, IMAGE, ...), each with one check.

A :class:`SocketType` says what a value of its type is and, by :meth:`SocketType.check`, what is wrong
with a value that is not one. The executor checks every value a :class:`~loom.nodes.kernel.schema.Socket`
input receives before the node runs, and validation checks a literal given to one, so node code meets
only values of its declared types (and keeps only the checks that are about meaning, not type).

The kernel does not import the model runtime or torch: the runtime registers the classes of its values
(``MODEL.register(DiffusionModel)``, next to each class), and the tensor types are checked by shape
(anything with ``shape`` and ``ndim``). A type with registered classes takes only their instances; a
value of such a type can only have been made by a module that registered its class, so a type with
none registered yet takes nothing. Types without a check (``*``, ``INT``, a node pack's own) take
anything.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable

ShapeTest = Callable[[Any], bool]


def _tensor_like(value: Any) -> bool:
    return hasattr(value, "shape") and isinstance(getattr(value, "ndim", None), int)


def describe(value: Any) -> str:
    """A short description of a value for an error message: its type, and a tensor's shape."""
    if _tensor_like(value):
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        keys = list(value)
        return f"a dict with keys {keys[:8] + ['...'] if len(keys) > 8 else keys}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


class SocketType:
    """One link type: its ComfyUI name, what a value of it is, and the check of a value."""

    def __init__(self, name: str, what: str, *, shape: ShapeTest | None = None, hint: str = "",
                 none_hint: str = "") -> None:
        self.name = name
        self.what = what
        """What a value is, as an error message shows it: ``a dict with a 'samples' tensor``."""
        self.hint = hint
        """Where a value of this type comes from: ``connect a Load VAE node``."""
        self.none_hint = none_hint
        """Why a ``None`` may have arrived instead (a checkpoint without that part)."""
        self._shape = shape
        self._classes: tuple[type, ...] = ()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SocketType({self.name!r})"

    def register(self, *classes: type) -> None:
        """Take instances of ``classes`` as values of this type (the runtime registers its value classes)."""
        with self._lock:
            self._classes += tuple(c for c in classes if c not in self._classes)

    def accepts(self, value: Any) -> bool:
        if self._shape is not None:
            return self._shape(value)
        return isinstance(value, self._classes)

    def check(self, value: Any) -> str | None:
        """``None`` if ``value`` is a value of this type, else what is wrong, as the end of a sentence
        that starts with the input's name: ``is not a VAE (...); got str``."""
        if self.accepts(value):
            return None
        article = "an" if self.name[:1] in "AEIOU" else "a"
        if value is None:
            return f"is None, not {article} {self.name}" + (f": {self.none_hint}" if self.none_hint else "")
        return (f"is not {article} {self.name} ({self.what}); got {describe(value)}"
                + (f"; {self.hint}" if self.hint else ""))


class _UnionType(SocketType):
    """A comma-separated union such as ``IMAGE,MASK``: a value of any member."""

    def __init__(self, name: str, members: list[SocketType]) -> None:
        super().__init__(name, " or ".join(m.what for m in members))
        self.members = members

    def accepts(self, value: Any) -> bool:
        return any(member.accepts(value) for member in self.members)

    def register(self, *classes: type) -> None:
        raise TypeError(f"register classes with a member of {self.name}, not the union")


def _ndim(*allowed: int) -> ShapeTest:
    return lambda value: _tensor_like(value) and value.ndim in allowed


def _latent(value: Any) -> bool:
    return isinstance(value, dict) and _tensor_like(value.get("samples"))


def _conditioning(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict) for entry in value)


MODEL = SocketType("MODEL", "a diffusion model", hint="connect a checkpoint or diffusion model loader")
CLIP = SocketType("CLIP", "a text encoder", hint="connect a checkpoint or CLIP loader",
                  none_hint="if it comes from a checkpoint loader, the checkpoint has no valid CLIP/text encoder "
                            "model; load one with a CLIP loader")
VAE = SocketType("VAE", "a VAE model", hint="connect a checkpoint or VAE loader",
                 none_hint="if it comes from a checkpoint loader, the checkpoint has no valid VAE model; "
                           "load one with a Load VAE node")
CONTROL_NET = SocketType("CONTROL_NET", "a ControlNet model", hint="connect a Load ControlNet Model node")
CLIP_VISION = SocketType("CLIP_VISION", "a CLIP vision model", hint="connect a Load CLIP Vision node",
                         none_hint="the checkpoint it came from has no CLIP vision model; load one with a "
                                   "Load CLIP Vision node")
CLIP_VISION_OUTPUT = SocketType("CLIP_VISION_OUTPUT", "an image encoded by a CLIP vision model",
                                hint="connect a CLIP Vision Encode node")
STYLE_MODEL = SocketType("STYLE_MODEL", "a style model", hint="connect a Load Style Model node")
SAMPLER = SocketType("SAMPLER", "a sampler choice", hint="connect KSamplerSelect or another sampler node")
NOISE = SocketType("NOISE", "a noise source", hint="connect RandomNoise or DisableNoise")
GUIDER = SocketType("GUIDER", "a model with its conditionings and guidance",
                    hint="connect CFGGuider, BasicGuider or DualCFGGuider")
CONDITIONING = SocketType("CONDITIONING", "a list of [tensor, options] pairs", shape=_conditioning)
LATENT = SocketType("LATENT", "a dict with a 'samples' tensor", shape=_latent)
IMAGE = SocketType("IMAGE", "a [batch, height, width, channels] tensor", shape=_ndim(4))
MASK = SocketType("MASK", "a [batch, height, width] tensor", shape=_ndim(2, 3, 4))
SIGMAS = SocketType("SIGMAS", "a 1-D tensor of noise levels", shape=_ndim(1))

_TYPES: dict[str, SocketType] = {t.name: t for t in (
    MODEL, CLIP, VAE, CONTROL_NET, CLIP_VISION, CLIP_VISION_OUTPUT, STYLE_MODEL, SAMPLER, NOISE, GUIDER,
    CONDITIONING, LATENT, IMAGE, MASK, SIGMAS)}


@functools.lru_cache(maxsize=None)
def socket_type(name: str) -> SocketType | None:
    """The socket type named ``name`` (a comma-separated union of known ones too), or ``None`` when
    values of that name are not checked (``*``, the primitive types, a node pack's own types)."""
    known = _TYPES.get(name)
    if known is not None or "," not in name:
        return known
    members = [_TYPES.get(part.strip()) for part in name.split(",")]
    if not members or any(member is None for member in members):
        return None  # a union with an unchecked member takes what that member takes: anything
    return _UnionType(name, members)  # type: ignore[arg-type]
