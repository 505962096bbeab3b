"""VAEDecodeTiled / VAEEncodeTiled and VAEDecode's out-of-memory fallback, against ComfyUI's nodes.py,
comfy/sd.py (decode_tiled_, encode_tiled_) and comfy/utils.py (tiled_scale_multidim)."""
from __future__ import annotations

import itertools

import pytest
import torch


from loom.nodes.runtime import checkpoint
from loom.nodes.runtime import vae as vae_runtime


@pytest.fixture(scope="module")
def vae(tiny_checkpoints):
    return checkpoint.load_checkpoint(tiny_checkpoints["sd1"], output_clip=False, use_cache=False)[2]


def _tile_inputs(kind, step):
    return {"tile_size": ["INT", {"default": 512, "min": 64, "max": 4096, "step": step, "advanced": True}],
            "overlap": ["INT", {"default": 64, "min": 0, "max": 4096, "step": 32, "advanced": True}],
            "temporal_size": ["INT", {"default": 64, "min": 8, "max": 4096, "step": 4, "tooltip":
                              f"Only used for video VAEs: Amount of frames to {kind} at a time.", "advanced": True}],
            "temporal_overlap": ["INT", {"default": 8, "min": 4, "max": 4096, "step": 4, "tooltip":
                                 "Only used for video VAEs: Amount of frames to overlap.", "advanced": True}]}


def test_schemas_match_comfyui(registry):
    decode = registry.object_info("VAEDecodeTiled")["VAEDecodeTiled"]
    assert decode["input"]["required"] == {"samples": ["LATENT", {}], "vae": ["VAE", {}]} | _tile_inputs("decode", 32)
    assert decode["output"] == ["IMAGE"] and decode["category"] == "model/latent"
    assert decode["display_name"] == "VAE Decode (Tiled)"
    encode = registry.object_info("VAEEncodeTiled")["VAEEncodeTiled"]
    assert encode["input"]["required"] == {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]} | _tile_inputs("encode", 64)
    assert encode["output"] == ["LATENT"] and encode["display_name"] == "VAE Encode (Tiled)"
    for name in ("VAEDecode", "VAEEncode", "VAEEncodeForInpaint"):
        assert registry.object_info(name)[name]["category"] == "model/latent"


def comfy_blend(samples, function, tile_x, tile_y, overlap, scale, out_channels):
    """An independent transcription of comfy.utils.tiled_scale for 2-D tiles (the reference)."""
    tile, out = (tile_y, tile_x), []
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        size = [round(d * scale) for d in s.shape[2:]]
        if s.shape[2] <= tile_y and s.shape[3] <= tile_x:
            out.append(function(s))
            continue
        acc = torch.zeros([1, out_channels] + size)
        div = torch.zeros_like(acc)
        positions = [range(0, s.shape[d + 2] - overlap, tile[d] - overlap) if s.shape[d + 2] > tile[d] else [0]
                     for d in range(2)]
        for it in itertools.product(*positions):
            piece, at = s, []
            for d in range(2):
                pos = max(0, min(s.shape[d + 2] - overlap, it[d]))
                piece = piece.narrow(d + 2, pos, min(tile[d], s.shape[d + 2] - pos))
                at.append(round(pos * scale))
            ps = function(piece)
            mask = torch.ones_like(ps)
            feather = round(overlap * scale)
            for d in (2, 3):
                if feather < mask.shape[d]:
                    for t in range(feather):
                        mask.narrow(d, t, 1).mul_((t + 1) / feather)
                        mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_((t + 1) / feather)
            acc[:, :, at[0]:at[0] + ps.shape[2], at[1]:at[1] + ps.shape[3]] += ps * mask
            div[:, :, at[0]:at[0] + ps.shape[2], at[1]:at[1] + ps.shape[3]] += mask
        out.append(acc / div)
    return torch.cat(out)


def test_blending_weights_match_comfyui_on_a_toy_vae():
    # a toy "decoder": 8x nearest upsampling plus a per-call constant, so every tile differs and the
    # result depends on the exact weights and placement of each tile
    calls = []

    def toy(piece):
        calls.append(piece.shape)
        return torch.nn.functional.interpolate(piece, scale_factor=8, mode="nearest")[:, :3] + len(calls)

    samples = torch.rand(2, 4, 23, 37, generator=torch.Generator().manual_seed(0))
    ours = vae_runtime.tiled_scale(samples, toy, 16, 12, 4, 8, 3)
    count = len(calls)
    reference = comfy_blend(samples, toy, 16, 12, 4, 8, 3) - count  # the reference's calls add `count` more
    assert len(calls) == 2 * count
    assert count == 2 * vae_runtime.tiled_steps(37, 23, 16, 12, 4)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    # the weights alone: a constant function blends to exactly that constant
    ones = vae_runtime.tiled_scale(samples, lambda p: torch.ones(1, 3, p.shape[2] * 8, p.shape[3] * 8), 16, 12, 4, 8, 3)
    torch.testing.assert_close(ones, torch.ones_like(ones), atol=1e-6, rtol=0)
    # downscaling (the encoder's direction): 1/8 scale, positions and feathering in output units
    pixels = torch.rand(1, 3, 80, 72, generator=torch.Generator().manual_seed(1))
    pool = lambda p: torch.nn.functional.avg_pool2d(p, 8).repeat(1, 2, 1, 1)[:, :4] * (1 + p.shape[-1] / 100)
    torch.testing.assert_close(vae_runtime.tiled_scale(pixels, pool, 32, 48, 16, 1 / 8, 4),
                               comfy_blend(pixels, pool, 32, 48, 16, 1 / 8, 4), atol=1e-6, rtol=0)


