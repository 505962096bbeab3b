"""Where files live: model folders, and the input/output/temp directories.

Layout under the base directory (``--base-dir``, default the current directory)::

    models/checkpoints  models/vae  models/loras  models/controlnet  models/embeddings  ...
    input/  output/  temp/

``--models-dir`` points the model folders at an existing ComfyUI ``models/`` folder; more search
paths per folder can be added (ComfyUI's ``extra_model_paths.yaml``). Every name handed to
:func:`resolve` is checked with ``realpath`` to stay inside its folder (symlinks included).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "vae": ("vae",),
    "loras": ("loras",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "embeddings": ("embeddings",),
    "upscale_models": ("upscale_models",),
    "clip": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
    "vae_approx": ("vae_approx",),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "hypernetworks": ("hypernetworks",),
}
"""Loom's folder names and the sub-folders of ``models/`` that hold them."""

MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".pt2")
"""File endings listed in model folders (pickled ones load only when allowed)."""

DATA_DIRS = ("input", "output", "temp")

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding nodes/, server/, web/ and workflows/: the checkout in an editable install,
``site-packages/loom`` in a regular one (pyproject.toml maps both layouts onto the ``loom`` package)."""

WEB_DIR = PACKAGE_ROOT / "web"
"""The browser editor's files."""

EXAMPLE_WORKFLOWS_DIR = PACKAGE_ROOT / "workflows"
"""The example workflows; ``txt2img.json`` is the one the editor opens first."""

BUILTIN_MODELS_DIR = Path(__file__).resolve().parents[1] / "builtin_models"
"""Models that ship with Loom (the demo checkpoint), one sub-folder per model folder; searched after
the user's own folders, so a file of the same name in ``models/`` wins."""

DEMO_CHECKPOINT = "loom-demo.safetensors"
"""The demo model Loom ships (trained by ``tools/train_demo_model.py``); the default workflow uses it."""

EXAMPLE_INPUTS_DIR = EXAMPLE_WORKFLOWS_DIR
"""Pictures the example workflows load; used when the input directory lacks a file of that name."""


@dataclass
class Folders:
    base_dir: Path
    models_dir: Path
    extra_paths: dict[str, list[Path]] = field(default_factory=dict)
    data_dirs: dict[str, Path] = field(default_factory=dict)  # overrides of input/output/temp

    def model_paths(self, folder: str) -> list[Path]:
        if folder not in MODEL_FOLDERS:
            raise KeyError(f"unknown model folder {folder!r}; known: {', '.join(MODEL_FOLDERS)}")
        paths = [self.models_dir / sub for sub in MODEL_FOLDERS[folder]]
        paths += [p for p in self.extra_paths.get(folder, []) if p not in paths]
        return paths + [BUILTIN_MODELS_DIR / folder]

    def data_dir(self, kind: str) -> Path:
        if kind not in DATA_DIRS:
            raise KeyError(f"unknown directory {kind!r}; known: {', '.join(DATA_DIRS)}")
        return self.data_dirs.get(kind) or self.base_dir / kind


_lock = threading.Lock()
_folders = Folders(base_dir=Path.cwd(), models_dir=Path.cwd() / "models")


def configure(base_dir: str | Path | None = None, models_dir: str | Path | None = None,
              extra_paths: dict[str, list[Path]] | None = None,
              data_dirs: dict[str, str | Path] | None = None) -> Folders:
    """Set the base directory (optionally the models directory and input/output/temp); creates them."""
    global _folders
    base = Path(base_dir or Path.cwd()).resolve()
    models = Path(models_dir).resolve() if models_dir else base / "models"
    overrides = {kind: Path(path).resolve() for kind, path in (data_dirs or {}).items()}
    with _lock:
        _folders = Folders(base_dir=base, models_dir=models, extra_paths=dict(extra_paths or {}),
                           data_dirs=overrides)
    for kind in DATA_DIRS:
        _folders.data_dir(kind).mkdir(parents=True, exist_ok=True)
    if models_dir is None:
        for subs in MODEL_FOLDERS.values():
            (models / subs[0]).mkdir(parents=True, exist_ok=True)
    return _folders


def add_model_path(folder: str, path: str | Path) -> None:
    with _lock:
        _folders.extra_paths.setdefault(folder, []).append(Path(path).resolve())


def current() -> Folders:
    return _folders


def base_dir() -> Path:
    return _folders.base_dir


def input_dir() -> Path:
    return _folders.data_dir("input")


def output_dir() -> Path:
    return _folders.data_dir("output")


def temp_dir() -> Path:
    return _folders.data_dir("temp")


