"""Reading single-file checkpoints and building diffusers/transformers modules from them, offline.

    diffusion, clip, vae = load_checkpoint("models/checkpoints/v1-5-pruned-emaonly.safetensors")

The file's header says which family it is (:mod:`nodes.runtime.families`); each part (UNet, text
encoders, VAE) is read by key prefix, converted to diffusers/transformers names with diffusers'
single-file converters, and loaded with every key accounted for: a missing or left-over tensor is
an error naming the component and the keys, never a silently random weight. Modules are built on
the meta device and take the file's tensors directly, so nothing is initialised twice.

Safetensors files load by default. Pickled ``.ckpt``/``.pt``/``.bin`` files load only when
the runtime configuration allows them (``loom --allow-pickle``, :mod:`loom.nodes.kernel.config`), and then with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from loom.nodes.kernel import config
from loom.nodes.runtime import devices, families, model_cache
from loom.nodes.runtime.families import Detected, TextEncoderSlot
from loom.nodes.runtime.model_types import DiffusionModel, TextEncoderModel, VAEModel

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pt2", ".pkl")

# Tensors single-file checkpoints carry that no inference module uses.
IGNORED_KEYS = ("alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod",
                "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                "posterior_variance", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "logvar", "model_ema.decay",
                "model_ema.num_updates", "v_pred", "ztsnr")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class CheckpointError(ValueError):
    """A model file that cannot be read or does not fit what it claims to be."""


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

_CHUNK = 64 << 20
"""Bytes per read (and per dtype conversion) when loading. Large, because the reads run in a thread
beside the imports, and each read or conversion gives up the GIL, which takes up to the switch interval
(5 ms) to get back from a busy importing thread: at 4 MiB a 2 GB file needed 500+ of those and was
still being read after seconds of imports; at 64 MiB it is read within them. Same speed alone."""


class _Pending:
    """One part a :meth:`StateDictFile.prefetch` thread reads: its tensors or its error, once ready."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class StateDictFile:
    """The tensors of one model file, read on demand (safetensors) or held in memory (pickles).

    ``shapes`` maps every key to its shape without reading any data; ``read(key, dtype)`` returns a
    CPU tensor, converted to ``dtype`` right away so only one copy is ever held.
    """

    def __init__(self, path: str | Path, *, allow_pickle: bool | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._file: Any = None
        self._tensors: dict[str, torch.Tensor] | None = None
        self._prefetched: dict[tuple[str, torch.dtype | None], _Pending] = {}
        self._reader: threading.Thread | None = None
        if not self.path.is_file():
            raise CheckpointError(f"model file {self.path} does not exist")
        suffix = self.path.suffix.lower()
        if suffix in SAFETENSORS_SUFFIXES:
            self._open_safetensors()
        elif suffix in PICKLE_SUFFIXES:
            allowed = config.current().allow_pickle if allow_pickle is None else allow_pickle
            if not allowed:
                raise CheckpointError(
                    f"{self.path.name} is a pickled checkpoint ({suffix}); pickles can run code when loaded, so "
                    "Loom reads them only when started with --allow-pickle (and then with weights_only=True). "
                    "Prefer a .safetensors version of this model.")
            self._open_pickle()
        else:
            raise CheckpointError(f"{self.path.name}: unknown model file type {suffix!r}; expected one of "
                                  f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}")

    def _open_safetensors(self) -> None:
        # The header is parsed here and tensors are read with positioned reads (see read_prefixed):
        # several times faster than page-faulting through a memory map.
        try:
            self._file = open(self.path, "rb", buffering=0)
            file_size = os.fstat(self._file.fileno()).st_size
            header_size = struct.unpack("<Q", self._file.read(8))[0]
            if header_size > min(100_000_000, file_size - 8):
                raise ValueError(f"header length {header_size} is impossible")
            header = json.loads(self._file.read(header_size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (OSError, ValueError, struct.error) as exc:
            self.close()
            raise CheckpointError(f"{self.path.name} is not a readable safetensors file "
                                  f"(truncated or corrupt?): {exc}") from exc
        self.metadata = dict(header.pop("__metadata__", None) or {})
        data_start = 8 + header_size
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._locations: dict[str, tuple[torch.dtype, int, int]] = {}
        ranges: list[tuple[int, int, str]] = []
        for key, info in header.items():
            try:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                begin, end = (int(n) for n in info["data_offsets"])
                shape = tuple(int(n) for n in info["shape"])
                if end - begin != math.prod(shape) * dtype.itemsize or begin < 0:
                    raise ValueError("the byte range does not fit the shape")
            except (KeyError, TypeError, ValueError) as exc:
                self.close()
                raise CheckpointError(f"{self.path.name}: tensor {key!r} has an unreadable header entry "
                                      f"{info!r}: {exc}") from exc
            ranges.append((begin, end, key))
            self.shapes[key] = shape
            self._locations[key] = (dtype, data_start + begin, end - begin)
        self._check_byte_ranges(ranges, file_size - data_start)

    def _check_byte_ranges(self, ranges: list[tuple[int, int, str]], buffer_size: int) -> None:
        """The tensors' byte ranges must tile the data buffer exactly, as the safetensors library requires.

        Sorted by where they begin, each range starts where the one before it ended (the first at 0),
        so no tensor reads another's bytes and no byte is unaccounted for; the last one ends exactly at
        the end of the file.
        """
        expected = 0
        for begin, end, key in sorted(ranges):
            if begin != expected:
                self.close()
                if begin < expected:
                    raise CheckpointError(
                        f"{self.path.name}: tensor {key!r} overlaps the tensor before it (its bytes start at "
                        f"offset {begin}, before the previous tensor ends at {expected}); a safetensors file's "
                        "tensors must not share bytes")
                raise CheckpointError(
                    f"{self.path.name}: tensor {key!r} starts at offset {begin} but the tensor before it ends at "
                    f"{expected}; a safetensors file's tensors must be contiguous, with no gap")
            expected = end
        if expected > buffer_size:
            self.close()
            last = max(ranges)[2]
            raise CheckpointError(f"{self.path.name} is truncated: tensor {last!r} ends past the end of the file")
        if expected < buffer_size:
            self.close()
            where = f"after tensor {max(ranges)[2]!r}" if ranges else "after the header, which names no tensor"
            raise CheckpointError(
                f"{self.path.name}: {buffer_size - expected} bytes {where} belong to no tensor; a "
                "safetensors file's tensors must end exactly at the end of the file")

    def _open_pickle(self) -> None:
        try:
            loaded = torch.load(str(self.path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{self.path.name} could not be read with torch.load(weights_only=True): "
                                  f"{exc}") from exc
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{self.path.name} does not hold a state dict (got {type(loaded).__name__})")
        self._tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    def keys(self) -> list[str]:
        return list(self.shapes)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = self._tensors[key] if self._tensors is not None else self._read_safetensors(key)
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        return tensor

    def _read_safetensors(self, key: str) -> torch.Tensor:
        dtype, offset, nbytes = self._locations[key]
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            self._pread_into(buffer, offset, key)
        return buffer.view(dtype).reshape(self.shapes[key])

    def read_prefixed(self, prefix: str, dtype: torch.dtype | None = None,
                      rename: str | None = None) -> dict[str, torch.Tensor]:
        """All tensors under ``prefix``; with ``rename`` their keys get that prefix instead.

        Floating-point tensors converted to ``dtype`` are views into one freshly allocated block:
        allocating (and first touching) hundreds of separate buffers costs several times more than
        the reading itself on a typical VM. A part :meth:`prefetch` started is taken from there.
        """
        pending = self._prefetched.pop((prefix, dtype), None) if self._prefetched else None
        out = pending.result() if pending is not None else self._read_prefixed(prefix, dtype)
        if rename is not None:
            out = {rename + key[len(prefix):]: tensor for key, tensor in out.items()}
        return out

    def _read_prefixed(self, prefix: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        keys = [key for key in self.shapes if key.startswith(prefix)]
        out: dict[str, torch.Tensor] = {}
        packed = [key for key in keys if dtype is not None and self._tensors is None
                  and self._locations[key][0].is_floating_point]
        if packed:
            out.update(self._read_packed(packed, dtype))
        return {key: out[key] if key in out else self.read(key, dtype) for key in keys}

    def prefetch(self, parts: Iterable[tuple[str, torch.dtype | None]]) -> None:
        """Start reading ``(prefix, dtype)`` parts, in this order, in a background thread.

        :meth:`read_prefixed` with the same prefix and dtype then waits for that part instead of
        reading it again. The reads and conversions release the GIL, so a caller can meanwhile
        import the model code and build its modules (what makes a cold process's first load slow).
        Nothing is read twice and nothing is kept beyond what the caller takes; :meth:`close` waits
        for the thread.
        """
        parts = [part for part in parts if part not in self._prefetched]
        if not parts or self._tensors is not None:
            return
        work_list = [(part, _Pending()) for part in parts]
        self._prefetched.update(work_list)
        cancelled = self._cancel_reads = threading.Event()

        def work() -> None:
            for part, pending in work_list:
                if cancelled.is_set():
                    pending.fail(CheckpointError(f"{self.path.name} was closed before {part[0]!r} was read"))
                    continue
                try:
                    pending.set(self._read_prefixed(*part))
                except BaseException as exc:  # handed to whoever reads that part
                    pending.fail(exc)

        self._reader = threading.Thread(target=work, name=f"loom-read-{self.path.name}", daemon=True)
        self._reader.start()

    def _read_packed(self, keys: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``keys`` read into one ``dtype`` block, in file order, a few MiB per read and per conversion.

        Consecutive tensors of one source dtype that lie back to back in the file also lie back to back
        in the block, so they are read and converted together; a tensor whose size is not a multiple of
        64 bytes is followed by padding, which keeps every tensor 64-byte aligned for vectorised kernels.
        """
        align = max(1, 64 // dtype.itemsize)  # elements
        keys = sorted(keys, key=lambda key: self._locations[key][1])
        # runs: (source dtype, file position, bytes, first element in the block)
        runs: list[list[Any]] = []
        offsets = []
        total = 0
        end_of_last = -1
        for key in keys:
            source_dtype, position, nbytes = self._locations[key]
            numel = math.prod(self.shapes[key])
            offsets.append(total)
            if runs and runs[-1][0] == source_dtype and position == end_of_last and runs[-1][3] + \
                    runs[-1][2] // source_dtype.itemsize == total:
                runs[-1][2] += nbytes
            else:
                runs.append([source_dtype, position, nbytes, total])
            end_of_last = position + nbytes
            total += -(-numel // align) * align
        block = torch.empty(total, dtype=dtype)
        converting = [run for run in runs if run[0] != dtype]
        scratch = torch.empty(min(_CHUNK, max(run[2] for run in converting)) if converting else 0,
                              dtype=torch.uint8)
        for source_dtype, position, nbytes, first in runs:
            size = source_dtype.itemsize
            step = _CHUNK - _CHUNK % size
            for done in range(0, nbytes, step):
                n = min(step, nbytes - done)
                start = first + done // size
                target = block[start:start + n // size]
                if source_dtype == dtype:
                    self._pread_into(target.view(torch.uint8), position + done, keys[0])
                else:
                    raw = scratch[:n]
                    self._pread_into(raw, position + done, keys[0])
                    target.copy_(raw.view(source_dtype))
        return {key: block[offset:offset + math.prod(self.shapes[key])].view(self.shapes[key])
                for key, offset in zip(keys, offsets)}

    def _pread_into(self, buffer: torch.Tensor, offset: int, key: str) -> None:
        view = memoryview(buffer.numpy())
        done, nbytes = 0, buffer.numel()
        while done < nbytes:
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise CheckpointError(f"{self.path.name} is truncated while reading {key!r}")
            done += got

    def close(self) -> None:
        if self._reader is not None:
            self._cancel_reads.set()  # parts not begun yet are skipped
            self._reader.join()
            self._prefetched.clear()
            self._reader = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tensors = None

    def __enter__(self) -> "StateDictFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_state_dict(path: str | Path, *, allow_pickle: bool | None = None) -> StateDictFile:
    return StateDictFile(path, allow_pickle=allow_pickle)


def read_state_dict(path: str | Path, *, dtype: torch.dtype | None = None,
                    allow_pickle: bool | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a model file (LoRAs, embeddings, ControlNets), honouring the pickle rule."""
    with StateDictFile(path, allow_pickle=allow_pickle) as file:
        return {key: file.read(key, dtype) for key in file.keys()}


# ---------------------------------------------------------------------------------------------
# Building modules
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _architecture_errors(file: StateDictFile, component: str) -> Iterator[None]:
    try:
        yield
    except KeyError as exc:
        raise CheckpointError(f"{file.path.name}: the {component} lacks the tensor {exc.args[0]}, which its "
                              "architecture is read from (an incomplete or damaged file?)") from None


def _instantiate(cls: type, *args: Any, **kwargs: Any) -> torch.nn.Module:
    with torch.device("meta"):
        return cls(*args, **kwargs)


def _load_exact(module: torch.nn.Module, state: Mapping[str, torch.Tensor], component: str, source: str) -> None:
    """Load ``state`` into a meta-device ``module``; every parameter must be given, nothing left over."""
    expected = set(module.state_dict().keys())
    given = set(state)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
        raise CheckpointError(f"{source}: the {component} weights do not fit the detected architecture: "
                              + "; ".join(parts))
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in module.state_dict().items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        key, got, want = wrong[0]
        raise CheckpointError(f"{source}: the {component} tensor {key} has shape {got}, the architecture needs "
                              f"{want} ({len(wrong)} mismatched)")
    module.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:
            if name.endswith("position_ids"):
                owner = module.get_submodule(name.rsplit(".", 1)[0])
                owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape),
                                      persistent=False)
            else:
                raise CheckpointError(f"{source}: the {component} buffer {name} was not initialised")
    module.requires_grad_(False)
    module.eval()


def _check_all_used(source_tensors: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor],
                    component: str, source: str) -> None:
    """Every tensor read for a component must have ended up in the converted state dict."""
    used = {t.data_ptr() for t in converted.values()}
    left = sorted(k for k, t in source_tensors.items() if t.numel() and t.data_ptr() not in used)
    if left:
        raise CheckpointError(f"{source}: {len(left)} {component} tensors were not understood by the converter "
                              f"(e.g. {', '.join(left[:5])})")


def build_unet(file: StateDictFile, detected: Detected, *, dtype: torch.dtype, device: torch.device,
               pooled_dim: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The detected family's diffusion network (a UNet or a DiT) and its config."""
    return detected.family.build_diffusion(file, detected, dtype=dtype, device=device, pooled_dim=pooled_dim)


def build_vae(file: StateDictFile, prefix: str, *, dtype: torch.dtype, device: torch.device,
              scaling_factor: float, shift_factor: float = 0.0) -> tuple[torch.nn.Module, dict[str, Any]]:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with _architecture_errors(file, "VAE"):
        config = families.vae_config(file.shapes, prefix)
    config["scaling_factor"] = scaling_factor
    if shift_factor:
        config["shift_factor"] = shift_factor
    vae = _instantiate(AutoencoderKL, **config)
    tensors = file.read_prefixed(prefix, dtype, rename="first_stage_model.")
    tensors = {k: v for k, v in tensors.items() if not k.endswith(".position_ids")}
    converted = convert_ldm_vae_checkpoint(tensors, config)
    _check_all_used(tensors, converted, "VAE", file.path.name)
    _load_exact(vae, converted, "VAE", file.path.name)
    return vae.to(device), config


def build_text_encoder(file: StateDictFile, slot: TextEncoderSlot, *, dtype: torch.dtype,
                       device: torch.device) -> torch.nn.Module:
    """CLIP-L as ``CLIPTextModel`` (``CLIPTextModelWithProjection`` when the file has its projection, as
    SD3's does); OpenCLIP-H/bigG and transformers-layout CLIP-G as ``CLIPTextModelWithProjection``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    if slot.layout not in ("hf", "openclip"):
        raise CheckpointError(f"{file.path.name}: Loom cannot build the {slot.name} text encoder "
                              f"({slot.layout} layout) inside a checkpoint yet")
    with _architecture_errors(file, f"text encoder {slot.name.upper()}"):
        config = CLIPTextConfig(**families.clip_config(file.shapes, slot))
    source = file.path.name
    if slot.layout == "hf":
        projected = slot.prefix + "text_projection.weight" in file.shapes
        model = _instantiate(CLIPTextModelWithProjection if projected else CLIPTextModel, config)
        tensors = file.read_prefixed(slot.prefix, dtype)
        converted = convert_ldm_clip_checkpoint(tensors, remove_prefix=slot.prefix)
        converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
        if not projected:
            # transformers >= 5.6 flattened CLIPTextModel: its keys have no "text_model." prefix
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        elif not any(k.startswith("text_model.") for k in converted):
            converted = {k if k == "text_projection.weight" else "text_model." + k: v for k, v in converted.items()}
    else:
        model = _instantiate(CLIPTextModelWithProjection, config)
        # A private prefix keeps diffusers' SD2 rule (drop the last layer, as diffusers' 23-layer
        # SD2 text encoder does) from applying: ComfyUI keeps all 24 and picks the layer itself.
        private = "loom_openclip."
        tensors = file.read_prefixed(slot.prefix, dtype, rename=private)
        converted = convert_open_clip_checkpoint(model, tensors, prefix=private)
        if "text_projection.weight" not in converted and config.projection_dim == config.hidden_size:
            converted["text_projection.weight"] = torch.eye(config.hidden_size, dtype=dtype)
    _load_exact(model, converted, f"text encoder {slot.name.upper()}", source)
    return model.to(device)


# ---------------------------------------------------------------------------------------------
# Whole checkpoints
# ---------------------------------------------------------------------------------------------

def import_model_code(family: families.Family | None = None) -> None:
    """Import what building a family's checkpoint modules needs (diffusers' networks, VAE and converters,
    transformers' CLIP; the UNet families' by default): several seconds in a fresh process, once; a no-op
    afterwards."""
    (family or families.get("sd1")).import_code()


def inspect_checkpoint(path: str | Path, *, prediction: str | None = None) -> Detected:
    """Detect a checkpoint's family without building anything."""
    with StateDictFile(path) as file:
        return families.detect(file.shapes, file.read, prediction=prediction, source=Path(path).name)


def load_checkpoint(path: str | Path, *, prediction: str | None = None, output_clip: bool = True,
                    output_vae: bool = True, device: torch.device | str | None = None,
                    use_cache: bool = True) -> tuple[DiffusionModel, TextEncoderModel | None, VAEModel | None]:
    """Load a single-file checkpoint of any registered family (SD1.x/SD2.x/SDXL/SD3) as ``(MODEL, CLIP, VAE)``.

    ``prediction`` ("eps" or "v", UNet families) overrides the detected prediction type. ``CLIP``/``VAE`` are ``None``
    when the file has no text encoder / VAE (or when not asked for). Loaded models stay in
    :data:`nodes.runtime.model_cache.models` until evicted.
    """
    device = torch.device(device) if device is not None else devices.compute_device()
    key = ("checkpoint", model_cache.file_key(path), prediction, output_clip, output_vae, str(device))
    if not use_cache:
        return _load_checkpoint(Path(path), prediction, output_clip, output_vae, device)
    expected = _expected_bytes(path, device)
    return model_cache.models.get_or_load(
        key, lambda: _load_checkpoint(Path(path), prediction, output_clip, output_vae, device),
        expected_bytes=expected, device=device)


def _expected_bytes(path: str | Path, device: torch.device) -> int:
    size = Path(path).stat().st_size
    # files are mostly float16; on the CPU everything computes in float32
    return size * 2 if device.type == "cpu" else size


def _load_checkpoint(path: Path, prediction: str | None, output_clip: bool, output_vae: bool,
                     device: torch.device) -> tuple[DiffusionModel, TextEncoderModel | None, VAEModel | None]:
    started = time.perf_counter()
    with StateDictFile(path) as file:
        detected = families.detect(file.shapes, file.read, prediction=prediction, source=path.name)
        family = detected.family
        timings: dict[str, float] = {}
        # The file is read in the background, in the order the parts are built, while this thread
        # imports diffusers/transformers (seconds, in a fresh process) and builds the modules.
        # (a T5 is read in its stored dtype and computed in float32 by nodes.runtime.t5)
        parts = [(slot.prefix, None if slot.layout == "t5" else devices.text_encoder_dtype(device))
                 for slot in detected.text_encoders if output_clip]
        if detected.unet_prefix is not None:
            parts.append((detected.unet_prefix, devices.diffusion_dtype(device)))
        if output_vae and detected.vae_prefix is not None:
            parts.append((detected.vae_prefix, devices.vae_dtype(device)))
        file.prefetch(parts)
        t = time.perf_counter()
        import_model_code(family)
        timings["imports"] = time.perf_counter() - t

        clip = None
        pooled_dim = None
        encoders: dict[str, Any] = {}
        for slot in detected.text_encoders:
            if slot.name == "g":
                pooled_dim = families.clip_config(file.shapes, slot)["projection_dim"]
            if output_clip:
                t = time.perf_counter()
                encoders[slot.name] = family.text_encoder(file, slot, dtype=devices.text_encoder_dtype(device),
                                                          device=device)
                timings[f"clip_{slot.name}"] = time.perf_counter() - t
        if encoders:
            clip = TextEncoderModel(encoders=encoders, family=family.name,
                                    options={"source": str(path)})

        t = time.perf_counter()
        unet, unet_cfg = build_unet(file, detected, dtype=devices.diffusion_dtype(device), device=device,
                                    pooled_dim=pooled_dim)
        timings["diffusion"] = time.perf_counter() - t
        diffusion = DiffusionModel(
            unet=unet, family=family.name,
            sampling=families.model_sampling(detected),
            latent_format=family.latent_format,
            options={"source": str(path), "prediction_source": detected.prediction_source,
                     "adm": family.adm, "unet_config": unet_cfg},
        )

        vae = None
        if output_vae and detected.vae_prefix is not None:
            t = time.perf_counter()
            module, vae_cfg = build_vae(file, detected.vae_prefix, dtype=devices.vae_dtype(device), device=device,
                                        scaling_factor=family.latent_format.scale_factor,
                                        shift_factor=family.latent_format.shift_factor)
            timings["vae"] = time.perf_counter() - t
            vae = VAEModel(vae=module, latent_format=family.latent_format,
                           downscale=2 ** (len(vae_cfg["block_out_channels"]) - 1),
                           options={"source": str(path)})
    log.info("loaded %s as %s (%s prediction) in %.2fs: %s", path.name, family.display_name, detected.prediction,
             time.perf_counter() - started, ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return diffusion, clip, vae


def load_vae(path: str | Path, *, device: torch.device | str | None = None, use_cache: bool = True) -> VAEModel:
    """A standalone VAE file: original layout (with or without ``first_stage_model.``) or diffusers layout."""
    device = torch.device(device) if device is not None else devices.compute_device()
    key = ("vae", model_cache.file_key(path), str(device))
    if not use_cache:
        return _load_vae(Path(path), device)
    return model_cache.models.get_or_load(key, lambda: _load_vae(Path(path), device),
                                          expected_bytes=_expected_bytes(path, device), device=device)


def _load_vae(path: Path, device: torch.device) -> VAEModel:
    latent = families.SD15_LATENT
    with StateDictFile(path) as file:
        prefix = _vae_prefix(file.keys())
        if prefix is not None:
            module, cfg = build_vae(file, prefix, dtype=devices.vae_dtype(device), device=device,
                                    scaling_factor=latent.scale_factor)
        elif "encoder.down_blocks.0.resnets.0.conv1.weight" in file:
            module, cfg = _build_diffusers_vae(file, dtype=devices.vae_dtype(device), device=device,
                                               scaling_factor=latent.scale_factor)
        else:
            raise CheckpointError(f"{path.name} is not a VAE: no encoder.*/decoder.* tensors in the original or "
                                  f"the diffusers layout (found e.g. {', '.join(file.keys()[:5])})")
    return VAEModel(vae=module, latent_format=latent, downscale=2 ** (len(cfg["block_out_channels"]) - 1),
                    options={"source": str(path)})


_DEPRECATED_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                               ".proj_attn.": ".to_out.0."}


def _build_diffusers_vae(file: StateDictFile, *, dtype: torch.dtype, device: torch.device,
                         scaling_factor: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A VAE saved by diffusers (``diffusion_pytorch_model.safetensors``): names already fit."""
    from diffusers import AutoencoderKL

    shapes = file.shapes
    with _architecture_errors(file, "VAE"):
        levels = len({k.split(".")[2] for k in shapes if k.startswith("encoder.down_blocks.")})
        blocks = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down_blocks.0.resnets.")})
        channels = tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(levels))
        config: dict[str, Any] = dict(
            in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=channels, layers_per_block=blocks,
            latent_channels=shapes["decoder.conv_in.weight"][1], norm_num_groups=32,
            use_quant_conv="quant_conv.weight" in shapes, use_post_quant_conv="post_quant_conv.weight" in shapes,
            mid_block_add_attention=any(".mid_block.attentions." in k for k in shapes),
            scaling_factor=scaling_factor)
    state = {}
    for key, tensor in file.read_prefixed("", dtype).items():
        for old, new in _DEPRECATED_ATTENTION_NAMES.items():
            key = key.replace(old, new)
        if ".mid_block.attentions." in key and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        state[key] = tensor
    vae = _instantiate(AutoencoderKL, **config)
    _load_exact(vae, state, "VAE", file.path.name)
    return vae.to(device), config


def _vae_prefix(keys: Iterable[str]) -> str | None:
    keys = list(keys)
    for prefix in families.VAE_PREFIXES + ("",):
        if prefix + "decoder.conv_in.weight" in keys and prefix + "encoder.down.0.block.0.conv1.weight" in keys:
            return prefix
    return None
