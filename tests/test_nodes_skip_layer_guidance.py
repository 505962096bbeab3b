"""SkipLayerGuidanceDiT and SkipLayerGuidanceDiTSimple (comfy_extras/nodes_slg.py): /object_info against
ComfyUI's source; on the tiny SD3 (3 joint blocks) and FLUX (2 double + 2 single blocks) checkpoints: the
neutral settings change nothing bit for bit, the guidance acts only inside its sigma window, the extra pass
really leaves the named blocks out (block calls counted) and gives ComfyUI's formula against a pass the test
skips by hand; on a FLUX-family model whose blocks add known amounts, both nodes' results are written out;
on a UNet the skip is never read, as in ComfyUI."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.denoiser import GuidedDenoiser
from loom.nodes.runtime.sampling import sample
from loom.nodes.skip_layer_guidance import SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple, parse_layers
from tests.fixtures_checkpoints import CLIP_WIDTH
from tests.fixtures_controlnet_dit import write_flux_base, write_sd3_base
from tests.fixtures_flux import FLUX_CONTEXT, FLUX_POOLED
from tests.fixtures_sockets import run_node

MODEL = ["MODEL", {}]
LAYERS = ["STRING", {"default": "7, 8, 9", "advanced": True}]


def _percent(default: float) -> list:
    return ["FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.001, "advanced": True}]


COMFY = {
    "SkipLayerGuidanceDiT": (
        "Generic version of SkipLayerGuidance node that can be used on every DiT model.",
        {"model": MODEL, "double_layers": LAYERS, "single_layers": LAYERS,
         "scale": ["FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}],
         "start_percent": _percent(0.01), "end_percent": _percent(0.15),
         "rescaling_scale": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01}]}),
    "SkipLayerGuidanceDiTSimple": (
        "Simple version of the SkipLayerGuidanceDiT node that only modifies the uncond pass.",
        {"model": MODEL, "double_layers": LAYERS, "single_layers": LAYERS,
         "start_percent": _percent(0.0), "end_percent": _percent(1.0)}),
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_matches_comfyui(registry, name):
    description, required = COMFY[name]
    info = json.loads(json.dumps(registry.object_info(name)[name]))
    assert info["display_name"] == name and info["category"] == "advanced/guidance"
    assert info["experimental"] is True and info["description"] == description
    assert info["input"]["required"] == required and "optional" not in info["input"]
    assert info["input_order"]["required"] == list(required)
    assert info["output"] == ["MODEL"] and info["output_name"] == ["MODEL"] and info["output_node"] is False


def test_layers_are_every_run_of_digits():
    assert parse_layers("7, 8, 9") == (7, 8, 9)
    assert parse_layers("3;12 x-4") == (3, 12, 4)
    assert parse_layers("none") == () and parse_layers("") == ()


# -- the tiny DiT checkpoints ----------------------------------------------------------------------------

def _conds(width: int, pooled: int, seed: int) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(seed)
    return tuple([[torch.randn(1, 6, width, generator=generator),
                   {"pooled_output": torch.randn(1, pooled, generator=generator)}]] for _ in range(2))


@pytest.fixture(scope="module")
def dits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slg")
    sd3 = load_checkpoint(write_sd3_base(folder / "sd3.safetensors"), device="cpu")[0]
    flux = load_checkpoint(write_flux_base(folder / "flux.safetensors"), device="cpu")[0]
    return {"sd3": (sd3, *_conds(4096, 2 * CLIP_WIDTH, 1)), "flux": (flux, *_conds(FLUX_CONTEXT, FLUX_POOLED, 2))}


def _blocks(model) -> dict[str, torch.nn.ModuleList]:
    if model.family == "sd3":
        return {"double_block": model.unet.transformer_blocks}
    transformer = model.unet.transformer
    return {"double_block": transformer.transformer_blocks, "single_block": transformer.single_transformer_blocks}


# double_layers, single_layers each family's checks skip
SKIPS = {"sd3": ("1", ""), "flux": ("0", "1")}
CFG = 4.0
START, END = 0.2, 0.6  # the window used below


def _sigmas(model) -> dict[str, torch.Tensor]:
    """A sigma inside the window, one above it and one below it."""
    high, low = model.sampling.percent_to_sigma(START), model.sampling.percent_to_sigma(END)
    return {"inside": torch.tensor([(high + low) / 2]), "above": torch.tensor([(high + 1.0) / 2]),
            "below": torch.tensor([low / 2])}


def _x(seed: int = 7) -> torch.Tensor:
    return torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(seed))


def _step(model, positive, negative, sigma, cfg: float = CFG) -> torch.Tensor:
    x = _x()
    return GuidedDenoiser(model, positive, negative, cfg, x.shape)(x, sigma)


def _slg(model, scale: float = 2.0, rescaling: float = 0.0, family: str | None = None):
    double, single = SKIPS[family or model.family]
    return SkipLayerGuidanceDiT.execute(model, scale, START, END, double, single, rescaling)[0]


def _simple(model, family: str | None = None):
    double, single = SKIPS[family or model.family]
    return SkipLayerGuidanceDiTSimple.execute(model, START, END, double, single)[0]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_no_layers_return_the_model_itself(dits, family):
    model = dits[family][0]
    assert SkipLayerGuidanceDiT.execute(model, 3.0, 0.01, 0.15, "none", "-", 0.0)[0] is model
    assert SkipLayerGuidanceDiTSimple.execute(model, 0.0, 1.0, "", "")[0] is model


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_scale_zero_changes_nothing_bit_for_bit(dits, family):
    model, positive, negative = dits[family]
    sigma = _sigmas(model)["inside"]
    assert torch.equal(_step(_slg(model, scale=0.0), positive, negative, sigma),
                       _step(model, positive, negative, sigma))


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("node", ["dit", "simple"])
def test_guidance_acts_only_inside_the_window(dits, family, node):
    model, positive, negative = dits[family]
    patched = _slg(model) if node == "dit" else _simple(model)
    for where, sigma in _sigmas(model).items():
        plain = _step(model, positive, negative, sigma)
        out = _step(patched, positive, negative, sigma)
        if where == "inside":
            assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-3, where
        else:
            assert torch.equal(out, plain), where


def _count_calls(model) -> tuple[dict[str, list[int]], list]:
    counts = {kind: [0] * len(blocks) for kind, blocks in _blocks(model).items()}
    handles = []
    for kind, blocks in _blocks(model).items():
        for index, block in enumerate(blocks):
            def hook(_module, _args, kind=kind, index=index):
                counts[kind][index] += 1
            handles.append(block.register_forward_pre_hook(hook))
    return counts, handles


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("node", ["dit", "simple"])
def test_the_extra_pass_leaves_the_named_blocks_out(dits, family, node):
    model, positive, negative = dits[family]
    before = {kind: list(blocks) for kind, blocks in _blocks(model).items()}
    patched = _slg(model) if node == "dit" else _simple(model)
    counts, handles = _count_calls(model)
    try:
        _step(patched, positive, negative, _sigmas(model)["inside"])
    finally:
        for handle in handles:
            handle.remove()
    # dit: one batch of both conditionings, then the positive with the blocks skipped; simple: the positive,
    # then the negative with the blocks skipped
    expected = {"sd3": {"double_block": [2, 1, 2]},
                "flux": {"double_block": [1, 2], "single_block": [2, 1]}}[family]
    assert counts == expected
    assert {kind: list(blocks) for kind, blocks in _blocks(model).items()} == before  # the network is as it was


class _HandSkipped:
    """The test's own skip: the blocks' forward replaced by the identity on (context, hidden states)."""

    def __init__(self, model) -> None:
        double, single = SKIPS[model.family]
        self.targets = [_blocks(model)["double_block"][int(i)] for i in double.split()] + \
                       [_blocks(model)["single_block"][int(i)] for i in single.split()]

    def __enter__(self):
        for block in self.targets:
            block.forward = lambda hidden_states, encoder_hidden_states=None, **_: (encoder_hidden_states,
                                                                                       hidden_states)

    def __exit__(self, *exc):
        for block in self.targets:
            del block.forward


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("rescaling", [0.0, 0.7])
def test_skip_layer_guidance_is_comfyuis_formula(dits, family, rescaling):
    model, positive, negative = dits[family]
    scale = 2.5
    sigma, x = _sigmas(model)["inside"], _x()
    out = _step(_slg(model, scale, rescaling), positive, negative, sigma)
    plain = GuidedDenoiser(model, positive, negative, CFG, x.shape)
    cfg_result = plain(x, sigma)
    (cond,) = plain.calc_cond_batch([plain.positive], x, sigma)
    with _HandSkipped(model):
        (skipped,) = plain.calc_cond_batch([plain.positive], x, sigma)
    expected = cfg_result + (cond - skipped) * scale
    if rescaling:
        factor = cond.std() / expected.std()
        expected = expected * (rescaling * factor + (1 - rescaling))
    assert (cond - skipped).abs().max() > 1e-3
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_simple_is_cfg_against_the_skipped_negative(dits, family):
    model, positive, negative = dits[family]
    sigma, x = _sigmas(model)["inside"], _x()
    out = _step(_simple(model), positive, negative, sigma)
    plain = GuidedDenoiser(model, positive, negative, CFG, x.shape)
    (cond,) = plain.calc_cond_batch([plain.positive], x, sigma)
    with _HandSkipped(model):
        (uncond,) = plain.calc_cond_batch([plain.negative], x, sigma)
    torch.testing.assert_close(out, uncond + (cond - uncond) * CFG, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_simple_without_a_negative_pass_changes_nothing(dits, family):
    """cfg 1 leaves the negative out; ComfyUI's simple node then evaluates the conditionings as usual."""
    model, positive, negative = dits[family]
    sigma = _sigmas(model)["inside"]
    assert torch.equal(_step(_simple(model), positive, negative, sigma, cfg=1.0),
                       _step(model, positive, negative, sigma, cfg=1.0))


