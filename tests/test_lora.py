"""LoRA: file formats onto the tiny checkpoints, ComfyUI's merge arithmetic, chaining, no in-place changes."""
from __future__ import annotations

import json

import pytest
import torch

from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.sampling import sample
from loom.nodes.runtime.text_encoding import encode_text
from tests.conftest import CONFORMANCE, require_shared
from tests.fixtures_checkpoints import checkpoint_path
from tests.fixtures_lora import KINDS, build_lora, manual_delta, write_lora


@pytest.fixture(scope="module")
def sd1():
    model, clip, _vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    return model, clip


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    files = {kind: write_lora(kind, folder / f"{kind}.safetensors") for kind in KINDS}
    files["kohya_sd1_b"] = write_lora("kohya_sd1", folder / "kohya_sd1_b.safetensors", seed=7)
    return files


@pytest.fixture
def loras_dir(base_dir, lora_files):
    folder = base_dir / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in lora_files.items():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _sample(model, conds, seed=1):
    positive, negative = conds
    return sample(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, seed=seed, steps=2, cfg=4.0,
                  sampler_name="euler", scheduler="normal")


def _snapshot(module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (param, param.detach().clone()) for name, param in module.named_parameters()}


def _unchanged(module: torch.nn.Module, snapshot) -> bool:
    return all(param is snapshot[name][0] and torch.equal(param, snapshot[name][1])
               for name, param in module.named_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_maps_every_module_onto_the_model(kind):
    from loom.nodes.runtime.lora import parse_lora

    family = "sdxl" if kind == "kohya_sdxl" else "sd1"
    model, clip, _vae = load_checkpoint(checkpoint_path(family), device="cpu")
    lora = parse_lora(build_lora(kind), kind)
    unet_updates, te_updates = lora.for_models(model, clip)
    assert len(unet_updates) + len(te_updates) == len(lora.modules)
    assert {component for component, _ in te_updates} == set(clip.encoders)
    assert any(u.mid is not None for u in unet_updates.values()) == kind.startswith("kohya")  # Tucker LoCon
    assert any(model.unet.get_submodule(path).weight.ndim == 4 and model.unet.get_submodule(path).kernel_size == (3, 3)
               for _, path in unet_updates)


def test_diffusers_and_ldm_module_names_reach_the_same_weights(sd1):
    from loom.nodes.runtime.lora import parse_lora

    model, clip = sd1
    by_diffusers = parse_lora(build_lora("kohya_sd1"), "a").for_models(model, clip)
    by_ldm = parse_lora(build_lora("kohya_sd1_ldm"), "b").for_models(model, clip)
    for got, want in zip(by_ldm, by_diffusers):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k].up, want[k].up) for k in got)


def test_ldm_names_agree_with_diffusers_converter_on_full_size_sd15():
    """The runtime's diffusers→LDM module names invert diffusers' own LDM→diffusers UNet converter."""
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    from loom.nodes.runtime import families
    from loom.nodes.runtime.lora import unet_module_to_ldm

    manifest = require_shared(CONFORMANCE / "sd15-keys.json")
    shapes = {k: tuple(v) for k, v in json.loads(manifest.read_text())["tensors"].items()}
    config = families.unet_config(shapes, LDM_UNET_KEY, families.FAMILIES["sd1"])
    fake = {k.removeprefix(LDM_UNET_KEY): torch.empty(0) for k in shapes if k.startswith(LDM_UNET_KEY)}
    converted = convert_ldm_unet_checkpoint({LDM_UNET_KEY + k: v for k, v in fake.items()}, config)
    ldm_of = {id(t): k for k, t in fake.items()}
    up_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    checked = 0
    for key, tensor in converted.items():
        if not key.endswith(".weight"):
            continue
        path = key.removesuffix(".weight")
        ldm = unet_module_to_ldm(path, config["layers_per_block"], up_attention)
        expected = ldm_of[id(tensor)].removesuffix(".weight")
        assert ldm == expected, path
        checked += 1
    assert checked > 380  # every weight of the SD1.5 UNet


