"""Image and latent nodes: ComfyUI's resampling, LoadImage/SaveImage semantics, .latent files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from loom.nodes.runtime import resample
from loom.nodes.image import (EmptyImage, ImageBatch, ImageInvert, ImagePadForOutpaint, ImageScale, ImageScaleBy,
                         LoadImage, LoadImageMask, PreviewImage, SaveImage)
from loom.nodes.latent import (EmptyLatentImage, LatentComposite, LatentCrop, LatentFromBatch, LatentUpscale,
                          LatentUpscaleBy, LoadLatent, RepeatLatentBatch, SaveLatent, SetLatentNoiseMask)
from loom.nodes.output_files import expand_prefix_variables, save_target


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path)
    return path


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_interpolating_methods_are_torch_interpolate(method):
    samples = torch.rand(2, 4, 6, 10)
    out = resample.common_upscale(samples, 15, 9, method, "disabled")
    expected = torch.nn.functional.interpolate(samples, size=(9, 15), mode=method)
    assert out.shape == (2, 4, 9, 15)
    assert torch.equal(out, expected)


def test_center_crop_trims_the_longer_side_symmetrically():
    wide = torch.arange(6 * 10, dtype=torch.float32).reshape(1, 1, 6, 10)
    # aspect 10/6 to 1: x = round((10 - 10 * (1 / (10/6))) / 2) = 2 columns off each side
    assert torch.equal(resample.center_crop_to_aspect(wide, 4, 4), wide[:, :, :, 2:8])
    tall = wide.transpose(-1, -2)
    assert torch.equal(resample.center_crop_to_aspect(tall, 4, 4), tall[:, :, 2:8, :])
    # crop, then resize: a 6x6 nearest resize of the cropped square
    out = resample.common_upscale(wide, 6, 6, "nearest-exact", "center")
    assert torch.equal(out, torch.nn.functional.interpolate(wide[:, :, :, 2:8], size=(6, 6), mode="nearest-exact"))


def test_lanczos_resizes_8bit_pixels_with_pillow():
    image = torch.rand(1, 5, 7, 3)
    out = resample.scale_image(image, 11, 9, "lanczos")
    pixels = np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)
    expected = np.array(Image.fromarray(pixels).resize((11, 9), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    assert out.shape == (1, 9, 11, 3)
    assert torch.equal(out[0], torch.from_numpy(expected))


def _reference_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na else np.zeros_like(a)
    ub = b / nb if nb else np.zeros_like(b)
    dot = float((ua * ub).sum())
    if dot > 1 - 1e-5:
        return a
    if dot < 1e-5 - 1:
        return a * (1 - t) + b * t
    omega = math.acos(dot)
    mixed = (math.sin((1 - t) * omega) * ua + math.sin(t * omega) * ub) / math.sin(omega)
    return mixed * (na * (1 - t) + nb * t)


def _reference_taps(size_in: int, size_out: int) -> list[tuple[int, int, float]]:
    """Half-pixel-centre source positions, as bilinear resizing (align_corners=False) picks them."""
    taps = []
    for x in range(size_out):
        u = max(0.0, (x + 0.5) * size_in / size_out - 0.5)
        first = min(int(math.floor(u)), size_in - 1)
        ratio = 0.0 if first == size_in - 1 else u - first
        taps.append((first, min(first + 1, size_in - 1), ratio))
    return taps


def test_bislerp_slerps_channel_vectors_along_width_then_height():
    torch.manual_seed(0)
    samples = torch.randn(1, 4, 3, 4)
    out = resample.common_upscale(samples, 7, 5, "bislerp", "disabled")
    assert out.shape == (1, 4, 5, 7)
    data = samples[0].numpy().transpose(1, 2, 0)  # [H, W, C]
    rows = np.stack([[_reference_slerp(data[y, a], data[y, b], r) for a, b, r in _reference_taps(4, 7)]
                     for y in range(3)])
    expected = np.stack([[_reference_slerp(rows[a, x], rows[b, x], r) for x in range(7)]
                         for a, b, r in _reference_taps(3, 5)])
    assert np.allclose(out[0].numpy().transpose(1, 2, 0), expected, atol=1e-4)


# ---------------------------------------------------------------- image nodes


def test_image_scale_zero_keeps_aspect_and_scale_by_rounds():
    image = torch.rand(1, 40, 60, 3)
    (same,) = ImageScale.execute(image, "bilinear", 0, 0, "disabled")
    assert same is image
    (out,) = ImageScale.execute(image, "bilinear", 0, 20, "disabled")
    assert out.shape == (1, 20, 30, 3)
    (out,) = ImageScale.execute(image, "area", 90, 0, "disabled")
    assert out.shape == (1, 60, 90, 3)
    (out,) = ImageScale.execute(image, "bicubic", 32, 32, "center")
    assert out.shape == (1, 32, 32, 3)
    (out,) = ImageScaleBy.execute(image, "nearest-exact", 0.55)
    assert out.shape == (1, round(40 * 0.55), round(60 * 0.55), 3)


def test_invert_batch_empty_and_pad():
    image = torch.rand(1, 8, 8, 3)
    assert torch.equal(ImageInvert.execute(image)[0], 1.0 - image)
    (batch,) = ImageBatch.execute(image, torch.rand(2, 16, 12, 3))
    assert batch.shape == (3, 8, 8, 3)
    (empty,) = EmptyImage.execute(4, 2, 1, 0xFF8000)
    assert empty.shape == (1, 2, 4, 3) and torch.equal(empty[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    padded, mask = ImagePadForOutpaint.execute(torch.rand(1, 16, 16, 3), 8, 0, 0, 0, 4)
    assert padded.shape == (1, 16, 24, 3) and mask.shape == (1, 16, 24)
    assert torch.all(padded[:, :, :8] == 0.5) and torch.all(mask[0, :, :8] == 1)
    # feathering ramps (4 - d)^2/16 over the 4 pixels next to the padded (left) edge only
    assert mask[0, 5, 8:13].tolist() == pytest.approx([1.0, 9 / 16, 4 / 16, 1 / 16, 0.0])


def test_load_image_mask_is_one_minus_alpha(base_dir):
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[2:4, 1:3, 3] = 0
    write_png(base_dir / "input" / "hole.png", rgba, "RGBA")
    image, mask = LoadImage.execute("hole.png")
    assert image.shape == (1, 6, 5, 3) and image.dtype == torch.float32
    assert torch.allclose(image[0, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    assert mask.shape == (1, 6, 5)
    assert mask[0, 2:4, 1:3].eq(1).all() and mask.sum() == 4

    write_png(base_dir / "input" / "opaque.png", np.full((6, 5, 3), 9, dtype=np.uint8))
    _, mask = LoadImage.execute("opaque.png")
    assert mask.shape == (1, 64, 64) and not mask.any()
    (channel,) = LoadImageMask.execute("hole.png", "red")
    assert channel.shape == (1, 6, 5) and torch.allclose(channel, torch.full((1, 6, 5), 200 / 255))
    (alpha,) = LoadImageMask.execute("hole.png", "alpha")
    assert torch.equal(alpha, LoadImage.execute("hole.png")[1])


def test_load_image_applies_exif_orientation(base_dir):
    picture = Image.new("RGB", (6, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    picture.save(base_dir / "input" / "rotated.png", exif=exif)
    image, _ = LoadImage.execute("rotated.png")
    assert image.shape == (1, 6, 4, 3)


def test_load_image_frames_become_a_batch(base_dir):
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(base_dir / "input" / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    image, mask = LoadImage.execute("anim.gif")
    assert image.shape == (3, 8, 8, 3) and mask.shape[0] == 3
    assert image[1, 0, 0, 1] > 0.9 and image[2, 0, 0, 2] > 0.9


def test_load_image_16_bit_greyscale_is_rescaled(base_dir):
    Image.fromarray(np.full((4, 4), 255 * 128, dtype=np.uint16)).save(base_dir / "input" / "deep.png")
    image, _ = LoadImage.execute("deep.png")
    assert torch.allclose(image, torch.full((1, 4, 4, 3), 128 / 255))


def test_load_image_fingerprint_validation_and_listing(base_dir):
    path = write_png(base_dir / "input" / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    first = LoadImage.fingerprint("a.png")
    write_png(path, np.ones((4, 4, 3), dtype=np.uint8))
    assert LoadImage.fingerprint("a.png") != first
    assert "a.png" in LoadImage.schema().input("image").choices()
    assert LoadImage.validate_inputs("a.png") is True
    assert "missing.png" in LoadImage.validate_inputs("missing.png")
    assert "outside" in LoadImage.validate_inputs("../escape.png")
    assert "outside" in LoadImage.validate_inputs("/etc/passwd")
    (base_dir / "input" / "broken.png").write_bytes(b"not a picture")
    assert "not an image" in LoadImage.validate_inputs("broken.png")
    with pytest.raises(ValueError, match="LoadImage: input 'image'"):
        LoadImage.execute("broken.png")
    # "[output]" annotated names read from the output directory, as ComfyUI's do
    write_png(base_dir / "output" / "made.png", np.zeros((3, 3, 3), dtype=np.uint8))
    assert LoadImage.validate_inputs("made.png [output]") is True
    assert LoadImage.execute("made.png [output]")[0].shape == (1, 3, 3, 3)


def test_example_image_is_found_without_copying(base_dir):
    assert LoadImage.validate_inputs("example.png") is True
    image, mask = LoadImage.execute("example.png")
    assert image.shape == (1, 512, 512, 3) and mask.shape == (1, 64, 64)
    _, hole = LoadImage.execute("example-inpaint.png")
    assert hole.shape == (1, 512, 512) and hole.max() == 1 and hole.mean() < 0.2
    assert {"example.png", "example-inpaint.png"} <= set(LoadImage.schema().input("image").choices())
    assert LoadImage.validate_inputs("README.md") is not True  # only the pictures fall back
    # a picture of the same name in the input directory wins
    write_png(base_dir / "input" / "example.png", np.zeros((2, 2, 3), dtype=np.uint8))
    assert LoadImage.execute("example.png")[0].shape == (1, 2, 2, 3)


def test_conformance_input_loads_as_rgb(conformance_dir):
    from loom.nodes.image import load_image_file

    image, mask = load_image_file(conformance_dir / "inputs" / "conformance-input.png")
    assert image.shape == (1, 64, 64, 3) and mask.shape == (1, 64, 64)


# ---------------------------------------------------------------- saving


def test_concurrent_saves_with_one_prefix_never_share_a_file(base_dir):
    """Issue 13.2: two saves that pick the same counter at once each get their own file."""
    import threading

    barrier, results = threading.Barrier(6), []
    pictures = [torch.full((1, 4, 4, 3), i / 10) for i in range(6)]

    def save(picture):
        barrier.wait()
        results.append((picture, SaveImage.execute(picture, "race").ui["images"][0]["filename"]))

    threads = [threading.Thread(target=save, args=(p,)) for p in pictures]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({name for _, name in results}) == 6
    for picture, name in results:
        expected = np.clip(255.0 * picture[0].numpy(), 0, 255).astype(np.uint8)
        assert np.array_equal(np.array(Image.open(base_dir / "output" / name)), expected), name


def test_save_image_counter_subfolders_and_metadata(base_dir):
    (base_dir / "output" / "ComfyUI_00007_.png").write_bytes(b"")
    (base_dir / "output" / "ComfyUI_notes.txt").write_bytes(b"")
    (base_dir / "output" / "Other_00042_.png").write_bytes(b"")
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}}}
    workflow = {"nodes": [], "links": [], "version": 0.4, "extra": {"note": "café"}}
    images = torch.rand(2, 8, 12, 3)
    result = SaveImage.execute(images, "ComfyUI", prompt=prompt, extra_pnginfo={"workflow": workflow})
    assert result.ui == {"images": [{"filename": "ComfyUI_00008_.png", "subfolder": "", "type": "output"},
                                    {"filename": "ComfyUI_00009_.png", "subfolder": "", "type": "output"}]}
    saved = Image.open(base_dir / "output" / "ComfyUI_00008_.png")
    assert saved.size == (12, 8) and saved.mode == "RGB"
    assert json.loads(saved.text["prompt"]) == prompt
    assert json.loads(saved.text["workflow"]) == workflow
    assert saved.text["workflow"].isascii()  # 7-bit tEXt, as json.dumps escapes
    expected = np.clip(255.0 * images[0].numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(np.array(saved), expected)

    result = SaveImage.execute(images[:1], "renders/%width%x%height%/img")
    assert result.ui["images"] == [{"filename": "img_00001_.png", "subfolder": "renders/12x8", "type": "output"}]
    result = SaveImage.execute(images[:1], "renders/12x8/img")
    assert result.ui["images"][0]["filename"] == "img_00002_.png"
    result = SaveImage.execute(images, "frame%batch_num%")
    assert [e["filename"] for e in result.ui["images"]] == ["frame0_00001_.png", "frame1_00002_.png"]
    result = SaveImage.execute(images, "frame%batch_num%")  # never overwrites the first run's files
    assert [e["filename"] for e in result.ui["images"]] == ["frame0_00003_.png", "frame1_00004_.png"]
    bare = Image.open(base_dir / "output" / "renders" / "12x8" / "img_00002_.png")
    assert "prompt" not in bare.text and "workflow" not in bare.text


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/tmp/escape", "..", ""])
def test_save_image_refuses_prefixes_outside_output(base_dir, prefix):
    with pytest.raises(ValueError, match="filename_prefix"):
        SaveImage.execute(torch.rand(1, 4, 4, 3), prefix)


def test_save_target_counter_rules(base_dir):
    out = base_dir / "output"
    for name in ("shot_00003_.png", "shot_00010_x.png", "shot_abc.png", "shots_00099_.png", "shot"):
        (out / name).write_bytes(b"")
    assert save_target("shot").counter == 11
    assert save_target("fresh").counter == 1
    assert "%date" not in expand_prefix_variables("x_%date:yyyy-MM-dd%")
    assert len(expand_prefix_variables("%date:yyyyMMdd%")) == 8


def test_preview_image_goes_to_temp(base_dir):
    result = PreviewImage.execute(torch.rand(1, 4, 4, 3), prompt={"1": {}})
    (entry,) = result.ui["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert (base_dir / "temp" / entry["filename"]).is_file()


# ---------------------------------------------------------------- latents


def test_empty_latent_and_upscales():
    (latent,) = EmptyLatentImage.execute(96, 64, 2)
    assert latent["samples"].shape == (2, 4, 8, 12) and not latent["samples"].any()
    latent = {"samples": torch.randn(1, 4, 8, 12), "noise_mask": torch.ones(1, 1, 64, 96)}
    (out,) = LatentUpscale.execute(latent, "nearest-exact", 0, 128, "disabled")
    assert out["samples"].shape == (1, 4, 16, 24) and out["noise_mask"] is latent["noise_mask"]
    (out,) = LatentUpscale.execute(latent, "bilinear", 16, 16, "center")  # 64 px floor
    assert out["samples"].shape == (1, 4, 8, 8)
    assert LatentUpscale.execute(latent, "bilinear", 0, 0, "disabled")[0] is latent
    (out,) = LatentUpscaleBy.execute(latent, "bislerp", 1.5)
    assert out["samples"].shape == (1, 4, 12, 18)
    (out,) = LatentUpscaleBy.execute(latent, "area", 1.5)
    expected = torch.nn.functional.interpolate(latent["samples"], size=(12, 18), mode="area")
    assert torch.equal(out["samples"], expected)


def test_latent_composite_mask_and_batches():
    target = {"samples": torch.zeros(1, 4, 8, 8)}
    source = {"samples": torch.ones(1, 4, 4, 4)}
    (out,) = LatentComposite.execute(target, source, 48, 16, 0)
    assert out["samples"][0, 0, 2:6, 6:].eq(1).all() and out["samples"].sum() == 4 * 4 * 2
    assert not target["samples"].any()
    (feathered,) = LatentComposite.execute(target, source, 16, 16, 16)
    assert feathered["samples"][0, 0, 2, 2] == pytest.approx(0.25)  # two edges at 1/2 each
    assert feathered["samples"][0, 0, 3, 3] == pytest.approx(1.0)
    (masked,) = SetLatentNoiseMask.execute(target, torch.ones(16, 16))
    assert masked["noise_mask"].shape == (1, 1, 16, 16) and "noise_mask" not in target
    (crop,) = LatentCrop.execute({"samples": torch.randn(1, 4, 16, 16)}, 64, 64, 120, 0)
    assert crop["samples"].shape == (1, 4, 8, 8)

    batch = {"samples": torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 4, 2, 2).clone()}
    (picked,) = LatentFromBatch.execute(batch, 1, 2)
    assert picked["batch_index"] == [1, 2] and picked["samples"][:, 0, 0, 0].tolist() == [1.0, 2.0]
    (repeated,) = RepeatLatentBatch.execute(picked, 3)
    assert repeated["samples"].shape[0] == 6 and repeated["batch_index"] == [1, 2, 3, 4, 5, 6]


def test_save_and_load_latent_round_trip(base_dir):
    samples = torch.randn(2, 4, 8, 8)
    prompt = {"8": {"class_type": "SaveLatent", "inputs": {}}}
    result = SaveLatent.execute({"samples": samples}, "latents/conf", prompt=prompt,
                                extra_pnginfo={"workflow": {"nodes": []}})
    assert result.ui == {"latents": [{"filename": "conf_00001_.latent", "subfolder": "latents", "type": "output"}]}
    path = base_dir / "output" / "latents" / "conf_00001_.latent"
    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert json.loads(handle.metadata()["prompt"]) == prompt
        assert json.loads(handle.metadata()["workflow"]) == {"nodes": []}
    assert SaveLatent.execute({"samples": samples}).ui["latents"][0]["filename"] == "ComfyUI_00001_.latent"

    (base_dir / "input" / "conf.latent").write_bytes(path.read_bytes())
    assert "conf.latent" in LoadLatent.schema().input("latent").choices()
    (loaded,) = LoadLatent.execute("conf.latent")
    assert torch.equal(loaded["samples"], samples)
    assert LoadLatent.validate_inputs("conf.latent") is True
    assert LoadLatent.validate_inputs("none.latent") is not True
    save_file({"latent_tensor": samples}, str(base_dir / "input" / "old.latent"))
    (legacy,) = LoadLatent.execute("old.latent")
    assert torch.allclose(legacy["samples"], samples / 0.18215)


def test_saved_latent_has_the_layout_of_comfyui_references(base_dir, conformance_dir):
    reference = conformance_dir / "refs" / "img2img_ddim.latent"
    SaveLatent.execute({"samples": torch.zeros(1, 4, 8, 8)}, "latents/conf", prompt={"1": {}})
    with safe_open(str(reference), "pt") as ref, \
            safe_open(str(base_dir / "output" / "latents" / "conf_00001_.latent"), "pt") as ours:
        assert set(ref.keys()) == set(ours.keys())
        for key in ref.keys():
            assert ref.get_tensor(key).dtype == ours.get_tensor(key).dtype
        assert set(ref.metadata()) == set(ours.metadata())


# ---------------------------------------------------------------- through the engine


def test_engine_fills_prompt_and_workflow_into_saved_png(base_dir, registry):
    executor_module = pytest.importorskip("loom.server.executor")
    write_png(base_dir / "input" / "in.png", np.full((8, 8, 3), 40, dtype=np.uint8))
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}
    workflow = {"last_node_id": 3, "nodes": [], "links": [], "version": 0.4}
    executor = executor_module.Executor(registry)
    result = executor.execute(prompt, "p1", extra_data={"extra_pnginfo": {"workflow": workflow}})
    assert result.status == "success", result.error
    (entry,) = result.outputs["3"]["images"]
    saved = Image.open(base_dir / "output" / entry["filename"])
    assert json.loads(saved.text["prompt"]) == prompt and json.loads(saved.text["workflow"]) == workflow
    assert np.array(saved)[0, 0].tolist() == [215, 215, 215]
    # a changed file re-runs LoadImage (its fingerprint is the content hash)
    again = executor.execute(prompt, "p2")
    assert "1" in again.cached
    write_png(base_dir / "input" / "in.png", np.full((8, 8, 3), 41, dtype=np.uint8))
    changed = executor.execute(prompt, "p3")
    assert "1" in changed.executed


def test_validation_names_the_missing_image(base_dir, registry):
    graph = pytest.importorskip("loom.server.validation")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    result = graph.validate_prompt(prompt, registry)
    assert not result.ok
    assert "nope.png" in json.dumps(result.node_errors["1"])
