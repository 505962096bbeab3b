"""Split model loading and the FLUX nodes (nodes/loaders_split.py, nodes/runtime/split_loading.py,
nodes/runtime/families/flux.py): ComfyUI's schemas, which text encoder a file is, the CLIP handle each type
builds and its FLUX conditioning, UNETLoader's MODEL, and a tiny FLUX prompt run by the executor.
"""
from __future__ import annotations

import json

import pytest
import torch

from loom.nodes.kernel import folders
from loom.nodes.runtime import split_loading, t5
from tests import fixtures_flux

torch.set_num_threads(2)


@pytest.fixture
def flux_models(base_dir):
    """A base dir with a tiny FLUX dev and schnell transformer, CLIP-L, T5 and FLUX VAE in ComfyUI's folders."""
    models = base_dir / "models"
    fixtures_flux.write_flux_transformer(models / "diffusion_models" / "tiny-flux-dev.safetensors")
    fixtures_flux.write_flux_transformer(models / "unet" / "tiny-flux-schnell.safetensors", guidance=False,
                                         prefix="model.diffusion_model.")
    fixtures_flux.write_clip_l(models / "text_encoders" / "tiny-clip-l.safetensors")
    fixtures_flux.write_t5(models / "clip" / "tiny-t5.safetensors", width=fixtures_flux.FLUX_CONTEXT)
    fixtures_flux.write_flux_vae(models / "vae" / "tiny-flux-ae.safetensors")
    return base_dir


# ---------------------------------------------------------------------------------------------
# Schemas as ComfyUI 0.3.64 defines them (nodes.py, comfy_extras/nodes_sd3.py, nodes_flux.py)
# ---------------------------------------------------------------------------------------------

def test_schemas_match_comfyui(registry):
    schema = registry.get("UNETLoader").define_schema()
    assert (schema.display_name, schema.category) == ("Load Diffusion Model", "advanced/loaders")
    assert [s.name for s in schema.inputs] == ["unet_name", "weight_dtype"]
    assert schema.input("unet_name").folder == "diffusion_models"
    assert schema.input("weight_dtype").choices() == ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    assert [o.type for o in schema.outputs] == ["MODEL"]

    clip = registry.get("CLIPLoader").define_schema()
    assert (clip.display_name, clip.category) == ("Load CLIP", "advanced/loaders")
    assert clip.input("type").choices() == [
        "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2",
        "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"]
    device = clip.input("device")
    assert device.optional and device.advanced and device.choices() == ["default", "cpu"]
    assert clip.description.startswith("[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g")

    dual = registry.get("DualCLIPLoader").define_schema()
    assert [s.name for s in dual.inputs] == ["clip_name1", "clip_name2", "type", "device"]
    assert dual.input("type").choices() == ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
    assert "flux: clip-l, t5" in dual.description
    triple = registry.get("TripleCLIPLoader").define_schema()
    assert [s.name for s in triple.inputs] == ["clip_name1", "clip_name2", "clip_name3"]
    assert triple.description == "[Recipes]\n\nsd3: clip-l, clip-g, t5"
    for name in ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader"):
        schema = registry.get(name).define_schema()
        assert all(s.folder == "clip" for s in schema.inputs if s.name.startswith("clip_name"))  # text_encoders/, clip/

    guidance = registry.get("FluxGuidance").define_schema()
    assert guidance.category == "advanced/conditioning/flux"
    g = guidance.input("guidance")
    assert (g.default, g.min, g.max, g.step) == (3.5, 0.0, 100.0, 0.1)
    encode = registry.get("CLIPTextEncodeFlux").define_schema()
    assert [s.name for s in encode.inputs] == ["clip", "clip_l", "t5xxl", "guidance"]
    assert encode.input("clip_l").multiline and encode.input("t5xxl").dynamic_prompts
    assert encode.input("guidance").default == 3.5


