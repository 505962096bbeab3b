"""Faults and hostile files while models load and prompts run (issue 13: 13.5, 13.9, X9, X12, X13).

Each test feeds the bad input or injects the fault and checks both the answer and that nothing was left
behind: a .safetensors file whose tensors share bytes, files symlinked out of their folders, a node that
runs out of memory, a full or read-only disk while saving, a model file deleted after validation.
"""
from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import pytest
import torch

from loom.nodes.kernel import folders
from loom.nodes.runtime import checkpoint, model_cache
from loom.nodes.kernel.schema import Node, NodeRegistry, Output, Schema, Socket, String
from loom.server.cache import OutputCache
from loom.server.executor import Executor
from loom.server.validation import validate_prompt
from tests.fixtures_checkpoints import FILE_NAMES

PAYLOAD_KEYS = {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                "traceback", "current_inputs", "current_outputs", "timestamp"}


def run(executor: Executor, prompt: dict, prompt_id: str = "p", **kwargs):
    events: list[tuple[str, dict]] = []
    result = executor.execute(prompt, prompt_id, on_event=lambda e, d: events.append((e, d)), **kwargs)
    return result, events


def error_event(events: list[tuple[str, dict]]) -> dict:
    errors = [data for event, data in events if event == "execution_error"]
    assert len(errors) == 1, events
    assert PAYLOAD_KEYS <= set(errors[0]), errors[0]
    return errors[0]


# ------------------------------------------------------------------ 13.5: safetensors byte ranges