def inside(root: Path, candidate: Path) -> bool:
    """True when ``candidate`` (after resolving symlinks) lies inside ``root``.

    The one rule for what a folder holds: names are listed (:func:`files_under`, :func:`data_files`)
    and resolved (:func:`resolve`, :func:`resolve_data`) by it, so a file that would be refused on
    loading (a symlink out of its folder) is never offered either. A symlink whose target stays inside
    the same root is fine."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(candidate)
    return real == real_root or real.startswith(real_root + os.sep)


def files_under(roots: Iterable[Path], extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> Iterator[str]:
    """Relative names (``/``-separated) of the model files under each root in turn, sub-folders included;
    hidden files and folders are skipped, a root that is no folder yields nothing, and so is anything
    that resolves outside its root (see :func:`inside`)."""
    for root in roots:
        if not root.is_dir():
            continue
        walked: dict[str, frozenset[str]] = {}  # each folder walked -> the real paths of it and its parents
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real_dir = os.path.realpath(dirpath)
            parents = walked.get(os.path.dirname(dirpath), frozenset())
            if real_dir in parents or not inside(root, Path(dirpath)):
                dirnames[:] = []  # a linked folder outside the root, or a link back to a parent (a loop)
                continue
            walked[dirpath] = parents | {real_dir}
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.lower().endswith(extensions) and not name.startswith("."):
                    path = Path(dirpath, name)
                    if path.is_file() and inside(root, path):
                        yield path.relative_to(root).as_posix()


def list_files(folder: str, extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> list[str]:
    """Relative names (``/``-separated) of the files in a model folder, sorted, first path wins."""
    return sorted(dict.fromkeys(files_under(_folders.model_paths(folder), extensions)))


def data_files(kind: str) -> list[str]:
    """Names of the files at the top of input/output/temp, sorted; hidden files and anything that
    resolves outside the directory (see :func:`inside`) are left out."""
    root = _folders.data_dir(kind)
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(root)
                  if not entry.name.startswith(".") and entry.is_file() and inside(root, Path(entry.path)))


def resolve(folder: str, name: str) -> Path:
    """The path of model file ``name`` in ``folder``; raises FileNotFoundError or PermissionError."""
    if not name or "\x00" in name or Path(name).is_absolute():
        raise PermissionError(f"invalid model file name {name!r}")
    for root in _folders.model_paths(folder):
        candidate = root / name
        if candidate.is_file():
            if not inside(root, candidate):
                raise PermissionError(f"{name!r} resolves outside the {folder} folder")
            return Path(os.path.realpath(candidate))
    raise FileNotFoundError(f"{name!r} is not in the {folder} folder "
                            f"({', '.join(str(p) for p in _folders.model_paths(folder))})")


def resolve_data(kind: str, name: str, subfolder: str = "") -> Path:
    """A file under input/output/temp, refusing anything that escapes it (``..``, absolute, symlinks)."""
    root = _folders.data_dir(kind)
    if "\x00" in name or "\x00" in subfolder or Path(name).is_absolute() or Path(subfolder).is_absolute():
        raise PermissionError("invalid file name")
    candidate = root / subfolder / name
    if not inside(root, candidate):
        raise PermissionError(f"{name!r} is outside the {kind} directory")
    return candidate


# ComfyUI's extra_model_paths.yaml keys → Loom's folder names (unknown keys are ignored).
EXTRA_PATH_KEYS: dict[str, str] = {
    "checkpoints": "checkpoints", "vae": "vae", "loras": "loras", "controlnet": "controlnet",
    "t2i_adapter": "controlnet", "embeddings": "embeddings", "upscale_models": "upscale_models",
    "clip": "clip", "text_encoders": "clip", "unet": "diffusion_models", "diffusion_models": "diffusion_models",
    "vae_approx": "vae_approx", "hypernetworks": "hypernetworks",
}


def read_extra_model_paths(yaml_path: str | Path) -> dict[str, list[Path]]:
    """The model search paths of a ComfyUI ``extra_model_paths.yaml``, by Loom folder name.

    Each top-level section (``a111:``, ``comfyui:``, ...) has an optional ``base_path`` (``~`` and
    environment variables expanded; relative to the YAML file's folder) and ``key: path`` entries whose
    value may hold several paths, one per line, each relative to ``base_path``. ``is_default`` is read
    but the paths are appended all the same (Loom never downloads into model folders).
    """
    import yaml

    yaml_path = Path(yaml_path)
    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read extra model paths from {yaml_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{yaml_path}: expected sections of 'folder: path' entries, got {type(config).__name__}")
    found: dict[str, list[Path]] = {}
    for section, entries in config.items():
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ValueError(f"{yaml_path}: section {section!r} must map folder names to paths")
        base = Path(os.path.expandvars(os.path.expanduser(str(entries.get("base_path", "")))))
        if not base.is_absolute():
            base = yaml_path.resolve().parent / base
        for key, value in entries.items():
            if key in ("base_path", "is_default") or value is None:
                continue
            folder = EXTRA_PATH_KEYS.get(str(key))
            if folder is None:
                continue
            for line in str(value).splitlines():
                line = line.strip()
                if line:
                    path = Path(os.path.expandvars(os.path.expanduser(line)))
                    found.setdefault(folder, []).append(Path(os.path.normpath(base / path)))
    return found


def load_extra_model_paths(yaml_path: str | Path) -> dict[str, list[Path]]:
    """Add the search paths of a ComfyUI ``extra_model_paths.yaml`` (``--extra-model-paths``)."""
    found = read_extra_model_paths(yaml_path)
    for folder, paths in found.items():
        for path in paths:
            add_model_path(folder, path)
    return found


def example_inputs(extensions: tuple[str, ...]) -> list[str]:
    """Names of the shipped example input files with one of ``extensions``."""
    if not EXAMPLE_INPUTS_DIR.is_dir():
        return []
    return sorted(path.name for path in EXAMPLE_INPUTS_DIR.iterdir()
                  if path.is_file() and path.name.lower().endswith(extensions))


def example_input(name: str, extensions: tuple[str, ...]) -> Path | None:
    """The shipped example input ``name`` (a bare file name), or None."""
    return EXAMPLE_INPUTS_DIR / name if name in example_inputs(extensions) else None


STORAGE_ERRNOS = frozenset(code for code in (getattr(errno, name, None) for name in
                                              ("ENOSPC", "EROFS", "EDQUOT", "EFBIG")) if code is not None)
"""``errno`` values that mean the storage itself refused the write: full, read-only, over quota, too large."""


class StorageError(OSError):
    """A file could not be written because of the storage (disk full, read-only file system, quota);
    ``str()`` names the file, the folder and the problem. ``errno`` is the original one."""

    def __init__(self, code: int, message: str, filename: str | None = None) -> None:
        super().__init__(code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _place(folder: Path) -> str:
    """``the output folder`` / ``the output folder (latents/)``: where a file goes, without the server's path."""
    for kind in DATA_DIRS:
        root = _folders.data_dir(kind)
        if inside(root, folder):
            relative = Path(os.path.relpath(os.path.realpath(folder), os.path.realpath(root))).as_posix()
            return f"the {kind} folder" + (f" ({relative}/)" if relative != "." else "")
    return f"the folder {folder.name}/"


def _storage_error(target: Path, error: OSError) -> StorageError:
    reason = os.strerror(error.errno).lower() if error.errno is not None else str(error)
    return StorageError(error.errno, f"could not save {target.name} in {_place(target.parent)}: {reason}",
                        target.name)


def make_dirs(folder: Path) -> None:
    """``folder`` and its parents, created if missing; a full or read-only disk raises :class:`StorageError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in STORAGE_ERRNOS:
            reason = os.strerror(error.errno).lower()
            raise StorageError(error.errno, f"could not create the folder {folder.name}/ in "
                                            f"{_place(folder.parent)}: {reason}", folder.name) from error
        raise


def _write_file(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write ``data`` as ``path`` (a new name only, when ``exclusive``); a write that fails part-way
    (a full disk) removes what it wrote, so no half-written file stays behind under that name."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | getattr(os, "O_BINARY", 0)
    handle = os.open(path, flags, 0o666)
    written = False
    try:
        view = memoryview(data)
        while view:
            count = os.write(handle, view)
            if count <= 0:  # a regular file accepts nothing more: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            view = view[count:]
        written = True
    finally:
        os.close(handle)
        if not written:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _partial_for(target: Path) -> Path:
    """A temporary name beside ``target``, private to this process and thread (hidden, ``.part``)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")


def _remove_partial(partial: Path) -> None:
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)


