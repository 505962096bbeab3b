"""Image work of the file routes: upload decoding and re-encoding (``/upload/image``, ``/upload/mask``) and
``/view``'s ``preview``/``channel`` transforms. Pillow is imported when an image is first handled.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from loom.server.security import ClientError

UPLOAD_FORMATS = {"PNG": ("PNG", ".png"), "JPEG": ("JPEG", ".jpg"), "MPO": ("JPEG", ".jpg"),
                  "WEBP": ("WEBP", ".webp"), "GIF": ("PNG", ".png"), "BMP": ("PNG", ".png"),
                  "TIFF": ("PNG", ".png")}
"""Image formats accepted by uploads, and what each is re-encoded to."""


def decode_upload(data: bytes, max_pixels: int) -> Any:
    """The uploaded bytes as a loaded PIL image; ClientError unless it is a raster image within limits."""
    from PIL import Image, UnidentifiedImageError
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ClientError(413, "image_too_large", "Image too large",
                          f"the image has more than the limit of {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ClientError(415, "not_an_image", "The upload is not an image",
                          f"accepted formats: {', '.join(sorted(UPLOAD_FORMATS))}") from None
    if image.format not in UPLOAD_FORMATS:
        raise ClientError(415, "not_an_image", "Unsupported image format", f"{image.format} is not accepted")
    width, height = image.size
    if width * height > max_pixels:
        raise ClientError(413, "image_too_large", "Image too large",
                          f"{width}x{height} is more than the limit of {max_pixels} pixels")
    try:
        image.load()
    except Exception:
        raise ClientError(415, "not_an_image", "The image could not be decoded") from None
    return image


def reencode(image: Any) -> tuple[bytes, str]:
    """Re-encode an upload (dropping anything that is not pixels, except PNG workflow text)."""
    from PIL.PngImagePlugin import PngInfo
    target, suffix = UPLOAD_FORMATS[image.format]
    buffer = io.BytesIO()
    if target == "PNG":
        info = PngInfo()
        for key in ("prompt", "workflow"):
            text = image.info.get(key)
            if isinstance(text, str):
                info.add_text(key, text)
        png_frame(image).save(buffer, format="PNG", pnginfo=info, compress_level=4)
    elif target == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="WEBP", quality=95)
    return buffer.getvalue(), suffix


def png_frame(image: Any) -> Any:
    """``image`` in a mode PNG can hold, keeping what LoadImage reads from it: deep greyscale (32-bit integer,
    16-bit of either byte order) becomes 16-bit, clipped to its range; 32-bit float becomes 8-bit greyscale,
    as Pillow converts it for display (and LoadImage would)."""
    if image.mode in ("RGB", "RGBA", "L", "LA", "P", "I;16"):
        return image
    if image.mode == "I" or image.mode.startswith("I;16"):
        return image.convert("I").convert("I;16")  # Pillow clips to 0..65535
    if image.mode == "F":
        return image.convert("L")
    return image.convert("RGBA")


def apply_mask(original_path: Path, mask: Any, max_pixels: int) -> tuple[bytes, str]:
    """ComfyUI's mask upload: the mask's alpha becomes the original image's alpha (saved as PNG)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    original = decode_upload(original_path.read_bytes(), max_pixels)
    info = PngInfo()
    for key, value in original.info.items():
        if isinstance(value, str) and key in ("prompt", "workflow"):
            info.add_text(key, value)
    alpha = mask.convert("RGBA").getchannel("A")
    if alpha.size != original.size:
        alpha = alpha.resize(original.size, Image.LANCZOS)
    result = original.convert("RGBA")
    result.putalpha(alpha)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue(), ".png"


def preview_format(preview: str | None) -> tuple[str, int] | None:
    """``/view``'s ``preview=format;quality`` (ComfyUI: webp or jpeg, quality 1-100, default 90)."""
    if not preview:
        return None
    fmt, _, quality = preview.partition(";")
    fmt = fmt.strip().lower()
    if fmt not in ("webp", "jpeg"):
        raise ClientError(400, "invalid_request", "preview must be webp or jpeg", "e.g. preview=webp;90")
    try:
        return fmt, max(1, min(100, int(quality))) if quality else 90
    except ValueError:
        raise ClientError(400, "invalid_request", "preview quality must be a number", "e.g. preview=webp;90") from None


def transform_image(path: Path, preview: tuple[str, int] | None, channel: str) -> tuple[bytes, str, str]:
    """``/view``'s ``channel`` and ``preview`` options applied to the image at ``path``."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            return converted(image, preview, channel)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ClientError(415, "not_an_image", "The file is not an image that can be converted",
                          "preview and channel apply to raster images only") from None


def converted(image: Any, preview: tuple[str, int] | None, channel: str) -> tuple[bytes, str, str]:
    from PIL import Image
    if channel == "rgb":
        image = image.convert("RGB")
    elif channel == "a":
        alpha = image.convert("RGBA").getchannel("A")
        image = Image.new("RGBA", image.size)
        image.putalpha(alpha)
    buffer = io.BytesIO()
    if preview is None:
        png_frame(image).save(buffer, format="PNG")
        return buffer.getvalue(), "image/png", ".png"
    fmt, quality = preview
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), "image/jpeg", ".jpg"
    image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue(), "image/webp", ".webp"
