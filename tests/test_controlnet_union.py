"""Union ControlNets and SetUnionControlNetType: the SDXL ControlNet++ Union / ProMax and the FLUX union, on tiny
random files with the real key layouts, against ComfyUI's computation written out by hand here."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.sampling import sample
from loom.nodes.runtime.text_encoding import encode_text
from tests.fixtures_checkpoints import checkpoint_path
from tests.fixtures_controlnet import UNION_TYPES, write_union_controlnet

COMFY_TYPES = ["auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
               "segment", "tile", "repaint"]


@pytest.fixture(scope="module")
def union_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("union-controlnets")
    write_union_controlnet(folder / "union-promax.safetensors")
    write_union_controlnet(folder / "union-6.safetensors", types=6)
    return folder


@pytest.fixture
def controlnet_dir(base_dir, union_files):
    folder = base_dir / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    for path in union_files.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def sdxl():
    model, clip, _vae = load_checkpoint(checkpoint_path("sdxl"), device="cpu")
    return model, (encode_text(clip, "a house"), encode_text(clip, ""))


def _image() -> torch.Tensor:
    image = torch.zeros(1, 64, 64, 3)
    image[:, 8:40, 20:56] = 1.0
    image[:, 40:, :, 1] = 0.5
    return image


def _sample(model, conds, control_net):
    from loom.nodes.controlnet import ControlNetApplyAdvanced

    positive, negative = ControlNetApplyAdvanced.execute(conds[0], conds[1], control_net, _image(), 1.0, 0.0, 1.0)
    return sample(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, seed=3, steps=2, cfg=4.0,
                  sampler_name="euler", scheduler="normal")


def _set(control_net, name):
    from loom.nodes.controlnet_union import SetUnionControlNetType

    return SetUnionControlNetType.execute(control_net, name)[0]


# --- ComfyUI's union computation (comfy/cldm/cldm.py), by hand ---------------------------------------------------

def _type_vector(state: dict, control_type: list[int]) -> torch.Tensor:
    """control_add_embedding of the one-hot type vector, each entry through the 256-wide timestep embedding."""
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    rows = []
    for i in range(UNION_TYPES):
        value = 1.0 if i in control_type else 0.0
        rows.append(torch.cat([torch.cos(value * freqs), torch.sin(value * freqs)]))
    embedded = torch.cat(rows)[None]
    hidden = F.silu(F.linear(embedded, state["control_add_embedding.linear_1.weight"],
                             state["control_add_embedding.linear_1.bias"]))
    return F.linear(hidden, state["control_add_embedding.linear_2.weight"],
                    state["control_add_embedding.linear_2.bias"])


def _fused(state: dict, features: torch.Tensor, control_type: int) -> torch.Tensor:
    """union_controlnet_merge for one image: one token per image, so attention passes its value through."""
    p = "transformer_layes.0."
    width = features.shape[1]
    token = features.mean(dim=(2, 3)) + state["task_embedding"][control_type]
    normed = F.layer_norm(token, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
    value = F.linear(normed, state[p + "attn.in_proj_weight"][2 * width:], state[p + "attn.in_proj_bias"][2 * width:])
    token = token + F.linear(value, state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"])
    normed = F.layer_norm(token, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
    hidden = F.linear(normed, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
    hidden = hidden * torch.sigmoid(1.702 * hidden)
    token = token + F.linear(hidden, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    alpha = F.linear(token, state["spatial_ch_projs.weight"], state["spatial_ch_projs.bias"])
    return features + alpha[:, :, None, None]


def _reference(control_net, state: dict, control_type: list[int]):
    """An ordinary ControlNet doing by hand what ComfyUI's union ControlNet does for ``control_type``."""
    from loom.nodes.runtime.controlnet import ControlNet

    model = copy.deepcopy(control_net.model)
    with torch.no_grad():
        model.time_embedding.linear_2.bias += _type_vector(state, control_type)[0]
    if control_type:
        model.controlnet_cond_embedding.register_forward_hook(
            lambda _m, _i, features: _fused(state, features, control_type[0]))
    return ControlNet(model=model, options=control_net.options)


# --- tests ---------------------------------------------------------------------------------------------------------