# ---------------------------------------------------------------------------------------------
# Which text encoder a file holds
# ---------------------------------------------------------------------------------------------

def _clip_shapes(layers: int, prefix: str = "text_model.") -> dict:
    shapes = {prefix + "embeddings.token_embedding.weight": (49408, 32)}
    for i in range(layers):
        shapes[prefix + f"encoder.layers.{i}.mlp.fc1.weight"] = (64, 32)
    return shapes


def test_text_encoder_kinds_follow_comfyui_detection(tmp_path):
    identify = split_loading.identify_text_encoder
    assert identify("a", _clip_shapes(12)).kind == "clip_l"
    assert identify("a", _clip_shapes(24)).kind == "clip_h"
    assert identify("a", _clip_shapes(32)).kind == "clip_g"
    assert identify("a", _clip_shapes(2, prefix="")).kind == "clip_l"
    found = identify("a", fixtures_flux.t5_shapes())
    assert (found.kind, found.prefix, found.layout) == ("t5xxl", "", "t5")
    prefixed = {"text_encoders.t5xxl.transformer." + k: v for k, v in fixtures_flux.t5_shapes().items()}
    assert identify("a", prefixed).prefix == "text_encoders.t5xxl.transformer."
    with pytest.raises(split_loading.SplitLoadError, match="is not a text encoder Loom knows"):
        identify(tmp_path / "x.safetensors", {"foo.bar": (1,)})


def test_plan_errors_name_the_node_and_files(tmp_path):
    l = split_loading.TextEncoderFile(tmp_path / "l.safetensors", "clip_l", "", "hf")
    g = split_loading.TextEncoderFile(tmp_path / "g.safetensors", "clip_g", "", "hf")
    x = split_loading.TextEncoderFile(tmp_path / "t5.safetensors", "t5xxl", "", "t5")
    plan = split_loading.plan_clip
    assert plan("DualCLIPLoader", "flux", [x, l]) == ("flux", 256)
    assert plan("TripleCLIPLoader", "sd3", [l, g, x]) == ("sd3", 77)
    assert plan("DualCLIPLoader", "sdxl", [g, l]) == ("sdxl", 77)
    assert plan("CLIPLoader", "stable_diffusion", [g]) == ("sdxl_refiner", 77)
    with pytest.raises(split_loading.SplitLoadError, match=r"DualCLIPLoader: type 'flux' needs CLIP-L and T5-XXL; "
                                                            r"got l.safetensors \(CLIP-L\), g.safetensors \(CLIP-G\)"):
        plan("DualCLIPLoader", "flux", [l, g])
    with pytest.raises(split_loading.SplitLoadError, match="same kind of text encoder twice"):
        plan("DualCLIPLoader", "flux", [l, l])
    with pytest.raises(split_loading.SplitLoadError, match="CLIPLoader: type 'mochi' is not supported by Loom yet"):
        plan("CLIPLoader", "mochi", [x])


# ---------------------------------------------------------------------------------------------
# The FLUX CLIP handle and its conditioning
# ---------------------------------------------------------------------------------------------

def test_flux_clip_conditions_on_t5_with_clip_l_pooled(flux_models):
    from loom.nodes.runtime import text_encoding

    models = flux_models / "models"
    clip = split_loading.load_clip("DualCLIPLoader", [models / "clip" / "tiny-t5.safetensors",
                                                      models / "text_encoders" / "tiny-clip-l.safetensors"],
                                   "flux", device="cpu", use_cache=False)
    assert clip.family == "flux" and list(clip.encoders) == ["l", "t5xxl"]
    prompt = "a (red:1.2) fox in the snow"
    [[cond, options]] = text_encoding.encode_text(clip, prompt)
    assert cond.shape == (1, 256, fixtures_flux.FLUX_CONTEXT)
    t5_tokenizer, t5_encoder = clip.encoders["t5xxl"]
    expected = t5.encode_weighted(t5_encoder.model, t5.tokenize(prompt))
    assert torch.allclose(cond, expected)
    _, clip_l = clip.encoders["l"]
    chunks = text_encoding.tokenize(prompt, pad_token=49407, embedding_size=32, embedding_key="clip_l",
                                    embedding_dirs=[])
    _, pooled = text_encoding.run_clip(clip_l, [[t for t, _ in chunks[0]]], None, True, False)
    assert torch.allclose(options["pooled_output"], pooled)
    assert "guidance" not in options  # the model's default (3.5) applies until FluxGuidance sets one


