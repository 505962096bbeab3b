"""HypernetworkLoader (comfy_extras/nodes_hypernetwork.py): /object_info, the ``hypernetworks`` folder, and
tiny hypernetworks built here (A1111's layout: ``{width: [key state, value state]}`` plus options) on a tiny
UNet whose self-attention (32, 64 wide) and cross-attention (24-wide context) widths differ: the key/value
inputs of one layer against the MLP written out by hand, strength 0 bit-identical to no patch, the network
left unhooked, the pickle rule and the errors for files that are not hypernetworks."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from loom.nodes.hypernetwork import HypernetworkLoader
from loom.nodes.kernel import config
from loom.nodes.runtime.denoiser import GuidedDenoiser
from loom.nodes.runtime.model_types import DiffusionModel, LatentFormat, ModelSampling
from tests.fixtures_sampling import tiny_unet
from tests.fixtures_sockets import run_node

CONTEXT = 24
WIDTHS = (32, 64, CONTEXT)  # down/up self-attention, middle self-attention, cross-attention context


def test_object_info_matches_comfyui(registry, base_dir):
    (base_dir / "models" / "hypernetworks").mkdir(parents=True, exist_ok=True)
    (base_dir / "models" / "hypernetworks" / "style.pt").write_bytes(b"")
    info = json.loads(json.dumps(registry.object_info("HypernetworkLoader")["HypernetworkLoader"]))
    assert info["display_name"] == "HypernetworkLoader" and info["category"] == "model/loaders"
    assert info["input"]["required"] == {
        "model": ["MODEL", {}], "hypernetwork_name": [["style.pt"], {}],
        "strength": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}]}
    assert info["input_order"]["required"] == ["model", "hypernetwork_name", "strength"]
    assert info["output"] == ["MODEL"] and info["output_node"] is False


def test_the_hypernetworks_folder_is_declared():
    from loom.nodes.kernel import folders

    assert folders.MODEL_FOLDERS["hypernetworks"] == ("hypernetworks",)
    assert folders.EXTRA_PATH_KEYS["hypernetworks"] == "hypernetworks"


# -- tiny hypernetworks ----------------------------------------------------------------------------------

def _mlp_state(width: int, hidden: int, generator: torch.Generator, layer_norm: bool) -> dict[str, torch.Tensor]:
    """A1111's Sequential names: Linear, activation, [LayerNorm], Linear, [activation], [LayerNorm]."""
    state = {}
    index = 0
    for fan_in, fan_out in ((width, hidden), (hidden, width)):
        state[f"linear.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) * 0.3
        state[f"linear.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
        index += 2  # the activation module sits between
        if layer_norm:
            state[f"linear.{index - 1}.weight"] = 1.0 + torch.randn(fan_out, generator=generator) * 0.1
            state[f"linear.{index - 1}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
            index += 1
    return state


def hypernetwork_state(seed: int = 0, *, activation: str = "relu", layer_norm: bool = False) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state: dict = {width: [_mlp_state(width, 2 * width, generator, layer_norm),
                           _mlp_state(width, 2 * width, generator, layer_norm)] for width in WIDTHS}
    state.update(activation_func=activation, is_layer_norm=layer_norm, use_dropout=True, activate_output=False,
                 last_layer_dropout=False, layer_structure=[1, 2, 1], weight_initialization="Normal",
                 name="tiny", step=10)
    return state


def write_safetensors(path, state: dict) -> None:
    tensors = {f"{width}.{which}.{key}": tensor for width, pair in state.items() if isinstance(width, int)
               for which, module in enumerate(pair) for key, tensor in module.items()}
    metadata = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in state.items()
                if not isinstance(k, int)}
    save_file(tensors, str(path), metadata=metadata)


def _by_hand(state: dict, x: torch.Tensor, activation: str, layer_norm: bool) -> torch.Tensor:
    """The MLP as ComfyUI builds it, written out: with layer norms every linear layer is activated (ComfyUI
    counts the norms when it finds the last layer); without, all but the last."""
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    names = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda n: int(n.split(".")[1]))
    linears = names[0::2] if layer_norm else names
    h = x
    for i, name in enumerate(linears):
        h = h @ state[name + ".weight"].T + state[name + ".bias"]
        if layer_norm or i < len(linears) - 1:
            h = act(h)
        if layer_norm:
            norm = names[2 * i + 1]
            h = torch.nn.functional.layer_norm(h, (h.shape[-1],), state[norm + ".weight"], state[norm + ".bias"])
    return h


@pytest.fixture(scope="module")
def unet_model():
    return DiffusionModel(unet=tiny_unet(cross_attention_dim=CONTEXT, seed=3), family="sd1",
                          sampling=ModelSampling.scaled_linear(), latent_format=LatentFormat())


def _conds():
    generator = torch.Generator().manual_seed(5)
    return ([[torch.randn(1, 77, CONTEXT, generator=generator), {}]],
            [[torch.randn(1, 77, CONTEXT, generator=generator), {}]])


def _step(model) -> torch.Tensor:
    positive, negative = _conds()
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7)) * 3.0
    return GuidedDenoiser(model, positive, negative, 5.0, x.shape)(x, torch.tensor([2.5]))


