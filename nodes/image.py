"""ComfyUI's image nodes: load, save, preview, resize, invert, batch.

``LoadImage`` reads a file of the input directory (or ``"name.png [output]"``/``[temp]`` annotated
names) into an ``IMAGE`` (``[B, H, W, 3]`` float, EXIF orientation applied, every frame of an
animated file that has the first frame's size) and a ``MASK`` (``1 - alpha``, or a 64×64 zero mask
when the file has no transparency). Its cache fingerprint is the sha256 of the file, so replacing
the file re-runs the node.

The example workflows in ``workflows/`` load ``example.png``; when the input directory has no file
of that name, ``LoadImage`` falls back to the copy shipped in ``workflows/`` (see
:func:`resolve_input_file`), so ``loom run workflows/img2img.json`` works in any base directory.

``SaveImage`` writes PNGs named ``{prefix}_{counter:05}_.png`` into the output directory with the
``prompt`` and ``workflow`` (one text chunk per ``extra_pnginfo`` key) embedded; ``PreviewImage``
writes into the temp directory with a random suffix and fast compression.
"""
from __future__ import annotations

import io
import mimetypes
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from loom.nodes.kernel import folders
from loom.nodes.image_ops import tensor_to_pil
from loom.nodes.runtime.resample import CROP_METHODS, UPSCALE_METHODS, common_upscale, scale_image
from loom.nodes.output_files import metadata_texts, next_counter, save_target
from loom.nodes.kernel.schema import (HIDDEN_EXTRA_PNGINFO, HIDDEN_PROMPT, MAX_RESOLUTION, Combo, Float, Int, Node,
                          NodeOutput, Output, Schema, Socket, String, register)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".apng", ".avif")

_ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}

_MULTI_FRAME_EXCLUDED_FORMATS = ("MPO",)  # a JPEG with a second (depth/stereo) picture, not an animation


# --------------------------------------------------------------------------------------------
# Input files
# --------------------------------------------------------------------------------------------

def _is_image_name(name: str) -> bool:
    if name.lower().endswith(IMAGE_EXTENSIONS):
        return True
    mime, _ = mimetypes.guess_type(name, strict=False)
    return bool(mime and mime.startswith("image/"))


def list_input_images() -> list[str]:
    """The image files at the top of the input directory, plus the shipped examples, sorted."""
    names = {name for name in folders.data_files("input") if _is_image_name(name)}
    names.update(folders.example_inputs(IMAGE_EXTENSIONS))
    return sorted(names)


def split_annotation(name: str) -> tuple[str, str]:
    """``"x.png [output]"`` → ``("x.png", "output")``; plain names belong to ``input``."""
    for suffix, kind in _ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[:-len(suffix)], kind
    return name, "input"


def resolve_input_file(name: str) -> Path:
    """The file an input-file widget value names.

    Looks in the input directory (or the output/temp directory for annotated names), then among the
    shipped example images for a bare file name. Raises ``PermissionError`` for names that escape
    their directory and ``FileNotFoundError`` when the file does not exist.
    """
    if not isinstance(name, str) or not name.strip():
        raise FileNotFoundError("no file name given")
    plain, kind = split_annotation(name)
    path = folders.resolve_data(kind, plain)
    if path.is_file():
        return path
    example = folders.example_input(plain, IMAGE_EXTENSIONS) if kind == "input" else None
    if example is not None:
        return example
    raise FileNotFoundError(f"{plain!r} is not in the {kind} directory")


def check_input_file(name: Any, what: str = "image") -> bool | str:
    """``validate_inputs`` helper: True, or a message saying why the file cannot be used.

    Images are also opened (the header only), so a file that is not a picture fails validation
    instead of the run.
    """
    try:
        path = resolve_input_file(name)
    except PermissionError:
        return f"Invalid {what} file: {name!r} is outside the allowed directories"
    except FileNotFoundError as error:
        return f"Invalid {what} file: {error}"
    if what == "image":
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError):
            return f"Invalid image file: {name!r} is not an image Pillow can read"
    return True


