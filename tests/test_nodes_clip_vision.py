"""CLIP vision and friends (issue 12): CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning, StyleModelLoader,
StyleModelApply and unCLIPCheckpointLoader.

Schemas against ComfyUI's nodes.py. Tiny random-weight vision towers are saved here in the layouts ComfyUI's
clip_vision loader reads (transformers ``vision_model.*``; OpenCLIP ``visual.*`` with fused attention, converted
back by hand below) at the real layer counts that tell ViT-L from ViT-H, at width 32. Their encodings are
compared with a direct transformers forward of the same weights on pixels preprocessed by the formula of
ComfyUI's ``clip_preprocess``, written out here. SigLIP is detected from shapes at its real width (1152) and
run through the same code at a tiny width. Redux's token maths and StyleModelApply's attention-mask growth are
recomputed independently from ComfyUI's ``comfy/ldm/flux/redux.py`` and ``StyleModelApply.apply_stylemodel``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from loom.nodes.clip_vision import (CLIPVisionEncode, CLIPVisionLoader, StyleModelApply, StyleModelLoader,
                                    unCLIPCheckpointLoader, unCLIPConditioning)
from loom.nodes.runtime import clip_vision as cv
from tests.fixtures_checkpoints import build_state_dict, write_checkpoint
from tests.fixtures_sockets import run_node

COND = ["CONDITIONING", {}]

# name -> (display_name, category, required inputs (folder combos as None), outputs)
COMFY = {
    "CLIPVisionLoader": ("Load CLIP Vision", "model/loaders", {"clip_name": None}, ["CLIP_VISION"]),
    "CLIPVisionEncode": ("CLIP Vision Encode", "model/conditioning",
                         {"clip_vision": ["CLIP_VISION", {}], "image": ["IMAGE", {}],
                          "crop": [["center", "none"], {}]}, ["CLIP_VISION_OUTPUT"]),
    "unCLIPConditioning": ("unCLIPConditioning", "model/conditioning",
                           {"conditioning": COND, "clip_vision_output": ["CLIP_VISION_OUTPUT", {}],
                            "strength": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}],
                            "noise_augmentation": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}]},
                           ["CONDITIONING"]),
    "StyleModelLoader": ("Load Style Model", "model/loaders", {"style_model_name": None}, ["STYLE_MODEL"]),
    "StyleModelApply": ("Apply Style Model", "model/conditioning",
                        {"conditioning": COND, "style_model": ["STYLE_MODEL", {}],
                         "clip_vision_output": ["CLIP_VISION_OUTPUT", {}],
                         "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}],
                         "strength_type": [["multiply", "attn_bias"], {}]}, ["CONDITIONING"]),
    "unCLIPCheckpointLoader": ("Load unCLIP Checkpoint", "model/loaders", {"ckpt_name": None},
                               ["MODEL", "CLIP", "VAE", "CLIP_VISION"]),
}
FOLDERS = {"clip_name": "clip_vision", "style_model_name": "style_models", "ckpt_name": "checkpoints"}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_is_comfyuis(registry, base_dir, name):
    from loom.nodes.kernel import folders

    display, category, required, outputs = COMFY[name]
    info = registry.object_info(name)[name]
    assert (info["display_name"], info["category"], info["description"]) == (display, category, "")
    assert info["input_order"] == {"required": list(required)}
    assert "optional" not in info["input"]
    for input_name, expected in required.items():
        got = info["input"]["required"][input_name]
        if expected is None:  # a model folder's files
            assert got == [folders.list_files(FOLDERS[input_name]), {}]
        else:
            assert got == expected
    assert info["output"] == outputs and info["output_name"] == outputs
    assert info["output_is_list"] == [False] * len(outputs) and info["output_node"] is False


def test_model_folders_are_comfyuis(base_dir):
    from loom.nodes.kernel import folders

    assert folders.MODEL_FOLDERS["clip_vision"] == ("clip_vision",)
    assert folders.MODEL_FOLDERS["style_models"] == ("style_models",)


# ---- tiny vision towers -----------------------------------------------------------------------------------

WIDTH, PATCH, SIDE = 32, 14, 2  # 2x2 patches of 14 px: a 28 px input


def _clip_model(layers: int, act: str, projection: int = 16, seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=layers,
                              num_attention_heads=16, image_size=SIDE * PATCH, patch_size=PATCH,
                              projection_dim=projection, hidden_act=act, layer_norm_eps=1e-5)
    model = CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():  # LayerNorms away from 1/0, so they matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _hf_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _to_openclip(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers names -> OpenCLIP's ``visual.*`` (the inverse of ComfyUI's convert_to_transformers)."""
    e = "vision_model.embeddings."
    out = {"visual.class_embedding": state[e + "class_embedding"],
           "visual.conv1.weight": state[e + "patch_embedding.weight"],
           "visual.positional_embedding": state[e + "position_embedding.weight"],
           "visual.ln_pre.weight": state["vision_model.pre_layrnorm.weight"],
           "visual.ln_pre.bias": state["vision_model.pre_layrnorm.bias"],
           "visual.ln_post.weight": state["vision_model.post_layernorm.weight"],
           "visual.ln_post.bias": state["vision_model.post_layernorm.bias"],
           "visual.proj": state["visual_projection.weight"].t().contiguous()}
    for i in range(layers):
        src, dst = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                     ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
            for kind in ("weight", "bias"):
                out[f"{dst}{b}.{kind}"] = state[f"{src}{a}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]).contiguous()
    return out


def _as_stored(model):
    """A CPU float32 copy of ``model`` with its weights rounded as the loader stores them on this machine (fp16
    on a GPU, as ComfyUI's text-encoder dtype), the reference the loaded model must match."""
    import copy

    from loom.nodes.runtime import devices

    storage = devices.text_encoder_dtype(devices.compute_device())
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(storage).float())
    return reference


