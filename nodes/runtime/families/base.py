"""What a model family is: the :class:`Family` interface every family module implements, and the records
detection produces (:class:`Detected`, :class:`TextEncoderSlot`).

A family owns everything particular to one kind of model (ComfyUI's ``supported_models`` entry plus its
``model_base`` class): recognising its state dict, the network's config from tensor shapes, building the
network from the file (key conversion included), its latent format and preview factors, its model-sampling
object, the text encoders and how their outputs become a conditioning, the extra inputs it derives from a
conditioning, and the network call itself. The runtime (loader, text encoding, denoiser, previews) asks the
family through this interface and never tests a family's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from loom.nodes.runtime.model_types import LatentFormat

if TYPE_CHECKING:
    import torch

    from loom.nodes.runtime.checkpoint import StateDictFile
    from loom.nodes.runtime.model_types import DiffusionModel

Shapes = Mapping[str, tuple[int, ...]]
Reader = Callable[[str], Any]


class UnknownModelError(ValueError):
    """The state dict is not a model family Loom knows; the message says what was found."""


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder inside a checkpoint."""

    name: str          # "l" (CLIP-L), "h" (OpenCLIP ViT-H), "g" (OpenCLIP/CLIP bigG), "t5xxl"
    prefix: str        # key prefix in the checkpoint, ending with "."
    layout: str        # "hf" (transformers names) | "openclip" | "t5"


@dataclass(frozen=True)
class EncoderConvention:
    """How a family reads one of its text encoders (ComfyUI's per-encoder choices)."""

    pad_token: int
    default_layer: int | None        # None = last layer with the final layer norm
    layer_norm_hidden: bool
    projected_pooled: bool
    embedding_key: str               # key of this encoder's vectors in an SDXL-style embedding file


@dataclass
class Detected:
    """What detection found in a checkpoint."""

    family: "Family"
    prediction: str
    prediction_source: str             # "override" | "marker key" | "norm statistics" | "family default"
    unet_prefix: str | None            # the diffusion network's key prefix (UNet or DiT)
    vae_prefix: str | None
    text_encoders: list[TextEncoderSlot] = field(default_factory=list)
    zero_terminal_snr: bool = False    # a ``ztsnr`` marker key: sigmas rescaled to zero terminal SNR
    edm_sigmas: tuple[float, float] | None = None  # ``edm_vpred.sigma_min/max`` marks: v-prediction EDM (CosXL)

    @property
    def diffusion_prefix(self) -> str | None:
        return self.unet_prefix


