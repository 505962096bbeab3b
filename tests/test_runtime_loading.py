"""Loading single-file checkpoints: family detection, exact weights, clear errors, the model cache."""
from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch

from tests.fixtures_checkpoints import FAMILIES, build_state_dict

from loom.nodes.runtime import checkpoint, families, model_cache

EXPECTED = {  # family → (detected family, prediction, text encoders, context width)
    "sd1": ("sd1", "eps", ["l"], 32),
    "sd2": ("sd2", "eps", ["h"], 32),
    "sd2_v": ("sd2", "v", ["h"], 32),
    "sdxl": ("sdxl", "eps", ["l", "g"], 64),
    "sdxl_refiner": ("sdxl_refiner", "eps", ["g"], 32),
}


@pytest.fixture(scope="module")
def loaded(tiny_checkpoints):
    return {family: checkpoint.load_checkpoint(path, use_cache=False) for family, path in tiny_checkpoints.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_detected_and_loads(family, loaded, tiny_checkpoints):
    name, prediction, encoders, context = EXPECTED[family]
    model, clip, vae = loaded[family]
    assert model.family == name and clip.family == name
    assert model.sampling.prediction == prediction
    assert list(clip.encoders) == encoders
    assert model.unet.config.cross_attention_dim == context
    assert model.latent_format.scale_factor == (0.13025 if name.startswith("sdxl") else 0.18215)
    assert vae.downscale == 8
    assert not any(t.is_meta for t in model.unet.state_dict().values())
    detected = checkpoint.inspect_checkpoint(tiny_checkpoints[family])
    assert (detected.family.name, detected.prediction) == (name, prediction)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_loaded_weights_equal_the_file(family, loaded, tiny_checkpoints):
    """Every tensor of the file ends up in a module, unchanged (spot-checked through the LDM names)."""
    model, clip, vae = loaded[family]
    with checkpoint.StateDictFile(tiny_checkpoints[family]) as file:
        unet = model.unet.state_dict()
        assert torch.equal(unet["conv_in.weight"], file.read("model.diffusion_model.input_blocks.0.0.weight",
                                                              torch.float32))
        assert torch.equal(unet["conv_out.bias"], file.read("model.diffusion_model.out.2.bias", torch.float32))
        prefix = "cond_stage_model.transformer." if family == "sd1" else "conditioner.embedders.0.transformer."
        l_model = clip.encoders["l"][1]
        assert torch.equal(l_model.state_dict()["encoder.layers.1.mlp.fc2.weight"],
                           file.read(prefix + "text_model.encoder.layers.1.mlp.fc2.weight", torch.float32))
        attention = vae.vae.state_dict()["encoder.mid_block.attentions.0.to_q.weight"]
        assert torch.equal(attention, file.read("first_stage_model.encoder.mid.attn_1.q.weight",
                                                torch.float32)[:, :, 0, 0])
        if family == "sdxl":
            g_model = clip.encoders["g"][1]
            in_proj = file.read("conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
                                torch.float32)
            assert torch.equal(g_model.state_dict()["text_model.encoder.layers.2.self_attn.v_proj.weight"],
                               in_proj[64:])
            projection = file.read("conditioner.embedders.1.model.text_projection", torch.float32)
            assert torch.equal(g_model.state_dict()["text_projection.weight"], projection.T)


def test_loaded_unet_computes_like_the_diffusers_original():
    """Built from the LDM file, the UNet gives the same output as the diffusers module it came from."""
    from tests.fixtures_checkpoints import tiny_unet, unet_to_ldm

    torch.manual_seed(3)
    original = tiny_unet("sdxl", 64, pooled_dim=32).eval()
    with torch.no_grad():
        for p in original.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ldm = unet_to_ldm(original.state_dict(), original.config)
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    config = families.unet_config(shapes, "model.diffusion_model.", families.FAMILIES["sdxl"], pooled_dim=32)
    assert config["addition_time_embed_dim"] == 8
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    rebuilt = UNet2DConditionModel(**config).eval()
    rebuilt.load_state_dict(convert_ldm_unet_checkpoint(ldm, config), strict=True)
    x = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 77, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        expected = original(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        got = rebuilt(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_prediction_override_wins(tiny_checkpoints):
    assert checkpoint.inspect_checkpoint(tiny_checkpoints["sd2_v"], prediction="eps").prediction == "eps"
    detected = checkpoint.inspect_checkpoint(tiny_checkpoints["sd1"], prediction="v")
    assert detected.prediction == "v" and detected.prediction_source == "override"
    with pytest.raises(ValueError, match="prediction"):
        checkpoint.inspect_checkpoint(tiny_checkpoints["sd1"], prediction="flow")


def test_sdxl_marker_keys_set_v_prediction_and_zero_terminal_snr(tmp_path):
    state = build_state_dict("sdxl")
    state["v_pred"] = torch.tensor([])
    state["ztsnr"] = torch.tensor([])
    model = checkpoint.load_checkpoint(_save(tmp_path / "vpred.safetensors", state), use_cache=False)[0]
    assert model.sampling.prediction == "v" and model.options["prediction_source"] == "marker key"
    detected = checkpoint.inspect_checkpoint(tmp_path / "vpred.safetensors")
    assert detected.zero_terminal_snr
    plain = families.model_sampling(dataclasses.replace(detected, zero_terminal_snr=False))
    torch.testing.assert_close(model.sampling.sigmas[0], plain.sigmas[0], rtol=2e-3, atol=0)
    assert float(model.sampling.sigma_max) > 4000 > float(plain.sigma_max)  # zero terminal SNR: huge last sigma


def _save(path: Path, state: dict) -> Path:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_unknown_state_dict_is_a_clear_error(tmp_path):
    path = _save(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(4),
                                                 "img_in.weight": torch.ones(4, 4)})
    with pytest.raises(families.UnknownModelError) as error:
        checkpoint.load_checkpoint(path, use_cache=False)
    message = str(error.value)
    assert "flux.safetensors" in message and "double_blocks.0" in message and "SD1.x" in message


def test_text_encoder_that_does_not_fit_the_unet_is_an_error(tmp_path):
    state = build_state_dict("sd1")
    token = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    state[token] = torch.zeros(49408, 48)
    with pytest.raises(families.UnknownModelError, match="cross-attention width 32"):
        checkpoint.load_checkpoint(_save(tmp_path / "mixed.safetensors", state), use_cache=False)


def test_missing_tensor_is_named(tmp_path):
    state = build_state_dict("sd1")
    del state["first_stage_model.decoder.up.0.block.0.conv1.bias"]
    path = _save(tmp_path / "broken.safetensors", state)
    with pytest.raises(checkpoint.CheckpointError, match="broken.safetensors.*VAE.*1 missing.*up_blocks.3"):
        checkpoint.load_checkpoint(path, use_cache=False)
    del state["model.diffusion_model.out.2.weight"]
    path = _save(tmp_path / "broken2.safetensors", state)
    with pytest.raises(checkpoint.CheckpointError, match="UNet lacks the tensor model.diffusion_model.out.2.weight"):
        checkpoint.load_checkpoint(path, use_cache=False)


def test_left_over_tensor_is_named(tmp_path):
    state = build_state_dict("sd1")
    state["model.diffusion_model.input_blocks.1.0.extra_layer.weight"] = torch.ones(3)
    with pytest.raises(checkpoint.CheckpointError, match="UNet .*1 unexpected.*extra_layer"):
        checkpoint.load_checkpoint(_save(tmp_path / "extra.safetensors", state), use_cache=False)
    del state["model.diffusion_model.input_blocks.1.0.extra_layer.weight"]
    state["model.diffusion_model.mystery.weight"] = torch.ones(3)
    with pytest.raises(checkpoint.CheckpointError, match="not understood.*mystery"):
        checkpoint.load_checkpoint(_save(tmp_path / "extra2.safetensors", state), use_cache=False)


def test_truncated_and_garbage_files_are_clear_errors(tmp_path, tiny_checkpoints):
    data = tiny_checkpoints["sd1"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load_checkpoint(tmp_path / "cut.safetensors", use_cache=False)
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable safetensors"):
        checkpoint.load_checkpoint(tmp_path / "junk.safetensors", use_cache=False)


def test_pickles_need_the_flag_and_load_weights_only(tmp_path, monkeypatch):
    state = build_state_dict("sd1")
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {k: v.half() for k, v in state.items()}}, path)
    from loom.nodes.kernel import config

    monkeypatch.setattr(config, "_current", config.RuntimeConfig(allow_pickle=False))
    with pytest.raises(checkpoint.CheckpointError, match="--allow-pickle"):
        checkpoint.load_checkpoint(path, use_cache=False)
    monkeypatch.setattr(config, "_current", config.RuntimeConfig(allow_pickle=True))
    model, clip, vae = checkpoint.load_checkpoint(path, use_cache=False)
    assert model.family == "sd1"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.ckpt")
    with pytest.raises(checkpoint.CheckpointError, match="weights_only"):
        checkpoint.load_checkpoint(tmp_path / "evil.ckpt", use_cache=False)


def test_standalone_vae_loads_with_and_without_prefix(tmp_path, loaded):
    state = {k: v for k, v in build_state_dict("sd1").items() if k.startswith("first_stage_model.")}
    bare = {k.removeprefix("first_stage_model."): v for k, v in state.items()}
    for name, tensors in (("prefixed.safetensors", state), ("bare.safetensors", bare)):
        vae = checkpoint.load_vae(_save(tmp_path / name, tensors), use_cache=False)
        reference = loaded["sd1"][2].vae.state_dict()
        assert all(torch.allclose(v, reference[k], atol=1e-3) for k, v in vae.vae.state_dict().items())
    diffusers_layout = _save(tmp_path / "diffusers.safetensors", loaded["sd1"][2].vae.state_dict())
    vae = checkpoint.load_vae(diffusers_layout, use_cache=False)
    assert all(torch.equal(v, reference[k]) for k, v in vae.vae.state_dict().items())
    with pytest.raises(checkpoint.CheckpointError, match="not a VAE"):
        checkpoint.load_vae(_save(tmp_path / "x.safetensors", {"a.weight": torch.ones(2)}), use_cache=False)


def test_header_metadata_is_read(tiny_checkpoints):
    with checkpoint.StateDictFile(tiny_checkpoints["sdxl"]) as file:
        assert file.metadata["family"] == "sdxl"
    header_size = struct.unpack("<Q", tiny_checkpoints["sdxl"].read_bytes()[:8])[0]
    header = json.loads(tiny_checkpoints["sdxl"].read_bytes()[8:8 + header_size])
    assert len(file.shapes) == len(header) - 1


def test_model_cache_keeps_models_and_evicts_lru(tiny_checkpoints):
    cache = model_cache.ModelCache(budget_bytes=10**12)
    loads = []

    def loader(tag):
        def load():
            loads.append(tag)
            return torch.nn.Linear(256, 256)
        return load

    first = cache.get_or_load("a", loader("a"))
    assert cache.get_or_load("a", loader("a")) is first and loads == ["a"]
    size = model_cache.tensor_bytes(first)
    assert size == (256 * 256 + 256) * 4
    cache.budget_bytes = 2 * size
    cache.get_or_load("b", loader("b"))
    cache.get("a")  # a is now the most recently used
    cache.get_or_load("c", loader("c"))
    assert set(cache.keys()) == {"a", "c"}
    assert cache.free() == 2 and len(cache) == 0


def test_load_checkpoint_is_cached_by_file_identity(tiny_checkpoints, tmp_path):
    import shutil
    path = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_checkpoints["sd1"], path)
    first = checkpoint.load_checkpoint(path)
    assert checkpoint.load_checkpoint(path) is first
    shutil.copyfile(tiny_checkpoints["sd2"], path)  # replaced under the same name
    assert checkpoint.load_checkpoint(path)[0].family == "sd2"
    model_cache.free()