def test_set_union_controlnet_type_schema_is_comfyuis(registry):
    info = registry.object_info("SetUnionControlNetType")["SetUnionControlNetType"]
    required = info["input"]["required"]
    assert list(required) == ["control_net", "type"]
    assert required["control_net"][0] == "CONTROL_NET"
    assert required["type"][0] == COMFY_TYPES
    assert info["output"] == ["CONTROL_NET"]
    assert (info["category"], info["display_name"]) == ("model/conditioning/controlnet", "SetUnionControlNetType")


def test_a_union_file_loads_with_its_union_parts(controlnet_dir):
    from loom.nodes.controlnet import ControlNetLoader
    from loom.nodes.runtime.controlnet_union import SDXLUnion

    (control_net,) = ControlNetLoader.execute("union-promax.safetensors")
    assert isinstance(control_net.union, SDXLUnion) and control_net.union.types == UNION_TYPES
    assert control_net.control_type == ()  # "auto" until a type is set, as ComfyUI's empty extra args
    state = load_file(str(controlnet_dir / "union-promax.safetensors"))
    union = control_net.union.state_dict()
    assert {k for k in state if k.startswith(("task_", "control_add", "transformer_layes", "spatial_"))} == set(union)
    key = "transformer_layes.0.attn.in_proj_weight"
    assert torch.equal(union[key], state[key])


def test_the_type_is_set_on_a_copy_sharing_the_network(controlnet_dir):
    from loom.nodes.controlnet import ControlNetLoader

    (control_net,) = ControlNetLoader.execute("union-promax.safetensors")
    depth = _set(control_net, "depth")
    assert depth.control_type == (1,) and control_net.control_type == ()
    assert depth.model is control_net.model and depth.union is control_net.union
    assert _set(depth, "auto").control_type == ()
    assert _set(control_net, "repaint").control_type == (7,)


def test_auto_and_each_type_sample_as_comfyui_computes_them(controlnet_dir, sdxl):
    from loom.nodes.controlnet import ControlNetLoader

    model, conds = sdxl
    (control_net,) = ControlNetLoader.execute("union-promax.safetensors")
    state = load_file(str(controlnet_dir / "union-promax.safetensors"))
    results = {}
    for name, control_type in (("auto", []), ("openpose", [0]), ("depth", [1]), ("repaint", [7])):
        got = _sample(model, conds, _set(control_net, name))
        want = _sample(model, conds, _reference(control_net, state, control_type))
        # the sampled latents are a few hundred in size: float rounding of the two orders of summing
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        results[name] = got
    names = list(results)
    for i, first in enumerate(names):  # every choice steers differently
        for second in names[i + 1:]:
            assert (results[first] - results[second]).abs().max() > 1.0, (first, second)


def test_a_type_the_file_does_not_know_is_a_clear_error(controlnet_dir):
    from loom.nodes.controlnet import ControlNetLoader

    (control_net,) = ControlNetLoader.execute("union-6.safetensors")
    assert _set(control_net, "segment").control_type == (5,)
    with pytest.raises(ValueError, match=r"SetUnionControlNetType: input 'type': 'tile' is type 6; this union "
                                         r"ControlNet knows 6 control types \(0\.\.5\)"):
        _set(control_net, "tile")


def test_an_ordinary_controlnet_ignores_the_type(controlnet_dir, sdxl):
    from loom.nodes.controlnet import ControlNetLoader

    state = load_file(str(controlnet_dir / "union-promax.safetensors"))
    plain = {k: v for k, v in state.items()
             if not k.startswith(("task_", "control_add", "transformer_layes", "spatial_"))}
    save_file(plain, str(controlnet_dir / "plain.safetensors"))
    (control_net,) = ControlNetLoader.execute("plain.safetensors")
    assert control_net.union is None
    model, conds = sdxl
    torch.testing.assert_close(_sample(model, conds, _set(control_net, "depth")), _sample(model, conds, control_net))


# --- FLUX union ----------------------------------------------------------------------------------------------------

FLUX_MODES = 10  # Shakker-Labs Union Pro