def test_strength_matches_manual_merge_and_weights_are_restored_exactly(sd1):
    from loom.nodes.runtime.lora import LoraPatch, parse_lora, with_lora

    model, clip = sd1
    state = build_lora("kohya_sd1")
    lora = parse_lora(state, "a")
    unet_updates, _ = lora.for_models(model, clip)
    patched = model.replace(patches=with_lora(model.patches, LoraPatch("a", 0.7, unet_updates)))
    before = _snapshot(model.unet)
    by_target = {target: name for name, target in lora_targets(lora, model).items()}
    stack = patched.patches[0]
    with stack.applied(patched):
        for (component, path), name in by_target.items():
            weight = model.unet.get_submodule(path).weight
            original = before[path + ".weight"][1].double()
            expected = original + 0.7 * manual_delta(state, name, original.shape)
            assert torch.allclose(weight.double(), expected, atol=1e-5, rtol=0), path
    assert _unchanged(model.unet, before)


def lora_targets(lora, model) -> dict[str, tuple[str, str]]:
    from loom.nodes.runtime.lora import unet_key_map

    key_map = unet_key_map(model.unet)
    return {name: key_map[name] for name in lora.modules if name in key_map}


def test_strength_zero_is_bit_identical_and_model_only_loader(loras_dir, sd1):
    from loom.nodes.lora import LoraLoader, LoraLoaderModelOnly

    model, clip = sd1
    assert LoraLoader.execute(model, clip, "kohya_sd1.safetensors", 0.0, 0.0) == (model, clip)
    conds = (encode_text(clip, "a red fox"), encode_text(clip, ""))
    base = _sample(model, conds)
    zero_model, lora_clip = LoraLoader.execute(model, clip, "kohya_sd1.safetensors", 0.0, 1.0)
    assert zero_model is model and lora_clip is not clip
    assert torch.equal(_sample(zero_model, conds), base)
    (only,) = LoraLoaderModelOnly.execute(model, "kohya_sd1.safetensors", 1.0)
    assert not torch.allclose(_sample(only, conds), base, atol=1e-3)
    (negative,) = LoraLoaderModelOnly.execute(model, "peft_sd1.safetensors", -1.5)  # negative strengths allowed
    assert not torch.allclose(_sample(negative, conds), base, atol=1e-3)


def test_two_loras_chain_and_the_base_model_stays_untouched(loras_dir, lora_files, sd1):
    from safetensors.torch import load_file

    from loom.nodes.lora import LoraLoader
    from loom.nodes.runtime.lora import lora_names, parse_lora

    model, clip = sd1
    conds = (encode_text(clip, "a red fox"), encode_text(clip, ""))
    base_before = _sample(model, conds)
    unet_before, clip_before = _snapshot(model.unet), _snapshot(clip.encoders["l"][1])

    m1, c1 = LoraLoader.execute(model, clip, "kohya_sd1.safetensors", 0.5, 0.5)
    m2, c2 = LoraLoader.execute(m1, c1, "kohya_sd1_b.safetensors", -0.25, 1.0)
    assert lora_names(m2) == [("kohya_sd1.safetensors", 0.5), ("kohya_sd1_b.safetensors", -0.25)]
    assert lora_names(m1) == [("kohya_sd1.safetensors", 0.5)] and model.patches == ()

    state_a = load_file(lora_files["kohya_sd1"])  # float16, as the nodes read them
    state_b = load_file(lora_files["kohya_sd1_b"])
    targets = lora_targets(parse_lora(state_a, "a"), model)
    with m2.patches[0].applied(m2):
        for name, (_component, path) in list(targets.items())[:12]:
            weight = model.unet.get_submodule(path).weight.double()
            original = unet_before[path + ".weight"][1].double()
            expected = original + 0.5 * manual_delta(state_a, name, original.shape) \
                - 0.25 * manual_delta(state_b, name, original.shape)
            assert torch.allclose(weight, expected, atol=1e-5, rtol=0), path

    chained = _sample(m2, (encode_text(c2, "a red fox"), encode_text(c2, "")))
    assert not torch.allclose(chained, base_before, atol=1e-3)
    assert _unchanged(model.unet, unet_before) and _unchanged(clip.encoders["l"][1], clip_before)
    assert torch.equal(_sample(model, conds), base_before)
    assert torch.equal(encode_text(clip, "a red fox")[0][0], conds[0][0][0])


