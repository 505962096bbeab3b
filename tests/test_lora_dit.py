"""LoRA on the diffusion transformers (FLUX.1, SD3): each naming scheme ComfyUI maps reaches exactly the
weights it names; a LoRA on a weight the file fuses (BFL ``qkv``/``linear1``, MMDiT ``qkv``, the (shift, scale)
final modulation) gives the same network as patching the fused weight by hand and converting it afterwards;
unmatched keys are a warning, a LoRA for another family an error naming the node and the input.

The references are built here from the original-layout state dicts: ``W + strength * alpha / rank * up @ down``
on the fused weight, then the runtime's converters (``flux_layout.build_transformer``, diffusers' SD3
converter), which the LoRA code does not use.
"""
from __future__ import annotations

import logging

import pytest
import torch

from loom.nodes.runtime import flux_layout
from loom.nodes.runtime.checkpoint import load_checkpoint
from tests import fixtures_flux
from tests.fixtures_checkpoints import checkpoint_path

torch.set_num_threads(2)

RANK = 4
ALPHA = 2.0
STRENGTH = 0.8


def _low_rank(out: int, inp: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, inp, generator=generator) / inp ** 0.5
    up = torch.randn(out, RANK, generator=generator) * 0.5
    return down, up


def make_lora(modules: dict[str, tuple[str, tuple[int, int]]], style: str, seed: int = 1
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``modules``: LoRA module name -> (the weight it changes in the reference layout, its shape).

    Returns the LoRA state dict (kohya ``lora_down``/``lora_up``/``alpha`` or peft ``lora_A``/``lora_B``) and
    each reference weight's change ``alpha / rank * up @ down`` (peft: no alpha, scale 1)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    for name, (weight, (out, inp)) in modules.items():
        down, up = _low_rank(out, inp, generator)
        if style == "kohya":
            state.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                          f"{name}.alpha": torch.tensor(ALPHA)})
            scale = ALPHA / RANK
        else:
            state.update({f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up})
            scale = 1.0
        deltas[weight] = scale * (up.double() @ down.double())
    return state, deltas


def _patched(state: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    for weight, delta in deltas.items():
        out[weight] = (state[weight].double() + STRENGTH * delta).float()
    return out


def _save(state: dict[str, torch.Tensor], folder, name: str) -> str:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
    return name


def _params_while_applied(handle) -> dict[str, torch.Tensor]:
    (stack,) = handle.patches
    with stack.applied(handle):
        return {k: v.detach().clone() for k, v in handle.unet.named_parameters()}


def _assert_same_network(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
                         base: dict[str, torch.Tensor], targeted: set[str]) -> None:
    """Every parameter equals the reference's; exactly ``targeted`` differ from the base model."""
    assert got.keys() == want.keys()
    changed = {k for k in got if not torch.equal(got[k], base[k])}
    assert changed == targeted
    for key in got:
        assert torch.allclose(got[key], want[key], atol=2e-6, rtol=1e-6), key


# ---------------------------------------------------------------------------------------------
# FLUX.1
# ---------------------------------------------------------------------------------------------

W = fixtures_flux.FLUX_WIDTH
# BFL module -> (its weight's shape, the diffusers parameters it becomes)
FLUX_BFL = {
    "double_blocks.0.img_attn.qkv": ((3 * W, W), [f"transformer_blocks.0.attn.to_{n}" for n in "qkv"]),
    "double_blocks.0.txt_attn.qkv": ((3 * W, W), [f"transformer_blocks.0.attn.add_{n}_proj" for n in "qkv"]),
    "double_blocks.0.img_mlp.0": ((4 * W, W), ["transformer_blocks.0.ff.net.0.proj"]),
    "double_blocks.0.txt_mod.lin": ((6 * W, W), ["transformer_blocks.0.norm1_context.linear"]),
    "single_blocks.0.linear1": ((7 * W, W), [f"single_transformer_blocks.0.attn.to_{n}" for n in "qkv"]
                                + ["single_transformer_blocks.0.proj_mlp"]),
    "single_blocks.0.linear2": ((W, 5 * W), ["single_transformer_blocks.0.proj_out"]),
    "final_layer.adaLN_modulation.1": ((2 * W, W), ["norm_out.linear"]),
    "img_in": ((W, 64), ["x_embedder"]),
}
FLUX_DIFFUSERS = {
    "transformer_blocks.0.attn.to_q": (W, W),
    "transformer_blocks.0.attn.add_v_proj": (W, W),
    "transformer_blocks.0.ff.net.0.proj": (4 * W, W),
    "single_transformer_blocks.0.attn.to_k": (W, W),
    "single_transformer_blocks.0.proj_mlp": (4 * W, W),
    "norm_out.linear": (2 * W, W),
    "x_embedder": (W, 64),
}
FLUX_SCHEMES = {  # scheme -> (module name as the file writes it, style, layout of the names)
    "kohya": (lambda m: "lora_unet_" + m.replace(".", "_"), "kohya", "bfl"),
    "bfl": (lambda m: "diffusion_model." + m, "peft", "bfl"),
    "diffusers": (lambda m: "transformer." + m, "peft", "diffusers"),
    "onetrainer": (lambda m: "lora_transformer_" + m.replace(".", "_"), "kohya", "diffusers"),
}


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    path = fixtures_flux.write_flux_checkpoint(tmp_path_factory.mktemp("flux") / "flux.safetensors",
                                               dtype=torch.float32)
    model, clip, _vae = load_checkpoint(path, device="cpu")
    return model, clip


def _flux_lora(scheme: str):
    name_of, style, layout = FLUX_SCHEMES[scheme]
    if layout == "bfl":
        modules = {name_of(m): (m + ".weight", shape) for m, (shape, _) in FLUX_BFL.items()}
        targeted = {f"transformer.{p}.weight" for _, paths in FLUX_BFL.values() for p in paths}
    else:
        modules = {name_of(m): (m + ".weight", shape) for m, shape in FLUX_DIFFUSERS.items()}
        targeted = {f"transformer.{m}.weight" for m in FLUX_DIFFUSERS}
    state, deltas = make_lora(modules, style)
    return state, deltas, layout, targeted


def _flux_reference(deltas: dict[str, torch.Tensor], layout: str) -> flux_layout.FluxNetwork:
    """The tiny FLUX with the LoRA merged by hand into the BFL (fused) or diffusers weights, then built."""
    bfl = fixtures_flux.flux_bfl_state_dict()
    if layout == "bfl":
        tensors = _patched(bfl, deltas)
    else:
        config = flux_layout.config_from_bfl({k: tuple(v.shape) for k, v in bfl.items()})
        tensors = _patched(flux_layout.convert_bfl(bfl, config), deltas)
    module, _config = flux_layout.build_transformer(tensors, compute_dtype=torch.float32)
    return flux_layout.FluxNetwork(module, torch.float32)


def _flux_inputs(seed: int = 3) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 6, 8, generator=g), torch.tensor([0.7]),
            torch.randn(1, 5, fixtures_flux.FLUX_CONTEXT, generator=g),
            torch.randn(1, fixtures_flux.FLUX_POOLED, generator=g), torch.tensor([3.5]))


