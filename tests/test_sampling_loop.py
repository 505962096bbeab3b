"""The guided denoiser, the denoising loop and the KSampler nodes, on a tiny random diffusers UNet."""
from __future__ import annotations

import pytest
import torch

from loom.nodes.kernel import progress
from loom.nodes.runtime.denoiser import GuidedDenoiser, calculate_denoised, percent_to_sigma
from loom.nodes.runtime.model_types import DiffusionModel, LatentFormat, ModelSampling
from loom.nodes.runtime.sampling import sample
from tests.fixtures_sampling import tiny_unet
from tests.fixtures_sockets import run_node

SD = ModelSampling.scaled_linear()


def _latent(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 8, 8)}


def _run(model, positive, negative, **kwargs):
    options = dict(seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")
    options.update(kwargs)
    latent = options.pop("latent", None) or _latent()
    return sample(model, positive, negative, latent, **options)


def test_cfg_batches_positive_and_negative_and_cfg_one_skips_the_negative(tiny_model, tiny_conds):
    unet = tiny_model.unet
    unet.batches.clear()
    _run(tiny_model, *tiny_conds, cfg=5.0, latent=_latent(2))
    assert unet.batches == [4, 4, 4]  # [negative(2), positive(2)] in one call per step
    unet.batches.clear()
    _run(tiny_model, *tiny_conds, cfg=1.0, latent=_latent(2))
    assert unet.batches == [2, 2, 2]
    unet.batches.clear()  # CFG++ samplers need the negative's prediction even at cfg 1
    _run(tiny_model, *tiny_conds, cfg=1.0, latent=_latent(2), sampler_name="euler_cfg_pp")
    assert unet.batches == [4, 4, 4]


def test_cfg_one_equals_the_positive_prediction(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    x = torch.randn(1, 4, 8, 8)
    sigma = torch.tensor([3.0])
    guided = GuidedDenoiser(tiny_model, positive, negative, 1.0, x.shape)(x, sigma)
    direct = GuidedDenoiser(tiny_model, positive, negative, 1.0, x.shape).apply_model(x, sigma, positive[0][0])
    assert torch.allclose(guided, direct, atol=1e-6)


def test_same_seed_same_latent_and_seed_matters(tiny_model, tiny_conds):
    a = _run(tiny_model, *tiny_conds, seed=3)
    b = _run(tiny_model, *tiny_conds, seed=3)
    c = _run(tiny_model, *tiny_conds, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_denoise_below_one_runs_exactly_steps_model_calls(tiny_model, tiny_conds):
    unet = tiny_model.unet
    unet.batches.clear()
    image = {"samples": torch.randn(1, 4, 8, 8)}
    out = _run(tiny_model, *tiny_conds, steps=4, denoise=0.5, latent=image)
    assert len(unet.batches) == 4
    assert out.shape == image["samples"].shape


def test_zero_denoise_or_late_start_returns_the_input(tiny_model, tiny_conds):
    image = {"samples": torch.randn(1, 4, 8, 8)}
    assert torch.equal(_run(tiny_model, *tiny_conds, denoise=0.0, latent=image), image["samples"])
    assert torch.equal(_run(tiny_model, *tiny_conds, start_step=3, latent=image), image["samples"])


def test_split_advanced_run_equals_one_run(tiny_model, tiny_conds):
    full = _run(tiny_model, *tiny_conds, steps=4)
    first = _run(tiny_model, *tiny_conds, steps=4, start_step=0, last_step=2, force_full_denoise=False)
    second = _run(tiny_model, *tiny_conds, steps=4, start_step=2, last_step=10000, disable_noise=True,
                  latent={"samples": first})
    assert torch.allclose(second, full, rtol=1e-4, atol=1e-4)


def test_noise_mask_keeps_the_unmasked_latent(tiny_model, tiny_conds):
    image = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # repaint the right half (pixel-resolution mask, as SetLatentNoiseMask stores it)
    out = _run(tiny_model, *tiny_conds, steps=3, latent={"samples": image, "noise_mask": mask})
    assert torch.allclose(out[..., :3], image[..., :3], atol=1e-5)  # fully outside the (resized) mask
    assert not torch.allclose(out[..., 5:], image[..., 5:], atol=1e-2)


def test_area_conditioning_gets_a_matching_negative_and_only_touches_its_area(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    area_cond = [[positive[0][0], {"area": (4, 4, 0, 0), "strength": 1.0}]]
    denoiser = GuidedDenoiser(tiny_model, positive + area_cond, negative, 5.0, (1, 4, 8, 8))
    assert len(denoiser.negative) == 2 and denoiser.negative[1].area == (4, 4, 0, 0)
    x = torch.randn(1, 4, 8, 8)
    sigma = torch.tensor([2.0])
    with_area = denoiser(x, sigma)
    plain = GuidedDenoiser(tiny_model, positive, negative, 5.0, (1, 4, 8, 8))(x, sigma)
    # outside the area (and its feathered edge) the result is the full-frame conditioning's alone
    assert torch.allclose(with_area[..., 4:, 4:], plain[..., 4:, 4:], atol=1e-5)
    assert not torch.allclose(with_area[..., :2, :2], plain[..., :2, :2], atol=1e-4)


def test_start_end_percent_limits_an_entry_to_its_sigma_range(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    late = [[positive[0][0] * 3, {"start_percent": 0.5, "end_percent": 1.0}]]
    denoiser = GuidedDenoiser(tiny_model, positive + late, negative, 1.0, (1, 4, 8, 8))
    x = torch.randn(1, 4, 8, 8)
    high = torch.tensor([percent_to_sigma(SD, 0.2)])
    alone = GuidedDenoiser(tiny_model, positive, negative, 1.0, (1, 4, 8, 8))
    assert torch.allclose(denoiser(x, high), alone(x, high), atol=1e-6)  # the late entry is not active yet
    low = torch.tensor([percent_to_sigma(SD, 0.8)])
    assert not torch.allclose(denoiser(x, low), alone(x, low), atol=1e-4)
    assert percent_to_sigma(SD, 0.0) > 1e8 and percent_to_sigma(SD, 1.0) == 0.0


def test_prediction_types():
    x = torch.full((1, 1, 1, 1), 2.0)
    out = torch.full((1, 1, 1, 1), 0.5)
    sigma = torch.tensor([3.0])
    assert float(calculate_denoised("eps", sigma, out, x)) == pytest.approx(2.0 - 1.5)
    # v-prediction: x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)
    assert float(calculate_denoised("v", sigma, out, x)) == pytest.approx(2.0 / 10 - 0.5 * 3 / 10 ** 0.5)


def test_sdxl_style_unet_gets_added_cond_kwargs(tiny_conds):
    unet = tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=16 + 6 * 8)
    model = DiffusionModel(unet=unet, family="sdxl", sampling=SD, latent_format=LatentFormat(scale_factor=0.13025))
    positive, negative = tiny_conds
    pooled = {"pooled_output": torch.randn(1, 16)}
    with pytest.raises(ValueError, match="pooled_output"):
        _run(model, positive, negative)
    out = _run(model, [[positive[0][0], pooled]], [[negative[0][0], pooled]], steps=2)
    sized = _run(model, [[positive[0][0], {**pooled, "width": 1024, "height": 1024}]],
                 [[negative[0][0], pooled]], steps=2)
    assert out.shape == (1, 4, 8, 8) and not torch.allclose(out, sized)  # the size embedding reaches the UNet


def test_progress_reports_every_step_with_a_preview(tiny_model, tiny_conds):
    events = []
    context = progress.ExecutionContext("p", "5", "KSampler", lambda v, t, img: events.append((v, t, img)),
                                        lambda: False)
    with progress.running_node(context):
        _run(tiny_model, *tiny_conds, steps=3)
    assert [(v, t) for v, t, _ in events] == [(1, 3), (2, 3), (3, 3)]
    assert all(img is not None and img.size == (8, 8) for _, _, img in events)


def test_interruption_stops_between_steps(tiny_model, tiny_conds):
    steps_seen = []
    context = progress.ExecutionContext("p", "5", "KSampler", lambda v, t, img: steps_seen.append(v),
                                        lambda: len(steps_seen) >= 1)
    with progress.running_node(context), pytest.raises(progress.Interrupted):
        _run(tiny_model, *tiny_conds, steps=5)
    assert steps_seen == [1]


# -- the nodes ---------------------------------------------------------------------------------

def test_ksampler_schema_matches_comfyui():
    from loom.nodes.sampling import KSampler, KSamplerAdvanced

    info = KSampler.object_info()
    assert info["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                               "positive", "negative", "latent_image", "denoise"]
    required = info["input"]["required"]
    assert required["seed"][1] == {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                   "control_after_generate": True, "tooltip": required["seed"][1]["tooltip"]}
    assert required["steps"][1]["default"] == 20 and required["steps"][1]["max"] == 10000
    assert {k: required["cfg"][1][k] for k in ("default", "min", "max", "step", "round")} == \
        {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}
    assert len(required["sampler_name"][0]) == 42 and required["scheduler"][0][0] == "simple"
    assert info["output"] == ["LATENT"] and info["category"] == "model/sampling"
    advanced = KSamplerAdvanced.object_info()
    assert advanced["display_name"] == "KSampler (Advanced)"
    assert advanced["input_order"]["required"] == [
        "model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
        "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"]
    assert advanced["input"]["required"]["end_at_step"][1]["default"] == 10000
    assert advanced["input"]["required"]["noise_seed"][1]["control_after_generate"] is True


def test_unimplemented_sampler_is_a_validation_error_naming_it():
    from loom.nodes.sampling import KSampler, KSamplerAdvanced

    assert KSampler.validate_inputs(sampler_name="euler") is True
    message = KSampler.validate_inputs(sampler_name="dpmpp_2s_ancestral_cfg_pp")
    assert "dpmpp_2s_ancestral_cfg_pp" in message and "does not implement" in message and "euler" in message
    missing = "dpmpp_2s_ancestral_cfg_pp"
    assert missing in KSamplerAdvanced.validate_inputs(sampler_name=missing)


def test_ksampler_nodes_keep_the_latent_dict(tiny_model, tiny_conds):
    from loom.nodes.sampling import KSampler, KSamplerAdvanced

    positive, negative = tiny_conds
    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [3, 5]}
    (out,) = KSampler.execute(tiny_model, 9, 2, 4.0, "dpmpp_2m", "karras", positive, negative, latent, 1.0)
    assert out["batch_index"] == [3, 5] and out["samples"].shape == (2, 4, 8, 8)
    assert latent["samples"].abs().sum() == 0  # the input dict is not modified
    (adv,) = KSamplerAdvanced.execute(tiny_model, "enable", 9, 2, 4.0, "dpmpp_2m", "karras", positive, negative,
                                      latent, 0, 10000, "disable")
    assert torch.equal(adv["samples"], out["samples"])
    with pytest.raises(ValueError, match="KSampler: input 'sampler_name': sampler 'dpmpp_2s_ancestral_cfg_pp'"):
        KSampler.execute(tiny_model, 9, 2, 4.0, "dpmpp_2s_ancestral_cfg_pp", "karras", positive, negative,
                         latent, 1.0)
    with pytest.raises(ValueError, match="KSampler: input 'latent_image' is not a LATENT"):
        run_node("KSampler", model=tiny_model, seed=9, steps=2, cfg=4.0, sampler_name="euler", scheduler="karras",
                 positive=positive, negative=negative, latent_image="nope", denoise=1.0)


class _RecordingControl:
    """A ControlNet stand-in: records what the denoiser hands it and adds no residuals."""

    def __init__(self) -> None:
        self.calls = []

    def residuals(self, x, sigma, timestep, context, added, model=None):
        self.calls.append((x.shape[0], float(sigma[0]), float(timestep[0]), context.shape[0]))
        return None


def test_control_hook_is_called_per_batch_and_shared_with_the_negative_when_asked(tiny_model, tiny_conds):
    positive, negative = tiny_conds
    control = _RecordingControl()
    both = GuidedDenoiser(tiny_model, [[positive[0][0], {"control": control}]],
                          [[negative[0][0], {"control": control}]], 5.0, (1, 4, 8, 8))
    both(torch.randn(1, 4, 8, 8), torch.tensor([2.0]))
    assert control.calls == [(2, 2.0, float(SD.timestep(torch.tensor(2.0))), 2)]  # one batched call
    old_style = _RecordingControl()
    shared = GuidedDenoiser(tiny_model, [[positive[0][0], {"control": old_style, "control_apply_to_uncond": True}]],
                            negative, 5.0, (1, 4, 8, 8))
    assert shared.negative[0].control is old_style