def test_flux_guidance_and_clip_text_encode_flux(flux_models, registry):
    models = flux_models / "models"
    clip = registry.get("DualCLIPLoader").execute("tiny-clip-l.safetensors", "tiny-t5.safetensors", "flux")[0]
    conditioning = registry.get("CLIPTextEncode").execute("a fox", clip)[0]
    guided = registry.get("FluxGuidance").execute(conditioning, 2.5)[0]
    assert guided[0][1]["guidance"] == 2.5 and "guidance" not in conditioning[0][1]
    assert guided[0][0] is conditioning[0][0]
    [[cond, options]] = registry.get("CLIPTextEncodeFlux").execute(clip, "a fox", "a red fox in the snow", 4.0)[0]
    assert options["guidance"] == 4.0
    t5_only = t5.encode_weighted(clip.encoders["t5xxl"][1].model, t5.tokenize("a red fox in the snow"))
    assert torch.allclose(cond, t5_only)
    assert torch.allclose(options["pooled_output"], conditioning[0][1]["pooled_output"])  # CLIP-L saw "a fox"
    assert (models / "text_encoders").is_dir()


def test_clip_loader_errors_name_node_and_input(flux_models, registry):
    with pytest.raises(ValueError, match="DualCLIPLoader: type 'sdxl' needs CLIP-L and CLIP-G"):
        registry.get("DualCLIPLoader").execute("tiny-clip-l.safetensors", "tiny-t5.safetensors", "sdxl")
    with pytest.raises(ValueError, match="CLIPLoader: type 'hidream' is not supported by Loom yet"):
        registry.get("CLIPLoader").execute("tiny-t5.safetensors", "hidream")
    sd1_clip = registry.get("CLIPLoader").execute("tiny-clip-l.safetensors", "stable_diffusion")[0]
    assert sd1_clip.family == "sd1"
    with pytest.raises(ValueError, match="CLIPTextEncodeFlux: input 'clip' has no T5-XXL text encoder"):
        registry.get("CLIPTextEncodeFlux").execute(sd1_clip, "a", "b", 3.5)
    with pytest.raises(ValueError, match="'missing.safetensors' is not in the clip folder"):
        registry.get("CLIPLoader").execute("missing.safetensors", "sd3")


# ---------------------------------------------------------------------------------------------
# UNETLoader
# ---------------------------------------------------------------------------------------------

def test_unet_loader_gives_a_flux_model(flux_models, registry):
    from loom.nodes.runtime import families
    from loom.nodes.runtime.model_sampling import FlowSampling, FluxSampling

    dev = registry.get("UNETLoader").execute("tiny-flux-dev.safetensors", "default")[0]
    assert dev.family == "flux" and families.get("flux").name == "flux"
    assert isinstance(dev.sampling, FluxSampling) and dev.sampling.shift == pytest.approx(1.15)
    assert (dev.latent_format.channels, dev.latent_format.scale_factor, dev.latent_format.shift_factor) == \
        (16, 0.3611, 0.1159)
    schnell = registry.get("UNETLoader").execute("tiny-flux-schnell.safetensors", "fp8_e4m3fn")[0]
    assert isinstance(schnell.sampling, FlowSampling) and schnell.sampling.shift == 1.0
    assert schnell.sampling.multiplier == 1.0
    assert {p.dtype for p in schnell.unet.parameters()} == {torch.float8_e4m3fn}
    assert schnell.options["unet_config"]["guidance_embeds"] is False
    with pytest.raises(ValueError, match="UNETLoader: input 'unet_name': could not load 'not-flux.safetensors': "
                                         "not-flux.safetensors is not a diffusion model Loom can load"):
        from safetensors.torch import save_file
        save_file({"foo.weight": torch.zeros(2)}, str(flux_models / "models" / "diffusion_models" / "not-flux.safetensors"))
        registry.get("UNETLoader").execute("not-flux.safetensors", "default")