def write_replacing(target: Path, data: bytes) -> None:
    """Write ``data`` as ``target``, replacing any file of that name in one atomic step (readers see the
    old file or the new one, never half of one). A full or read-only disk raises :class:`StorageError`
    and leaves neither a temporary file nor a changed ``target``."""
    make_dirs(target.parent)
    partial = _partial_for(target)
    try:
        _write_file(partial, data, exclusive=False)
        os.replace(partial, target)
    except OSError as error:
        if error.errno in STORAGE_ERRNOS:
            raise _storage_error(target, error) from error
        raise
    finally:
        _remove_partial(partial)


def write_new(target: Path, data: bytes) -> bool:
    """Write ``data`` as ``target`` only if no file has that name yet, in one atomic step; False if taken.

    Choosing a free name and writing it must not be two steps: two writers that both see a name free would
    both write it, and one file would silently replace the other. The bytes go to a private temporary file
    that is then hard-linked to the name (the link fails if the name exists), so the name never shows a
    half-written file either. Where hard links are not supported, an exclusive create of the name itself
    (removed again if the write fails part-way). A full or read-only disk raises :class:`StorageError`
    and leaves no file behind."""
    make_dirs(target.parent)
    partial = _partial_for(target)
    try:
        _write_file(partial, data, exclusive=False)
        try:
            os.link(partial, target)
            return True
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno in STORAGE_ERRNOS:
                raise
        try:  # no hard links here
            _write_file(target, data, exclusive=True)
            return True
        except FileExistsError:
            return False
    except OSError as error:
        if error.errno in STORAGE_ERRNOS:
            raise _storage_error(target, error) from error
        raise
    finally:
        _remove_partial(partial)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's content, read in 1 MiB blocks (the fingerprint of files nodes read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
