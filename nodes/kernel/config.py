"""The runtime configuration: one frozen record, set once at start-up, read through :func:`current`.

The CLI builds it from its flags (``--device``, ``--cpu``, ``--force-fp32``, ``--model-cache-bytes``,
``--allow-pickle``, ``--fast``), with the environment variables in :data:`ENVIRONMENT` as documented fallbacks that only
:func:`from_environment` reads (so importing a module never depends on the environment). A worker process
receives the same record in its spec. Tests and embedders call :func:`configure`. docs/configuration.md
lists every setting.

One setting may also be chosen per prompt: ``fast`` (a workflow's ``extra.loom.fast``, see
``server.executor.fast_setting``). The executor sets it for the prompt's run with :func:`prompt_settings`;
the runtime reads :func:`fast_enabled`, which falls back to the record.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping


@dataclass(frozen=True)
class RuntimeConfig:
    device: str | None = None
    """Where models compute: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None: CUDA when present, else the CPU."""
    force_fp32: bool = False
    """Compute every model in float32 (ComfyUI's ``--force-fp32``; on the CPU float32 is the default anyway)."""
    model_cache_bytes: int | None = None
    """How many bytes of models the cache keeps before it unloads the oldest; None: what memory allows."""
    allow_pickle: bool = False
    """Whether pickled model files (.ckpt, .pt, .bin, ...) may be read at all (they can run code)."""
    fast: bool = False
    """The measured fast path (:mod:`loom.nodes.runtime.fast`): faster, visually identical, not bit-identical
    to ComfyUI. Off: every result is ComfyUI's, bit for bit."""

    def __post_init__(self) -> None:
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"device {self.device!r} is not a torch device name (cpu, cuda, cuda:1, mps)") \
                    from None
        if self.model_cache_bytes is not None and self.model_cache_bytes < 0:
            raise ValueError(f"the model cache size must be 0 or more bytes, not {self.model_cache_bytes}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ENVIRONMENT: dict[str, str] = {
    "device": "LOOM_DEVICE",
    "force_fp32": "LOOM_FORCE_FP32",
    "model_cache_bytes": "LOOM_MODEL_CACHE_BYTES",
    "allow_pickle": "LOOM_ALLOW_PICKLE",
    "fast": "LOOM_FAST",
}
"""The environment variable each setting falls back to when its flag is not given."""

_current = RuntimeConfig()


def current() -> RuntimeConfig:
    return _current


def configure(config: RuntimeConfig) -> RuntimeConfig:
    """Make ``config`` the runtime configuration; returns the one it replaces."""
    global _current
    previous, _current = _current, config
    return previous


_prompt_fast: contextvars.ContextVar[bool | None] = contextvars.ContextVar("loom_prompt_fast", default=None)


@contextlib.contextmanager
def prompt_settings(*, fast: bool | None = None) -> Iterator[None]:
    """Within the block, ``fast`` (None: the record's) is the setting of the prompt being run."""
    token = _prompt_fast.set(fast)
    try:
        yield
    finally:
        _prompt_fast.reset(token)


def fast_enabled() -> bool:
    """Whether the fast path is on: the running prompt's own setting, else the runtime configuration's."""
    chosen = _prompt_fast.get()
    return _current.fast if chosen is None else chosen


def from_environment(environ: Mapping[str, str] | None = None, **given: Any) -> RuntimeConfig:
    """A config from the settings ``given`` (None: not given), each missing one from its variable in
    :data:`ENVIRONMENT`, else its default. Raises ValueError naming the variable for a malformed value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        value = given.get(name)
        if value is None:
            text = environ.get(variable, "").strip()
            if not text:
                continue
            value = _parse(name, variable, text)
        values[name] = value
    return RuntimeConfig(**values)


def _parse(name: str, variable: str, text: str) -> Any:
    if name in ("force_fp32", "allow_pickle", "fast"):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{variable}={text!r}: use 1 or 0")
    if name == "model_cache_bytes":
        try:
            return parse_bytes(text)
        except ValueError as error:
            raise ValueError(f"{variable}={text!r}: {error}") from None
    return text


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"8000000000"``, ``"8G"``, ``"512MiB"`` as bytes (binary units)."""
    stripped = text.strip().lower().replace(" ", "")
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = stripped[len(number):]
    if unit not in _UNITS or not number:
        raise ValueError("a size in bytes, e.g. 8000000000, 8G or 512MiB")
    try:
        value = float(number)
    except ValueError:
        raise ValueError("a size in bytes, e.g. 8000000000, 8G or 512MiB") from None
    if value < 0:
        raise ValueError("a size cannot be negative")
    return int(value * _UNITS[unit])
