"""VAE nodes: IMAGE ⇄ LATENT shapes, ranges, cropping and the inpainting encode, in ComfyUI's conventions."""
from __future__ import annotations

import pytest
import torch


from loom.nodes.runtime import checkpoint
from loom.nodes.runtime import vae as vae_runtime
from tests.fixtures_sockets import run_node


@pytest.fixture(scope="module")
def vae(tiny_checkpoints):
    return checkpoint.load_checkpoint(tiny_checkpoints["sd1"], output_clip=False, use_cache=False)[2]


def test_decode_gives_images_in_0_1(registry, vae):
    samples = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0)) * 3
    image = registry.get("VAEDecode").execute(samples={"samples": samples}, vae=vae)[0]
    assert image.shape == (2, 64, 96, 3) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0
    with torch.no_grad():
        raw = vae.vae.decode(samples).sample
    torch.testing.assert_close(image, torch.clamp((raw + 1) / 2, 0, 1).movedim(1, -1))


def test_encode_takes_the_mean_of_the_centre_crop(registry, vae):
    pixels = torch.rand(1, 70, 67, 4, generator=torch.Generator().manual_seed(1))  # RGBA, not multiples of 8
    latent = registry.get("VAEEncode").execute(pixels=pixels, vae=vae)[0]
    assert set(latent) == {"samples"} and latent["samples"].shape == (1, 4, 8, 8)
    cropped = pixels[:, 3:67, 1:65, :3]  # ComfyUI's offsets: (70 % 8) // 2 and (67 % 8) // 2
    with torch.no_grad():
        mean = vae.vae.encode(cropped.movedim(-1, 1) * 2 - 1).latent_dist.mean
    torch.testing.assert_close(latent["samples"], mean)
    # deterministic: no sampling from the latent distribution
    torch.testing.assert_close(registry.get("VAEEncode").execute(pixels=pixels, vae=vae)[0]["samples"],
                               latent["samples"])


def test_encode_for_inpaint_greys_the_mask_and_grows_it(registry, vae):
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:32, 24:40] = 1.0
    latent = registry.get("VAEEncodeForInpaint").execute(pixels=pixels, vae=vae, mask=mask, grow_mask_by=6)[0]
    assert latent["samples"].shape == (1, 4, 8, 8)
    noise_mask = latent["noise_mask"]
    assert noise_mask.shape == (1, 1, 64, 64)
    assert noise_mask[0, 0, 16:32, 24:40].all()
    # grown by the 6x6 kernel (padding 3): 2 pixels before and 3 after the masked block
    assert noise_mask[0, 0, 14, 30] == 1 and noise_mask[0, 0, 13, 30] == 0
    assert noise_mask[0, 0, 34, 30] == 1 and noise_mask[0, 0, 35, 30] == 0
    greyed = pixels.clone()
    greyed[:, 16:32, 24:40, :] = 0.5
    expected = vae_runtime.encode(vae, greyed)
    torch.testing.assert_close(latent["samples"], expected)
    plain = registry.get("VAEEncodeForInpaint").execute(pixels=pixels, vae=vae, mask=mask, grow_mask_by=0)[0]
    torch.testing.assert_close(plain["noise_mask"], mask.reshape(1, 1, 64, 64))


def test_vae_nodes_name_bad_inputs(registry, vae):
    with pytest.raises(ValueError, match="VAEDecode: input 'vae' is None, not a VAE: if it comes from a checkpoint "
                                         "loader, the checkpoint has no valid VAE model"):
        run_node("VAEDecode", samples={"samples": torch.zeros(1, 4, 8, 8)}, vae=None)
    with pytest.raises(ValueError, match="VAEDecode: input 'samples' is not a LATENT"):
        run_node("VAEDecode", samples=torch.zeros(1, 4, 8, 8), vae=vae)
    with pytest.raises(ValueError, match="VAEDecode: .*4-channel latents.*16 channels"):
        registry.get("VAEDecode").execute(samples={"samples": torch.zeros(1, 16, 8, 8)}, vae=vae)
    with pytest.raises(ValueError, match=r"VAEEncode: input 'pixels' is not an IMAGE .*; got a Tensor of shape \(8, 8\)"):
        run_node("VAEEncode", pixels=torch.zeros(8, 8), vae=vae)