def _first_block(model):
    return model.unet.down_blocks[0].attentions[0].transformer_blocks[0]


def _projection_inputs(model) -> dict[str, torch.Tensor]:
    """What the first transformer block's q/k/v projections of both attentions received in one step."""
    block = _first_block(model)
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for attn_name in ("attn1", "attn2"):
        for proj in ("to_q", "to_k", "to_v"):
            module = getattr(getattr(block, attn_name), proj)

            # a forward hook sees the input as the patch's pre-hooks (installed later, per call) left it
            def record(_module, args, _out, key=f"{attn_name}.{proj}"):
                seen.setdefault(key, args[0].detach().clone())
            handles.append(module.register_forward_hook(record))
    try:
        _step(model)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture
def hypernetworks(base_dir):
    folder = base_dir / "models" / "hypernetworks"
    assert folder.is_dir()  # the configured base directory has every model folder
    return folder


@pytest.mark.parametrize("activation, layer_norm", [("relu", False), ("tanh", True)])
def test_key_and_value_inputs_are_the_hand_computed_mlp(hypernetworks, unet_model, activation, layer_norm):
    state = hypernetwork_state(1, activation=activation, layer_norm=layer_norm)
    write_safetensors(hypernetworks / "tiny.safetensors", state)
    strength = 0.7
    (patched,) = HypernetworkLoader.execute(unet_model, "tiny.safetensors", strength)
    plain, got = _projection_inputs(unet_model), _projection_inputs(patched)
    hidden, context = plain["attn1.to_q"], plain["attn2.to_k"]
    assert hidden.shape[-1] == 32 and context.shape[-1] == CONTEXT
    expected = {
        "attn1.to_q": hidden,
        "attn1.to_k": hidden + _by_hand(state[32][0], hidden, activation, layer_norm) * strength,
        "attn1.to_v": hidden + _by_hand(state[32][1], hidden, activation, layer_norm) * strength,
        "attn2.to_k": context + _by_hand(state[CONTEXT][0], context, activation, layer_norm) * strength,
        "attn2.to_v": context + _by_hand(state[CONTEXT][1], context, activation, layer_norm) * strength,
    }
    assert torch.equal(plain["attn2.to_v"], context)  # cross-attention's key and value inputs are the context
    # (attn2's query input follows the patched self-attention, so it is not compared)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)
    assert not torch.allclose(got["attn1.to_k"], hidden, atol=1e-3)
    assert not torch.equal(_step(patched), _step(unet_model))


def test_strength_zero_is_bit_identical(hypernetworks, unet_model):
    write_safetensors(hypernetworks / "tiny.safetensors", hypernetwork_state(2))
    (patched,) = HypernetworkLoader.execute(unet_model, "tiny.safetensors", 0.0)
    assert patched is not unet_model and "attn1_kv_patch" not in unet_model.options
    assert torch.equal(_step(patched), _step(unet_model))


def test_the_network_is_left_unhooked(hypernetworks, unet_model):
    write_safetensors(hypernetworks / "tiny.safetensors", hypernetwork_state(3))
    (patched,) = HypernetworkLoader.execute(unet_model, "tiny.safetensors", 1.0)
    plain = _step(unet_model)
    _step(patched)
    attn = _first_block(unet_model).attn1
    assert not attn.to_k._forward_pre_hooks and not attn.to_v._forward_pre_hooks
    assert torch.equal(_step(unet_model), plain)


