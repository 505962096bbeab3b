"""ComfyUI's model loader nodes: CheckpointLoaderSimple and VAELoader.

The heavy lifting (family detection, key conversion, building modules) is in
:mod:`nodes.runtime.checkpoint`, imported only when a node runs so that importing the node library
stays cheap. A loader's cache key includes the file's modification time and size, so replacing a
file under the same name loads it afresh. The checkpoints folder's files are described (model library)
by the same detection.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.kernel import services
from loom.nodes.kernel.schema import Combo, Node, Output, Schema, register
from loom.nodes.loader_inputs import load_error, model_fingerprint, removed_error, resolve_model
from loom.nodes.runtime.model_files import describe_checkpoint

services.register_model_describer("checkpoints", describe_checkpoint)


@register
class CheckpointLoaderSimple(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "CheckpointLoaderSimple", display_name="Load Checkpoint", category="model/loaders",
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            inputs=[Combo("ckpt_name", folder="checkpoints", tooltip="The name of the checkpoint (model) to load.")],
            outputs=[Output("MODEL", tooltip="The model used for denoising latents."),
                     Output("CLIP", tooltip="The CLIP model used for encoding text prompts."),
                     Output("VAE", tooltip="The VAE model used for encoding and decoding images to and from "
                                           "latent space.")])

    @classmethod
    def fingerprint(cls, ckpt_name: str = "", **_: Any) -> Any:
        return model_fingerprint("checkpoints", ckpt_name)

    @classmethod
    def execute(cls, ckpt_name: str) -> tuple:
        from loom.nodes.runtime.checkpoint import CheckpointError, load_checkpoint
        from loom.nodes.runtime.families import UnknownModelError

        path = resolve_model("CheckpointLoaderSimple", "ckpt_name", "checkpoints", ckpt_name)
        try:
            model, clip, vae = load_checkpoint(path)
        except (FileNotFoundError, CheckpointError, UnknownModelError) as exc:
            if not path.exists():  # removed between finding it and reading it
                raise removed_error("CheckpointLoaderSimple", "ckpt_name", "checkpoints", ckpt_name) from None
            if isinstance(exc, FileNotFoundError):
                raise
            raise load_error("CheckpointLoaderSimple", "ckpt_name", ckpt_name, exc) from None
        return (model, clip, vae)


@register
class VAELoader(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "VAELoader", display_name="Load VAE", category="model/loaders",
            inputs=[Combo("vae_name", folder="vae")],
            outputs=[Output("VAE")])

    @classmethod
    def fingerprint(cls, vae_name: str = "", **_: Any) -> Any:
        return model_fingerprint("vae", vae_name)

    @classmethod
    def execute(cls, vae_name: str) -> tuple:
        from loom.nodes.runtime.checkpoint import CheckpointError, load_vae

        path = resolve_model("VAELoader", "vae_name", "vae", vae_name)
        try:
            return (load_vae(path),)
        except (FileNotFoundError, CheckpointError) as exc:
            if not path.exists():  # removed between finding it and reading it
                raise removed_error("VAELoader", "vae_name", "vae", vae_name) from None
            if isinstance(exc, FileNotFoundError):
                raise
            raise load_error("VAELoader", "vae_name", vae_name, exc) from None