def _tolerance() -> dict:
    from loom.nodes.runtime import devices

    # a GPU's convolutions may use TF32; on the CPU the same float32 maths gives the same numbers
    return {"rtol": 1e-5, "atol": 1e-5} if devices.compute_device().type == "cpu" else {"rtol": 5e-3, "atol": 5e-3}


def reference_preprocess(image: torch.Tensor, size: int, mean, std, crop: bool) -> torch.Tensor:
    """ComfyUI's clip_preprocess, spelled out: RGB, bicubic+antialias (short side to size and centre-cut, or
    squashed), 8-bit quantisation, (x - mean) / std."""
    x = image[..., :3].permute(0, 3, 1, 2)
    h, w = x.shape[2], x.shape[3]
    if (h, w) != (size, size):
        if crop:
            s = size / min(h, w)
            x = F.interpolate(x, size=(round(s * h), round(s * w)), mode="bicubic", antialias=True)
            top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
            x = x[:, :, top:top + size, left:left + size]
        else:
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    x = (x * 255).clamp(0, 255).round() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _image(h: int, w: int, channels: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, h, w, channels, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def vision_files(base_dir):
    folder = base_dir / "models" / "clip_vision"
    folder.mkdir(parents=True, exist_ok=True)
    vit_l = _clip_model(24, "quick_gelu", seed=0)
    vit_h = _clip_model(32, "gelu", seed=1)
    save_file(_hf_state(vit_l), str(folder / "tiny-vit-l.safetensors"))
    save_file(_to_openclip(_hf_state(vit_h), 32), str(folder / "tiny-vit-h-openclip.safetensors"))
    return {"vit-l": vit_l, "vit-h": vit_h}


@pytest.mark.parametrize("file, kind", [("tiny-vit-l.safetensors", "vit-l"),
                                        ("tiny-vit-h-openclip.safetensors", "vit-h")])
@pytest.mark.parametrize("crop", ["center", "none"])
def test_encode_equals_a_direct_transformers_forward_on_comfyuis_preprocessing(vision_files, file, kind, crop):
    (vision,) = CLIPVisionLoader.execute(file)
    assert vision.architecture.kind == kind and vision.image_size == SIDE * PATCH
    assert vision.architecture.hidden_act == ("quick_gelu" if kind == "vit-l" else "gelu")
    image = _image(40, 60, channels=4)  # alpha dropped; not square, so the crop modes differ
    (out,) = CLIPVisionEncode.execute(vision, image, crop)

    pixels = reference_preprocess(image, SIDE * PATCH, cv.CLIP_MEAN, cv.CLIP_STD, crop == "center")
    with torch.no_grad():
        direct = _as_stored(vision_files[kind])(pixel_values=pixels, output_hidden_states=True)
    close = _tolerance()
    torch.testing.assert_close(out.last_hidden_state, direct.last_hidden_state, **close)
    torch.testing.assert_close(out["image_embeds"], direct.image_embeds, **close)
    torch.testing.assert_close(out.penultimate_hidden_states, direct.hidden_states[-2], **close)
    assert out.last_hidden_state.shape == (2, SIDE * SIDE + 1, WIDTH) and out.image_embeds.shape == (2, 16)
    assert out.image_sizes == [torch.Size([3, 28, 28])] * 2 and out.mm_projected is None
    assert not torch.equal(out.penultimate_hidden_states, out.last_hidden_state)


def test_crop_modes_and_an_image_already_at_size():
    image = _image(40, 60)
    center = cv.clip_preprocess(image, 28, crop=True)
    squash = cv.clip_preprocess(image, 28, crop=False)
    assert center.shape == squash.shape == (2, 3, 28, 28) and not torch.allclose(center, squash)
    # centre crop = resize the short side to 28 (28x42) and cut columns 7..35
    resized = F.interpolate(image.permute(0, 3, 1, 2), size=(28, 42), mode="bicubic", antialias=True)[:, :, :, 7:35]
    expected = ((resized * 255).clamp(0, 255).round() / 255 - torch.tensor(cv.CLIP_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(cv.CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(center, expected, rtol=0, atol=1e-6)
    # already 28x28: no resampling in either mode, only the 8-bit rounding
    small = _image(28, 28)
    for crop in (True, False):
        got = cv.clip_preprocess(small, 28, crop=crop)
        want = ((small.permute(0, 3, 1, 2) * 255).round() / 255 - torch.tensor(cv.CLIP_MEAN).view(1, 3, 1, 1)) \
            / torch.tensor(cv.CLIP_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_openclip_and_transformers_layouts_give_the_same_model(base_dir):
    folder = base_dir / "models" / "clip_vision"
    folder.mkdir(parents=True, exist_ok=True)
    model = _clip_model(24, "quick_gelu", seed=3)
    save_file(_hf_state(model), str(folder / "hf.safetensors"))
    save_file(_to_openclip(_hf_state(model), 24), str(folder / "openclip.safetensors"))
    (a,) = CLIPVisionLoader.execute("hf.safetensors")
    (b,) = CLIPVisionLoader.execute("openclip.safetensors")
    for (ka, va), (kb, vb) in zip(sorted(a.module.state_dict().items()), sorted(b.module.state_dict().items())):
        assert ka == kb and torch.equal(va, vb)


def _shapes(layers: int, width: int, positions: int, patch: int, *, projection: int | None = 768,
            flat_patch: bool = False) -> dict[str, tuple[int, ...]]:
    shapes = {"vision_model.embeddings.patch_embedding.weight": (width, 3 * patch * patch) if flat_patch
              else (width, 3, patch, patch),
              "vision_model.embeddings.position_embedding.weight": (positions, width)}
    if projection is not None:
        shapes["vision_model.embeddings.class_embedding"] = (width,)
        shapes["visual_projection.weight"] = (projection, width)
    for i in range(layers):
        shapes[f"vision_model.encoder.layers.{i}.layer_norm1.weight"] = (width,)
        shapes[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] = (width * 4, width)
    return shapes


@pytest.mark.parametrize("shapes, kind, image_size, act", [
    (_shapes(24, 1024, 257, 14), "vit-l", 224, "quick_gelu"),
    (_shapes(24, 1024, 577, 14), "vit-l-336", 336, "quick_gelu"),
    (_shapes(32, 1280, 257, 14, projection=1024), "vit-h", 224, "gelu"),
    (_shapes(48, 1664, 257, 14, projection=1280), "vit-bigg", 224, "gelu"),
    (_shapes(27, 1152, 729, 14, projection=None), "siglip-384", 384, "gelu_pytorch_tanh"),
    (_shapes(27, 1152, 1024, 16, projection=None), "siglip-512", 512, "gelu_pytorch_tanh"),
])
def test_detection_from_shapes_is_comfyuis(shapes, kind, image_size, act):
    arch = cv.detect(shapes)
    assert (arch.kind, arch.image_size, arch.hidden_act, arch.num_heads) == (kind, image_size, act, 16)
    siglip = kind.startswith("siglip")
    assert arch.is_siglip is siglip and arch.projection_dim == (None if siglip else shapes["visual_projection.weight"][0])
    assert (arch.mean, arch.std) == ((cv.SIGLIP_MEAN, cv.SIGLIP_STD) if siglip else (cv.CLIP_MEAN, cv.CLIP_STD))


def test_what_is_not_a_loadable_vision_model_is_named():
    with pytest.raises(cv.ClipVisionError, match="does not contain a valid vision model.*found 2 vision encoder"):
        cv.detect(_shapes(2, 32, 5, 14))
    with pytest.raises(cv.ClipVisionError, match="DINOv2"):
        cv.detect({"encoder.layer.23.layer_scale2.lambda1": (1024,)})
    with pytest.raises(cv.ClipVisionError, match="diffusion model or checkpoint"):
        cv.detect({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)})
    with pytest.raises(cv.ClipVisionError, match="NaFlex"):
        cv.detect(_shapes(27, 1152, 256, 16, projection=None, flat_patch=True))


def test_loader_errors_name_the_node_and_the_file(base_dir):
    folder = base_dir / "models" / "clip_vision"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_hf_state(_clip_model(2, "quick_gelu")), str(folder / "too-small.safetensors"))
    with pytest.raises(ValueError, match="CLIPVisionLoader: input 'clip_name': could not load 'too-small.safetensors'"
                                         ".*does not contain a valid vision model"):
        CLIPVisionLoader.execute("too-small.safetensors")
    state = _hf_state(_clip_model(24, "quick_gelu"))
    del state["vision_model.encoder.layers.5.mlp.fc2.bias"]
    save_file(state, str(folder / "damaged.safetensors"))
    with pytest.raises(ValueError, match="CLIPVisionLoader.*damaged.safetensors.*1 missing.*layers.5.mlp.fc2.bias"):
        CLIPVisionLoader.execute("damaged.safetensors")
    with pytest.raises(ValueError, match="CLIPVisionEncode: input 'clip_vision' is None, not a CLIP_VISION: the "
                                         "checkpoint it came from has no CLIP vision model"):
        run_node("CLIPVisionEncode", clip_vision=None, image=_image(28, 28), crop="center")


def _siglip(seed: int = 0):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=3, num_attention_heads=16,
                                image_size=SIDE * PATCH, patch_size=PATCH, hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-5, vision_use_head=False)
    return SiglipVisionModel(config).eval()


def test_siglip_outputs_are_comfyuis_normed_tokens_without_projection():
    model = _siglip()
    # as files carry it: under vision_model., with the pooling head ComfyUI does not load
    state = {"vision_model." + k.removeprefix("vision_model."): v.clone() for k, v in model.state_dict().items()}
    state["vision_model.head.probe"] = torch.zeros(1, 1, WIDTH)
    state["vision_model.head.mlp.fc1.weight"] = torch.zeros(64, WIDTH)
    arch = cv.VisionArchitecture(kind="siglip-384", model_type="siglip_vision_model", hidden_size=WIDTH,
                                 intermediate_size=64, num_layers=3, patch_size=PATCH, image_size=SIDE * PATCH,
                                 projection_dim=None, hidden_act="gelu_pytorch_tanh", mean=cv.SIGLIP_MEAN,
                                 std=cv.SIGLIP_STD)
    vision = cv.build(state, arch, device="cpu", storage_dtype=torch.float32)
    image = _image(30, 50)
    out = vision.encode_image(image, crop=True)
    pixels = reference_preprocess(image, SIDE * PATCH, cv.SIGLIP_MEAN, cv.SIGLIP_STD, True)
    with torch.no_grad():
        direct = model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, direct.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.image_embeds, out.last_hidden_state)  # no projection: the normed tokens
    torch.testing.assert_close(out.penultimate_hidden_states, direct.hidden_states[-2], rtol=1e-5, atol=1e-5)
    assert out.all_hidden_states.shape == (2, 3, SIDE * SIDE, WIDTH)
    torch.testing.assert_close(out.all_hidden_states[:, -2], out.penultimate_hidden_states)


def test_weights_are_rounded_to_the_storage_dtype_and_computed_in_float32():
    model = _clip_model(24, "quick_gelu")
    arch = cv.detect({k: tuple(v.shape) for k, v in _hf_state(model).items()})
    vision = cv.build(_hf_state(model), arch, device="cpu", storage_dtype=torch.float16)
    weight = vision.module.state_dict()["vision_model.encoder.layers.0.mlp.fc1.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, model.state_dict()["vision_model.encoder.layers.0.mlp.fc1.weight"].half().float())


# ---- unCLIPConditioning -----------------------------------------------------------------------------------

def test_unclip_conditioning_appends_comfyuis_entries():
    marker = cv.ClipVisionOutput()
    marker["last_hidden_state"] = torch.zeros(1, 5, 8)
    other = cv.ClipVisionOutput()
    other["last_hidden_state"] = torch.ones(1, 5, 8)
    conditioning = [[torch.randn(1, 77, 8), {"pooled_output": torch.randn(1, 8)}], [torch.randn(1, 77, 8), {}]]
    (once,) = unCLIPConditioning.execute(conditioning, marker, 0.7, 0.25)
    (twice,) = unCLIPConditioning.execute(once, other, -2.0, 0.0)
    for (cond, options), (source_cond, source_options) in zip(twice, conditioning):
        assert cond is source_cond
        assert options["unclip_conditioning"] == [
            {"clip_vision_output": marker, "strength": 0.7, "noise_augmentation": 0.25},
            {"clip_vision_output": other, "strength": -2.0, "noise_augmentation": 0.0}]
        assert "unclip_conditioning" not in source_options  # the input is untouched
    assert len(once[0][1]["unclip_conditioning"]) == 1
    assert twice[0][1]["pooled_output"] is conditioning[0][1]["pooled_output"]
    (same,) = unCLIPConditioning.execute(conditioning, marker, 0.0, 0.5)
    assert same == conditioning and "unclip_conditioning" not in same[0][1]


# ---- style models (FLUX Redux) -----------------------------------------------------------------------------

TXT, REDUX_DIM = 8, WIDTH


@pytest.fixture
def redux_file(base_dir):
    folder = base_dir / "models" / "style_models"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    state = {"redux_up.weight": torch.randn(3 * TXT, REDUX_DIM, generator=g) * 0.2,
             "redux_up.bias": torch.randn(3 * TXT, generator=g) * 0.1,
             "redux_down.weight": torch.randn(TXT, 3 * TXT, generator=g) * 0.2,
             "redux_down.bias": torch.randn(TXT, generator=g) * 0.1}
    save_file(state, str(folder / "tiny-redux.safetensors"))
    return state


def _vision_output(batch: int = 2, tokens: int = 4, width: int = REDUX_DIM) -> cv.ClipVisionOutput:
    out = cv.ClipVisionOutput()
    out["last_hidden_state"] = torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(9))
    return out


def _redux(state, hidden):
    """comfy/ldm/flux/redux.py: redux_down(silu(redux_up(x)))."""
    up = hidden @ state["redux_up.weight"].t() + state["redux_up.bias"]
    return F.silu(up) @ state["redux_down.weight"].t() + state["redux_down.bias"]


def test_style_model_apply_multiply_appends_the_scaled_redux_tokens(redux_file):
    (style,) = StyleModelLoader.execute("tiny-redux.safetensors")
    vision = _vision_output()
    txt = torch.randn(1, 3, TXT)
    conditioning = [[txt, {"pooled_output": torch.ones(1, 4)}], [txt * 2, {}]]
    (out,) = StyleModelApply.execute(conditioning, style, vision, 0.5, "multiply")
    tokens = _redux(redux_file, vision.last_hidden_state).reshape(1, 2 * 4, TXT) * 0.5  # both images, one row
    for (cond, options), (source, source_options) in zip(out, conditioning):
        assert cond.shape == (1, 3 + 8, TXT)
        assert torch.equal(cond[:, :3], source)
        torch.testing.assert_close(cond[:, 3:], tokens, rtol=1e-5, atol=1e-5)
        assert "attention_mask" not in options and options.keys() == source_options.keys()


def _expected_mask(n_txt: int, n: int, n_ref: int, bias: float, old: torch.Tensor | None) -> torch.Tensor:
    size = n_txt + n + n_ref
    mask = torch.zeros(1, size, size, dtype=torch.float16)
    if old is not None:  # the old mask's four quadrants around the new tokens
        mask[:, :n_txt, :n_txt] = old[:, :n_txt, :n_txt]
        mask[:, :n_txt, n_txt + n:] = old[:, :n_txt, n_txt:]
        mask[:, n_txt + n:, :n_txt] = old[:, n_txt:, :n_txt]
        mask[:, n_txt + n:, n_txt + n:] = old[:, n_txt:, n_txt:]
    mask[:, :n_txt, n_txt:n_txt + n] = math.log(bias) if bias > 0 else float("-inf")
    mask[:, n_txt + n:, n_txt:n_txt + n] = math.log(bias) if bias > 0 else float("-inf")
    return mask


def test_style_model_apply_attn_bias_grows_the_attention_mask(redux_file):
    (style,) = StyleModelLoader.execute("tiny-redux.safetensors")
    vision = _vision_output()
    txt = torch.randn(1, 3, TXT)
    (out,) = StyleModelApply.execute([[txt, {}]], style, vision, 0.25, "attn_bias")
    cond, options = out[0]
    torch.testing.assert_close(cond[:, 3:], _redux(redux_file, vision.last_hidden_state).reshape(1, 8, TXT),
                               rtol=1e-5, atol=1e-5)  # attn_bias does not scale the tokens
    assert options["attention_mask"].dtype == torch.float16
    assert torch.equal(options["attention_mask"], _expected_mask(3, 8, 1, 0.25, None))
    assert options["attention_mask_img_shape"] == (1, 1)
    # strength 1 with attn_bias and no mask: nothing to add
    (plain,) = StyleModelApply.execute([[txt, {}]], style, vision, 1.0, "attn_bias")
    assert "attention_mask" not in plain[0][1]
    # strength 0: log(0) = -inf, the tokens are masked out
    (zero,) = StyleModelApply.execute([[txt, {}]], style, vision, 0.0, "attn_bias")
    assert torch.equal(zero[0][1]["attention_mask"], _expected_mask(3, 8, 1, 0.0, None))


def test_style_model_apply_extends_an_existing_boolean_mask_with_reference_tokens(redux_file):
    (style,) = StyleModelLoader.execute("tiny-redux.safetensors")
    vision = _vision_output(batch=1)
    txt = torch.randn(1, 3, TXT)
    old = torch.rand(1, 3 + 4, 3 + 4, generator=torch.Generator().manual_seed(2)) > 0.3  # 3 text + 2x2 ref
    (out,) = StyleModelApply.execute([[txt, {"attention_mask": old, "attention_mask_img_shape": (2, 2)}]],
                                     style, vision, 3.0, "multiply")
    _, options = out[0]
    old_bias = torch.log(old.to(torch.float16))
    assert torch.equal(options["attention_mask"], _expected_mask(3, 4, 4, 1.0, old_bias))  # multiply: bias log(1)
    assert options["attention_mask_img_shape"] == (2, 2)


def test_style_model_errors(base_dir, redux_file):
    folder = base_dir / "models" / "style_models"
    save_file({"style_embedding": torch.zeros(1, 8, 768)}, str(folder / "t2i-style.safetensors"))
    with pytest.raises(ValueError, match="StyleModelLoader.*t2i-style.*T2I-Adapter style model"):
        StyleModelLoader.execute("t2i-style.safetensors")
    save_file({"weight": torch.zeros(2, 2)}, str(folder / "other.safetensors"))
    with pytest.raises(ValueError, match="invalid style model other.safetensors"):
        StyleModelLoader.execute("other.safetensors")
    (style,) = StyleModelLoader.execute("tiny-redux.safetensors")
    with pytest.raises(ValueError, match="StyleModelApply: the CLIP vision output has width 16, this Redux model "
                                         "takes 32"):
        StyleModelApply.execute([[torch.zeros(1, 3, TXT), {}]], style, _vision_output(width=16), 1.0, "multiply")


# ---- unCLIPCheckpointLoader ---------------------------------------------------------------------------------

def test_unclip_checkpoint_loader_on_a_plain_checkpoint_gives_no_clip_vision(base_dir):
    folder = base_dir / "models" / "checkpoints"
    write_checkpoint("sd1", folder / "tiny-sd1.safetensors")
    model, clip, vae, vision = unCLIPCheckpointLoader.execute("tiny-sd1.safetensors")
    assert model.family == "sd1" and clip is not None and vae is not None and vision is None


def test_an_sd21_unclip_checkpoint_is_a_clear_error(base_dir):
    folder = base_dir / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in build_state_dict("sd2").items()}
    state["embedder.model.visual.class_embedding"] = torch.zeros(32)
    state["noise_augmentor.betas"] = torch.zeros(1000)
    save_file(state, str(folder / "sd21-unclip-h.safetensors"))
    with pytest.raises(ValueError, match="unCLIPCheckpointLoader: input 'ckpt_name': could not load "
                                         "'sd21-unclip-h.safetensors': it is an SD2.1 unCLIP checkpoint"):
        unCLIPCheckpointLoader.execute("sd21-unclip-h.safetensors")
