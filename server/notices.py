"""What a new user needs to be told once: today, where checkpoints go when they have none of their own.

``loom serve`` prints :func:`startup_notices` in the terminal, and ``GET /api/notices`` hands the same ones
to the editor, which shows each once (dismissable). A checkpoint "of their own" is one in the user's model
folders (``<models-dir>/checkpoints/`` and the ``extra_model_paths.yaml`` paths), not the built-in demo model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

from loom.nodes.kernel import folders

DEMO_CHECKPOINT = folders.DEMO_CHECKPOINT


class Notice(TypedDict):
    id: str
    level: str  # "info" | "warn"
    text: str


def user_checkpoint_folders(state: folders.Folders | None = None) -> list[Path]:
    """The checkpoint folders the user controls: the models dir's and the extra paths, not the built-in one."""
    state = state or folders.current()
    builtin = folders.BUILTIN_MODELS_DIR / "checkpoints"
    return [path for path in state.model_paths("checkpoints") if path != builtin]


def has_user_checkpoint(state: folders.Folders | None = None) -> bool:
    """True when any of the user's checkpoint folders holds a model file (sub-folders included)."""
    return next(folders.files_under(user_checkpoint_folders(state)), None) is not None


def demo_checkpoint() -> Path | None:
    """The built-in demo model's path, or None when this install lacks it."""
    path = folders.BUILTIN_MODELS_DIR / "checkpoints" / DEMO_CHECKPOINT
    return path if path.is_file() else None


def no_checkpoint_text(state: folders.Folders | None = None) -> str:
    """Where checkpoints go, and whether the built-in demo model stands in meanwhile."""
    state = state or folders.current()
    lines = [
        "You have no checkpoint of your own yet. Put checkpoint files (.safetensors) in "
        f"{state.models_dir / 'checkpoints'}{os.sep}, or start Loom with --models-dir pointing at an existing "
        "ComfyUI models/ folder, or add search paths with --extra-model-paths extra_model_paths.yaml.",
    ]
    if demo_checkpoint() is not None:
        lines.append(f"Meanwhile the built-in demo model {DEMO_CHECKPOINT} is available, and the default "
                     "workflow uses it.")
    else:
        lines.append(f"The built-in demo model {DEMO_CHECKPOINT} is not installed either, so no workflow can "
                     "load a checkpoint until you add one.")
    return "\n".join(lines)


def startup_notices(state: folders.Folders | None = None) -> list[Notice]:
    """The notices that apply to the configured folders now (empty when there is nothing to say)."""
    if has_user_checkpoint(state):
        return []
    level = "info" if demo_checkpoint() is not None else "warn"
    return [Notice(id="no-checkpoint", level=level, text=no_checkpoint_text(state))]