@pytest.mark.parametrize("scheme", sorted(FLUX_SCHEMES))
def test_flux_lora_schemes_equal_the_hand_merged_network(scheme, flux, base_dir):
    from loom.nodes.lora import LoraLoaderModelOnly

    model, _clip = flux
    state, deltas, layout, targeted = _flux_lora(scheme)
    name = _save(state, base_dir / "models" / "loras", f"flux_{scheme}.safetensors")
    base = {k: v.detach().clone() for k, v in model.unet.named_parameters()}
    (patched,) = LoraLoaderModelOnly.execute(model, name, STRENGTH)
    reference = _flux_reference(deltas, layout)
    _assert_same_network(_params_while_applied(patched), dict(reference.named_parameters()), base, targeted)

    inputs = _flux_inputs()
    (stack,) = patched.patches
    with stack.applied(patched):
        got = patched.unet(*inputs)
    want = reference(*inputs)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert not torch.allclose(model.unet(*inputs), want, atol=1e-3)  # the LoRA does change the output
    assert all(torch.equal(v, base[k]) for k, v in model.unet.named_parameters())  # restored exactly


def test_flux_lora_loader_with_clip_and_fused_and_split_names_together(flux, base_dir):
    """LoraLoader on a FLUX MODEL/CLIP pair; a file naming both the fused qkv and one split part adds both."""
    from loom.nodes.lora import LoraLoader

    model, clip = flux
    modules = {"lora_unet_double_blocks_0_img_attn_qkv": ("double_blocks.0.img_attn.qkv.weight", (3 * W, W))}
    state, deltas = make_lora(modules, "kohya")
    split, split_delta = make_lora({"transformer.transformer_blocks.0.attn.to_k": ("to_k", (W, W))}, "peft", seed=5)
    state.update(split)
    fused = deltas["double_blocks.0.img_attn.qkv.weight"].clone()
    fused[W:2 * W] += split_delta["to_k"]
    name = _save(state, base_dir / "models" / "loras", "flux_both.safetensors")
    base = {k: v.detach().clone() for k, v in model.unet.named_parameters()}
    patched, patched_clip = LoraLoader.execute(model, clip, name, STRENGTH, 1.0)
    assert patched_clip is clip  # no text-encoder modules: the CLIP handle is passed through
    reference = _flux_reference({"double_blocks.0.img_attn.qkv.weight": fused}, "bfl")
    targeted = {f"transformer.transformer_blocks.0.attn.to_{n}.weight" for n in "qkv"}
    _assert_same_network(_params_while_applied(patched), dict(reference.named_parameters()), base, targeted)


