"""SD3 and FLUX ControlNets (ControlNetApplySD3, ControlNetApplyAdvanced with a VAE): loading, the residuals
against a hand-built diffusers computation, strength, start/end percent, and the errors for mixed families."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.sampling import sample
from loom.nodes.runtime.text_encoding import encode_text
from tests.fixtures_controlnet_dit import (write_flux_base, write_flux_controlnet, write_sd3_base,
                                          write_sd3_controlnet)

SD3_SCALE = 1.5305  # SD3's latent scale; its ControlNets' hints are not shifted
FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit-controlnets")
    return {"sd3": write_sd3_base(folder / "sd3-base.safetensors"),
            "sd3_cn": write_sd3_controlnet(folder / "sd3-cn.safetensors"),
            "flux": write_flux_base(folder / "flux-base.safetensors"),
            "flux_cn": write_flux_controlnet(folder / "flux-cn.safetensors")}


@pytest.fixture
def controlnet_dir(base_dir, files):
    from tests.fixtures_controlnet import write_controlnet

    folder = base_dir / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("sd3_cn", "flux_cn"):
        (folder / files[name].name).write_bytes(files[name].read_bytes())
    write_controlnet("sd1", folder / "cn-sd1.safetensors", layout="ldm")
    return folder


@pytest.fixture(scope="module")
def sd3(files):
    return load_checkpoint(files["sd3"], device="cpu")


@pytest.fixture(scope="module")
def flux(files):
    return load_checkpoint(files["flux"], device="cpu")


def _image(size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(1, size, size, 3, generator=generator)
    image[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    return image


def _load(name: str):
    from loom.nodes.controlnet import ControlNetLoader

    return ControlNetLoader.execute(name)[0]


def _call(model, control, x, sigma, context, pooled):
    from loom.nodes.runtime import families

    family = families.get(model.family)
    extra = family.extra_conds(model, {"pooled_output": pooled}, x.shape, "positive")
    timestep = model.sampling.timestep(sigma).float()
    return family.apply_network(model, x, timestep, sigma, context, extra, control)


def _inputs(width: int, pooled: int, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 8, 8, generator=generator), torch.tensor([0.6]),
            torch.randn(1, 7, width, generator=generator), torch.randn(1, pooled, generator=generator))


def test_loader_finds_every_key_of_both_layouts(controlnet_dir, files):
    for name, kind, cls in (("sd3_cn", "sd3", "SD3ControlNetModel"), ("flux_cn", "flux", "FluxControlNetModel")):
        control_net = _load(files[name].name)
        assert control_net.kind == kind and type(control_net.model).__name__ == cls
        stored = load_file(str(files[name]))
        loaded = control_net.model.state_dict()
        assert set(loaded) == set(stored)
        assert all(torch.equal(loaded[k], stored[k].to(loaded[k].dtype)) for k in stored)


def test_sd3_residuals_equal_a_hand_built_diffusers_computation(controlnet_dir, sd3):
    from loom.nodes.runtime import vae as vae_runtime
    from loom.nodes.runtime.controlnet import ControlApplication

    model, _clip, vae = sd3
    control_net = _load("sd3-cn.safetensors")
    x, sigma, context, pooled = _inputs(4096, 64)
    image = _image()
    plain = _call(model, None, x, sigma, context, pooled)
    zero = _call(model, ControlApplication(control_net, image.movedim(-1, 1), 0.0, vae=vae), x, sigma, context, pooled)
    assert torch.equal(zero, plain)  # strength 0: not one bit changes
    strength = 0.8
    got = _call(model, ControlApplication(control_net, image.movedim(-1, 1), strength, vae=vae),
                x, sigma, context, pooled)
    assert (got - plain).abs().max() > 1e-3

    # by hand: the ControlNet's two block outputs, used ComfyUI's way (depth 256/64 = 4 over 2 blocks:
    # c0, c0, c1 - the last block once less), added to the three joint blocks' image tokens
    net, cn = model.unet, control_net.model
    timestep = sigma * 1000
    hint = vae_runtime.encode(vae, image) * SD3_SCALE
    with torch.no_grad():
        (samples,) = cn(hidden_states=x, controlnet_cond=hint, encoder_hidden_states=context,
                        pooled_projections=torch.zeros_like(pooled), timestep=timestep, return_dict=False)
        assert len(samples) == 2
        residuals = [samples[0] * strength, samples[0] * strength, samples[1] * strength]
        h = net.pos_embed(x)
        temb = net.time_text_embed(timestep, pooled)
        encoder = net.context_embedder(context)
        assert len(net.transformer_blocks) == 3
        for i, block in enumerate(net.transformer_blocks):
            encoder, h = block(hidden_states=h, encoder_hidden_states=encoder, temb=temb)
            h = h + residuals[i]
        h = net.proj_out(net.norm_out(h, temb))
    expected = h.reshape(1, 4, 4, 2, 2, 16).permute(0, 5, 1, 3, 2, 4).reshape(1, 16, 8, 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_flux_residuals_equal_a_hand_built_diffusers_computation(controlnet_dit_flux_setup):
    model, vae, control_net, image = controlnet_dit_flux_setup
    from loom.nodes.runtime import vae as vae_runtime
    from loom.nodes.runtime.controlnet import ControlApplication
    from loom.nodes.runtime.flux_layout import image_ids, patchify, unpatchify

    x, sigma, context, pooled = _inputs(32, 16)
    plain = _call(model, None, x, sigma, context, pooled)
    zero = _call(model, ControlApplication(control_net, image.movedim(-1, 1), 0.0, vae=vae), x, sigma, context, pooled)
    assert torch.equal(zero, plain)
    strength = 1.3
    got = _call(model, ControlApplication(control_net, image.movedim(-1, 1), strength, vae=vae),
                x, sigma, context, pooled)
    assert (got - plain).abs().max() > 1e-3

    # by hand: ComfyUI repeats 2 double outputs ceil(19/2) = 10 times each and 1 single output 38 times, so
    # the model's two double blocks both take d0 and its two single blocks both take s0
    transformer, cn = model.unet.transformer, control_net.model
    hint = patchify((vae_runtime.encode(vae, image) - FLUX_SHIFT) * FLUX_SCALE)
    kwargs = dict(hidden_states=patchify(x), encoder_hidden_states=context, pooled_projections=pooled,
                  timestep=sigma, img_ids=image_ids(4, 4), txt_ids=torch.zeros(7, 3), guidance=torch.tensor([3.5]),
                  return_dict=False)
    with torch.no_grad():
        doubles, singles = cn(controlnet_cond=hint, **kwargs)
        assert len(doubles) == 2 and len(singles) == 1 and math.ceil(19 / 2) == 10
        out = transformer(controlnet_block_samples=[doubles[0] * strength] * 2,
                          controlnet_single_block_samples=[singles[0] * strength] * 2, **kwargs)[0]
    torch.testing.assert_close(got, unpatchify(out, 4, 4), rtol=1e-4, atol=1e-5)


@pytest.fixture
def controlnet_dit_flux_setup(controlnet_dir, flux):
    model, _clip, vae = flux
    return model, vae, _load("flux-cn.safetensors"), _image()


def test_sd3_sampling_respects_the_step_range_and_strength(controlnet_dir, sd3):
    from loom.nodes.controlnet import ControlNetApplySD3
    from loom.nodes.runtime.denoiser import percent_to_sigma
    from loom.nodes.runtime.schedules import sampling_sigmas

    model, clip, vae = sd3
    conds = (encode_text(clip, "a house"), encode_text(clip, ""))
    control_net = _load("sd3-cn.safetensors")

    def run(positive, negative):
        return sample(model, positive, negative, {"samples": torch.zeros(1, 16, 8, 8)}, seed=4, steps=5, cfg=3.0,
                      sampler_name="euler", scheduler="simple")

    plain = run(*conds)
    zero = run(*ControlNetApplySD3.execute(conds[0], conds[1], control_net, vae, _image(), 0.0, 0.0, 1.0))
    assert torch.equal(zero, plain)
    full = run(*ControlNetApplySD3.execute(conds[0], conds[1], control_net, vae, _image(), 1.0, 0.0, 1.0))
    assert (full - plain).abs().max() > 1e-3

    timesteps: list[float] = []
    hook = control_net.model.register_forward_hook(
        lambda _m, _args, kwargs, _out: timesteps.append(float(kwargs["timestep"][0])), with_kwargs=True)
    sigmas = sampling_sigmas(model.sampling, "simple", 5, 1.0, "euler")[:-1]
    try:
        for start, end in ((0.0, 1.0), (0.0, 0.4), (0.5, 1.0)):
            timesteps.clear()
            run(*ControlNetApplySD3.execute(conds[0], conds[1], control_net, vae, _image(), 1.0, start, end))
            low, high = percent_to_sigma(model.sampling, end), percent_to_sigma(model.sampling, start)
            expected = [float(model.sampling.timestep(s)) for s in sigmas if low <= float(s) <= high]
            assert timesteps == pytest.approx(expected), (start, end)  # one batched call per step (cond + uncond)
            assert 0 < len(expected) <= 5 and (len(expected) < 5) == ((start, end) != (0.0, 1.0))
    finally:
        hook.remove()


def test_flux_sampling_with_a_controlnet_runs_and_steers(controlnet_dit_flux_setup, flux):
    from loom.nodes.controlnet import ControlNetApplyAdvanced

    model, vae, control_net, image = controlnet_dit_flux_setup
    clip = flux[1]
    positive, negative = encode_text(clip, "a house"), encode_text(clip, "")

    def run(pos, neg):
        return sample(model, pos, neg, {"samples": torch.zeros(1, 16, 8, 8)}, seed=4, steps=3, cfg=1.0,
                      sampler_name="euler", scheduler="simple")

    plain = run(positive, negative)
    steered = run(*ControlNetApplyAdvanced.execute(positive, negative, control_net, image, 0.7, 0.0, 1.0, vae=vae))
    assert torch.isfinite(steered).all() and (steered - plain).abs().max() > 1e-3


def test_controlnets_for_another_family_are_clear_errors(controlnet_dir, sd3, flux):
    from loom.nodes.controlnet import ControlNetApplyAdvanced, ControlNetApplySD3
    from loom.nodes.custom_sampling import CFGGuider
    from loom.nodes.sampling import KSampler
    from tests.fixtures_checkpoints import checkpoint_path

    sd3_model, sd3_clip, sd3_vae = sd3
    conds = (encode_text(sd3_clip, "a house"), encode_text(sd3_clip, ""))
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    unet_cn = _load("cn-sd1.safetensors")
    positive, negative = ControlNetApplyAdvanced.execute(conds[0], conds[1], unet_cn, _image(), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"KSampler: input 'positive': a UNet \(SD1/SD2/SDXL\) ControlNet is applied "
                                         r"to the conditioning, but the MODEL being sampled is SD3"):
        KSampler.execute(sd3_model, 1, 2, 3.0, "euler", "simple", positive, negative, latent)
    flux_cn = _load("flux-cn.safetensors")
    positive, negative = ControlNetApplySD3.execute(conds[0], conds[1], flux_cn, flux[2], _image(), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"CFGGuider: input 'positive': a FLUX ControlNet .* MODEL being sampled "
                                         r"is SD3"):
        CFGGuider.execute(sd3_model, positive, negative, 3.0)

    sd1_model, sd1_clip, _ = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    sd1_conds = (encode_text(sd1_clip, "a house"), encode_text(sd1_clip, ""))
    positive, negative = ControlNetApplySD3.execute(sd1_conds[0], sd1_conds[1], _load("sd3-cn.safetensors"), sd3_vae,
                                                    _image(), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"KSampler: input 'positive': an? SD3 ControlNet .* UNet \(SD1/SD2/SDXL\)"):
        KSampler.execute(sd1_model, 1, 2, 3.0, "euler", "normal", positive, negative,
                         {"samples": torch.zeros(1, 4, 8, 8)})

    sd3_cn = _load("sd3-cn.safetensors")
    with pytest.raises(ValueError, match=r"ControlNetApplyAdvanced: input 'vae' is missing: this SD3 ControlNet"):
        ControlNetApplyAdvanced.execute(conds[0], conds[1], sd3_cn, _image(), 1.0, 0.0, 1.0)
    _sd1, _clip1, sd1_vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    with pytest.raises(ValueError, match=r"ControlNetApplySD3: input 'vae' gives 4-channel latents; this SD3 "
                                         r"ControlNet takes 16-channel ones"):
        ControlNetApplySD3.execute(conds[0], conds[1], sd3_cn, sd1_vae, _image(), 1.0, 0.0, 1.0)


def test_dit_controlnet_layouts_loom_does_not_run_are_named(controlnet_dir):
    from loom.nodes.controlnet import ControlNetLoader

    cases = {"xlabs.safetensors": ({"controlnet_blocks.0.weight": torch.zeros(2, 2),
                                    "double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, "XLabs FLUX"),
             "sd35.safetensors": ({"controlnet_blocks.0.weight": torch.zeros(2, 2),
                                   "pos_embed_input.proj.weight": torch.zeros(2, 2),
                                   "transformer_blocks.0.adaLN_modulation.1.bias": torch.zeros(2)}, "Stability SD3.5")}
    for name, (tensors, what) in cases.items():
        save_file(tensors, str(controlnet_dir / name))
        with pytest.raises(ValueError, match=rf"ControlNetLoader: input 'control_net_name': could not load '{name}': "
                                             rf"{name} is an? {what}"):
            ControlNetLoader.execute(name)
