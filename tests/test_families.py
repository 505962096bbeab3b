"""The model families (nodes/runtime/families), the model-sampling objects, the flow branches of the samplers
and SD3 end to end on a tiny SD3 checkpoint (tests/fixtures_checkpoints.py: real key layout, tiny widths).

The expected values are computed here from ComfyUI's formulas (comfy/model_sampling.py, comfy/samplers.py,
comfy/k_diffusion/sampling.py, comfy/text_encoders/sd3_clip.py), independently of Loom's code."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loom.nodes.runtime import families
from loom.nodes.runtime.model_sampling import FlowSampling, FluxSampling, ModelSampling, flux_mu
from tests.fixtures_checkpoints import checkpoint_path
from tests.fixtures_sockets import run_node

WORKFLOW = Path(__file__).parent / "workflows" / "sd3.5-simple.json"


@pytest.fixture(scope="module")
def sd3_file() -> Path:
    return checkpoint_path("sd3")


@pytest.fixture(scope="module")
def sd3(sd3_file):
    from loom.nodes.runtime.checkpoint import load_checkpoint

    return load_checkpoint(sd3_file, use_cache=False)


# --------------------------------------------------------------------------------------------
# the registry and detection
# --------------------------------------------------------------------------------------------

def test_every_family_is_registered_in_detection_order():
    builtin = [name for name in families.FAMILIES if name in ("sd3", "flux", "sdxl", "sdxl_refiner", "sd1", "sd2")]
    assert builtin == ["sd3", "flux", "sdxl", "sdxl_refiner", "sd1", "sd2"]  # node packs may register more
    orders = [family.detection_order for family in families.FAMILIES.values()]
    assert orders == sorted(orders)
    assert families.get("sd3").latent_format.channels == 16
    with pytest.raises(families.UnknownModelError, match="unknown model family 'nope'"):
        families.get("nope")


def test_sd3_is_detected_and_configured_from_shapes(sd3_file):
    from loom.nodes.runtime.checkpoint import StateDictFile
    from loom.nodes.runtime.families.sd3 import mmdit_config

    with StateDictFile(sd3_file) as file:
        detected = families.detect(file.shapes, file.read, source=sd3_file.name)
        config = mmdit_config(file.shapes, "model.diffusion_model.")
        slots = {slot.name: slot for slot in detected.text_encoders}
        acts = {name: families.clip_config(file.shapes, slot)["hidden_act"] for name, slot in slots.items()}
    assert detected.family.name == "sd3" and detected.prediction == "flow"
    assert set(slots) == {"l", "g"} and all(slot.layout == "hf" for slot in slots.values())
    assert acts == {"l": "quick_gelu", "g": "gelu"}  # CLIP-G in transformers names is still gelu
    assert config["num_layers"] == 2 and config["num_attention_heads"] == 1 and config["pos_embed_max_size"] == 16
    assert config["joint_attention_dim"] == 4096 and config["pooled_projection_dim"] == 64
    with pytest.raises(ValueError, match="SD3 model"):
        with StateDictFile(sd3_file) as file:
            families.detect(file.shapes, prediction="v", source=sd3_file.name)


def test_sd3_model_sampling_latent_format_and_vae(sd3):
    model, clip, vae = sd3
    assert isinstance(model.sampling, FlowSampling)
    assert model.sampling.shift == 3.0 and model.sampling.multiplier == 1000
    assert model.latent_format.scale_factor == 1.5305 and model.latent_format.shift_factor == 0.0609
    assert vae.vae.config.latent_channels == 16 and not vae.vae.config.use_quant_conv
    assert set(clip.encoders) == {"l", "g"}


# --------------------------------------------------------------------------------------------
# model sampling
# --------------------------------------------------------------------------------------------

def test_flow_sampling_follows_comfyuis_formulas():
    s = FlowSampling(shift=3.0, multiplier=1000)
    t = torch.arange(1, 1001) / 1000
    torch.testing.assert_close(s.sigmas, 3 * t / (1 + 2 * t))
    sigma = torch.tensor([0.5, 0.25])
    torch.testing.assert_close(s.timestep(sigma), sigma * 1000)
    x, out, noise, latent = torch.randn(4, 2, 3, 3, 3).unbind(0)
    torch.testing.assert_close(s.calculate_input(sigma, x), x)
    torch.testing.assert_close(s.calculate_denoised(sigma, out, x), x - out * sigma.view(2, 1, 1, 1))
    torch.testing.assert_close(s.noise_scaling(sigma, noise, latent),
                               sigma.view(2, 1, 1, 1) * noise + (1 - sigma.view(2, 1, 1, 1)) * latent)
    assert s.percent_to_sigma(0.0) == 1.0 and s.percent_to_sigma(1.0) == 0.0
    assert s.percent_to_sigma(0.25) == pytest.approx(3 * 0.75 / (1 + 2 * 0.75))
    aura = FlowSampling(shift=1.73, multiplier=1.0)
    assert float(aura.timestep(torch.tensor(0.5))) == 0.5


def test_flux_sampling_table_and_mu():
    mu = flux_mu(64, 64)
    assert mu == pytest.approx((64 * 64 / 256) * (0.65 / 3840) + 0.5 - (0.65 / 3840) * 256)
    s = FluxSampling(shift=mu)
    assert len(s.sigmas) == 10000 and float(s.sigmas[-1]) == 1.0
    t = torch.tensor(0.3)
    assert float(s.sigma(t)) == pytest.approx(math.exp(mu) / (math.exp(mu) + (1 / 0.3 - 1)))
    assert float(s.timestep(t)) == pytest.approx(0.3)


def test_discrete_predictions_and_lcm_table():
    from loom.nodes.runtime.model_sampling import DistilledSampling

    full = ModelSampling.scaled_linear()
    lcm = DistilledSampling.from_full(full.sigmas)
    assert len(lcm.sigmas) == 50 and float(lcm.sigmas[-1]) == float(full.sigmas[-1])
    assert int(lcm.timestep(full.sigmas[-1:])) == 999
    x0 = ModelSampling(full.sigmas, prediction="x0")
    out = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(x0.calculate_denoised(torch.tensor([3.0]), out, torch.zeros_like(out)), out)


@pytest.mark.parametrize("scheduler", ["sgm_uniform", "simple", "normal", "beta", "karras"])
def test_flow_schedules_are_computed_from_the_model_sampling(scheduler):
    from loom.nodes.runtime.schedules import calculate_sigmas

    shift, steps = 3.0, 6
    sampling = FlowSampling(shift=shift)

    def sigma(t: float) -> float:
        t = t / 1000
        return shift * t / (1 + (shift - 1) * t)

    sigma_min = sigma(1.0)
    got = calculate_sigmas(sampling, scheduler, steps).tolist()
    if scheduler == "sgm_uniform":
        ts = np.linspace(1000.0, 1000 * sigma_min, steps + 1)[:-1]
        want = [sigma(t) for t in ts] + [0.0]
    elif scheduler == "normal":
        want = [sigma(t) for t in np.linspace(1000.0, 1000 * sigma_min, steps)] + [0.0]
    elif scheduler == "simple":
        want = [sigma(1000 - int(i * 1000 / steps)) for i in range(steps)] + [0.0]
    elif scheduler == "karras":
        ramp = np.linspace(0, 1, steps)
        want = list((1.0 ** (1 / 7) + ramp * (sigma_min ** (1 / 7) - 1.0)) ** 7) + [0.0]
    else:
        from scipy import stats
        ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999)
        want = [sigma(int(t) + 1) for t in dict.fromkeys(ts)] + [0.0]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------------------------
# the samplers' flow branches
# --------------------------------------------------------------------------------------------

class _FlowToy:
    """A flow-model denoiser whose data is a point: ``denoised = target``."""

    def __init__(self, target: torch.Tensor) -> None:
        self.sampling = FlowSampling(shift=3.0)
        self.target = target

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.target.expand_as(x)


def _flow_sigmas() -> torch.Tensor:
    from loom.nodes.runtime.schedules import calculate_sigmas

    return calculate_sigmas(FlowSampling(shift=3.0), "simple", 6)


def test_flow_ancestral_without_noise_is_the_euler_step():
    from loom.nodes.runtime import samplers

    toy = _FlowToy(torch.full((1, 2, 2, 2), 0.3))
    x = torch.randn(1, 2, 2, 2)
    euler = samplers.sample_euler(toy, x, _flow_sigmas())
    for name in ("sample_euler_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpm_2_ancestral"):
        out = getattr(samplers, name)(toy, x, _flow_sigmas(), seed=1, eta=0.0)
        torch.testing.assert_close(out, euler, msg=name)


def test_flow_euler_ancestral_renoises_as_comfyui():
    from loom.nodes.runtime import samplers
    from loom.nodes.runtime.noise import SeededNoise

    target = torch.full((1, 2, 2, 2), -0.2)
    toy = _FlowToy(target)
    x = torch.randn(1, 2, 2, 2)
    sigmas = _flow_sigmas()
    got = samplers.sample_euler_ancestral(toy, x, sigmas, seed=5)
    noise = SeededNoise(x, 5)
    want = x
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            want = target.expand_as(x)
            continue
        sigma_down = s_next * (1 + (s_next / s - 1))
        alpha_ip1, alpha_down = 1 - s_next, 1 - sigma_down
        renoise = (s_next ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
        want = (sigma_down / s) * want + (1 - sigma_down / s) * target
        want = (alpha_ip1 / alpha_down) * want + noise(s, s_next) * renoise
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "er_sde", "seeds_2", "seeds_3",
                                  "sa_solver", "lcm"])
def test_half_log_snr_samplers_reach_a_flow_models_data(name):
    from loom.nodes.runtime.samplers import sampler_spec

    target = torch.full((1, 2, 4, 4), 0.7)
    toy = _FlowToy(target)
    out = sampler_spec(name).function(toy, torch.randn(1, 2, 4, 4), _flow_sigmas(), seed=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, target.expand_as(out), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# SD3 conditioning, the adapter and the nodes
# --------------------------------------------------------------------------------------------

def test_sd3_conditioning_joins_clip_l_and_g(sd3):
    from loom.nodes.runtime import text_encoding

    _model, clip, _vae = sd3
    ((cond, options),) = text_encoding.encode_text(clip, "a red fox")
    tokens = text_encoding.tokenize_for(clip, "a red fox")
    l_out, l_pooled = text_encoding._encode_weighted(clip.encoders["l"][1], tokens["l"],
                                                      families.get("sd3").text_convention("l"), -2)
    g_out, g_pooled = text_encoding._encode_weighted(clip.encoders["g"][1], tokens["g"],
                                                      families.get("sd3").text_convention("g"), -2)
    assert cond.shape == (1, 77, 4096) and options["pooled_output"].shape == (1, 64)
    torch.testing.assert_close(cond[..., :32], l_out)
    torch.testing.assert_close(cond[..., 32:64], g_out)
    assert float(cond[..., 64:].abs().max()) == 0.0  # zero-padded to 4096
    torch.testing.assert_close(options["pooled_output"], torch.cat([l_pooled, g_pooled], dim=-1))


def test_clip_text_encode_sd3_pads_empty_prompts_as_comfyui(sd3):
    from loom.nodes.sd3 import CLIPTextEncodeSD3

    _model, clip, _vae = sd3
    ((both_empty, opts),) = CLIPTextEncodeSD3.execute(clip, "", "", "", "none")[0]
    assert both_empty.shape == (1, 77, 4096) and float(both_empty.abs().max()) == 0.0
    assert float(opts["pooled_output"].abs().max()) == 0.0
    ((l_empty, _),) = CLIPTextEncodeSD3.execute(clip, "", "a fox", "", "none")[0]
    ((padded, _),) = CLIPTextEncodeSD3.execute(clip, "", "a fox", "", "empty_prompt")[0]
    torch.testing.assert_close(l_empty, padded)  # an empty CLIP-L prompt is evened out with empty chunks
    with pytest.raises(ValueError, match="CLIPTextEncodeSD3: input 'clip'"):
        CLIPTextEncodeSD3.execute(clip.replace(encoders={"l": clip.encoders["l"]}), "a", "b", "", "none")


def test_adapter_calls_the_mmdit_with_sigma_times_1000_and_flow_denoising(sd3):
    from loom.nodes.runtime.adapter import ModelAdapter

    model, _clip, _vae = sd3
    x = torch.randn(2, 16, 6, 6)
    sigma = torch.tensor([0.8, 0.8])
    context = torch.randn(2, 77, 4096)
    pooled = torch.randn(2, 64)
    with torch.no_grad():
        got = ModelAdapter(model)(x, sigma, context, {"pooled_projections": pooled})
        velocity = model.unet(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                              timestep=sigma * 1000, return_dict=False)[0]
    torch.testing.assert_close(got, x - velocity * 0.8)


def test_model_sampling_nodes_replace_the_sampling(sd3):
    from loom.nodes.model_sampling import (ModelSamplingAuraFlow, ModelSamplingDiscrete, ModelSamplingFlux,
                                           ModelSamplingSD3)

    model = sd3[0]
    (shifted,) = ModelSamplingSD3.execute(model, 6.0)
    assert shifted.sampling.shift == 6.0 and model.sampling.shift == 3.0 and shifted.unet is model.unet
    (aura,) = ModelSamplingAuraFlow.execute(model, 1.73)
    assert aura.sampling.multiplier == 1.0
    (flux,) = ModelSamplingFlux.execute(model, 1.15, 0.5, 64, 64)
    assert flux.sampling.shift == pytest.approx(flux_mu(64, 64))
    (v,) = ModelSamplingDiscrete.execute(model, "v_prediction", True)
    assert v.sampling.prediction == "v" and float(v.sampling.sigma_max) > 4000
    with pytest.raises(ValueError, match="ModelSamplingDiscrete: input 'model' is None, not a MODEL"):
        run_node("ModelSamplingDiscrete", model=None, sampling="eps", zsnr=False)


def test_sixteen_channel_latents_have_a_preview():
    from loom.nodes.runtime.preview import latent_preview

    picture = latent_preview(torch.randn(1, 16, 8, 8), "sd3", families.get("sd3").latent_format)
    assert picture.size == (8, 8)


def test_dit_conditionings_of_different_shapes_run_separately(sd3):
    from loom.nodes.runtime.denoiser import GuidedDenoiser

    model = sd3[0]
    pooled = torch.zeros(1, 64)
    positive = [[torch.randn(1, 77, 4096), {"pooled_output": pooled}]]
    negative = [[torch.randn(1, 154, 4096), {"pooled_output": pooled}]]
    denoiser = GuidedDenoiser(model, positive, negative, 4.5, (1, 16, 4, 4))
    with torch.no_grad():
        denoiser(torch.randn(1, 16, 4, 4), torch.tensor([0.9]))
    assert denoiser.unet_calls == 2  # a UNet would batch 77 and 154 tokens into one call


# --------------------------------------------------------------------------------------------
# loom run of a workflow shaped like ComfyUI's SD3.5 example
# --------------------------------------------------------------------------------------------

def test_sd35_example_workflow_runs_with_loom_run(base_dir, sd3_file):
    from loom.server import cli

    models = base_dir / "models"
    target = models / "checkpoints" / "tiny-sd3.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(sd3_file.read_bytes())
    code = cli.main(["run", str(WORKFLOW), "--base-dir", str(base_dir), "--models-dir", str(models), "--quiet",
                     "--set", "4.ckpt_name=tiny-sd3.safetensors", "--set", "5.width=64", "--set", "5.height=64",
                     "--set", "3.steps=3", "--set", "3.seed=7"])
    assert code == 0
    (saved,) = sorted((base_dir / "output").rglob("*.png"))
    picture = Image.open(saved)
    assert picture.size == (64, 64) and np.array(picture).std() > 0
    prompt = json.loads(picture.text["prompt"])
    assert prompt["13"]["class_type"] == "ModelSamplingSD3" and prompt["5"]["class_type"] == "EmptySD3LatentImage"
    assert prompt["3"]["inputs"]["scheduler"] == "sgm_uniform"


# --------------------------------------------------------------------------------------------
# T5 inside SD3 checkpoints (the seam to nodes/runtime/t5.py)
# --------------------------------------------------------------------------------------------

def test_sd3_conditioning_appends_t5_tokens_after_clip():
    family = families.get("sd3")
    l_out, l_pooled = torch.randn(1, 77, 768), torch.randn(1, 768)
    g_out, g_pooled = torch.randn(1, 77, 1280), torch.randn(1, 1280)
    t5_out = torch.randn(1, 80, 4096)
    cond, pooled, extra = family.combine_text({"l": (l_out, l_pooled), "g": (g_out, g_pooled), "t5xxl": (t5_out, None)})
    assert cond.shape == (1, 157, 4096) and extra == {}
    torch.testing.assert_close(cond[:, :77, :768], l_out)
    torch.testing.assert_close(cond[:, :77, 768:2048], g_out)
    assert float(cond[:, :77, 2048:].abs().max()) == 0.0
    torch.testing.assert_close(cond[:, 77:], t5_out)
    torch.testing.assert_close(pooled, torch.cat([l_pooled, g_pooled], dim=-1))
    only_t5, zero_pooled, _ = family.combine_text({"t5xxl": (t5_out, None)})
    torch.testing.assert_close(only_t5, t5_out)
    assert zero_pooled.shape == (1, 2048) and float(zero_pooled.abs().max()) == 0.0


def test_sd3_checkpoint_with_t5_loads_it_through_the_t5_module(tmp_path):
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    from loom.nodes.runtime.checkpoint import load_checkpoint
    from tests.fixtures_checkpoints import build_sd3_state_dict

    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))
    state = build_sd3_state_dict()
    state.update({"text_encoders.t5xxl.transformer." + k: v for k, v in t5.state_dict().items()})
    path = tmp_path / "tiny-sd3-t5.safetensors"
    save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))
    _model, clip, _vae = load_checkpoint(path, use_cache=False)
    assert list(clip.encoders) == ["l", "g", "t5xxl"]
    tokenizer, encoder = clip.encoders["t5xxl"]
    (tokens,) = tokenizer.tokenize_with_weights("a fox")
    assert len(tokens) == 77  # SD3 pads T5 to 77 tokens
    hidden, _ = encoder.encode_token_weights([tokens])
    assert hidden.shape == (1, 77, 32)


def test_timestep_range_on_a_flow_model_uses_its_percent_to_sigma(sd3):
    from loom.nodes.conditioning import ConditioningSetTimestepRange
    from loom.nodes.runtime.denoiser import GuidedDenoiser

    model = sd3[0]
    cond = [[torch.randn(1, 77, 4096), {"pooled_output": torch.zeros(1, 64)}]]
    (ranged,) = ConditioningSetTimestepRange.execute(cond, 0.1, 0.5)
    assert ranged[0][1]["start_percent"] == 0.1 and "start_percent" not in cond[0][1]
    denoiser = GuidedDenoiser(model, ranged, cond, 1.0, (1, 16, 4, 4))
    (entry,) = denoiser.positive
    assert entry.sigma_start == pytest.approx(3 * 0.9 / (1 + 2 * 0.9))
    assert entry.sigma_end == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