def _open_image(path: Path) -> Image.Image:
    """Open an image, tolerating truncated files the way ComfyUI does (a second try that allows them)."""
    try:
        image = Image.open(path)
        image.load()
        return image
    except UnidentifiedImageError:
        raise ValueError(f"{path.name} is not an image file Pillow can read") from None
    except (OSError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            image = Image.open(path)
            image.load()
            return image
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path.name}: {error}") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _alpha_mask(frame: Image.Image) -> torch.Tensor | None:
    if "A" in frame.getbands():
        alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
        return 1.0 - torch.from_numpy(alpha)
    if frame.mode == "P" and "transparency" in frame.info:
        alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
        return 1.0 - torch.from_numpy(alpha)
    return None


def _rescale_deep_greyscale(frame: Image.Image) -> Image.Image:
    """16/32-bit greyscale divided by 255, as ComfyUI does (``I``, and ``I;16`` as Pillow opens 16-bit PNGs)."""
    if frame.mode.startswith("I;16"):
        frame = frame.convert("I")
    if frame.mode == "I":
        frame = frame.point(lambda value: value * (1 / 255))
    return frame


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(IMAGE [B, H, W, 3], MASK [B, h, w])`` of an image file, frame by frame."""
    source = _open_image(path)
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    size: tuple[int, int] | None = None
    for frame in ImageSequence.Iterator(source):
        frame = ImageOps.exif_transpose(frame)
        frame = _rescale_deep_greyscale(frame)
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        if rgb.size != size:
            continue
        images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
        mask = _alpha_mask(frame)
        if mask is None:
            mask = torch.zeros((64, 64), dtype=torch.float32, device="cpu")
        masks.append(mask.unsqueeze(0))
    if not images:
        raise ValueError(f"{path.name} has no frames")
    if len(images) > 1 and source.format not in _MULTI_FRAME_EXCLUDED_FORMATS:
        return torch.cat(images, dim=0), torch.cat(masks, dim=0)
    return images[0], masks[0]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

@register
class LoadImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LoadImage", display_name="Load Image", category="image",
            description="Loads an image from the input directory; transparent pixels become the mask.",
            inputs=[Combo("image", options_source=list_input_images, image_upload=True,
                          validate_membership=False)],
            outputs=[Output("IMAGE"), Output("MASK")])

    @classmethod
    def execute(cls, image: str) -> tuple:
        try:
            return load_image_file(resolve_input_file(image))
        except (OSError, ValueError) as error:
            raise ValueError(f"LoadImage: input 'image': {error}") from None

    @classmethod
    def fingerprint(cls, image: str) -> Any:
        try:
            return folders.file_sha256(resolve_input_file(image))
        except (OSError, PermissionError):
            return None  # validation reports the missing file

    @classmethod
    def validate_inputs(cls, image: Any) -> bool | str:
        return check_input_file(image)


@register
class LoadImageMask(Node):
    CHANNELS = ("alpha", "red", "green", "blue")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LoadImageMask", display_name="Load Image (as Mask)", category="image",
            inputs=[Combo("image", options_source=list_input_images, image_upload=True,
                          validate_membership=False),
                    Combo("channel", options_source=cls.CHANNELS)],
            outputs=[Output("MASK")])

    @classmethod
    def execute(cls, image: str, channel: str) -> tuple:
        try:
            picture = ImageOps.exif_transpose(_open_image(resolve_input_file(image)))
        except (OSError, ValueError) as error:
            raise ValueError(f"LoadImageMask: input 'image': {error}") from None
        if picture.getbands() != ("R", "G", "B", "A"):
            picture = _rescale_deep_greyscale(picture)
            picture = picture.convert("RGBA")
        band = channel[0].upper()
        mask = torch.from_numpy(np.array(picture.getchannel(band)).astype(np.float32) / 255.0)
        if band == "A":
            mask = 1.0 - mask
        return (mask.unsqueeze(0),)

    @classmethod
    def fingerprint(cls, image: str) -> Any:
        try:
            return folders.file_sha256(resolve_input_file(image))
        except (OSError, PermissionError):
            return None

    @classmethod
    def validate_inputs(cls, image: Any) -> bool | str:
        return check_input_file(image)


def list_output_images() -> list[str]:
    """The image files at the top of the output directory, annotated ``"name [output]"``, sorted."""
    return sorted(f"{name} [output]" for name in folders.data_files("output") if _is_image_name(name))


@register
class LoadImageOutput(Node):
    """ComfyUI's LoadImageOutput (``nodes.py``): LoadImage over the output folder's pictures, for feeding a
    result back in; a plain name still means the input folder, as LoadImage reads it."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "LoadImageOutput", display_name="Load Image (from Outputs)", category="image",
            description="Load an image from the output folder. When the refresh button is clicked, the node will "
                        "update the image list and automatically select the first image, allowing for easy "
                        "iteration.",
            inputs=[Combo("image", options_source=list_output_images, image_upload=True, validate_membership=False)],
            outputs=[Output("IMAGE"), Output("MASK")], experimental=True)

    @classmethod
    def execute(cls, image: str) -> tuple:
        try:
            return load_image_file(resolve_input_file(image))
        except (OSError, ValueError) as error:
            raise ValueError(f"LoadImageOutput: input 'image': {error}") from None

    @classmethod
    def fingerprint(cls, image: str) -> Any:
        return LoadImage.fingerprint(image)

    @classmethod
    def validate_inputs(cls, image: Any) -> bool | str:
        return check_input_file(image)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