def test_two_hypernetworks_apply_in_order(hypernetworks, unet_model):
    first, second = hypernetwork_state(4), hypernetwork_state(5)
    write_safetensors(hypernetworks / "a.safetensors", first)
    write_safetensors(hypernetworks / "b.safetensors", second)
    (stacked,) = HypernetworkLoader.execute(HypernetworkLoader.execute(unet_model, "a.safetensors", 0.5)[0],
                                            "b.safetensors", 0.8)
    hidden = _projection_inputs(unet_model)["attn1.to_k"]
    once = hidden + _by_hand(first[32][0], hidden, "relu", False) * 0.5
    twice = once + _by_hand(second[32][0], once, "relu", False) * 0.8
    torch.testing.assert_close(_projection_inputs(stacked)["attn1.to_k"], twice, rtol=1e-5, atol=1e-5)


def test_pickles_follow_the_pickle_rule(hypernetworks, unet_model, monkeypatch):
    state = hypernetwork_state(6)
    torch.save(state, hypernetworks / "tiny.pt")
    write_safetensors(hypernetworks / "tiny.safetensors", state)
    monkeypatch.setattr(config, "_current", config.RuntimeConfig(allow_pickle=False))
    with pytest.raises(ValueError, match=r"HypernetworkLoader: input 'hypernetwork_name': tiny\.pt is pickled.*"
                                         r"--allow-pickle"):
        HypernetworkLoader.execute(unet_model, "tiny.pt", 1.0)
    monkeypatch.setattr(config, "_current", config.RuntimeConfig(allow_pickle=True))
    from_pickle = _step(HypernetworkLoader.execute(unet_model, "tiny.pt", 1.0)[0])
    assert torch.equal(from_pickle, _step(HypernetworkLoader.execute(unet_model, "tiny.safetensors", 1.0)[0]))


@pytest.mark.parametrize("case, message", [
    ("no widths", "holds no hypernetwork layers"),
    ("activation", "unsupported activation_func 'gelu'"),
    ("wrong width", "must map 32 features to 32"),
    ("missing norm", "is_layer_norm is set but"),
])
def test_files_that_are_not_hypernetworks(hypernetworks, unet_model, monkeypatch, case, message):
    monkeypatch.setattr(config, "_current", config.RuntimeConfig(allow_pickle=True))
    state = hypernetwork_state(7)
    if case == "no widths":
        state = {"activation_func": "relu", "weights": torch.zeros(2)}
    elif case == "activation":
        state["activation_func"] = "gelu"
    elif case == "wrong width":
        state[32][0]["linear.0.weight"] = torch.zeros(64, 48)
    else:
        state["is_layer_norm"] = True
    torch.save(state, hypernetworks / "bad.pt")
    with pytest.raises(ValueError, match=f"HypernetworkLoader: input 'hypernetwork_name': bad.pt.*{message}"):
        HypernetworkLoader.execute(unet_model, "bad.pt", 1.0)


def test_safetensors_with_other_key_names_are_refused(hypernetworks, unet_model):
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(hypernetworks / "lora.safetensors"))
    with pytest.raises(ValueError, match="HypernetworkLoader: input 'hypernetwork_name': lora.safetensors: tensor "
                                         "'lora_unet_down.weight' is not named"):
        HypernetworkLoader.execute(unet_model, "lora.safetensors", 1.0)


def test_bad_inputs_name_node_and_input(hypernetworks, unet_model):
    with pytest.raises(ValueError, match="HypernetworkLoader: input 'hypernetwork_name'"):
        HypernetworkLoader.execute(unet_model, "missing.pt", 1.0)
    with pytest.raises(ValueError, match="HypernetworkLoader: input 'strength'"):
        HypernetworkLoader.execute(unet_model, "missing.pt", 11.0)
    write_safetensors(hypernetworks / "tiny.safetensors", hypernetwork_state(1))
    with pytest.raises(ValueError, match="HypernetworkLoader: input 'model' is None, not a MODEL"):
        run_node("HypernetworkLoader", model=None, hypernetwork_name="tiny.safetensors", strength=1.0)