def write_safetensors(path: Path, entries: dict[str, tuple[str, list[int], int, int]], buffer: bytes) -> Path:
    """A .safetensors file with exactly this header (name -> dtype, shape, begin, end) and byte buffer."""
    header = {name: {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
              for name, (dtype, shape, begin, end) in entries.items()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + buffer)
    return path


def library_refuses(path: Path) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                handle.get_tensor(key)
    except Exception:
        return True
    return False


@pytest.mark.parametrize("entries, size, offender, words", [
    # b reads the second half of a's bytes
    ({"a": ("F32", [4], 0, 16), "b": ("F32", [4], 8, 24)}, 24, "b", "overlaps"),
    # b is a's bytes again
    ({"a": ("F32", [4], 0, 16), "b": ("F32", [4], 0, 16)}, 16, "b", "overlaps"),
    # four bytes between a and b belong to nobody
    ({"a": ("F32", [4], 0, 16), "b": ("F32", [4], 20, 36)}, 36, "b", "no gap"),
    # the first tensor does not start at 0
    ({"a": ("F32", [4], 4, 20)}, 20, "a", "no gap"),
    # bytes after the last tensor
    ({"a": ("F32", [4], 0, 16)}, 20, "a", "end exactly"),
])
def test_tensor_byte_ranges_must_tile_the_buffer_as_the_safetensors_library_requires(
        tmp_path, entries, size, offender, words):
    path = write_safetensors(tmp_path / "bad.safetensors", entries, bytes(range(size)))
    assert library_refuses(path)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.StateDictFile(path)
    message = str(caught.value)
    assert "bad.safetensors" in message and repr(offender) in message and words in message


def test_valid_byte_ranges_still_load_in_any_header_order_and_with_empty_tensors(tmp_path):
    data = torch.arange(8, dtype=torch.float32).numpy().tobytes()
    path = write_safetensors(tmp_path / "good.safetensors",
                             {"z_second": ("F32", [4], 16, 32), "empty": ("F32", [0], 16, 16),
                              "a_first": ("F32", [2, 2], 0, 16)}, data)
    assert not library_refuses(path)
    with checkpoint.StateDictFile(path) as file:
        assert file.read("a_first").flatten().tolist() == [0, 1, 2, 3]
        assert file.read("z_second").tolist() == [4, 5, 6, 7]
        assert file.read("empty").numel() == 0


def test_a_checkpoint_whose_tensor_reads_anothers_bytes_is_refused(tmp_path, tiny_checkpoints):
    """The probe's case: a real checkpoint with one tensor pointed at another's bytes (it used to load)."""
    data = tiny_checkpoints["sd1"].read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    buffer = data[8 + size:]
    by_shape: dict[tuple, str] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = (info["dtype"], tuple(info["shape"]))
        if shape in by_shape and by_shape[shape] != key:
            first, second = by_shape[shape], key
            break
        by_shape[shape] = key
    header[second]["data_offsets"] = list(header[first]["data_offsets"])
    raw = json.dumps(header).encode()
    path = tmp_path / "aliased.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + buffer)
    assert library_refuses(path)
    with pytest.raises(checkpoint.CheckpointError, match="aliased.safetensors") as caught:
        checkpoint.load_checkpoint(path, use_cache=False)
    assert repr(first) in str(caught.value) or repr(second) in str(caught.value)
    # the untouched file still loads
    model, clip, vae = checkpoint.load_checkpoint(tiny_checkpoints["sd1"], use_cache=False)
    assert model.family == "sd1"


# ------------------------------------------------------------------ 13.9: listing follows the resolving rule


def combo(registry, node: str, name: str) -> list[str]:
    return registry.object_info(node)[node]["input"]["required"][name][0]


def test_object_info_leaves_out_files_that_resolve_outside_their_folder(base_dir, registry):
    elsewhere = base_dir / "elsewhere"
    (elsewhere / "nested").mkdir(parents=True)
    (elsewhere / "secret.safetensors").write_bytes(b"x")
    (elsewhere / "nested" / "other.safetensors").write_bytes(b"x")
    (elsewhere / "outside.png").write_bytes(b"x")
    checkpoints = base_dir / "models" / "checkpoints"
    (checkpoints / "inside.safetensors").write_bytes(b"x")
    (checkpoints / "alias.safetensors").symlink_to("inside.safetensors")  # stays inside: fine
    (checkpoints / "escape.safetensors").symlink_to(elsewhere / "secret.safetensors")
    (checkpoints / "linked").symlink_to(elsewhere / "nested", target_is_directory=True)
    (checkpoints / "sub").mkdir()
    (checkpoints / "sub" / "deep.safetensors").write_bytes(b"x")
    (checkpoints / "sub" / "loop").symlink_to("..", target_is_directory=True)  # a loop inside the root
    inputs = base_dir / "input"
    (inputs / "real.png").write_bytes(b"x")
    (inputs / "alias.png").symlink_to("real.png")
    (inputs / "escape.png").symlink_to(elsewhere / "outside.png")
    (elsewhere / "outside.latent").write_bytes(b"x")
    (inputs / "real.latent").write_bytes(b"x")
    (inputs / "escape.latent").symlink_to(elsewhere / "outside.latent")

    listed = combo(registry, "CheckpointLoaderSimple", "ckpt_name")
    assert {"inside.safetensors", "alias.safetensors", "sub/deep.safetensors"} <= set(listed)
    assert "escape.safetensors" not in listed and "linked/other.safetensors" not in listed
    assert not any("loop" in name for name in listed)
    for name in listed:  # everything offered loads; everything refused is not offered
        folders.resolve("checkpoints", name)
    for name in ("escape.safetensors", "linked/other.safetensors"):
        with pytest.raises(PermissionError):
            folders.resolve("checkpoints", name)

    images = combo(registry, "LoadImage", "image")
    assert "real.png" in images and "alias.png" in images
    assert "escape.png" not in images
    assert not folders.inside(inputs, inputs / "escape.png")
    assert combo(registry, "LoadLatent", "latent") == ["real.latent"]


# ------------------------------------------------------------------ X9: out of memory


class FaultOOM(Node):
    """Raises an out-of-memory error: torch's, Python's, or torch's wrapped in a node's ValueError."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("FaultOOM", category="test",
                      inputs=[Socket("value", "*"), String("kind", default="torch")],
                      outputs=[Output("*", "value")])

    @classmethod
    def execute(cls, value, kind: str) -> tuple:
        if kind == "memory":
            raise MemoryError()
        if kind == "wrapped":
            try:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            except torch.OutOfMemoryError as error:
                raise ValueError(f"FaultOOM: input 'value': could not load: {error}") from None
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8.00 GiB total)")


@pytest.fixture
def fault_registry(registry) -> NodeRegistry:
    """The test registry plus FaultOOM, in a registry of its own (the shared one stays as it is)."""
    own = NodeRegistry()
    for _, node_class in registry.items():
        own.add(node_class)
    own.add(FaultOOM)
    return own


def oom_prompt(kind: str = "torch") -> dict:
    return {"1": {"class_type": "TestConstInt", "inputs": {"value": 7}},
            "2": {"class_type": "FaultOOM", "inputs": {"value": ["1", 0], "kind": kind}},
            "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}


def good_prompt(value: int = 5) -> dict:
    return {"1": {"class_type": "TestConstInt", "inputs": {"value": value}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}


def test_out_of_memory_fails_as_oom_unloads_models_and_the_next_prompt_runs(fault_registry, monkeypatch):
    models = model_cache.ModelCache(budget_bytes=None)
    monkeypatch.setattr(model_cache, "models", models)
    models.put(("checkpoint", "resident"), torch.nn.Linear(4, 4))
    executor = Executor(fault_registry, OutputCache())
    assert run(executor, good_prompt(1), "warm")[0].ok
    assert len(executor.cache) > 0

    result, events = run(executor, oom_prompt(), "oom-1")
    assert result.status == "error" and result.outputs == {}
    error = error_event(events)
    assert error is result.error or error == result.error
    assert error["exception_type"] == "oom" and error["exception_class"] == "torch.OutOfMemoryError"
    assert error["node_id"] == "2" and error["node_type"] == "FaultOOM"
    assert error["exception_message"].startswith("FaultOOM: out of memory")
    assert "Tried to allocate 20.00 GiB" in error["exception_message"]
    assert error["traceback"]  # the full story is still there for the log
    assert len(models) == 0, "the models stay loaded after running out of memory"
    assert len(executor.cache) == 0, "the output cache still holds what filled the memory"

    for n, kind in enumerate(("torch", "memory", "wrapped")):  # three in a row
        models.put(("checkpoint", n), torch.nn.Linear(4, 4))
        result, events = run(executor, oom_prompt(kind), f"oom-again-{n}")
        assert result.status == "error" and error_event(events)["exception_type"] == "oom", kind
        assert len(models) == 0
    assert error_event(events)["exception_class"] == "ValueError"  # the wrapper; the cause was torch's OOM

    result, events = run(executor, good_prompt(2), "after")
    assert result.ok and result.outputs == {"2": {"text": ["2"]}}
    assert executor.running_prompt_id is None and not executor._lock.locked()


def test_other_failures_keep_their_exception_type_and_leave_models_loaded(fault_registry, monkeypatch):
    models = model_cache.ModelCache(budget_bytes=None)
    monkeypatch.setattr(model_cache, "models", models)
    models.put(("checkpoint", "resident"), torch.nn.Linear(4, 4))
    executor = Executor(fault_registry, OutputCache())
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
              "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "exploded"}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result, events = run(executor, prompt)
    error = error_event(events)
    assert error["exception_type"] == "RuntimeError" and error["exception_message"] == "exploded"
    assert "exception_class" not in error
    assert len(models) == 1 and len(executor.cache) > 0


# ------------------------------------------------------------------ X12: disk full / read-only while saving


def files_in(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def _under(path_or_fd, root: Path) -> bool:
    if isinstance(path_or_fd, int):
        try:
            path_or_fd = os.readlink(f"/proc/self/fd/{path_or_fd}")
        except OSError:
            return False
    return os.path.realpath(path_or_fd).startswith(os.path.realpath(root) + os.sep)


def disk_full_after(monkeypatch, root: Path, keep: int = 100, hidden_too: bool = True) -> list[int]:
    """``os.write`` to files under ``root`` writes ``keep`` bytes, then fails as a full disk would
    (with ``hidden_too=False`` only for visible names: the temporary ``.part`` files are written)."""
    real_write = os.write
    attempts: list[int] = []

    def write(fd, data):
        if not _under(fd, root) or (not hidden_too and os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1]
                                    .startswith(".")):
            return real_write(fd, data)
        attempts.append(len(data))
        if len(attempts) == 1 and len(data) > keep:
            return real_write(fd, bytes(data[:keep]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    return attempts


def image_save_prompt(prefix: str = "fault") -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": 0x336699}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_full_disk_while_saving_fails_as_storage_error_and_leaves_no_file(base_dir, registry, monkeypatch,
                                                                             hard_links):
    output = folders.output_dir()
    if not hard_links:  # a file system without them: the name itself is created exclusively and written
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    # without hard links, the temporary file is written and then the name itself: the name's write fails
    attempts = disk_full_after(monkeypatch, output, hidden_too=hard_links)
    executor = Executor(registry, OutputCache())
    result, events = run(executor, image_save_prompt())
    assert attempts, "the save never wrote"
    assert result.status == "error" and result.outputs == {}
    error = error_event(events)
    assert error["exception_type"] == "storage_error" and error["node_type"] == "SaveImage"
    message = error["exception_message"]
    assert message.startswith("SaveImage: could not save fault_00001_.png in the output folder")
    assert "no space left on device" in message and str(output) not in message
    assert files_in(output) == [], "a half-written or temporary file stayed in output/"
    assert not any(event == "executed" for event, _ in events)

    monkeypatch.undo()  # space again: the same prompt saves
    result, _ = run(executor, image_save_prompt())
    assert result.ok and files_in(output) == ["fault_00001_.png"]


def test_a_read_only_output_folder_fails_as_storage_error(base_dir, registry, monkeypatch):
    output = folders.output_dir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if _under(path, output):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    executor = Executor(registry, OutputCache())
    latent = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0],
                                                           "filename_prefix": "latents/ComfyUI"}}}
    for prompt, node_type in ((image_save_prompt(), "SaveImage"), (latent, "SaveLatent")):
        result, events = run(executor, prompt, node_type)
        error = error_event(events)
        assert error["exception_type"] == "storage_error" and error["node_type"] == node_type
        assert error["exception_message"].startswith(f"{node_type}: could not ")
        assert "the output folder" in error["exception_message"]
        assert "read-only file system" in error["exception_message"]
        assert str(output) not in error["exception_message"]
        assert result.outputs == {}
    assert files_in(output) == []


def test_uploads_and_replacing_writes_leave_nothing_on_a_full_disk(base_dir, monkeypatch):
    target = folders.input_dir() / "upload.png"
    target.write_bytes(b"old picture")
    disk_full_after(monkeypatch, folders.input_dir(), keep=3)
    with pytest.raises(folders.StorageError, match="could not save upload.png in the input folder: no space"):
        folders.write_replacing(target, b"new picture" * 100)
    assert target.read_bytes() == b"old picture"  # the old file is untouched
    with pytest.raises(folders.StorageError) as caught:
        folders.write_new(folders.input_dir() / "fresh.png", b"x" * 1000)
    assert caught.value.errno == errno.ENOSPC
    assert files_in(folders.input_dir()) == ["upload.png"]


# ------------------------------------------------------------------ X13: model file removed after validation


def load_prompt() -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FILE_NAMES["sd1"]}},
            "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 2]}}}


def test_a_model_file_removed_after_validation_fails_cleanly_and_the_next_prompt_runs(
        tiny_models_dir, tiny_checkpoints, registry):
    path = tiny_models_dir / "models" / "checkpoints" / FILE_NAMES["sd1"]
    executor = Executor(registry, OutputCache())
    validation = validate_prompt(load_prompt(), registry)
    assert validation.ok
    path.unlink()
    result, events = run(executor, load_prompt(), "gone", validation=validation)
    assert result.status == "error" and result.outputs == {}
    error = error_event(events)
    assert error["node_id"] == "1" and error["node_type"] == "CheckpointLoaderSimple"
    message = error["exception_message"]
    assert message.startswith(f"CheckpointLoaderSimple: input 'ckpt_name': '{FILE_NAMES['sd1']}' is not in the "
                              "checkpoints folder: file not found")
    assert "removed" in message
    assert "Traceback" not in message and str(tiny_models_dir) not in message

    os.link(tiny_checkpoints["sd1"], path)  # put back
    result, _ = run(executor, load_prompt(), "back")
    assert result.ok, result.error


def test_a_model_file_removed_while_its_loader_runs_is_the_same_clear_error(
        tiny_models_dir, registry, monkeypatch):
    path = tiny_models_dir / "models" / "checkpoints" / FILE_NAMES["sd1"]
    real_load = checkpoint.load_checkpoint

    def load_after_removal(file, *args, **kwargs):
        os.unlink(file)  # gone between finding the file and reading it
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", load_after_removal)
    result, events = run(Executor(registry, OutputCache()), load_prompt(), "racing")
    error = error_event(events)
    assert error["exception_message"].startswith("CheckpointLoaderSimple: input 'ckpt_name': ")
    assert "file not found" in error["exception_message"]
    assert error["exception_type"] == "ValueError"
    assert not path.exists()
