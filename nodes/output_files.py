"""Where saving nodes write: ComfyUI's ``{prefix}_{counter:05}_`` file names and the metadata they embed.

``filename_prefix`` may name sub-folders (``"latents/ComfyUI"``) and carry variables that are filled
in here: ``%width%``, ``%height%``, ``%year%``, ``%month%``, ``%day%``, ``%hour%``, ``%minute%``,
``%second%`` (as ComfyUI's backend does) and ``%date:yyyy-MM-dd%``-style patterns (which ComfyUI's
frontend expands before queueing; a headless run has no frontend, so Loom expands them here too).
The counter is one more than the highest counter of a file already named ``{filename}_NNNNN...`` in
the target folder, so repeated runs never overwrite. A prefix that would leave the output (or temp)
directory is refused.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.nodes.kernel import folders

_DATE_PATTERN = re.compile(r"%date:([^%]+)%")
_DATE_TOKENS = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")


@dataclass(frozen=True)
class SaveTarget:
    """Where the next files of one save go: ``folder / f"{filename}_{counter:05}_.ext"``."""

    folder: Path
    filename: str
    counter: int
    subfolder: str  # relative to the output/temp directory, "/"-separated ("" for the top level)

    def name(self, counter: int, extension: str, filename: str | None = None) -> str:
        return f"{filename if filename is not None else self.filename}_{counter:05}_{extension}"

    def write_next(self, counter: int, extension: str, data: bytes, filename: str | None = None) -> tuple[str, int]:
        """Write ``data`` under the first free name from ``counter`` on; the name and the counter it took.
        Each name is claimed and written in one step, so a concurrent save never takes the same file."""
        while not folders.write_new(self.folder / self.name(counter, extension, filename), data):
            counter += 1
        return self.name(counter, extension, filename), counter


def _format_date(pattern: str, now: time.struct_time) -> str:
    values = {
        "yyyy": f"{now.tm_year:04d}", "yy": f"{now.tm_year % 100:02d}",
        "MM": f"{now.tm_mon:02d}", "M": str(now.tm_mon),
        "dd": f"{now.tm_mday:02d}", "d": str(now.tm_mday),
        "hh": f"{now.tm_hour:02d}", "h": str(now.tm_hour),
        "mm": f"{now.tm_min:02d}", "m": str(now.tm_min),
        "ss": f"{now.tm_sec:02d}", "s": str(now.tm_sec),
    }
    return _DATE_TOKENS.sub(lambda match: values[match.group(0)], pattern)


def expand_prefix_variables(prefix: str, width: int = 0, height: int = 0) -> str:
    """Fill in the ``%...%`` variables of a filename prefix."""
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    prefix = _DATE_PATTERN.sub(lambda match: _format_date(match.group(1), now), prefix)
    replacements = {
        "%width%": str(width), "%height%": str(height),
        "%year%": str(now.tm_year), "%month%": f"{now.tm_mon:02d}", "%day%": f"{now.tm_mday:02d}",
        "%hour%": f"{now.tm_hour:02d}", "%minute%": f"{now.tm_min:02d}", "%second%": f"{now.tm_sec:02d}",
    }
    for variable, value in replacements.items():
        prefix = prefix.replace(variable, value)
    return prefix


def _existing_counter(file_name: str, filename: str) -> int | None:
    """The counter of ``{filename}_{counter}...`` files (0 when the part after the prefix is not a number)."""
    head = file_name[:len(filename) + 1]
    if os.path.normcase(head[:-1]) != os.path.normcase(filename) or head[-1:] != "_":
        return None
    try:
        return int(file_name[len(filename) + 1:].split("_")[0])
    except ValueError:
        return 0


def save_target(filename_prefix: str, kind: str = "output", width: int = 0, height: int = 0) -> SaveTarget:
    """Resolve ``filename_prefix`` inside the ``output`` (or ``temp``) directory and pick the next counter.

    Raises ``ValueError`` when the prefix is empty or points outside that directory.
    """
    root = folders.current().data_dir(kind)
    prefix = expand_prefix_variables(filename_prefix, width, height)
    if not prefix.strip() or "\x00" in prefix:
        raise ValueError(f"filename_prefix {filename_prefix!r} is not a usable file name")
    normalized = os.path.normpath(prefix.replace("\\", "/"))
    subfolder = os.path.dirname(normalized)
    filename = os.path.basename(normalized)
    folder = root / subfolder
    if os.path.isabs(subfolder) or not filename or filename in (".", "..") \
            or not folders.inside(root, folder):
        raise ValueError(f"filename_prefix {filename_prefix!r} points outside the {kind} directory; "
                         f"saving there is not allowed")
    folders.make_dirs(folder)  # a full or read-only disk: folders.StorageError
    if not folders.inside(root, folder):  # a symlink created meanwhile
        raise ValueError(f"filename_prefix {filename_prefix!r} points outside the {kind} directory")
    return SaveTarget(folder=folder, filename=filename, counter=next_counter(folder, [filename]),
                      subfolder=Path(subfolder).as_posix() if subfolder else "")


def next_counter(folder: Path, filenames: list[str]) -> int:
    """One more than the highest counter among files named after any of ``filenames`` (1 if none)."""
    counters = [c for name in os.listdir(folder) for filename in filenames
                if (c := _existing_counter(name, filename)) is not None]
    return max(counters) + 1 if counters else 1


def metadata_texts(prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None) -> dict[str, str]:
    """``{"prompt": json, <each extra_pnginfo key>: json}``: the text chunks a saved image carries."""
    texts: dict[str, str] = {}
    if prompt is not None:
        texts["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            texts[str(key)] = json.dumps(value)
    return texts