def save_images(images: torch.Tensor, filename_prefix: str, *, kind: str, compress_level: int,
                prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Write each image of the batch as a PNG; returns the ``ui`` entries ``{filename, subfolder, type}``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"input 'images': expected an IMAGE batch [B, H, W, C], got {shape}")
    target = save_target(filename_prefix, kind, width=images.shape[2], height=images.shape[1])
    texts = metadata_texts(prompt, extra_pnginfo)
    results = []
    counter = target.counter
    if "%batch_num%" in target.filename:
        # ComfyUI counts only files named with the literal "%batch_num%", so reruns overwrite; count the real names
        names = [target.filename.replace("%batch_num%", str(n)) for n in range(len(images))]
        counter = max(counter, next_counter(target.folder, names))
    for batch_number, image in enumerate(images):
        info = None
        if texts:
            info = PngInfo()
            for key, text in texts.items():
                info.add_text(key, text)
        encoded = io.BytesIO()
        tensor_to_pil(image).save(encoded, format="PNG", pnginfo=info, compress_level=compress_level)
        name, counter = target.write_next(counter, ".png", encoded.getvalue(),
                                          target.filename.replace("%batch_num%", str(batch_number)))
        results.append({"filename": name, "subfolder": target.subfolder, "type": kind})
        counter += 1
    return results


@register
class SaveImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "SaveImage", display_name="Save Image", category="image", output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
            inputs=[Socket("images", "IMAGE", tooltip="The images to save."),
                    String("filename_prefix", default="ComfyUI",
                           tooltip="The prefix for the file to save. This may include formatting information "
                                   "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values "
                                   "from nodes.")],
            hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
            outputs=[Output("IMAGE", "images")])

    @classmethod
    def execute(cls, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                extra_pnginfo: dict[str, Any] | None = None) -> NodeOutput:
        results = save_images(images, filename_prefix, kind="output", compress_level=4,
                              prompt=prompt, extra_pnginfo=extra_pnginfo)
        return NodeOutput(images, ui={"images": results})


@register
class PreviewImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "PreviewImage", display_name="Preview Image", category="image", output_node=True,
            description="Preview the images without saving them to the ComfyUI output directory.",
            inputs=[Socket("images", "IMAGE")],
            hidden=[HIDDEN_PROMPT, HIDDEN_EXTRA_PNGINFO],
            outputs=[Output("IMAGE", "images")])

    @classmethod
    def execute(cls, images: torch.Tensor, prompt: Any = None,
                extra_pnginfo: dict[str, Any] | None = None) -> NodeOutput:
        suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        results = save_images(images, "ComfyUI_temp_" + suffix, kind="temp", compress_level=1,
                              prompt=prompt, extra_pnginfo=extra_pnginfo)
        return NodeOutput(images, ui={"images": results})


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------