def test_flux_unmatched_keys_are_a_warning_naming_them(flux, base_dir, caplog):
    from loom.nodes.lora import LoraLoaderModelOnly

    model, _clip = flux
    modules = {"lora_unet_double_blocks_0_img_attn_qkv": ("double_blocks.0.img_attn.qkv.weight", (3 * W, W)),
               "lora_unet_double_blocks_7_img_attn_qkv": ("nowhere", (3 * W, W))}
    state, _ = make_lora(modules, "kohya")
    name = _save(state, base_dir / "models" / "loras", "flux_partial.safetensors")
    with caplog.at_level(logging.WARNING, logger="loom.nodes.runtime.lora"):
        (patched,) = LoraLoaderModelOnly.execute(model, name, 1.0)
    (stack,) = patched.patches
    (lora,) = stack.loras
    assert sorted(path for _, path in lora.updates) == [f"transformer.transformer_blocks.0.attn.to_{n}" for n in "kqv"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("lora key not loaded: lora_unet_double_blocks_7_img_attn_qkv" in w for w in warnings), warnings
    assert not any("double_blocks_0" in w for w in warnings)


def test_lora_for_another_family_is_a_clear_error(flux, base_dir):
    from loom.nodes.lora import LoraLoader, LoraLoaderModelOnly
    from tests.fixtures_lora import build_lora

    model, clip = flux
    loras = base_dir / "models" / "loras"
    sd1 = _save(build_lora("kohya_sd1"), loras, "sd1.safetensors")
    with pytest.raises(ValueError) as caught:
        LoraLoader.execute(model, clip, sd1, 1.0, 1.0)
    message = str(caught.value)
    assert message.startswith("LoraLoader: input 'lora_name':") and "does not fit this model" in message
    assert "SD1/SD2/SDXL UNet" in message and "lora_unet_down_blocks" in message

    sd3_model, _sd3_clip, _vae = load_checkpoint(checkpoint_path("sd3"), device="cpu")
    state, _ = make_lora({"lora_unet_double_blocks_0_img_attn_qkv": ("x", (3 * W, W)),
                          "lora_unet_single_blocks_0_linear1": ("y", (7 * W, W))}, "kohya")
    flux_lora = _save(state, loras, "flux_for_sd3.safetensors")
    with pytest.raises(ValueError) as caught:
        LoraLoaderModelOnly.execute(sd3_model, flux_lora, 1.0)
    message = str(caught.value)
    assert message.startswith("LoraLoaderModelOnly: input 'lora_name':") and "FLUX.1" in message
    assert "lora_unet_double_blocks_0_img_attn_qkv" in message

    wrong, _ = make_lora({"lora_unet_double_blocks_0_img_attn_qkv": ("x", (2 * W, W))}, "kohya")
    misfit = _save(wrong, loras, "flux_misfit.safetensors")
    with pytest.raises(ValueError, match=r"LoraLoaderModelOnly: input 'lora_name':.*wrong shape.*img_attn_qkv"):
        LoraLoaderModelOnly.execute(model, misfit, 1.0)


# ---------------------------------------------------------------------------------------------
# SD3
# ---------------------------------------------------------------------------------------------

SD3_PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def sd3():
    model, clip, _vae = load_checkpoint(checkpoint_path("sd3"), device="cpu")
    return model, clip


def _sd3_original() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = load_file(str(checkpoint_path("sd3")))
    return {k[len(SD3_PREFIX):]: v.float() for k, v in state.items() if k.startswith(SD3_PREFIX)}


def _sd3_network(model, mmdit: dict[str, torch.Tensor]):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    network = SD3Transformer2DModel(**model.options["unet_config"])
    network.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(dict(mmdit)), strict=True)
    return network


