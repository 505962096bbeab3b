"""FreeU, FreeU_V2 and PerturbedAttentionGuidance (issue 12) on the tiny SD1 checkpoint: /object_info against
ComfyUI's comfy_extras/nodes_freelunch.py and nodes_pag.py, and guided-denoiser steps against ComfyUI's
formulas written out here (the Fourier filter with torch.fft, the identity attention by a processor of the
test's own)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from loom.nodes.model_patches import RescaleCFG
from loom.nodes.model_patches_guidance import FreeU, FreeU_V2, PerturbedAttentionGuidance
from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.denoiser import GuidedDenoiser
from loom.nodes.runtime.text_encoding import encode_text
from tests.fixtures_checkpoints import checkpoint_path
from tests.fixtures_sockets import run_node

MODEL = ["MODEL", {}]


def _factor(default: float) -> list:
    return ["FLOAT", {"default": default, "min": 0.0, "max": 10.0, "step": 0.01}]


COMFY = {
    "FreeU": ("FreeU", {"model": MODEL, "b1": _factor(1.1), "b2": _factor(1.2), "s1": _factor(0.9),
                        "s2": _factor(0.2)}),
    "FreeU_V2": ("FreeU (v2)", {"model": MODEL, "b1": _factor(1.3), "b2": _factor(1.4), "s1": _factor(0.9),
                                "s2": _factor(0.2)}),
    "PerturbedAttentionGuidance": ("PerturbedAttentionGuidance", {
        "model": MODEL,
        "scale": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": 0.01}]}),
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_matches_comfyui(registry, name):
    display, required = COMFY[name]
    info = json.loads(json.dumps(registry.object_info(name)[name]))
    assert info["display_name"] == display and info["category"] == "model_patches/unet"
    assert info["input"]["required"] == required and "optional" not in info["input"]
    assert info["input_order"]["required"] == list(required)
    assert info["output"] == ["MODEL"] and info["output_name"] == ["MODEL"]
    assert info["output_node"] is False


@pytest.fixture(scope="module")
def sd1():
    model, clip, _vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    return model, encode_text(clip, "a red cube on a table"), encode_text(clip, "blurry")


CFG = 5.0


def _inputs():
    generator = torch.Generator().manual_seed(7)
    return torch.randn((2, 4, 8, 8), generator=generator) * 3.0, torch.tensor([2.5, 2.5])


def _step(model, positive, negative):
    x, sigma = _inputs()
    return GuidedDenoiser(model, positive, negative, CFG, x.shape)(x, sigma)


def _capture_resnet_input(model, positive, negative, block: int, resnet: int) -> torch.Tensor:
    """The input (cat of hidden state and skip) that one up-block resnet received in one guided step."""
    seen: list[torch.Tensor] = []
    target = model.unet.up_blocks[block].resnets[resnet]
    handle = target.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
    try:
        _step(model, positive, negative)
    finally:
        handle.remove()
    return seen[0]


def _filter(x: torch.Tensor, scale: float) -> torch.Tensor:
    """FreeU's skip filter written out: centre 2x2 of the shifted spectrum times ``scale``."""
    f = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    H, W = f.shape[-2:]
    weights = torch.ones(f.shape)
    weights[..., H // 2 - 1:H // 2 + 1, W // 2 - 1:W // 2 + 1] = scale
    return torch.fft.ifft2(torch.fft.ifftshift(f * weights, dim=(-2, -1))).real


def test_tiny_unet_widths(sd1):
    # model_channels 32: only the width 64 (= 2x) occurs at the output blocks, 128 (= 4x) never does
    model, _, _ = sd1
    assert model.unet.config.block_out_channels == (32, 64)


@pytest.mark.parametrize("node", [FreeU, FreeU_V2])
def test_freeu_neutral_values_are_bit_identical(sd1, node):
    model, positive, negative = sd1
    reference = _step(model, positive, negative)
    (patched,) = node.execute(model, 1.0, 1.0, 1.0, 1.0)
    assert torch.equal(_step(patched, positive, negative), reference)
    # b1/s1 act only at model_channels * 4 channels, which the tiny UNet does not have
    (only_first,) = node.execute(model, 5.0, 1.0, 0.1, 1.0)
    assert torch.equal(_step(only_first, positive, negative), reference)


def test_freeu_patches_the_output_block_input(sd1):
    model, positive, negative = sd1
    b2, s2 = 1.7, 0.3
    (patched,) = FreeU.execute(model, 1.1, b2, 0.9, s2)
    assert not torch.equal(_step(patched, positive, negative), _step(model, positive, negative))
    plain = _capture_resnet_input(model, positive, negative, 0, 0)
    got = _capture_resnet_input(patched, positive, negative, 0, 0)
    h, hsp = plain[:, :64], plain[:, 64:]  # the mid block's 64 channels, the last skip's 64
    expected = torch.cat([h[:, :32] * b2, h[:, 32:], _filter(hsp, s2)], dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the skip really was filtered: its spectrum's centre changed, its mean scaled by s2
    torch.testing.assert_close(got[:, 64:].mean(dim=(-2, -1)), hsp.mean(dim=(-2, -1)) * s2, rtol=1e-5, atol=1e-6)


def test_freeu_v2_patches_the_output_block_input(sd1):
    model, positive, negative = sd1
    b2, s2 = 1.4, 0.2
    (patched,) = FreeU_V2.execute(model, 1.3, b2, 0.9, s2)
    plain = _capture_resnet_input(model, positive, negative, 0, 0)
    got = _capture_resnet_input(patched, positive, negative, 0, 0)
    h, hsp = plain[:, :64], plain[:, 64:]
    mean = h.mean(dim=1, keepdim=True)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    factor = (b2 - 1.0) * (mean - low) / (high - low) + 1.0
    expected = torch.cat([h[:, :32] * factor, h[:, 32:], _filter(hsp, s2)], dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_freeu_leaves_the_input_model_and_the_network_unpatched(sd1):
    model, positive, negative = sd1
    reference = _step(model, positive, negative)
    (patched,) = FreeU.execute(model, 1.1, 1.6, 0.9, 0.2)
    (twice,) = FreeU_V2.execute(patched, 1.3, 1.4, 0.9, 0.5)  # stacks: two output-block patches, in order
    assert len(twice.options["output_block_patch"]) == 2 and len(patched.options["output_block_patch"]) == 1
    assert "output_block_patch" not in model.options
    assert not torch.equal(_step(twice, positive, negative), _step(patched, positive, negative))
    assert torch.equal(_step(model, positive, negative), reference)
    assert all(not up._forward_pre_hooks for up in model.unet.up_blocks)


class _Identity:
    """The test's own value-passthrough self-attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        return attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))


def _perturbed_cond(model, positive, negative) -> torch.Tensor:
    x, sigma = _inputs()
    attns = [block.attn1 for a in model.unet.mid_block.attentions for block in a.transformer_blocks]
    assert attns
    saved = [a.processor for a in attns]
    for a in attns:
        a.processor = _Identity()
    try:
        plain = GuidedDenoiser(model, positive, negative, CFG, x.shape)
        (pag,) = plain.calc_cond_batch([plain.positive], x, sigma)
    finally:
        for a, p in zip(attns, saved):
            a.processor = p
    return pag


def test_pag_scale_zero_is_no_patch(sd1):
    model, positive, negative = sd1
    (patched,) = PerturbedAttentionGuidance.execute(model, 0.0)
    assert torch.equal(_step(patched, positive, negative), _step(model, positive, negative))


def test_pag_is_comfyuis_formula(sd1):
    model, positive, negative = sd1
    scale = 2.5
    (patched,) = PerturbedAttentionGuidance.execute(model, scale)
    out = _step(patched, positive, negative)
    x, sigma = _inputs()
    plain = GuidedDenoiser(model, positive, negative, CFG, x.shape)
    cfg_result = plain(x, sigma)
    cond, _uncond = plain.calc_cond_batch([plain.positive, plain.negative], x, sigma)  # batched as CFG runs
    pag = _perturbed_cond(model, positive, negative)
    assert not torch.equal(pag, cond)
    assert torch.equal(out, cfg_result + (cond - pag) * scale)
    assert not torch.equal(out, cfg_result)
    # the swap lasted only for the perturbed pass
    assert torch.equal(_step(model, positive, negative), cfg_result)
    assert "sampler_post_cfg_function" not in model.options


def test_pag_stacks_after_freeu_and_rescale(sd1):
    model, positive, negative = sd1
    (freeu,) = FreeU.execute(model, 1.1, 1.5, 0.9, 0.4)
    (rescaled,) = RescaleCFG.execute(freeu, 0.7)
    (patched,) = PerturbedAttentionGuidance.execute(rescaled, 1.5)
    out = _step(patched, positive, negative)
    x, sigma = _inputs()
    base = GuidedDenoiser(rescaled, positive, negative, CFG, x.shape)
    cfg_result = base(x, sigma)
    cond, _uncond = base.calc_cond_batch([base.positive, base.negative], x, sigma)
    pag = _perturbed_cond(freeu, positive, negative)  # the perturbed pass keeps FreeU
    assert torch.equal(out, cfg_result + (cond - pag) * 1.5)


@pytest.mark.parametrize("call, message", [
    (lambda m: run_node("FreeU", model="not a model", b1=1.1, b2=1.2, s1=0.9, s2=0.2),
     "FreeU: input 'model' is not a MODEL .*; got str"),
    (lambda m: FreeU.execute(m, 1.1, -1.0, 0.9, 0.2), "FreeU: input 'b2'"),
    (lambda m: FreeU_V2.execute(m, 1.3, 1.4, math.nan, 0.2), "FreeU_V2: input 's1'"),
    (lambda m: FreeU_V2.execute(m, 1.3, 1.4, 0.9, "x"), "FreeU_V2: input 's2'"),
    (lambda m: PerturbedAttentionGuidance.execute(m, 200.0), "PerturbedAttentionGuidance: input 'scale'"),
    (lambda m: run_node("PerturbedAttentionGuidance", model=None, scale=1.0),
     "PerturbedAttentionGuidance: input 'model' is None, not a MODEL"),
])
def test_bad_inputs_name_node_and_input(sd1, call, message):
    with pytest.raises(ValueError, match=message):
        call(sd1[0])


def test_patches_stack_with_lora(sd1):
    from loom.nodes.runtime.lora import LoraPatch, parse_lora, with_lora
    from tests.fixtures_lora import build_lora

    model, positive, negative = sd1
    updates = parse_lora(build_lora("kohya_sd1"), "a").for_unet(model)
    lora_model = model.replace(patches=with_lora(model.patches, LoraPatch("a", 0.8, updates)))
    (freeu,) = FreeU.execute(lora_model, 1.1, 1.5, 0.9, 0.4)
    (patched,) = PerturbedAttentionGuidance.execute(freeu, 2.0)
    assert patched.patches == lora_model.patches and not model.patches
    without_lora = _step(patched.replace(patches=()), positive, negative)
    with lora_model.patches[0].applied(lora_model):
        out = _step(patched, positive, negative)
        x, sigma = _inputs()
        base = GuidedDenoiser(freeu, positive, negative, CFG, x.shape)
        cfg_result = base(x, sigma)
        cond, _uncond = base.calc_cond_batch([base.positive, base.negative], x, sigma)
        pag = _perturbed_cond(freeu, positive, negative)
    assert torch.equal(out, cfg_result + (cond - pag) * 2.0)
    assert not torch.equal(out, without_lora)


def test_sampling_with_the_patches(sd1):
    from loom.nodes.runtime.sampling import sample

    model, positive, negative = sd1
    (freeu,) = FreeU_V2.execute(model, 1.3, 1.4, 0.9, 0.2)
    (patched,) = PerturbedAttentionGuidance.execute(freeu, 3.0)
    latent = {"samples": torch.zeros((1, 4, 8, 8))}
    run = dict(seed=5, steps=3, cfg=CFG, sampler_name="euler", scheduler="normal")
    plain = sample(model, positive, negative, latent, **run)
    out = sample(patched, positive, negative, latent, **run)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert torch.equal(sample(patched, positive, negative, latent, **run), out)
    assert torch.equal(sample(model, positive, negative, latent, **run), plain)


# -- SelfAttentionGuidance (comfy_extras/nodes_sag.py) ----------------------------------------------------

def test_sag_object_info(registry):
    info = json.loads(json.dumps(registry.object_info("SelfAttentionGuidance")["SelfAttentionGuidance"]))
    assert info["display_name"] == "Self-Attention Guidance" and info["category"] == "_for_testing"
    assert info["experimental"] is True
    assert info["input"]["required"] == {
        "model": MODEL, "scale": ["FLOAT", {"default": 0.5, "min": -2.0, "max": 5.0, "step": 0.01}],
        "blur_sigma": ["FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1}]}
    assert info["output"] == ["MODEL"]


def _negative_attention(model, negative, x, sigma) -> torch.Tensor:
    """The negative's softmax(q k^T / sqrt(d)) in the middle block's first self-attention, per head."""
    attn = model.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        q, k = module.to_q(hidden), module.to_k(hidden)
        b, n, width = q.shape
        heads = module.heads
        q = q.view(b, n, heads, width // heads).transpose(1, 2)
        k = k.view(b, n, heads, width // heads).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)
        seen.append(probs.reshape(b * heads, n, n))

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        plain = GuidedDenoiser(model, negative, negative, CFG, x.shape)
        plain.calc_cond_batch([plain.negative], x, sigma)
    finally:
        handle.remove()
    return seen[0]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    taps = torch.arange(9, dtype=torch.float32) - 4.0
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = torch.nn.functional.pad(x, [4, 4, 4, 4], mode="reflect")
    rows = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 9, 1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, 1, 9).repeat(c, 1, 1, 1), groups=c)


def test_sag_is_comfyuis_formula(sd1):
    from loom.nodes.model_patches_guidance import SelfAttentionGuidance

    model, positive, negative = sd1
    scale, blur_sigma = 0.8, 2.0
    (patched,) = SelfAttentionGuidance.execute(model, scale, blur_sigma)
    assert patched.options["disable_cfg1_optimization"] and "disable_cfg1_optimization" not in model.options
    out = _step(patched, positive, negative)
    x, sigma = _inputs()
    plain = GuidedDenoiser(model, positive, negative, CFG, x.shape)
    cfg_result = plain(x, sigma)
    cond, uncond = plain.calc_cond_batch([plain.positive, plain.negative], x, sigma)
    probs = _negative_attention(model, negative, x, sigma)  # [2 * heads, 16, 16]: the 4x4 middle grid
    heads = probs.shape[0] // 2
    recorded = patched.options["sampler_post_cfg_function"][-1].recorder.scores  # the negative's chunk of the batch
    torch.testing.assert_close(recorded, probs, rtol=0, atol=1e-5)
    received = probs.view(2, heads, 16, 16).mean(1).sum(1) > 1.0
    assert 0 < int(received.sum()) < 32  # some tokens, not all
    mask = received.view(2, 1, 4, 4).float().repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    degraded = _blur(uncond, blur_sigma) * mask + uncond * (1 - mask)
    (sag,) = plain.calc_cond_batch([plain.negative], degraded + x - uncond, sigma)
    expected = cfg_result + (degraded - sag) * scale
    assert not torch.allclose(out, cfg_result, atol=1e-3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(_step(model, positive, negative), cfg_result)  # the recording processor was removed


def test_sag_bad_inputs(sd1):
    from loom.nodes.model_patches_guidance import SelfAttentionGuidance

    with pytest.raises(ValueError, match="SelfAttentionGuidance: input 'scale'"):
        SelfAttentionGuidance.execute(sd1[0], 9.0, 2.0)
    with pytest.raises(ValueError, match="SelfAttentionGuidance: input 'blur_sigma'"):
        SelfAttentionGuidance.execute(sd1[0], 0.5, -1.0)
    with pytest.raises(ValueError, match="SelfAttentionGuidance: input 'model' is not a MODEL .*; got int"):
        run_node("SelfAttentionGuidance", model=3, scale=0.5, blur_sigma=2.0)