def test_text_encoder_lora_equals_encoding_with_merged_weights(sd1):
    import copy

    from loom.nodes.runtime.lora import LoraPatch, parse_lora, with_lora

    _model, clip = sd1
    state = build_lora("kohya_sd1")
    te_updates = parse_lora(state, "a").for_text_encoders(clip)
    patched = clip.replace(patches=with_lora(clip.patches, LoraPatch("a", 0.6, te_updates)))

    merged_encoder = copy.deepcopy(clip.encoders["l"][1])
    with torch.no_grad():
        for (_name, path) in te_updates:
            module = merged_encoder.get_submodule(path)
            name = "lora_te_" + ("text_model." + path).replace("text_model.text_model.", "text_model.").replace(".", "_")
            merged_weight = module.weight.double() + 0.6 * manual_delta(state, name, module.weight.shape)
            module.weight.copy_(merged_weight.half().float())  # ComfyUI stores text encoders in float16
    merged = clip.replace(encoders={"l": (clip.encoders["l"][0], merged_encoder)})
    got = encode_text(patched, "a (red:1.2) fox")[0]
    want = encode_text(merged, "a (red:1.2) fox")[0]
    # a weight may round to the other neighbouring float16 when the delta is summed in another precision
    assert torch.allclose(got[0], want[0], atol=2e-4)
    assert torch.allclose(got[1]["pooled_output"], want[1]["pooled_output"], atol=2e-4)
    assert not torch.allclose(got[0], encode_text(clip, "a (red:1.2) fox")[0][0], atol=1e-4)


def test_sdxl_lora_through_the_executor_leaves_the_plain_branch_as_it_was(base_dir, lora_files):
    from loom.nodes.kernel.schema import default_registry
    from loom.server.executor import Executor

    (base_dir / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (base_dir / "models" / "checkpoints" / "xl.safetensors").write_bytes(checkpoint_path("sdxl").read_bytes())
    (base_dir / "models" / "loras").mkdir(parents=True, exist_ok=True)
    (base_dir / "models" / "loras" / "xl-lora.safetensors").write_bytes(lora_files["kohya_sdxl"].read_bytes())

    def branch(prefix: str, model: list, clip: list) -> dict:
        return {
            f"{prefix}p": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": clip}},
            f"{prefix}n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
            f"{prefix}k": {"class_type": "KSampler", "inputs": {
                "model": model, "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                "positive": [f"{prefix}p", 0], "negative": [f"{prefix}n", 0], "latent_image": ["e", 0],
                "denoise": 1.0}},
            f"{prefix}s": {"class_type": "SaveLatent", "inputs": {"samples": [f"{prefix}k", 0],
                                                                   "filename_prefix": prefix}},
        }

    common = {"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
              "e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    lora = {"l": {"class_type": "LoraLoader", "inputs": {"model": ["c", 0], "clip": ["c", 1],
                                                         "lora_name": "xl-lora.safetensors",
                                                         "strength_model": 1.0, "strength_clip": 1.0}}}
    executor = Executor(default_registry())
    with_lora = executor.execute({**common, **lora, **branch("lora", ["l", 0], ["l", 1])}, "p1")
    after = executor.execute({**common, **branch("plain", ["c", 0], ["c", 1])}, "p2")  # the same loaded model
    from loom.nodes.runtime import model_cache
    model_cache.free()
    fresh = Executor(default_registry()).execute({**common, **branch("fresh", ["c", 0], ["c", 1])}, "p3")
    assert with_lora.status == after.status == fresh.status == "success", (with_lora.error, after.error, fresh.error)

    from safetensors.torch import load_file
    latents = {p.name.split("_")[0]: load_file(p)["latent_tensor"] for p in (base_dir / "output").glob("*.latent")}
    assert sorted(latents) == ["fresh", "lora", "plain"]
    assert torch.allclose(latents["plain"], latents["fresh"], atol=1e-6, rtol=0)
    assert not torch.allclose(latents["lora"], latents["plain"], atol=1e-3)


def test_a_lora_for_another_model_is_a_clear_error(loras_dir, sd1, tmp_path):
    from loom.nodes.lora import LoraLoader

    model, clip = sd1
    with pytest.raises(ValueError) as caught:
        LoraLoader.execute(model, clip, "kohya_sdxl.safetensors", 1.0, 1.0)
    message = str(caught.value)
    assert message.startswith("LoraLoader: input 'lora_name':") and "does not fit this model" in message
    assert "lora_te1_text_model_encoder_layers_0_mlp_fc1" in message and "SDXL" in message

    from safetensors.torch import save_file
    save_file({"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2), "lora_unet_conv_in.hada_w1_b": torch.zeros(2, 2)},
              str(loras_dir / "loha.safetensors"))
    with pytest.raises(ValueError, match="LoHa network"):
        LoraLoader.execute(model, clip, "loha.safetensors", 1.0, 1.0)
