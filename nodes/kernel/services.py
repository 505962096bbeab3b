"""What the server asks of the model runtime without importing it: hooks the runtime registers here.

* the model cache — :func:`free_models` (``POST /free``, running out of memory) and :func:`loaded_model_files`
  (what routing reads); :mod:`loom.nodes.runtime.model_cache` registers both when it is imported, so a
  process has them as soon as it holds any model.
* describing a model file — :func:`model_describer` gives, per model folder, how that folder's loaders see
  a file (its family and a short detail, for the editor's Models panel); the loader node modules register
  theirs when the node library is loaded (``default_registry()``).

With nothing registered each answers as a process without the model runtime would: no model is loaded,
there is nothing to free, no folder's files have a family.
"""
from __future__ import annotations

from os import PathLike
from typing import Callable

ModelFileDescriber = Callable[[str | PathLike], tuple[str | None, str]]
"""``describe(path) -> (family, detail)``; raises when the file cannot be read or is not understood."""

_free_models: Callable[[], object] | None = None
_loaded_model_files: Callable[[], list[str]] | None = None
_describers: dict[str, ModelFileDescriber] = {}


def register_model_cache(*, free: Callable[[], object], loaded_files: Callable[[], list[str]]) -> None:
    """The model cache's hooks: ``free()`` unloads every model, ``loaded_files()`` lists the real paths of
    the model files it holds something of."""
    global _free_models, _loaded_model_files
    _free_models, _loaded_model_files = free, loaded_files


def free_models() -> None:
    """Unload every model this process holds."""
    if _free_models is not None:
        _free_models()


def loaded_model_files() -> list[str]:
    """The real paths of the model files this process's model cache holds something of."""
    return list(_loaded_model_files()) if _loaded_model_files is not None else []


def register_model_describer(folder: str, describe: ModelFileDescriber) -> None:
    """How the loaders of model folder ``folder`` see a file of it (replaces an earlier one)."""
    _describers[folder] = describe


def model_describer(folder: str) -> ModelFileDescriber | None:
    """The describer registered for ``folder``, or None when no loader of it registered one."""
    return _describers.get(folder)
