"""ComfyUI's CheckpointSave ("Save Checkpoint"): MODEL + CLIP + VAE as one ``.safetensors`` in the output folder.

The file is named ``{filename}_{counter:05}_.safetensors`` under ``filename_prefix`` (default
``checkpoints/ComfyUI``, i.e. ``output/checkpoints/``), in the single-file layout of the model's family
with its LoRAs and merges baked in, and carries the prompt and the workflow in its metadata as ComfyUI
writes them (see :mod:`loom.nodes.runtime.checkpoint_save`). CheckpointLoaderSimple loads it back.
"""
from __future__ import annotations

import os
from typing import Any

from loom.nodes.output_files import save_target
from loom.nodes.kernel.schema import (HIDDEN_EXTRA_PNGINFO, HIDDEN_PROMPT, Node, NodeOutput, Schema, Socket, String,
                               register)


def _write_safetensors(target: Any, state: dict, metadata: dict[str, str]) -> tuple[str, int]:
    """Write the file under the first free counter from the target's; the name and counter taken. The
    tensors stream to a private partial file that is then linked to its name, so a concurrent save never
    takes the same name and no half-written checkpoint is ever visible."""
    from safetensors.torch import save_file

    partial = target.folder / f".{target.filename}.{os.getpid()}.{id(state)}.partial"
    save_file(state, str(partial), metadata=metadata)
    counter = target.counter
    try:
        while True:
            name = target.name(counter, ".safetensors")
            try:
                os.link(partial, target.folder / name)
                return name, counter
            except FileExistsError:
                counter += 1
            except OSError:  # no hard links here: move the file into place if the name is still free
                final = target.folder / name
                if final.exists():
                    counter += 1
                    continue
                os.replace(partial, final)
                return name, counter
    finally:
        if partial.exists():
            partial.unlink()


@register
class CheckpointSave(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CheckpointSave", display_name="Save Checkpoint", category="advanced/model_merging",
                      output_node=True,
                      inputs=[Socket("model", "MODEL"), Socket("clip", "CLIP"), Socket("vae", "VAE"),
                              String("filename_prefix", default="checkpoints/ComfyUI")],
                      hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
                      outputs=[])

    @classmethod
    def execute(cls, model: Any, clip: Any, vae: Any, filename_prefix: str = "checkpoints/ComfyUI",
                prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None) -> NodeOutput:
        from loom.nodes.runtime.checkpoint_save import checkpoint_metadata, checkpoint_state_dict
        try:
            state = checkpoint_state_dict(model, clip, vae)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"CheckpointSave: cannot save this {model.family} model: {exc}") from None
        target = save_target(filename_prefix, "output")
        metadata = checkpoint_metadata(model, title=f"{target.filename} {target.counter}", prompt=prompt,
                                       extra_pnginfo=extra_pnginfo)
        _write_safetensors(target, state, metadata)
        return NodeOutput()
