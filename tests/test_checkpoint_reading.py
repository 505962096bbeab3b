"""Reading a checkpoint's tensors in bulk: packed runs of tensors, the background prefetch, what a load leaves."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file


from loom.nodes.runtime import checkpoint


@pytest.fixture
def mixed_file(tmp_path):
    """Tensors of three float dtypes (and an int), sizes that are and are not multiples of 16, interleaved."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i, (dtype, shape) in enumerate([(torch.float16, (40, 16)), (torch.float16, (7,)), (torch.bfloat16, (33, 3)),
                                        (torch.float16, (5, 300)), (torch.float32, (64,)), (torch.float16, (1,)),
                                        (torch.float16, (2048, 3)), (torch.bfloat16, (16,)), (torch.float16, (0,))]):
        tensors[f"part.{i}.weight"] = torch.randn(shape, generator=generator).to(dtype)
    tensors["part.ids"] = torch.arange(77).unsqueeze(0)
    tensors["other.weight"] = torch.randn(3, 3, generator=generator).half()
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("chunk", [checkpoint._CHUNK, 64, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_packed_reads_equal_the_tensors(mixed_file, monkeypatch, chunk, dtype):
    """Runs of back-to-back tensors read and converted together (also in chunks smaller than a tensor)
    give each tensor exactly what a one-by-one ``.to(dtype)`` gives, aligned, non-float ones untouched."""
    path, tensors = mixed_file
    monkeypatch.setattr(checkpoint, "_CHUNK", chunk)
    with checkpoint.StateDictFile(path) as file:
        read = file.read_prefixed("part.", dtype, rename="x.")
    assert sorted(read) == sorted("x." + k[len("part."):] for k in tensors if k.startswith("part."))
    for key, tensor in read.items():
        original = tensors["part." + key[len("x."):]]
        expected = original.to(dtype) if original.is_floating_point() else original
        assert tensor.dtype == expected.dtype and tensor.shape == expected.shape
        assert torch.equal(tensor, expected), key
        assert tensor.is_contiguous()
        if tensor.is_floating_point() and tensor.numel():
            assert tensor.data_ptr() % 64 == 0, key


def test_prefetch_gives_what_a_read_gives(mixed_file):
    path, _ = mixed_file
    with checkpoint.StateDictFile(path) as file:
        direct = file.read_prefixed("part.", torch.float32)
        file.prefetch([("other.", torch.float16), ("part.", torch.float32)])
        fetched = file.read_prefixed("part.", torch.float32, rename="y.")
        other = file.read_prefixed("other.", torch.float16)
        again = file.read_prefixed("part.", torch.float32)  # not prefetched any more: read again
    assert list(fetched) == ["y." + k[len("part."):] for k in direct]
    for key, tensor in direct.items():
        assert torch.equal(fetched["y." + key[len("part."):]], tensor) and torch.equal(again[key], tensor)
    assert other["other.weight"].dtype == torch.float16


def test_prefetch_errors_reach_the_reader_and_close_does_not_wait_for_unread_parts(mixed_file, monkeypatch):
    path, _ = mixed_file
    file = checkpoint.StateDictFile(path)
    monkeypatch.setattr(file, "_read_packed", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    file.prefetch([("part.", torch.float32), ("other.", torch.float32)])
    with pytest.raises(OSError, match="disk gone"):
        file.read_prefixed("part.", torch.float32)
    file.close()  # "other." is never taken: close still returns
    assert file._reader is None and not file._prefetched


def test_a_load_leaves_no_meta_tensor_and_the_requested_dtypes(tiny_checkpoints, monkeypatch):  # noqa: F811
    left: list[int] = []
    close = checkpoint.StateDictFile.close

    def recording_close(self):
        left.append(len(self._prefetched))
        close(self)

    monkeypatch.setattr(checkpoint.StateDictFile, "close", recording_close)
    model, clip, vae = checkpoint.load_checkpoint(tiny_checkpoints["sdxl"], use_cache=False, device="cpu")
    assert left and left[-1] == 0  # every prefetched part was taken: nothing read twice or left behind
    modules = [model.unet, vae.vae] + [m for _, m in clip.encoders.values()]
    for module in modules:
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            assert not tensor.is_meta, name
            if tensor.is_floating_point():
                assert tensor.dtype == torch.float32, name
            assert not tensor.requires_grad, name