def test_flux_family_conditioning_inputs(flux_models, registry):
    from loom.nodes.runtime import families

    family = families.get("flux")
    model = registry.get("UNETLoader").execute("tiny-flux-dev.safetensors", "default")[0]
    pooled = torch.randn(1, fixtures_flux.FLUX_POOLED)
    extra = family.extra_conds(model, {"pooled_output": pooled}, (1, 16, 8, 8), "positive")
    assert torch.equal(extra["y"], pooled) and extra["guidance"].tolist() == [3.5]
    assert "guidance" not in family.extra_conds(model, {"pooled_output": pooled, "guidance": None}, (1, 16, 8, 8),
                                                "positive")
    x = torch.randn(1, 16, 6, 6)
    context = torch.randn(1, 7, fixtures_flux.FLUX_CONTEXT)
    out = family.apply_network(model, x, torch.tensor([0.5]), torch.tensor([0.5]), context, extra)
    assert torch.allclose(out, model.unet(x, torch.tensor([0.5]), context, pooled, 3.5))


# ---------------------------------------------------------------------------------------------
# A FLUX prompt through the executor
# ---------------------------------------------------------------------------------------------

FLUX_PROMPT = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "tiny-clip-l.safetensors",
                                                     "clip_name2": "tiny-t5.safetensors", "type": "flux"}},
    "3": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-flux-ae.safetensors"}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cabin in the woods", "clip": ["2", 0]}},
    "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
    "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
    "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["5", 0],
                                               "latent_image": ["6", 0], "seed": 1, "steps": 3, "cfg": 1.0,
                                               "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "flux"}},
}


@pytest.mark.parametrize("variant", ["dev", "schnell", "img2img"])
def test_tiny_flux_prompt_runs(flux_models, registry, variant):
    import numpy as np
    from PIL import Image as PILImage

    from loom.server.executor import Executor
    from loom.server.validation import validate_prompt

    prompt = json.loads(json.dumps(FLUX_PROMPT))
    if variant == "schnell":
        prompt["1"]["inputs"]["unet_name"] = "tiny-flux-schnell.safetensors"
    if variant == "img2img":  # LoadImage -> VAEEncode (16 channels) -> KSampler at denoise 0.6
        pixels = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
        (flux_models / "input").mkdir(exist_ok=True)
        PILImage.fromarray(pixels).save(flux_models / "input" / "start.png")
        prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "start.png"}}
        prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["3", 0]}}
        prompt["7"]["inputs"].update(latent_image=["11", 0], denoise=0.6)
    validation = validate_prompt(prompt, registry)
    assert validation.ok, validation.node_errors
    result = Executor(registry).execute(prompt, "tiny-flux", validation=validation)
    assert result.status == "success", result.error
    [image] = result.outputs["9"]["images"]
    from PIL import Image

    with Image.open(folders.output_dir() / image.get("subfolder", "") / image["filename"]) as saved:
        assert saved.size == (64, 48)


# ---------------------------------------------------------------------------------------------
# The FLUX autoencoder and all-in-one FLUX checkpoints
# ---------------------------------------------------------------------------------------------

