"""Workflows embedded in images: read PNG text chunks and WebP EXIF, write PNG text chunks.

ComfyUI-compatible savers put ``prompt`` (API JSON) and ``workflow`` (UI JSON) into PNG ``tEXt`` chunks;
other writers use ``iTXt``/``zTXt``. Animated WebP savers put ``"workflow:{json}"``/``"prompt:{json}"``
into EXIF tags 0x010F, 0x0110, ... (with or without the ``Exif\\0\\0`` header); AVIF-style writers use
``"Workflow: {json}"``. The readers here scan the containers themselves, chunk by chunk, and stop at
the first broken chunk keeping what they found, so a truncated or oddly written file still yields its
workflow.
"""
from __future__ import annotations

import json
import struct
import zlib
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 64 * 1024 * 1024  # a decompressed text chunk larger than this is not a workflow

_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def read_image_metadata(data: bytes) -> dict[str, str]:
    """Text metadata of an image as ``{key: text}``; ``{}`` when there is none or it is not an image.

    PNG and WebP are scanned here; other formats Pillow can open (JPEG, AVIF, TIFF...) give their EXIF
    ``key:value`` strings and text info.
    """
    if data.startswith(PNG_SIGNATURE):
        return read_png_text(data)
    if is_webp(data):
        return read_webp_exif_text(data)
    return _read_with_pillow(data)


def is_webp(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _read_with_pillow(data: bytes) -> dict[str, str]:
    import io

    from PIL import Image, UnidentifiedImageError

    found: dict[str, str] = {}
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            for value in exif.values():
                if isinstance(value, bytes):
                    value = value.rstrip(b"\0").decode("utf-8", errors="replace")
                if isinstance(value, str):
                    key, separator, rest = value.partition(":")
                    if separator and key.strip() and key.strip().replace("_", "").isalnum():
                        found.setdefault(key.strip().lower(), rest.lstrip())
            for key, value in image.info.items():
                if isinstance(key, str) and isinstance(value, str):
                    found.setdefault(key, value)
    except UnidentifiedImageError:
        return {}
    except Exception:  # Pillow raises many kinds of errors on damaged files; none of them is ours to show
        return {}
    return found


def read_png_text(data: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        try:  # a truncated last chunk is still read: its text may be complete enough to parse
            entry = _png_text_chunk(kind, body)
        except (ValueError, zlib.error, UnicodeDecodeError):
            entry = None
        if entry is not None and entry[0] not in found:
            found[entry[0]] = entry[1]
        if kind == b"IEND" or len(body) < length:
            break
        position += 12 + length
    return found


def _png_text_chunk(kind: bytes, body: bytes) -> tuple[str, str] | None:
    if kind not in (b"tEXt", b"zTXt", b"iTXt") or b"\0" not in body[:80]:  # keywords are 1-79 bytes
        return None
    if kind == b"tEXt":
        keyword, _, text = body.partition(b"\0")
        return keyword.decode("latin-1"), text.decode("latin-1")
    if kind == b"zTXt":
        keyword, _, rest = body.partition(b"\0")
        return keyword.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    keyword, _, rest = body.partition(b"\0")  # iTXt: flag, method, language, translated keyword, text
    compressed, rest = rest[:1] == b"\1", rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        text = _inflate(text)
    return keyword.decode("latin-1"), text.decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return text


def read_webp_exif_text(data: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    position = 12
    while position + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"EXIF":
            for key, text in read_exif_text(body).items():
                found.setdefault(key, text)
        if len(body) < length:
            break
        position += 8 + length + (length & 1)
    return found


def read_exif_text(exif: bytes) -> dict[str, str]:
    """``key:value`` strings from the first IFD of a TIFF/EXIF block (the ComfyUI convention)."""
    if exif.startswith(b"Exif\0\0"):
        exif = exif[6:]
    if exif[:4] == b"II*\0":
        order = "<"
    elif exif[:4] == b"MM\0*":
        order = ">"
    else:
        return {}
    found: dict[str, str] = {}
    try:
        (ifd,) = struct.unpack(order + "I", exif[4:8])
        (count,) = struct.unpack(order + "H", exif[ifd:ifd + 2])
    except struct.error:
        return {}
    for index in range(count):
        entry = exif[ifd + 2 + 12 * index: ifd + 14 + 12 * index]
        if len(entry) < 12:
            break
        _tag, kind, items, value = struct.unpack(order + "HHI4s", entry)
        if kind not in (1, 2, 7):  # BYTE, ASCII, UNDEFINED hold text
            continue
        size = items * _TIFF_TYPE_SIZES[kind]
        if size > 4:
            (offset,) = struct.unpack(order + "I", value)
            raw = exif[offset:offset + size]
        else:
            raw = value[:size]
        text = raw.rstrip(b"\0").decode("utf-8", errors="replace")
        key, separator, rest = text.partition(":")
        if separator and key.strip() and key.strip().replace("_", "").isalnum():
            found.setdefault(key.strip().lower(), rest.lstrip())
    return found


def embed_png_metadata(pnginfo: dict[str, Any]):
    """A ``PngInfo`` with one ``tEXt`` chunk per key: dicts/lists as JSON, strings as they are.

    ``json.dumps`` escapes non-ASCII characters, so the chunks stay 7-bit ``tEXt`` as ComfyUI writes them.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in pnginfo.items():
        if value is None:
            continue
        info.add_text(str(key), value if isinstance(value, str) else json.dumps(value))
    return info
