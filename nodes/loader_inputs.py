"""What every loader node does with its model-file input: resolve the name in its folder, fingerprint the file
for the cache key, and the errors for a file that went away or would not load (naming node and input).

A loader's cache key includes the file's modification time and size, so replacing a file under the same
name loads it afresh.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loom.nodes.kernel import folders


def removed_error(node: str, input_name: str, folder: str, name: str) -> ValueError:
    """The error for a model file that is not there when its node runs (validation found it: so it was
    deleted or renamed since)."""
    return ValueError(f"{node}: input '{input_name}': '{name}' is not in the {folder} folder: file not found "
                      f"(was it removed or renamed after the prompt was queued?)")


def resolve_model(node: str, input_name: str, folder: str, name: str) -> Path:
    """The path of model file ``name`` in ``folder``; a ValueError naming the node and input when it is gone
    or not allowed."""
    try:
        return folders.resolve(folder, name)
    except FileNotFoundError:
        raise removed_error(node, input_name, folder, name) from None
    except PermissionError as exc:
        raise ValueError(f"{node}: input '{input_name}': {exc}") from None


def model_fingerprint(folder: str, name: str) -> Any:
    """``(mtime in ns, size)`` of model file ``name`` in ``folder``, or None when it is not there."""
    try:
        stat = os.stat(folders.resolve(folder, name))
    except (OSError, PermissionError):
        return None  # validation reports the missing file
    return (stat.st_mtime_ns, stat.st_size)


def load_error(node: str, input_name: str, name: str, exc: Exception) -> ValueError:
    """The error for a model file that is there but could not be loaded."""
    return ValueError(f"{node}: input '{input_name}': could not load '{name}': {exc}")