def test_vae_loader_reads_the_flux_autoencoder(flux_models, registry):
    """ae.safetensors' layout (bare encoder./decoder., z 16, no quant convs) decodes as the diffusers module it
    was written from."""
    vae = registry.get("VAELoader").execute("tiny-flux-ae.safetensors")[0]
    config = vae.vae.config
    assert (config.latent_channels, config.use_quant_conv, config.use_post_quant_conv, vae.downscale) == \
        (16, False, False, 8)
    reference = fixtures_flux.tiny_flux_vae()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(parameter.half().float())
    latent = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    from loom.nodes.runtime import vae as vae_ops

    image = vae_ops.decode(vae, latent)
    with torch.no_grad():
        expected = ((reference.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert image.shape == (1, 32, 48, 3)
    assert torch.allclose(image, expected, atol=1e-5)


def test_conformance_flux_vae_loads_with_every_key_accounted_for(conformance_file):
    from loom.nodes.runtime import checkpoint

    vae = checkpoint.load_vae(conformance_file("flux-vae-conformance-s9.safetensors"), device="cpu", use_cache=False)
    assert vae.vae.config.latent_channels == 16 and not vae.vae.config.use_quant_conv


@pytest.mark.parametrize("with_t5", [True, False])
def test_checkpoint_loader_reads_all_in_one_flux(base_dir, registry, with_t5):
    from loom.nodes.runtime import text_encoding

    fixtures_flux.write_flux_checkpoint(base_dir / "models" / "checkpoints" / "tiny-flux-aio.safetensors", t5=with_t5)
    model, clip, vae = registry.get("CheckpointLoaderSimple").execute("tiny-flux-aio.safetensors")
    assert model.family == "flux" and model.latent_format.scale_factor == 0.3611
    assert vae.vae.config.latent_channels == 16
    if with_t5:
        assert list(clip.encoders) == ["l", "t5xxl"]
        assert clip.encoders["t5xxl"][1].model.shared.weight.dtype == torch.float16  # as stored; computed in float32
        [[cond, options]] = text_encoding.encode_text(clip, "a fox")
        assert cond.shape == (1, 256, fixtures_flux.FLUX_CONTEXT) and options["pooled_output"].shape == (1, 32)
    else:  # a FLUX file without T5 is paired with a DualCLIPLoader's CLIP; its own CLIP cannot encode alone
        assert list(clip.encoders) == ["l"]
        with pytest.raises(ValueError, match="a FLUX text encoder needs CLIP-L and T5-XXL"):
            text_encoding.encode_text(clip, "a fox")


def test_loom_run_of_comfyui_flux_dev_example(flux_models):
    """A UI workflow shaped like ComfyUI's FLUX dev example (UNETLoader + DualCLIPLoader + VAELoader, width and
    height PrimitiveNodes feeding EmptySD3LatentImage and ModelSamplingFlux, FluxGuidance, BasicGuider,
    SamplerCustomAdvanced) runs headless on the tiny FLUX files."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from loom.server import cli

    workflow = Path(__file__).parent / "workflows" / "flux-dev.json"
    sets = {"12.unet_name": "tiny-flux-dev.safetensors", "11.clip_name1": "tiny-t5.safetensors",
            "11.clip_name2": "tiny-clip-l.safetensors", "10.vae_name": "tiny-flux-ae.safetensors",
            "27.width": 64, "27.height": 48, "30.width": 64, "30.height": 48, "17.steps": 3, "25.noise_seed": 5}
    arguments = ["run", str(workflow), "--base-dir", str(flux_models), "--quiet"]
    for key, value in sets.items():
        arguments += ["--set", f"{key}={value}"]
    assert cli.main(arguments) == 0
    (saved,) = sorted((flux_models / "output").rglob("*.png"))
    with Image.open(saved) as picture:
        assert picture.size == (64, 48) and np.array(picture).std() > 0
        prompt = json.loads(picture.text["prompt"])
    assert prompt["30"]["class_type"] == "ModelSamplingFlux" and prompt["30"]["inputs"]["width"] == 64
    assert prompt["26"]["inputs"]["guidance"] == 3.5 and prompt["11"]["inputs"]["type"] == "flux"


@pytest.mark.parametrize("clip_type,family", [("sd3", "sd3"), ("sdxl", "sdxl")])
def test_dual_clip_loader_clip_l_and_g(base_dir, registry, clip_type, family):
    """CLIP-L (quick_gelu) and CLIP-G (gelu, text_projection kept) files, in either order, as an SD3 or SDXL CLIP."""
    from loom.nodes.runtime import families, text_encoding

    fixtures_flux.write_clip_l(base_dir / "models" / "text_encoders" / "l.safetensors")
    fixtures_flux.write_clip_g(base_dir / "models" / "text_encoders" / "g.safetensors", seed=1)
    clip = registry.get("DualCLIPLoader").execute("g.safetensors", "l.safetensors", clip_type)[0]
    assert clip.family == family and sorted(clip.encoders) == ["g", "l"]
    l_model, g_model = clip.encoders["l"][1], clip.encoders["g"][1]
    assert l_model.config.hidden_act == "quick_gelu" and g_model.config.hidden_act == "gelu"
    assert g_model.config.num_hidden_layers == 32 and hasattr(g_model, "text_projection")
    [[cond, options]] = text_encoding.encode_text(clip, "a fox")
    tokens = text_encoding.tokenize_for(clip, "a fox")
    outputs = {}
    for name in ("l", "g"):
        conv = families.get(family).text_convention(name)
        outputs[name] = text_encoding._encode_weighted(clip.encoders[name][1], tokens[name], conv, conv.default_layer)
    expected, pooled, _ = families.get(family).combine_text(outputs)
    assert torch.allclose(cond, expected) and torch.allclose(options["pooled_output"], pooled)
    assert cond.shape == ((1, 77, 4096) if family == "sd3" else (1, 77, 64))


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_unet_loader_reads_other_families_networks(base_dir, registry, prefix):
    """An SD3 MMDiT alone (bare or prefixed) loads as the same network CheckpointLoaderSimple builds."""
    from safetensors.torch import save_file

    from loom.nodes.runtime import checkpoint
    from tests.fixtures_checkpoints import checkpoint_path

    state = checkpoint.read_state_dict(checkpoint_path("sd3"))
    network = {prefix + k.removeprefix("model.diffusion_model."): v for k, v in state.items()
               if k.startswith("model.diffusion_model.")}
    save_file(network, str(base_dir / "models" / "diffusion_models" / "mmdit.safetensors"))
    model = registry.get("UNETLoader").execute("mmdit.safetensors", "default")[0]
    whole = checkpoint.load_checkpoint(checkpoint_path("sd3"), use_cache=False)[0]
    assert model.family == "sd3" and repr(model.sampling) == repr(whole.sampling)
    got, want = model.unet.state_dict(), whole.unet.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    with pytest.raises(ValueError, match="weight_dtype 'fp8_e4m3fn' is supported for FLUX transformers"):
        registry.get("UNETLoader").execute("mmdit.safetensors", "fp8_e4m3fn")


def _flux_table(dev: bool) -> torch.Tensor:
    """ComfyUI's sigma tables: dev ``e^mu / (e^mu + (1/t - 1))`` over 10,000 t (mu 1.15); schnell t itself
    over 1,000 (flow, shift 1)."""
    import math

    if dev:
        t = torch.arange(1, 10001, dtype=torch.float32) / 10000
        return math.exp(1.15) / (math.exp(1.15) + (1 / t - 1))
    return torch.arange(1, 1001, dtype=torch.float32) / 1000


@pytest.mark.parametrize("variant", ["dev_txt2img", "schnell_img2img"])
def test_tiny_flux_ksampler_matches_a_reference_loop(flux_models, registry, variant):
    """KSampler euler/simple on the tiny FLUX against ComfyUI's loop written out here: the latent format's shift
    and scale, the simple schedule (denoise < 1: int(steps / denoise) steps, the last steps + 1 sigmas), the
    seed's CPU noise mixed as sigma * noise + (1 - sigma) * latent, the model fed sigma, denoised = x - v * sigma,
    guidance 3.5 (dev), and the reference FLUX computation on the file's tensors."""
    from tests.test_runtime_flux import reference_flux

    dev = variant.startswith("dev")
    name = "tiny-flux-dev.safetensors" if dev else "tiny-flux-schnell.safetensors"
    model = registry.get("UNETLoader").execute(name, "default")[0]
    clip = registry.get("DualCLIPLoader").execute("tiny-clip-l.safetensors", "tiny-t5.safetensors", "flux")[0]
    positive = registry.get("FluxGuidance").execute(registry.get("CLIPTextEncode").execute("a cabin", clip)[0], 3.5)[0]
    if dev:
        latent, denoise = torch.zeros(1, 16, 6, 8), 1.0
    else:
        latent, denoise = torch.randn(1, 16, 6, 8, generator=torch.Generator().manual_seed(3)), 0.6
    steps, seed = 3, 11
    out = registry.get("KSampler").execute(model, seed, steps, 1.0, "euler", "simple", positive, positive,
                                           {"samples": latent}, denoise)[0]["samples"]

    sd = {k: v.half().float() for k, v in fixtures_flux.flux_bfl_state_dict(guidance=dev).items()}
    context, options = positive[0]
    table = _flux_table(dev)
    total = steps if denoise >= 1 else int(steps / denoise)
    stride = len(table) / total
    sigmas = [float(table[-(1 + int(i * stride))]) for i in range(total)] + [0.0]
    sigmas = torch.tensor(sigmas[-(steps + 1):])
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latent.shape, generator=generator)
    x = (latent - 0.1159) * 0.3611
    x = sigmas[0] * noise + (1 - sigmas[0]) * x
    for i in range(steps):
        sigma = sigmas[i:i + 1]
        pooled = options["pooled_output"][:, :fixtures_flux.FLUX_POOLED]  # ComfyUI: y[:, :vec_in_dim]
        v = reference_flux(sd, x, sigma, context, pooled, torch.tensor([3.5]) if dev else None,
                           heads=2, axes=(4, 14, 14))
        denoised = x - v * sigma
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
    expected = x / 0.3611 + 0.1159
    assert float((out - expected).norm() / expected.norm()) < 1e-4


@pytest.mark.parametrize("node, inputs, family", [
    ("CLIPLoader", {"clip_name": "tiny-t5.safetensors", "type": "wan"}, "Wan"),
    ("CLIPLoader", {"clip_name": "tiny-t5.safetensors", "type": "hidream"}, "HiDream"),
    ("DualCLIPLoader", {"clip_name1": "tiny-clip-l.safetensors", "clip_name2": "tiny-t5.safetensors",
                        "type": "hunyuan_video"}, "HunyuanVideo"),
])
def test_a_type_of_a_family_loom_lacks_fails_validation_naming_it(flux_models, registry, node, inputs, family):
    from loom.server.validation import validate_prompt

    prompt = {"1": {"class_type": node, "inputs": inputs},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": "a fox"}},
              "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
              "4": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors",
                                                           "weight_dtype": "default"}},
              "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "6": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                         "latent_image": ["5", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                         "sampler_name": "euler", "scheduler": "simple",
                                                         "denoise": 1.0}},
              "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "x"}}}
    result = validate_prompt(prompt, registry)
    assert not result.ok
    [line] = result.messages()
    assert line.startswith(f"node 1 ({node}) input 'type': Failed to validate prompt for output - type "
                           f"{inputs['type']!r} is the text encoder of {family}, a model family Loom does not "
                           "support yet (supported types: flux, sd3, sdxl, stable_diffusion)")
    prompt["1"]["inputs"]["type"] = "flux" if node == "DualCLIPLoader" else "sd3"  # a type Loom builds
    assert validate_prompt(prompt, registry).ok