@pytest.fixture(scope="module")
def flux_union(tmp_path_factory):
    from tests.fixtures_controlnet_dit import flux_controlnet_state_dict

    state = flux_controlnet_state_dict(modes=FLUX_MODES)
    assert state["controlnet_mode_embedder.weight"].shape[0] == FLUX_MODES
    path = tmp_path_factory.mktemp("flux-union") / "flux-union.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def _flux_kwargs():
    from tests.fixtures_flux import FLUX_CONTEXT, FLUX_POOLED

    generator = torch.Generator().manual_seed(7)
    rows = cols = 4
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return dict(hidden_states=torch.randn(1, rows * cols, 64, generator=generator),
                encoder_hidden_states=torch.randn(1, 7, FLUX_CONTEXT, generator=generator),
                pooled_projections=torch.randn(1, FLUX_POOLED, generator=generator),
                timestep=torch.tensor([0.6]), img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(7, 3),
                guidance=torch.tensor([3.5])), torch.randn(1, rows * cols, 64, generator=generator)


def test_flux_union_modes_match_diffusers_union_computation(flux_union):
    from diffusers import FluxControlNetModel

    from loom.nodes.runtime.controlnet import load_controlnet
    from loom.nodes.runtime.controlnet_dit import flux_outputs
    from loom.nodes.runtime.controlnet_union import FluxUnion, flux_mode

    path, state = flux_union
    control_net = load_controlnet(path, device="cpu", use_cache=False)
    assert control_net.kind == "flux" and isinstance(control_net.union, FluxUnion)
    reference = FluxControlNetModel(**control_net.options["config"], num_mode=FLUX_MODES)
    reference.load_state_dict(state)
    kwargs, hint = _flux_kwargs()

    def ours(name):
        net = _set(control_net, name)
        with torch.no_grad(), flux_mode(net, kwargs) as call:
            return flux_outputs(net.model, call, hint)

    outputs = {}
    for name, mode in (("openpose", 0), ("depth", 1), ("tile", 6)):  # ComfyUI passes the xinsir index as the mode
        doubles, singles = ours(name)
        with torch.no_grad():
            want_d, want_s = reference(controlnet_cond=hint, controlnet_mode=torch.tensor([[mode]]),
                                       conditioning_scale=1.0, return_dict=False, **kwargs)
        torch.testing.assert_close(doubles[0], want_d[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(singles[0], want_s[0], rtol=1e-4, atol=1e-5)
        outputs[name] = doubles[0]
    auto = ours("auto")[0][0]
    plain = {k: v for k, v in state.items() if k != "controlnet_mode_embedder.weight"}
    without = FluxControlNetModel(**control_net.options["config"])
    without.load_state_dict(plain)
    with torch.no_grad():
        torch.testing.assert_close(auto, without(controlnet_cond=hint, conditioning_scale=1.0, return_dict=False,
                                                 **kwargs)[0][0], rtol=1e-4, atol=1e-5)
    for name, value in outputs.items():
        assert (value - auto).abs().max() > 1e-4, name
    assert (outputs["openpose"] - outputs["depth"]).abs().max() > 1e-4


def test_flux_union_sampling_steers_by_type_and_auto_is_the_plain_network(flux_union, base_dir, tmp_path):
    from loom.nodes.controlnet import ControlNetApplyAdvanced, ControlNetLoader
    from tests.fixtures_controlnet_dit import write_flux_base

    path, state = flux_union
    folder = base_dir / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flux-union.safetensors").write_bytes(path.read_bytes())
    save_file({k: v.contiguous() for k, v in state.items() if k != "controlnet_mode_embedder.weight"},
              str(folder / "flux-plain.safetensors"))
    model, clip, vae = load_checkpoint(write_flux_base(tmp_path / "flux-base.safetensors"), device="cpu")
    positive, negative = encode_text(clip, "a house"), encode_text(clip, "")

    def run(control_net):
        pos, neg = ControlNetApplyAdvanced.execute(positive, negative, control_net, _image(), 0.8, 0.0, 1.0, vae=vae)
        return sample(model, pos, neg, {"samples": torch.zeros(1, 16, 8, 8)}, seed=4, steps=2, cfg=1.0,
                      sampler_name="euler", scheduler="simple")

    (union,) = ControlNetLoader.execute("flux-union.safetensors")
    (plain,) = ControlNetLoader.execute("flux-plain.safetensors")
    auto, depth, tile = run(union), run(_set(union, "depth")), run(_set(union, "tile"))
    torch.testing.assert_close(auto, run(plain))
    assert (depth - auto).abs().max() > 1e-3 and (tile - depth).abs().max() > 1e-3
