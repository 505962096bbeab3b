"""ComfyUI's latent nodes: empty latents, resizing, compositing, batches, noise masks, save/load.

A ``LATENT`` is a dict ``{"samples": [B, C, H/8, W/8], "noise_mask"?: ..., "batch_index"?: [...]}``
in the VAE's latent space. Nodes copy the dict and replace what they change, so the keys they do not
touch (a noise mask, batch indices) travel on as in ComfyUI.

``SaveLatent`` writes ComfyUI's ``.latent`` file: safetensors with ``latent_tensor`` and an empty
``latent_format_version_0`` marker, the prompt and workflow in the header metadata. ``LoadLatent``
reads it back (files without the marker are pre-version-0 latents stored scaled by 0.18215).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from loom.nodes.kernel import folders
from loom.nodes.image import check_input_file, resolve_input_file
from loom.nodes.runtime.resample import CROP_METHODS, LATENT_UPSCALE_METHODS, common_upscale
from loom.nodes.output_files import metadata_texts, save_target
from loom.nodes.kernel.schema import (HIDDEN_EXTRA_PNGINFO, HIDDEN_PROMPT, MAX_RESOLUTION, Combo, Float, Int, Node,
                          NodeOutput, Output, Schema, Socket, String, register)

LATENT_VERSION_KEY = "latent_format_version_0"
LEGACY_LATENT_SCALE = 0.18215


def list_input_latents() -> list[str]:
    """The ``.latent`` files at the top of the input directory, sorted."""
    return [name for name in folders.data_files("input") if name.endswith(".latent")]


@register
class EmptyLatentImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "EmptyLatentImage", display_name="Empty Latent Image", category="model/latent",
            description="Create a new batch of empty latent images to be denoised via sampling.",
            inputs=[Int("width", default=1024, min=16, max=MAX_RESOLUTION, step=8,
                        tooltip="The width of the latent images in pixels."),
                    Int("height", default=1024, min=16, max=MAX_RESOLUTION, step=8,
                        tooltip="The height of the latent images in pixels."),
                    Int("batch_size", default=1, min=1, max=4096,
                        tooltip="The number of latent images in the batch.")],
            outputs=[Output("LATENT", tooltip="The empty latent image batch.")])

    @classmethod
    def execute(cls, width: int, height: int, batch_size: int = 1) -> tuple:
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


@register
class LatentUpscale(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LatentUpscale", display_name="Upscale Latent", category="model/latent",
            inputs=[Socket("samples", "LATENT"),
                    Combo("upscale_method", options_source=LATENT_UPSCALE_METHODS),
                    Int("width", default=512, min=0, max=MAX_RESOLUTION, step=8),
                    Int("height", default=512, min=0, max=MAX_RESOLUTION, step=8),
                    Combo("crop", options_source=CROP_METHODS)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, upscale_method: str, width: int, height: int, crop: str) -> tuple:
        tensor = samples["samples"]
        if width == 0 and height == 0:
            return (samples,)
        # width/height are in pixels; 0 on one side keeps the aspect ratio; 64 px is the floor
        if width == 0:
            height = max(64, height)
            width = max(64, round(tensor.shape[-1] * height / tensor.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(tensor.shape[-2] * width / tensor.shape[-1]))
        else:
            width = max(64, width)
            height = max(64, height)
        out = samples.copy()
        out["samples"] = common_upscale(tensor, width // 8, height // 8, upscale_method, crop)
        return (out,)


@register
class LatentUpscaleBy(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LatentUpscaleBy", display_name="Upscale Latent By", category="model/latent",
            inputs=[Socket("samples", "LATENT"),
                    Combo("upscale_method", options_source=LATENT_UPSCALE_METHODS),
                    Float("scale_by", default=1.5, min=0.01, max=8.0, step=0.01)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, upscale_method: str, scale_by: float) -> tuple:
        tensor = samples["samples"]
        width = round(tensor.shape[-1] * scale_by)
        height = round(tensor.shape[-2] * scale_by)
        if width < 1 or height < 1:
            raise ValueError(f"LatentUpscaleBy: input 'scale_by': {scale_by} shrinks the "
                             f"{tensor.shape[-1]}x{tensor.shape[-2]} latent to nothing")
        out = samples.copy()
        out["samples"] = common_upscale(tensor, width, height, upscale_method, "disabled")
        return (out,)


@register
class LatentComposite(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LatentComposite", display_name="Latent Composite", category="model/latent",
            inputs=[Socket("samples_to", "LATENT"), Socket("samples_from", "LATENT"),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("feather", default=0, min=0, max=MAX_RESOLUTION, step=8)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples_to: dict, samples_from: dict, x: int, y: int, feather: int = 0) -> tuple:
        target = samples_to["samples"]
        source = samples_from["samples"]
        x, y, feather = x // 8, y // 8, feather // 8
        result = target.clone()
        source = source[:, :, :target.shape[2] - y, :target.shape[3] - x]
        region = (slice(None), slice(None), slice(y, y + source.shape[2]), slice(x, x + source.shape[3]))
        if feather == 0:
            result[region] = source
        else:
            mask = torch.ones_like(source)
            for t in range(feather):
                weight = (1.0 / feather) * (t + 1)
                if y != 0:
                    mask[:, :, t:1 + t, :] *= weight
                if y + source.shape[2] < target.shape[2]:
                    mask[:, :, mask.shape[2] - 1 - t:mask.shape[2] - t, :] *= weight
                if x != 0:
                    mask[:, :, :, t:1 + t] *= weight
                if x + source.shape[3] < target.shape[3]:
                    mask[:, :, :, mask.shape[3] - 1 - t:mask.shape[3] - t] *= weight
            result[region] = source * mask + result[region] * (torch.ones_like(mask) - mask)
        out = samples_to.copy()
        out["samples"] = result
        return (out,)


@register
class LatentBlend(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LatentBlend", display_name="Latent Blend", category="experimental",
            inputs=[Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
                    Float("blend_factor", default=0.5, min=0, max=1, step=0.01)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples1: dict, samples2: dict, blend_factor: float) -> tuple:
        first = samples1["samples"]
        second = samples2["samples"]
        if first.shape != second.shape:
            second = common_upscale(second, first.shape[-1], first.shape[-2], "bicubic", crop="center")
        out = samples1.copy()
        out["samples"] = first * blend_factor + second * (1 - blend_factor)
        return (out,)


@register
class LatentRotate(Node):
    ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentRotate", display_name="Rotate Latent", category="model/latent/transform",
                      inputs=[Socket("samples", "LATENT"), Combo("rotation", options_source=cls.ROTATIONS)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, rotation: str) -> tuple:
        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        out = samples.copy()
        out["samples"] = torch.rot90(samples["samples"], k=turns, dims=[3, 2])
        return (out,)


@register
class LatentFlip(Node):
    FLIPS = ("x-axis: vertically", "y-axis: horizontally")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LatentFlip", display_name="Flip Latent", category="model/latent/transform",
                      inputs=[Socket("samples", "LATENT"), Combo("flip_method", options_source=cls.FLIPS)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, flip_method: str) -> tuple:
        tensor = samples["samples"]
        out = samples.copy()
        out["samples"] = torch.flip(tensor, dims=[2] if flip_method.startswith("x") else [3])
        return (out,)


@register
class LatentCrop(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LatentCrop", display_name="Crop Latent", category="model/latent/transform",
            inputs=[Socket("samples", "LATENT"),
                    Int("width", default=512, min=64, max=MAX_RESOLUTION, step=8),
                    Int("height", default=512, min=64, max=MAX_RESOLUTION, step=8),
                    Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, width: int, height: int, x: int, y: int) -> tuple:
        tensor = samples["samples"]
        # keep at least 8 latent pixels (64 px) right of / below the crop origin
        x = min(x // 8, tensor.shape[3] - 8)
        y = min(y // 8, tensor.shape[2] - 8)
        out = samples.copy()
        out["samples"] = tensor[:, :, y:y + height // 8, x:x + width // 8]
        return (out,)


@register
class SetLatentNoiseMask(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SetLatentNoiseMask", display_name="Set Latent Noise Mask", category="model/latent",
                      inputs=[Socket("samples", "LATENT"), Socket("mask", "MASK")],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, mask: torch.Tensor) -> tuple:
        out = samples.copy()
        out["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        return (out,)


def _repeat_masks(masks: torch.Tensor, batch: int) -> torch.Tensor:
    if masks.shape[0] < batch:
        masks = masks.repeat(math.ceil(batch / masks.shape[0]), 1, 1, 1)[:batch]
    return masks


@register
class LatentFromBatch(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LatentFromBatch", display_name="Get Latent From Batch", category="model/latent/batch",
            inputs=[Socket("samples", "LATENT"),
                    Int("batch_index", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
                    Int("length", default=1, min=1, max=64)],
            outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, batch_index: int, length: int) -> tuple:
        tensor = samples["samples"]
        if batch_index < 0:  # counts from the end
            batch_index += tensor.shape[0]
        batch_index = max(0, min(tensor.shape[0] - 1, batch_index))
        length = min(tensor.shape[0] - batch_index, length)
        out = samples.copy()
        out["samples"] = tensor[batch_index:batch_index + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                out["noise_mask"] = masks.clone()
            else:
                masks = _repeat_masks(masks, tensor.shape[0])
                out["noise_mask"] = masks[batch_index:batch_index + length].clone()
        if "batch_index" not in samples:
            # remember which items of the original batch these are, so their noise is reproduced
            out["batch_index"] = list(range(batch_index, batch_index + length))
        else:
            out["batch_index"] = samples["batch_index"][batch_index:batch_index + length]
        return (out,)


@register
class RepeatLatentBatch(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("RepeatLatentBatch", display_name="Repeat Latent Batch", category="model/latent/batch",
                      inputs=[Socket("samples", "LATENT"), Int("amount", default=1, min=1, max=64)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, samples: dict, amount: int) -> tuple:
        tensor = samples["samples"]
        out = samples.copy()
        out["samples"] = tensor.repeat((amount,) + (1,) * (tensor.ndim - 1))
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            # ComfyUI repeats the mask batch as it is (not first extended to the latent's batch)
            masks = samples["noise_mask"]
            out["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.ndim - 1))
        if "batch_index" in samples:
            indices = samples["batch_index"]
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [i + (n * offset) for n in range(1, amount) for i in indices]
        return (out,)


@register
class SaveLatent(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SaveLatent", display_name="Save Latent", category="model/latent", output_node=True,
            inputs=[Socket("samples", "LATENT"), String("filename_prefix", default="latents/ComfyUI")],
            hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
            outputs=[Output("LATENT", name="samples")])

    @classmethod
    def execute(cls, samples: dict, filename_prefix: str = "latents/ComfyUI", prompt: Any = None,
                extra_pnginfo: dict[str, Any] | None = None) -> NodeOutput:
        from safetensors.torch import save

        tensor = samples["samples"]
        target = save_target(filename_prefix, "output")
        metadata = {"prompt": ""} | metadata_texts(prompt, extra_pnginfo)
        tensors = {"latent_tensor": tensor.detach().cpu().contiguous(),
                   LATENT_VERSION_KEY: torch.tensor([])}
        name, _ = target.write_next(target.counter, ".latent", save(tensors, metadata=metadata))
        return NodeOutput(samples,
                          ui={"latents": [{"filename": name, "subfolder": target.subfolder, "type": "output"}]})


@register
class LoadLatent(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("LoadLatent", display_name="Load Latent", category="model/latent",
                      inputs=[Combo("latent", options_source=list_input_latents, validate_membership=False)],
                      outputs=[Output("LATENT")])

    @classmethod
    def execute(cls, latent: str) -> tuple:
        from safetensors.torch import load_file

        try:
            path = resolve_input_file(latent)
            tensors = load_file(str(path), device="cpu")
        except (OSError, ValueError) as error:
            raise ValueError(f"LoadLatent: input 'latent': cannot read {latent!r}: {error}") from None
        if "latent_tensor" not in tensors:
            raise ValueError(f"LoadLatent: input 'latent': {latent!r} has no 'latent_tensor' "
                             f"(found {', '.join(sorted(tensors)) or 'nothing'})")
        multiplier = 1.0 if LATENT_VERSION_KEY in tensors else 1.0 / LEGACY_LATENT_SCALE
        return ({"samples": tensors["latent_tensor"].float() * multiplier},)

    @classmethod
    def fingerprint(cls, latent: str) -> Any:
        try:
            return folders.file_sha256(resolve_input_file(latent))
        except (OSError, PermissionError):
            return None

    @classmethod
    def validate_inputs(cls, latent: Any) -> bool | str:
        return check_input_file(latent, "latent")