def test_loader_nodes(registry, tiny_models_dir):
    from tests.fixtures_checkpoints import FILE_NAMES

    loader = registry.get("CheckpointLoaderSimple")
    assert FILE_NAMES["sdxl"] in loader.schema().input("ckpt_name").choices()
    model, clip, vae = loader.execute(ckpt_name=FILE_NAMES["sdxl"])
    assert (model.family, clip.family, vae.downscale) == ("sdxl", "sdxl", 8)
    assert loader.fingerprint(ckpt_name=FILE_NAMES["sdxl"]) is not None
    with pytest.raises(ValueError, match="CheckpointLoaderSimple: input 'ckpt_name': 'nope.safetensors' is not in"):
        loader.execute(ckpt_name="nope.safetensors")
    (tiny_models_dir / "models" / "checkpoints" / "junk.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="CheckpointLoaderSimple: input 'ckpt_name': could not load 'junk"):
        loader.execute(ckpt_name="junk.safetensors")
    state = {k: v for k, v in build_state_dict("sd1").items() if k.startswith("first_stage_model.")}
    _save(tiny_models_dir / "models" / "vae" / "tiny-vae.safetensors", state)
    assert registry.get("VAELoader").execute(vae_name="tiny-vae.safetensors")[0].downscale == 8
    model_cache.free()