# -- a FLUX-family model whose blocks add known amounts --------------------------------------------------

class _AddBlock(torch.nn.Module):
    """Adds ``amount`` times the mean of the context to the hidden states."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, hidden_states, encoder_hidden_states=None, **_):
        return encoder_hidden_states, hidden_states + self.amount * encoder_hidden_states.mean(dim=(1, 2),
                                                                                              keepdim=True)


class _KnownTransformer(torch.nn.Module):
    """Stands in for diffusers' FluxTransformer2DModel: its output is its input tokens plus each block's
    amount times the context mean."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(in_channels=64, joint_attention_dim=8, pooled_projection_dim=4,
                                      guidance_embeds=False)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # FluxNetwork reads the device off a parameter
        self.transformer_blocks = torch.nn.ModuleList([_AddBlock(1.0), _AddBlock(2.0)])
        self.single_transformer_blocks = torch.nn.ModuleList([_AddBlock(4.0), _AddBlock(8.0)])

    def forward(self, hidden_states, encoder_hidden_states, return_dict=False, **_):
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states,
                                                         encoder_hidden_states=encoder_hidden_states)
        return (hidden_states,)


@pytest.fixture(scope="module")
def known():
    from loom.nodes.runtime.families.flux import FLUX_LATENT
    from loom.nodes.runtime.flux_layout import FluxNetwork
    from loom.nodes.runtime.model_sampling import FlowSampling
    from loom.nodes.runtime.model_types import DiffusionModel

    model = DiffusionModel(unet=FluxNetwork(_KnownTransformer()), family="flux",
                           sampling=FlowSampling(shift=1.0, multiplier=1.0), latent_format=FLUX_LATENT)
    positive = [[torch.full((1, 3, 8), 0.5), {}]]
    negative = [[torch.full((1, 3, 8), -0.25), {}]]
    return model, positive, negative