@register
class ImageScale(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageScale", display_name="Upscale Image", category="image/upscaling",
            inputs=[Socket("image", "IMAGE"),
                    Combo("upscale_method", options_source=UPSCALE_METHODS),
                    Int("width", default=512, min=0, max=MAX_RESOLUTION, step=1),
                    Int("height", default=512, min=0, max=MAX_RESOLUTION, step=1),
                    Combo("crop", options_source=CROP_METHODS)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str) -> tuple:
        if width == 0 and height == 0:
            return (image,)
        if width == 0:
            width = max(1, round(image.shape[2] * height / image.shape[1]))
        elif height == 0:
            height = max(1, round(image.shape[1] * width / image.shape[2]))
        return (scale_image(image, width, height, upscale_method, crop),)


@register
class ImageScaleBy(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImageScaleBy", display_name="Upscale Image By", category="image/upscaling",
            inputs=[Socket("image", "IMAGE"),
                    Combo("upscale_method", options_source=UPSCALE_METHODS),
                    Float("scale_by", default=1.0, min=0.01, max=8.0, step=0.01)],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple:
        width = round(image.shape[2] * scale_by)
        height = round(image.shape[1] * scale_by)
        return (scale_image(image, width, height, upscale_method, "disabled"),)


@register
class ImageInvert(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ImageInvert", display_name="Invert Image Colors", category="image/color",
                      inputs=[Socket("image", "IMAGE")], outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image: torch.Tensor) -> tuple:
        return (1.0 - image,)


@register
class ImageBatch(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ImageBatch", display_name="Batch Images (DEPRECATED)", category="image/batch", deprecated=True,
                      inputs=[Socket("image1", "IMAGE"), Socket("image2", "IMAGE")],
                      outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, image1: torch.Tensor, image2: torch.Tensor) -> tuple:
        if image1.shape[1:] != image2.shape[1:]:
            image2 = common_upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1],
                                    "bilinear", "center").movedim(1, -1)
        return (torch.cat((image1, image2), dim=0),)


@register
class EmptyImage(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "EmptyImage", display_name="Empty Image", category="image",
            inputs=[Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
                    Int("batch_size", default=1, min=1, max=4096),
                    Int("color", default=0, min=0, max=0xFFFFFF, step=1, display="color")],
            outputs=[Output("IMAGE")])

    @classmethod
    def execute(cls, width: int, height: int, batch_size: int = 1, color: int = 0) -> tuple:
        channels = [torch.full([batch_size, height, width, 1], ((color >> shift) & 0xFF) / 0xFF)
                    for shift in (16, 8, 0)]
        return (torch.cat(channels, dim=-1),)


@register
class ImagePadForOutpaint(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ImagePadForOutpaint", display_name="Pad Image for Outpainting", category="image/transform",
            inputs=[Socket("image", "IMAGE"),
                    Int("left", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("top", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("right", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("bottom", default=0, min=0, max=MAX_RESOLUTION, step=8),
                    Int("feathering", default=40, min=0, max=MAX_RESOLUTION, step=1)],
            outputs=[Output("IMAGE"), Output("MASK")])

    @classmethod
    def execute(cls, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                feathering: int) -> tuple:
        batch, height, width, channels = image.shape
        padded = torch.ones((batch, height + top + bottom, width + left + right, channels),
                            dtype=torch.float32) * 0.5
        padded[:, top:top + height, left:left + width, :] = image

        mask = torch.ones((height + top + bottom, width + left + right), dtype=torch.float32)
        inner = torch.zeros((height, width), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
            rows = torch.arange(height).unsqueeze(1).expand(height, width)
            cols = torch.arange(width).unsqueeze(0).expand(height, width)
            # distance to each padded edge (an edge without padding never counts)
            far = torch.full_like(rows, max(height, width) + feathering)
            distance = torch.minimum(
                torch.minimum(rows if top else far, (height - rows) if bottom else far),
                torch.minimum(cols if left else far, (width - cols) if right else far))
            ramp = (feathering - distance).float() / feathering
            inner = torch.where(distance < feathering, ramp * ramp, inner)
        mask[top:top + height, left:left + width] = inner
        return (padded, mask.unsqueeze(0))