class Family:
    """One model family. Subclasses set the attributes and implement the methods marked so.

    Attributes:

    * ``name`` (the ``family`` string of MODEL/CLIP handles), ``display_name``, ``latent_format``;
    * ``detection_order``: families are tried in ascending order (more specific layouts first);
    * ``batch_repeat_context``: whether conditionings whose token counts differ may share one batch by
      repeating the shorter context (true for cross-attention UNets; DiTs attend jointly, so false);
    * ``ip2p_channels``: a network with twice the latent's channels is an InstructPix2Pix model (else any
      extra input channels mean inpainting);
    * ``adm``/``time_ids``/``heads_rule``: the UNet families' SDXL conditioning and head-count rules.
    """

    name: str = ""
    display_name: str = ""
    latent_format: LatentFormat = LatentFormat()
    detection_order: int = 100
    batch_repeat_context: bool = True
    ip2p_channels: bool = False
    adm: str | None = None
    time_ids: int = 0
    heads_rule: str = "64_per_head"

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # -- detection and loading -----------------------------------------------------------------------

    def detect(self, shapes: Shapes, read: Reader | None, *, prediction: str | None, source: str,
               loose: bool) -> Detected | None:
        """A :class:`Detected` if ``shapes`` is this family's checkpoint, else ``None``.

        First every family is asked with ``loose=False`` (recognise the whole file, e.g. by its text
        encoders); then with ``loose=True`` (the diffusion network alone). Raise
        :class:`UnknownModelError` for a file that is this family's but inconsistent."""
        raise NotImplementedError

    def model_sampling(self, detected: Detected) -> Any:
        """The model-sampling object (:mod:`nodes.runtime.model_sampling`) of a detected checkpoint."""
        raise NotImplementedError

    def import_code(self) -> None:
        """Import what building this family's modules needs (diffusers/transformers classes)."""

    def build_diffusion(self, file: "StateDictFile", detected: Detected, *, dtype: "torch.dtype",
                        device: "torch.device", pooled_dim: int | None = None
                        ) -> tuple["torch.nn.Module", dict[str, Any]]:
        """The diffusion network built from the file (config from shapes, keys converted, every tensor
        used) and its config."""
        raise NotImplementedError

    def lora_key_map(self, model: "DiffusionModel") -> dict[str, tuple[Any, ...]]:
        """Every name a LoRA may give a module of this family's network (kohya, diffusers, the original
        layout...) → the :class:`nodes.runtime.lora.LoraTarget` weights it patches (several, with row ranges,
        for a LoRA on a weight the file fuses and Loom's network splits). ComfyUI's ``model_lora_keys_unet``."""
        raise ValueError(f"LoRA is not supported for {self.display_name} models")

    # -- text encoders -------------------------------------------------------------------------------

    def text_encoder(self, file: "StateDictFile", slot: TextEncoderSlot, *, dtype: "torch.dtype",
                     device: "torch.device") -> tuple[Any, Any]:
        """``(tokenizer, model)`` for one text encoder slot of a checkpoint: CLIP by default (the
        transformers or OpenCLIP layout, with the offline CLIP tokenizer)."""
        from loom.nodes.runtime import tokenizer
        from loom.nodes.runtime.checkpoint import build_text_encoder

        return tokenizer.clip_tokenizer(), build_text_encoder(file, slot, dtype=dtype, device=device)

    def text_convention(self, encoder: str) -> EncoderConvention:
        """How this family reads text encoder ``encoder`` ("l", "g", ...)."""
        raise ValueError(f"the {self.display_name} family has no text encoder {encoder!r}")

    def combine_text(self, outputs: Mapping[str, tuple["torch.Tensor", "torch.Tensor"]]
                     ) -> tuple["torch.Tensor", "torch.Tensor", dict[str, Any]]:
        """``(cond, pooled, extra options)`` from each encoder's ``(hidden states, pooled)``."""
        (only,) = outputs.values()
        return only[0], only[1], {}

    # -- sampling ------------------------------------------------------------------------------------

    def extra_conds(self, model: "DiffusionModel", options: Mapping[str, Any], latent_shape: Sequence[int],
                    prompt_type: str) -> dict[str, "torch.Tensor"]:
        """The network's extra inputs from one conditioning entry's options (SDXL's added conditioning,
        SD3's pooled projection), batched with the context. Empty by default."""
        return {}

    def concat_input(self, model: "DiffusionModel", options: Mapping[str, Any], shape: Sequence[int],
                     latent_image: "torch.Tensor | None", denoise_mask: "torch.Tensor | None"
                     ) -> "torch.Tensor | None":
        """The channels one conditioning entry appends to the network input (ComfyUI's ``concat_cond``), or
        ``None``: the UNet rule of :func:`nodes.runtime.denoiser.concat_input` unless a family has its own."""
        from loom.nodes.runtime.denoiser import concat_input

        return concat_input(model, dict(options), shape, latent_image, denoise_mask)

    def apply_network(self, model: "DiffusionModel", xc: "torch.Tensor", timestep: "torch.Tensor",
                      sigma: "torch.Tensor", context: "torch.Tensor", extra: Mapping[str, "torch.Tensor"] | None,
                      control: Any = None, concat: "torch.Tensor | None" = None) -> "torch.Tensor":
        """The raw network output for the scaled input ``xc`` at ``timestep`` (the model sampling's
        ``timestep(sigma)``) and one batch of context/extra inputs."""
        raise NotImplementedError