def _known_denoised(x, sigma, added: float, context_mean: float) -> torch.Tensor:
    """Flow matching: denoised = x - sigma * (network output), the output being x + added * context mean."""
    return x - sigma * (x + added * context_mean)


def test_known_model_dit_formula(known):
    model, positive, negative = known
    sigma = torch.tensor([0.5])  # inside 0.2..0.6 (sigma 0.8..0.4 with shift 1)
    x = _x()
    out = _step(_slg(model, scale=2.0, rescaling=0.5, family="flux"), positive, negative, sigma)
    all_blocks, kept = 1.0 + 2.0 + 4.0 + 8.0, 2.0 + 4.0  # double 0 and single 1 skipped
    cond = _known_denoised(x, 0.5, all_blocks, 0.5)
    uncond = _known_denoised(x, 0.5, all_blocks, -0.25)
    skipped = _known_denoised(x, 0.5, kept, 0.5)
    expected = uncond + (cond - uncond) * CFG + (cond - skipped) * 2.0
    expected = expected * (0.5 * cond.std() / expected.std() + 0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_known_model_simple_formula(known):
    model, positive, negative = known
    sigma = torch.tensor([0.5])
    x = _x()
    out = _step(_simple(model, family="flux"), positive, negative, sigma)
    cond = _known_denoised(x, 0.5, 15.0, 0.5)
    uncond = _known_denoised(x, 0.5, 6.0, -0.25)  # the negative without double block 0 and single block 1
    torch.testing.assert_close(out, uncond + (cond - uncond) * CFG, rtol=1e-5, atol=1e-5)


# -- UNets, errors, sampling -----------------------------------------------------------------------------

def test_a_unet_never_reads_the_skip(tiny_model, tiny_conds):
    """ComfyUI's UNet ignores ``patches_replace["dit"]``: the extra pass is the plain positive pass, so the
    result is plain CFG up to batching's rounding."""
    positive, negative = tiny_conds
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([2.0])
    patched = SkipLayerGuidanceDiT.execute(tiny_model, 3.0, 0.0, 1.0, "1", "1", 0.0)[0]
    out = GuidedDenoiser(patched, positive, negative, CFG, x.shape)(x, sigma)
    plain = GuidedDenoiser(tiny_model, positive, negative, CFG, x.shape)(x, sigma)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_node_and_input(dits):
    model = dits["sd3"][0]
    with pytest.raises(ValueError, match="SkipLayerGuidanceDiT: input 'start_percent'"):
        SkipLayerGuidanceDiT.execute(model, 3.0, 1.5, 0.15, "7", "", 0.0)
    with pytest.raises(ValueError, match="SkipLayerGuidanceDiT: input 'scale'"):
        SkipLayerGuidanceDiT.execute(model, 11.0, 0.01, 0.15, "7", "", 0.0)
    with pytest.raises(ValueError, match="SkipLayerGuidanceDiTSimple: input 'model' is not a MODEL .*; got str"):
        run_node("SkipLayerGuidanceDiTSimple", model="model", double_layers="7", single_layers="",
                 start_percent=0.0, end_percent=1.0)


def test_sampling_flux_with_both_nodes(dits):
    model, positive, negative = dits["flux"]
    latent = {"samples": torch.zeros((1, 16, 8, 8))}
    run = dict(seed=5, steps=3, cfg=CFG, sampler_name="euler", scheduler="simple")
    plain = sample(model, positive, negative, latent, **run)
    patched = _simple(SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 0.5, "0", "1", 0.0)[0])
    out = sample(patched, positive, negative, latent, **run)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert torch.equal(sample(patched, positive, negative, latent, **run), out)
    assert torch.equal(sample(model, positive, negative, latent, **run), plain)