def test_one_tile_decode_equals_plain_decode(registry, vae):
    samples = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = registry.get("VAEDecode").execute({"samples": samples}, vae)[0]
    tiled = registry.get("VAEDecodeTiled").execute({"samples": samples}, vae, 512, 64)[0]
    assert tiled.shape == plain.shape == (2, 64, 64, 3)
    # equal up to float rounding: (d + d + d) / 3, and the plain decode convolves both items at once
    torch.testing.assert_close(tiled, plain, atol=1e-5, rtol=0)


def test_several_tiles_decode_close_to_plain_decode(registry, vae):
    samples = torch.randn(1, 4, 24, 40, generator=torch.Generator().manual_seed(3))
    plain = registry.get("VAEDecode").execute({"samples": samples}, vae)[0]
    tiled = registry.get("VAEDecodeTiled").execute({"samples": samples}, vae, 128, 32)[0]
    assert tiled.shape == plain.shape == (1, 192, 320, 3)
    # the tiny random VAE normalises per tile (GroupNorm) and attends within a tile, so tiles are not
    # free: measured mean difference 0.050 (of 0..1), bounded here at 0.08
    assert (tiled - plain).abs().mean() < 0.08
    # and exactly ComfyUI's blend of the same decoder on 16-latent-pixel tiles overlapping by 4
    decode = lambda p: vae.vae.decode(p).sample.float()
    with torch.no_grad():
        expected = sum(comfy_blend(samples, decode, x, y, 4, 8, 3) for x, y in ((8, 32), (32, 8), (16, 16))) / 3.0
    torch.testing.assert_close(tiled, torch.clamp((expected + 1) / 2, 0, 1).movedim(1, -1), atol=1e-5, rtol=0)


def test_overlap_is_capped_at_a_quarter_tile(registry, vae, monkeypatch):
    seen = {}
    monkeypatch.setattr(vae_runtime, "decode_tiled", lambda v, s, x, y, o: seen.update(x=x, y=y, o=o) or s)
    registry.get("VAEDecodeTiled").execute({"samples": torch.zeros(1, 4, 8, 8)}, vae, 256, 128)
    assert seen == {"x": 32, "y": 32, "o": 8}  # overlap 128 > 256 / 4 becomes 64 pixels = 8 latent pixels


def test_tiled_encode_matches_comfyui_blend(registry, vae):
    pixels = torch.rand(1, 100, 136, 3, generator=torch.Generator().manual_seed(4))
    latent = registry.get("VAEEncodeTiled").execute(pixels, vae, 128, 32)[0]["samples"]
    assert latent.shape == (1, 4, 12, 17)
    cropped = pixels[:, 2:98, :, :].movedim(-1, 1)  # centre crop to multiples of 8
    encode = lambda p: vae.vae.encode(p * 2 - 1).latent_dist.mode().float()
    with torch.no_grad():
        expected = sum(comfy_blend(cropped, encode, x, y, 32, 1 / 8, 4) for x, y in ((128, 128), (256, 64), (64, 256)))
    torch.testing.assert_close(latent, expected / 3.0, atol=1e-5, rtol=0)
    small = registry.get("VAEEncodeTiled").execute(pixels[:, :64, :64], vae, 512, 64)[0]["samples"]
    torch.testing.assert_close(small, registry.get("VAEEncode").execute(pixels[:, :64, :64], vae)[0]["samples"],
                               atol=1e-5, rtol=0)


def test_decode_falls_back_to_tiles_when_out_of_memory(registry, vae, monkeypatch):
    samples = torch.randn(1, 4, 72, 40, generator=torch.Generator().manual_seed(5))  # every pass tiles
    real = vae.vae.decode

    def decode(latent, *args, **kwargs):
        if latent.shape[-2:] == samples.shape[-2:]:  # the whole latent is "too big": only tiles fit
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(latent, *args, **kwargs)

    monkeypatch.setattr(vae.vae, "decode", decode)
    image = registry.get("VAEDecode").execute({"samples": samples}, vae)[0]
    monkeypatch.setattr(vae.vae, "decode", real)
    assert image.shape == (1, 576, 320, 3)
    # ComfyUI's fallback: decode_tiled_ with 64x64 latent tiles overlapping by 16
    torch.testing.assert_close(image, vae_runtime.decode_tiled(vae, samples, 64, 64, 16), atol=0, rtol=0)


def test_overlap_not_smaller_than_tile_is_refused(vae):
    with pytest.raises(ValueError, match="overlap"):
        vae_runtime.tiled_scale(torch.zeros(1, 3, 100, 100), lambda p: p, 32, 32, 32, 1, 3)
