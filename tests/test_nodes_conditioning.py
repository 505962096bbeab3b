"""The CONDITIONING editors, image conditionings and DifferentialDiffusion (issue 12): each /object_info entry
against ComfyUI's source (nodes.py, comfy_extras/nodes_ip2p.py, nodes_differential_diffusion.py), the nodes'
tensor arithmetic, and what the denoiser does with strength, masks, percentage areas and extra UNet input
channels, checked against an independent computation of ComfyUI's weighting (comfy/samplers.py
``get_area_and_mult`` / ``calc_cond_batch``, comfy/model_base.py ``concat_cond``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loom.nodes.conditioning import (ConditioningAverage, ConditioningConcat, ConditioningSetAreaPercentage,
                                     ConditioningSetAreaStrength, ConditioningSetMask)
from loom.nodes.differential_diffusion import DifferentialDiffusion, differential_mask
from loom.nodes.image_conditioning import InpaintModelConditioning, InstructPixToPixConditioning
from loom.nodes.runtime.denoiser import (GuidedDenoiser, MaskedDenoiser, concat_input, extra_input_channels,
                                         resize_to_batch_size)
from loom.nodes.runtime.model_types import DiffusionModel, LatentFormat, ModelSampling
from loom.nodes.runtime.sampling import sample
from tests.fixtures_checkpoints import build_state_dict
from tests.fixtures_sampling import CountingUNet, tiny_unet

COND = ["CONDITIONING", {}]
STRENGTH = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]
FRACTION = {"min": 0, "max": 1.0, "step": 0.01}
TRANSFORM = "model/conditioning/transform"
NOISE_MASK_TOOLTIP = ("Add a noise mask to the latent so sampling will only happen within the mask. "
                      "Might improve results or completely break things depending on the model.")

# name -> (display_name, category, required, optional, outputs, output_names, experimental)
COMFY = {
    "ConditioningAverage": ("Conditioning (Average)", TRANSFORM,
                            {"conditioning_to": COND, "conditioning_from": COND,
                             "conditioning_to_strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0,
                                                                    "step": 0.01}]},
                            {}, ["CONDITIONING"], ["CONDITIONING"], False),
    "ConditioningConcat": ("Conditioning (Concat)", TRANSFORM, {"conditioning_to": COND, "conditioning_from": COND},
                           {}, ["CONDITIONING"], ["CONDITIONING"], False),
    "ConditioningSetAreaPercentage": (
        "Conditioning (Set Area with Percentage)", TRANSFORM,
        {"conditioning": COND, "width": ["FLOAT", {"default": 1.0, **FRACTION}],
         "height": ["FLOAT", {"default": 1.0, **FRACTION}], "x": ["FLOAT", {"default": 0, **FRACTION}],
         "y": ["FLOAT", {"default": 0, **FRACTION}], "strength": STRENGTH},
        {}, ["CONDITIONING"], ["CONDITIONING"], False),
    "ConditioningSetAreaStrength": ("Conditioning (Set Area Strength)", TRANSFORM,
                                    {"conditioning": COND, "strength": STRENGTH},
                                    {}, ["CONDITIONING"], ["CONDITIONING"], False),
    "ConditioningSetMask": ("Conditioning (Set Mask)", TRANSFORM,
                            {"conditioning": COND, "mask": ["MASK", {}], "strength": STRENGTH,
                             "set_cond_area": [["default", "mask bounds"], {}]},
                            {}, ["CONDITIONING"], ["CONDITIONING"], False),
    "InstructPixToPixConditioning": (
        "InstructPixToPixConditioning", "conditioning/instructpix2pix",
        {"positive": COND, "negative": COND, "vae": ["VAE", {}], "pixels": ["IMAGE", {}]},
        {}, ["CONDITIONING", "CONDITIONING", "LATENT"], ["positive", "negative", "latent"], False),
    "InpaintModelConditioning": (
        "InpaintModelConditioning", "model/conditioning",
        {"positive": COND, "negative": COND, "vae": ["VAE", {}], "pixels": ["IMAGE", {}], "mask": ["MASK", {}],
         "noise_mask": ["BOOLEAN", {"default": True, "tooltip": NOISE_MASK_TOOLTIP}]},
        {}, ["CONDITIONING", "CONDITIONING", "LATENT"], ["positive", "negative", "latent"], False),
    "DifferentialDiffusion": ("Differential Diffusion", "experimental", {"model": ["MODEL", {}]},
                              {"strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.0001}]},
                              ["MODEL"], ["MODEL"], True),
    # the older conditioning nodes, in the same current categories
    "ConditioningCombine": ("Conditioning (Combine)", TRANSFORM, {"conditioning_1": COND, "conditioning_2": COND},
                            {}, ["CONDITIONING"], ["CONDITIONING"], False),
    "ConditioningZeroOut": ("Conditioning Zero Out", TRANSFORM, {"conditioning": COND}, {}, ["CONDITIONING"],
                            ["CONDITIONING"], False),
    "CLIPSetLastLayer": ("CLIP Set Last Layer", "model/conditioning",
                         {"clip": ["CLIP", {}], "stop_at_clip_layer": ["INT", {"default": -1, "min": -24, "max": -1,
                                                                               "step": 1, "advanced": True}]},
                         {}, ["CLIP"], ["CLIP"], False),
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_is_comfyuis(registry, name):
    display, category, required, optional, outputs, output_names, experimental = COMFY[name]
    info = registry.object_info(name)[name]
    assert (info["display_name"], info["category"]) == (display, category)
    assert info["input"]["required"] == required
    assert info["input"].get("optional", {}) == optional
    assert info["input_order"]["required"] == list(required)
    assert (info["output"], info["output_name"]) == (outputs, output_names)
    assert info["output_node"] is False
    assert info.get("experimental", False) is experimental


# ---- the nodes' own arithmetic ----------------------------------------------------------------------

def _entry(tokens: int, seed: int, pooled: bool | None = True, batch: int = 1, dim: int = 8) -> list:
    generator = torch.Generator().manual_seed(seed)
    options: dict = {"marker": seed}
    if pooled is True:
        options["pooled_output"] = torch.randn(batch, dim, generator=generator)
    elif pooled is None:
        options["pooled_output"] = None  # the key present, its value None
    return [torch.randn(batch, tokens, dim, generator=generator), options]


@pytest.mark.parametrize("from_tokens", [77, 154, 50])
def test_average_is_comfyuis_weighted_sum_with_the_from_tokens_cut_or_zero_padded(from_tokens):
    to = [_entry(77, 1), _entry(77, 2, pooled=False)]
    source = _entry(from_tokens, 3)
    (out,) = ConditioningAverage.execute(to, [source], 0.3)
    t0 = source[0][:, :77]
    if from_tokens < 77:
        t0 = torch.cat([t0, torch.zeros(1, 77 - from_tokens, 8)], dim=1)
    for (got, options), (target, target_options) in zip(out, to):
        assert torch.equal(got, torch.mul(target, 0.3) + torch.mul(t0, 1.0 - 0.3))
        assert options["marker"] == target_options["marker"]
    # both pooled: blended; a "to" entry without the key blends the "from" pooled output with itself
    pooled_from = source[1]["pooled_output"]
    assert torch.equal(out[0][1]["pooled_output"], torch.mul(to[0][1]["pooled_output"], 0.3)
                       + torch.mul(pooled_from, 1.0 - 0.3))
    assert torch.equal(out[1][1]["pooled_output"], torch.mul(pooled_from, 0.3) + torch.mul(pooled_from, 1.0 - 0.3))
    assert "pooled_output" not in to[1][1]  # the inputs are untouched


def test_average_pooled_edge_cases_and_strength_one():
    source = _entry(77, 3, pooled=False)
    to = [_entry(77, 1), _entry(77, 2, pooled=None)]
    (out,) = ConditioningAverage.execute(to, [source], 1.0)
    assert out[0][1]["pooled_output"] is to[0][1]["pooled_output"]  # no "from" pooled: "to"'s kept
    assert out[1][1]["pooled_output"] is None
    assert torch.equal(out[0][0], to[0][0] * 1.0 + source[0] * 0.0)
    # a "to" entry whose pooled_output is present but None takes the "from" one as is
    source = _entry(77, 5)
    (out,) = ConditioningAverage.execute([_entry(77, 4, pooled=None)], [source], 0.5)
    assert out[0][1]["pooled_output"] is source[1]["pooled_output"]


def test_concat_appends_the_first_from_entry_and_warns_about_the_rest(caplog):
    to = [_entry(77, 1), _entry(154, 2)]
    first, second = _entry(77, 3), _entry(77, 4)
    (out,) = ConditioningConcat.execute(to, [first, second])
    for (got, options), (target, target_options) in zip(out, to):
        assert torch.equal(got, torch.cat((target, first[0]), 1))
        assert options == target_options and options is not target_options
    assert "only the first one" in caplog.text
    with pytest.raises(ValueError, match="conditioning_from"):
        ConditioningConcat.execute(to, [])


def test_set_area_percentage_strength_and_mask_set_comfyuis_options():
    cond = [_entry(77, 1)]
    (area,) = ConditioningSetAreaPercentage.execute(cond, 0.5, 0.25, 0.5, 0.0, 1.5)
    assert area[0][1]["area"] == ("percentage", 0.25, 0.5, 0.0, 0.5)
    assert (area[0][1]["strength"], area[0][1]["set_area_to_bounds"]) == (1.5, False)
    (strong,) = ConditioningSetAreaStrength.execute(area, 0.25)
    assert strong[0][1]["strength"] == 0.25 and strong[0][1]["area"] == area[0][1]["area"]
    mask = torch.ones(16, 16)
    (masked,) = ConditioningSetMask.execute(cond, mask, 0.7, "mask bounds")
    assert masked[0][1]["mask"].shape == (1, 16, 16) and masked[0][1]["mask_strength"] == 0.7
    assert masked[0][1]["set_area_to_bounds"] is True
    (plain,) = ConditioningSetMask.execute(cond, mask[None], 1.0, "default")
    assert plain[0][1]["set_area_to_bounds"] is False and "mask" not in cond[0][1]


# ---- what the denoiser makes of them (tiny random UNet) ----------------------------------------------

X = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))
SIGMA = torch.tensor([2.5])


def _context(seed: int) -> torch.Tensor:
    return torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(seed))


def _denoise(model, positive, negative, cfg=1.0, x=X, sigma=SIGMA, **kwargs):
    return GuidedDenoiser(model, positive, negative, cfg, x.shape, **kwargs)(x, sigma)


def _predict(model, context, x=X, sigma=SIGMA, concat=None):
    """One model output, computed on its own (no batching with other entries)."""
    return GuidedDenoiser(model, [[context, {}]], [[context, {}]], 1.0, x.shape).apply_model(
        x, sigma, context, concat=concat)


def test_strength_weights_an_entry_and_strength_zero_drops_it(tiny_model):
    a, b, n = _context(1), _context(2), _context(3)
    alone = _denoise(tiny_model, [[a, {}]], [[n, {}]])
    (weak,) = ConditioningSetAreaStrength.execute([[b, {}]], 0.0)
    combined = _denoise(tiny_model, [[a, {}]] + weak, [[n, {}]])
    torch.testing.assert_close(combined, alone, rtol=0, atol=1e-5)  # (A*1 + B*0) / (1 + 0), batched apart
    # ComfyUI's average: (2 * A + 1 * B) / (1e-37 + 2 + 1)
    (strong,) = ConditioningSetAreaStrength.execute([[a, {}]], 2.0)
    got = _denoise(tiny_model, strong + [[b, {}]], [[n, {}]])
    expected = (_predict(tiny_model, a) * 2.0 + _predict(tiny_model, b) * 1.0) / (1e-37 + 2.0 + 1.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # a lone entry's strength cancels out of the average, but strength 0 alone leaves nothing: 0 / 1e-37
    torch.testing.assert_close(_denoise(tiny_model, [[a, {"strength": 3.0}]], [[n, {}]]), alone, rtol=0, atol=1e-5)
    assert torch.equal(_denoise(tiny_model, weak, [[n, {}]]), torch.zeros_like(X))


def test_a_full_image_mask_equals_no_mask(tiny_model):
    a, b, n = _context(1), _context(2), _context(3)
    (full,) = ConditioningSetMask.execute([[b, {}]], torch.ones(1, 64, 64), 1.0, "default")
    plain = _denoise(tiny_model, [[a, {}], [b, {}]], [[n, {}]], cfg=4.0)
    assert torch.equal(_denoise(tiny_model, [[a, {}]] + full, [[n, {}]], cfg=4.0), plain)


@pytest.mark.parametrize("mask_strength", [1.0, 0.5])
def test_a_half_mask_weights_only_its_half_as_comfyui_does(tiny_model, mask_strength):
    a, b, n = _context(1), _context(2), _context(3)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0  # the left half, at pixel resolution
    (masked,) = ConditioningSetMask.execute([[b, {}]], mask, mask_strength, "default")
    got = _denoise(tiny_model, [[a, {}]] + masked, [[n, {}]])
    # independently: the mask resized to the latent, times mask_strength, weights B's prediction per pixel
    weight = F.interpolate(mask[:, None], size=(8, 8), mode="bilinear") * mask_strength
    assert torch.equal(weight[..., :4], torch.full_like(weight[..., :4], mask_strength))
    assert torch.equal(weight[..., 4:], torch.zeros_like(weight[..., 4:]))
    pa, pb = _predict(tiny_model, a), _predict(tiny_model, b)
    expected = (pa * 1.0 + pb * weight) / (1e-37 + 1.0 + weight)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got[..., 4:], pa[..., 4:], rtol=0, atol=1e-5)  # the right half: A alone


def test_mask_bounds_evaluate_the_entry_on_the_bounding_box(tiny_model):
    a, b, n = _context(1), _context(2), _context(3)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 128, 128)
    mask[:, 16:48, 72:120] = 1.0  # latent rows 2..5, columns 9..14: the box grows to the 8x8 minimum
    (masked,) = ConditioningSetMask.execute([[b, {}]], mask, 1.0, "mask bounds")
    denoiser = GuidedDenoiser(tiny_model, [[a, {}]] + masked, [[n, {}]], 1.0, x.shape)
    assert denoiser.positive[1].area == (8, 8, 2, 9)
    assert [e.area for e in denoiser.negative] == [None, (8, 8, 2, 9)]  # the matching negative area
    got = denoiser(x, SIGMA)
    weight = F.interpolate(mask[:, None], size=(16, 16), mode="bilinear")[..., 2:10, 9:17]
    pa = _predict(tiny_model, a, x=x)
    pb = _predict(tiny_model, b, x=x[..., 2:10, 9:17].contiguous())
    expected = pa.clone()
    expected[..., 2:10, 9:17] = (pa[..., 2:10, 9:17] + pb * weight) / (1e-37 + 1.0 + weight)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_percentage_areas_become_latent_areas_with_comfyuis_feathering(tiny_model):
    a, n = _context(1), _context(3)
    (area,) = ConditioningSetAreaPercentage.execute([[a, {}]], 0.5, 0.25, 0.5, 0.25, 1.0)
    x = torch.randn(1, 4, 16, 16)
    denoiser = GuidedDenoiser(tiny_model, [[a, {}]] + area, [[n, {}]], 1.0, x.shape)
    entry = denoiser.positive[1]
    assert entry.area == (4, 8, 4, 8)  # (round(.25*16), round(.5*16), round(.25*16), round(.5*16))
    run = denoiser._prepare(entry, 0, x, SIGMA)
    # fuzz = min(8, side // 4): 1 row (a no-op 1/1 fade), 2 columns; the right edge touches the latent's
    rows = torch.ones(4)
    cols = torch.ones(8)
    cols[0] *= 0.5  # the left edge is inside the latent: its first column fades in
    assert torch.equal(run.mult[0, 0], rows[:, None] * cols[None, :])
    (tiny,) = ConditioningSetAreaPercentage.execute([[a, {}]], 0.01, 0.01, 0.0, 0.0, 1.0)
    assert GuidedDenoiser(tiny_model, tiny, [[n, {}]], 1.0, x.shape).positive[0].area == (1, 1, 0, 0)


# ---- extra input channels ----------------------------------------------------------------------------

def _channels_model(in_channels: int, family: str = "sd1") -> DiffusionModel:
    return DiffusionModel(unet=CountingUNet(tiny_unet(in_channels=in_channels, seed=2)), family=family,
                          sampling=ModelSampling.scaled_linear(), latent_format=LatentFormat())


def test_which_models_take_extra_channels(tiny_model):
    assert extra_input_channels(tiny_model) is None
    assert extra_input_channels(_channels_model(9)) == "inpaint"
    assert extra_input_channels(_channels_model(8)) == "ip2p"
    assert extra_input_channels(_channels_model(8, family="sd2")) == "inpaint"


def test_the_unet_loader_builds_a_9_channel_inpainting_unet(tmp_path):
    from safetensors.torch import save_file

    from loom.nodes.runtime import checkpoint

    state = build_state_dict("sd1")
    key = "model.diffusion_model.input_blocks.0.0.weight"
    weight = state[key]
    state[key] = torch.cat([weight, torch.randn(weight.shape[0], 5, *weight.shape[2:]) * 0.02], dim=1)
    path = tmp_path / "inpaint.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = checkpoint.load_checkpoint(path, use_cache=False)[0]
    assert model.unet.config.in_channels == 9 and extra_input_channels(model) == "inpaint"
    assert model.family == "sd1" and model.sampling.prediction == "eps"


def test_inpaint_concat_is_comfyuis_mask_and_masked_image():
    model = _channels_model(9)
    shape = (2, 4, 8, 8)
    concat_image = torch.randn(1, 4, 16, 16)
    concat_mask = torch.rand(1, 1, 64, 64)
    got = concat_input(model, {"concat_latent_image": concat_image, "concat_mask": concat_mask}, shape, None, None)
    mask = F.interpolate(concat_mask, size=(8, 8), mode="bilinear").round().repeat(2, 1, 1, 1)
    image = F.interpolate(concat_image * 0.18215, size=(8, 8), mode="bilinear").repeat(2, 1, 1, 1)
    assert torch.equal(got, torch.cat([mask, image], dim=1))
    # no concat options: the latent's prepared noise mask (first channel) and the sampled latent
    latent_image = torch.randn(shape)
    noise_mask = torch.rand(shape)
    got = concat_input(model, {}, shape, latent_image, noise_mask)
    assert torch.equal(got, torch.cat([noise_mask[:, :1].round(), latent_image], dim=1))
    # neither a mask nor a concat mask: all masked, over the latent of a blank image
    got = concat_input(model, {}, shape, latent_image, None)
    assert torch.equal(got[:, 0], torch.ones(2, 8, 8))
    assert torch.equal(got[:, 1:, 3, 5], torch.tensor([[0.8223, -0.6876, 0.6364, 0.1380]] * 2))
    # a model without extra channels takes nothing
    assert concat_input(_channels_model(4), {"concat_latent_image": concat_image}, shape, None, None) is None


def test_ip2p_concat_is_the_encoded_latent_unscaled():
    model = _channels_model(8)
    image = torch.randn(1, 4, 8, 8)
    got = concat_input(model, {"concat_latent_image": image}, (3, 4, 8, 8), None, None)
    assert torch.equal(got, image.repeat(3, 1, 1, 1))
    assert torch.equal(concat_input(model, {}, (1, 4, 8, 8), None, None), torch.zeros(1, 4, 8, 8))


def test_resize_to_batch_size_is_comfyuis():
    t = torch.arange(4.0)
    assert resize_to_batch_size(t, 4) is t
    assert resize_to_batch_size(t, 2).tolist() == [0.0, 3.0]
    assert resize_to_batch_size(t, 6).tolist() == [0.0, 1.0, 1.0, 2.0, 3.0, 3.0]  # floor((i + .5) * 4 / 6)
    assert resize_to_batch_size(t, 1).tolist() == [0.0]


def test_the_unet_gets_the_concat_appended_to_its_scaled_input():
    model = _channels_model(9)
    inner = model.unet.inner
    a, n = _context(1), _context(3)
    image, mask = torch.randn(1, 4, 8, 8), torch.ones(1, 1, 8, 8)
    options = {"concat_latent_image": image, "concat_mask": mask}
    got = _denoise(model, [[a, dict(options)]], [[n, dict(options)]])
    concat = torch.cat([mask, image * 0.18215], dim=1)
    xc = X / (SIGMA ** 2 + 1) ** 0.5
    timestep = model.sampling.timestep(SIGMA).float()
    with torch.no_grad():
        eps = inner(torch.cat([xc, concat], dim=1), timestep, encoder_hidden_states=a, return_dict=False)[0]
    torch.testing.assert_close(got, X - eps * SIGMA, rtol=0, atol=1e-5)


def test_a_plain_model_ignores_concat_options(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    options = {"concat_latent_image": torch.randn(1, 4, 8, 8), "concat_mask": torch.ones(1, 1, 64, 64)}
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    run = dict(seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal")
    plain = sample(tiny_model, positive, negative, latent, **run)
    with_concat = sample(tiny_model, [[positive[0][0], options]], [[negative[0][0], options]], latent, **run)
    assert torch.equal(plain, with_concat)


# ---- the image conditioning nodes on the tiny SD1 checkpoint -----------------------------------------

@pytest.fixture(scope="module")
def sd1(tiny_checkpoints):
    from loom.nodes.runtime import checkpoint

    return checkpoint.load_checkpoint(tiny_checkpoints["sd1"], use_cache=False)


def test_inpaint_model_conditioning_is_comfyuis(sd1):
    from loom.nodes.runtime import vae as vae_runtime

    _, _, vae = sd1
    pixels = torch.rand(1, 66, 70, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 33, 35)
    mask[:, 10:25, 5:30] = 1.0
    positive, negative = [[_context(1), {"a": 1}]], [[_context(3), {}]]
    pos, neg, latent = InpaintModelConditioning.execute(positive, negative, pixels, vae, mask)
    # independently: mask to the image size, both centre-cropped to 64x64, masked pixels grey
    full_mask = F.interpolate(mask.reshape(-1, 1, 33, 35), size=(66, 70), mode="bilinear")[:, :, 1:65, 3:67]
    grey = pixels[:, 1:65, 3:67].clone()
    keep = (1.0 - full_mask.round()).squeeze(1)[..., None]
    grey = (grey - 0.5) * keep + 0.5
    assert torch.equal(latent["noise_mask"], full_mask)
    assert torch.equal(latent["samples"], vae_runtime.encode(vae, pixels))
    for out in (pos, neg):
        torch.testing.assert_close(out[0][1]["concat_latent_image"], vae_runtime.encode(vae, grey),
                                   rtol=0, atol=1e-6)
        assert out[0][1]["concat_mask"] is latent["noise_mask"]
    assert pos[0][1]["a"] == 1 and "concat_mask" not in positive[0][1]
    _, _, no_mask = InpaintModelConditioning.execute(positive, negative, pixels, vae, mask, noise_mask=False)
    assert "noise_mask" not in no_mask


def test_instruct_pix2pix_conditioning_is_comfyuis(sd1):
    from loom.nodes.runtime import vae as vae_runtime

    _, _, vae = sd1
    pixels = torch.rand(2, 67, 64, 3, generator=torch.Generator().manual_seed(2))
    pos, neg, latent = InstructPixToPixConditioning.execute([[_context(1), {}]], [[_context(3), {}]], pixels, vae)
    expected = vae_runtime.encode(vae, pixels[:, 1:65])
    assert torch.equal(pos[0][1]["concat_latent_image"], expected)
    assert neg[0][1]["concat_latent_image"] is pos[0][1]["concat_latent_image"]
    assert "concat_mask" not in pos[0][1]
    assert torch.equal(latent["samples"], torch.zeros_like(expected))


def test_inpaint_conditioning_samples_with_a_9_channel_unet(sd1):
    _, _, vae = sd1
    model = _channels_model(9)
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0
    positive, negative, latent = InpaintModelConditioning.execute(
        [[_context(1), {}]], [[_context(3), {}]], pixels, vae, mask)
    model.unet.batches.clear()
    out = sample(model, positive, negative, latent, seed=1, steps=2, cfg=4.0, sampler_name="euler",
                 scheduler="normal")
    assert out.shape == latent["samples"].shape and torch.isfinite(out).all()
    assert model.unet.batches == [2, 2]  # positive and negative (each with its concat) batched together
    torch.testing.assert_close(out[..., :3], latent["samples"][..., :3], rtol=0, atol=1e-5)  # kept outside


# ---- DifferentialDiffusion ---------------------------------------------------------------------------

def test_differential_mask_is_comfyuis_threshold(tiny_model):
    sigmas = torch.tensor([10.0, 5.0, 2.0, 0.5, 0.0])
    mask = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)
    extra = {"model": tiny_model, "sigmas": sigmas}
    sampling = tiny_model.sampling
    for sigma in sigmas[:-1]:
        ts_from, ts_to = sampling.timestep(sigmas[0]), sampling.timestep(sampling.sigma_min)
        threshold = (sampling.timestep(sigma) - ts_to) / (ts_from - ts_to)
        got = differential_mask(sigma[None], mask, extra)
        assert torch.equal(got, (mask >= threshold).float())
        blended = differential_mask(sigma[None], mask, extra, strength=0.25)
        torch.testing.assert_close(blended, 0.25 * (mask >= threshold).float() + 0.75 * mask)
    # the run's last sigma counts when it is above the model's smallest
    short = torch.tensor([10.0, 5.0, 3.0])
    ts_to = sampling.timestep(torch.tensor(3.0))
    threshold = (sampling.timestep(torch.tensor(5.0)) - ts_to) / (sampling.timestep(torch.tensor(10.0)) - ts_to)
    got = differential_mask(torch.tensor([5.0]), mask, {"model": tiny_model, "sigmas": short})
    assert torch.equal(got, (mask >= threshold).float())


def test_differential_diffusion_patches_the_noise_mask_each_call(tiny_model, tiny_conds):
    (patched,) = DifferentialDiffusion.execute(tiny_model, 1.0)
    assert patched is not tiny_model and "denoise_mask_function" not in tiny_model.options
    function = patched.options["denoise_mask_function"]
    seen = []

    def recording(sigma, mask, extra_options):
        result = function(sigma, mask, extra_options)
        seen.append((float(sigma[0]), result))
        return result

    positive, negative = tiny_conds
    image = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    soft = torch.full((1, 1, 64, 64), 0.5)
    latent = {"samples": image, "noise_mask": soft}
    run = dict(seed=1, steps=4, cfg=3.0, sampler_name="euler", scheduler="normal")
    recorded = patched.replace(options={**patched.options, "denoise_mask_function": recording})
    sample(recorded, positive, negative, latent, **run)
    assert len(seen) == 4
    assert torch.equal(seen[0][1], torch.zeros(1, 4, 8, 8))  # early: 0.5 is below the threshold
    assert torch.equal(seen[-1][1], torch.ones(1, 4, 8, 8))  # late: repainted
    # an all-ones mask stays all ones: the same result as without the patch
    full = {"samples": image, "noise_mask": torch.ones(1, 1, 64, 64)}
    assert torch.equal(sample(patched, positive, negative, full, **run),
                       sample(tiny_model, positive, negative, full, **run))


def test_masked_denoiser_passes_the_model_and_sigmas(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    inner = GuidedDenoiser(tiny_model, positive, negative, 1.0, X.shape)
    sigmas = torch.tensor([3.0, 1.0, 0.0])
    calls = []
    denoiser = MaskedDenoiser(inner, torch.ones_like(X), torch.zeros_like(X), torch.zeros_like(X), sigmas=sigmas,
                              mask_function=lambda s, m, extra_options: calls.append(extra_options) or m)
    denoiser(X, SIGMA)
    assert calls[0]["model"] is tiny_model and calls[0]["sigmas"] is sigmas