def _sd3_call(network, seed: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return network(hidden_states=torch.randn(1, 16, 8, 8, generator=g),
                       encoder_hidden_states=torch.randn(1, 6, 4096, generator=g),
                       pooled_projections=torch.randn(1, network.config.pooled_projection_dim, generator=g),
                       timestep=torch.tensor([500.0]), return_dict=False)[0]


def _sd3_modules(network) -> tuple[int, int]:
    hidden = network.config.attention_head_dim * network.config.num_attention_heads
    return hidden, network.config.num_layers - 1


@pytest.mark.parametrize("scheme", ["diffusers", "onetrainer", "kohya_mmdit"])
def test_sd3_lora_schemes_equal_the_hand_merged_network(scheme, sd3, base_dir):
    from loom.nodes.lora import LoraLoader

    model, clip = sd3
    hidden, last = _sd3_modules(model.unet)
    original = _sd3_original()
    if scheme == "kohya_mmdit":  # the MMDiT's own names, fused qkv and (shift, scale) modulations included
        names = ["joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.context_block.attn.qkv",
                 "joint_blocks.0.x_block.mlp.fc1", f"joint_blocks.{last}.context_block.adaLN_modulation.1",
                 "final_layer.adaLN_modulation.1", "context_embedder"]
        modules = {"lora_unet_" + n.replace(".", "_"): (n + ".weight", tuple(original[n + ".weight"].shape))
                   for n in names}
        state, deltas = make_lora(modules, "kohya")
        reference = _sd3_network(model, _patched(original, deltas))
        targeted = {f"transformer_blocks.0.attn.{p}.weight" for p in
                    ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")}
        targeted |= {"transformer_blocks.0.ff.net.0.proj.weight", f"transformer_blocks.{last}.norm1_context.linear.weight",
                     "norm_out.linear.weight", "context_embedder.weight"}
    else:
        paths = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
                 "transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.ff_context.net.2",
                 f"transformer_blocks.{last}.norm1_context.linear", "norm_out.linear", "proj_out"]
        diffusers_state = dict(_sd3_network(model, original).state_dict())
        name_of = (lambda p: "transformer." + p) if scheme == "diffusers" else \
            (lambda p: "lora_transformer_" + p.replace(".", "_"))
        modules = {name_of(p): (p + ".weight", tuple(diffusers_state[p + ".weight"].shape)) for p in paths}
        state, deltas = make_lora(modules, "peft" if scheme == "diffusers" else "kohya")
        reference = _sd3_network(model, original)
        reference.load_state_dict(_patched(diffusers_state, deltas), strict=True)
        targeted = {p + ".weight" for p in paths}
    name = _save(state, base_dir / "models" / "loras", f"sd3_{scheme}.safetensors")
    base = {k: v.detach().clone() for k, v in model.unet.named_parameters()}
    patched, patched_clip = LoraLoader.execute(model, clip, name, STRENGTH, 1.0)
    assert patched_clip is clip
    _assert_same_network(_params_while_applied(patched), dict(reference.named_parameters()), base, targeted)

    (stack,) = patched.patches
    with stack.applied(patched):
        got = _sd3_call(patched.unet)
    want = _sd3_call(reference)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert not torch.allclose(_sd3_call(model.unet), want, atol=1e-4)
    assert all(torch.equal(v, base[k]) for k, v in model.unet.named_parameters())


# ---------------------------------------------------------------------------------------------
# Text encoders of the DiT families (ComfyUI's model_lora_keys_clip numbering)
# ---------------------------------------------------------------------------------------------

def test_text_encoder_names_follow_comfyui_numbering(flux, sd3, base_dir):
    from loom.nodes.lora import LoraLoader
    from loom.nodes.runtime.lora import text_encoder_key_map
    from loom.nodes.runtime.text_encoding import encode_text

    _model, flux_clip = flux
    key_map = text_encoder_key_map(flux_clip)
    q = ("l", "text_model.encoder.layers.0.self_attn.q_proj")
    t5_q = ("t5xxl", "model.encoder.block.0.layer.0.SelfAttention.q")
    assert key_map["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] == q
    assert key_map["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == q
    assert key_map["lora_te2_encoder_block_0_layer_0_SelfAttention_q"] == t5_q  # OneTrainer FLUX
    assert key_map["lora_te3_encoder_block_0_layer_0_SelfAttention_q"] == t5_q
    _sd3_model, sd3_clip = sd3
    key_map = text_encoder_key_map(sd3_clip)
    assert key_map["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"][0] == "l"
    assert key_map["lora_te2_text_model_encoder_layers_0_self_attn_q_proj"][0] == "g"

    model, clip = flux
    clip_width = clip.encoders["l"][1].get_submodule(q[1]).weight.shape
    t5_width = clip.encoders["t5xxl"][1].get_submodule(t5_q[1]).weight.shape
    state, _ = make_lora({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": ("l", tuple(clip_width)),
                          "lora_te2_encoder_block_0_layer_0_SelfAttention_q": ("t5", tuple(t5_width)),
                          "lora_unet_img_in": ("img_in", (W, 64))}, "kohya")
    name = _save(state, base_dir / "models" / "loras", "flux_te.safetensors")
    patched, patched_clip = LoraLoader.execute(model, clip, name, 1.0, 1.0)
    (stack,) = patched_clip.patches
    assert sorted(target for target in stack.loras[0].updates) == sorted([q, t5_q])
    plain, with_lora = encode_text(clip, "a red fox"), encode_text(patched_clip, "a red fox")
    assert not torch.allclose(plain[0][0], with_lora[0][0], atol=1e-4)
