"""DiffControlNetLoader: a diff ControlNet (differences to the UNet's weights) built against the MODEL equals the
ordinary ControlNet file it was made from, in weights and in what it does to sampling."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.sampling import sample
from loom.nodes.runtime.text_encoding import encode_text
from tests.fixtures_checkpoints import checkpoint_path
from tests.fixtures_controlnet import build_controlnet, controlnet_to_ldm

UNET_PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same tiny SD1 ControlNet as an ordinary file and as a diff file (float32, so they match exactly)."""
    folder = tmp_path_factory.mktemp("diff-controlnets")
    model, _clip, _vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    plain = {"control_model." + k: v for k, v in
             controlnet_to_ldm(build_controlnet("sd1"), model.unet.config.layers_per_block).items()}
    unet = {k[len(UNET_PREFIX):]: v.float() for k, v in load_file(str(checkpoint_path("sd1"))).items()
            if k.startswith(UNET_PREFIX)}
    diff = {k: (v - unet[k[len("control_model."):]] if k[len("control_model."):] in unet else v)
            for k, v in plain.items()}
    shared = [k for k in plain if k[len("control_model."):] in unet]
    assert len(shared) > 20 and any(".zero_convs." in k or k.startswith("control_model.zero_convs") for k in plain)
    diff["difference"] = torch.tensor([1.0])
    save_file({k: v.float().contiguous() for k, v in plain.items()}, str(folder / "cn-plain.safetensors"))
    save_file({k: v.float().contiguous() for k, v in diff.items()}, str(folder / "cn-diff.safetensors"))
    return folder, shared


@pytest.fixture
def controlnet_dir(base_dir, files):
    folder = base_dir / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("cn-plain.safetensors", "cn-diff.safetensors"):
        (folder / name).write_bytes((files[0] / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def sd1():
    model, clip, _vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    return model, (encode_text(clip, "a house"), encode_text(clip, ""))


def test_schema_matches_comfyui(registry):
    info = registry.object_info("DiffControlNetLoader")["DiffControlNetLoader"]
    assert list(info["input"]["required"]) == ["model", "control_net_name"]
    assert info["input"]["required"]["model"][0] == "MODEL"
    assert info["output"] == ["CONTROL_NET"] and info["output_name"] == ["CONTROL_NET"]
    assert (info["category"], info["display_name"]) == ("model/loaders", "Load ControlNet Model (diff)")


def test_diff_weights_are_the_unet_weights_plus_the_diffs(controlnet_dir, sd1):
    from loom.nodes.controlnet import ControlNetLoader
    from loom.nodes.controlnet_diff import DiffControlNetLoader

    model = sd1[0]
    (built,) = DiffControlNetLoader.execute(model, "cn-diff.safetensors")
    (plain,) = ControlNetLoader.execute("cn-plain.safetensors")
    got, want = built.model.state_dict(), plain.model.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-6), key
    unet = model.unet.state_dict()
    diff = load_file(str(controlnet_dir / "cn-diff.safetensors"))
    # one shared tensor by name: conv_in is the LDM input_blocks.0.0
    assert torch.allclose(got["conv_in.weight"], unet["conv_in.weight"] + diff["control_model.input_blocks.0.0.weight"])
    # the ControlNet's own parts are used as stored
    assert torch.equal(got["controlnet_down_blocks.0.weight"], diff["control_model.zero_convs.0.0.weight"])


def test_diff_controlnet_samples_like_the_ordinary_file(controlnet_dir, sd1):
    from loom.nodes.controlnet import ControlNetApplyAdvanced, ControlNetLoader
    from loom.nodes.controlnet_diff import DiffControlNetLoader

    model, (positive, negative) = sd1
    image = torch.zeros(1, 64, 64, 3)
    image[:, 16:48, 16:48] = 1.0

    def run(control_net):
        pos, neg = ControlNetApplyAdvanced.execute(positive, negative, control_net, image, 1.0, 0.0, 1.0)
        return sample(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=2, steps=3, cfg=5.0,
                      sampler_name="euler", scheduler="normal")

    plain = run(ControlNetLoader.execute("cn-plain.safetensors")[0])
    built = run(DiffControlNetLoader.execute(model, "cn-diff.safetensors")[0])
    uncontrolled = sample(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, seed=2, steps=3,
                          cfg=5.0, sampler_name="euler", scheduler="normal")
    assert not torch.allclose(plain, uncontrolled, atol=1e-3)  # the ControlNet matters
    assert torch.allclose(built, plain, atol=1e-4)


def test_an_ordinary_file_loads_as_with_the_plain_loader(controlnet_dir, sd1):
    from loom.nodes.controlnet import ControlNetLoader
    from loom.nodes.controlnet_diff import DiffControlNetLoader

    (built,) = DiffControlNetLoader.execute(sd1[0], "cn-plain.safetensors")
    (plain,) = ControlNetLoader.execute("cn-plain.safetensors")
    assert built.model is plain.model  # the same cached ControlNet: the MODEL plays no part


def test_the_plain_loader_refuses_a_diff_file_with_a_pointer_to_the_diff_loader(controlnet_dir):
    from loom.nodes.controlnet import ControlNetLoader

    with pytest.raises(ValueError, match=r"ControlNetLoader: input 'control_net_name'.*diff ControlNet.*"
                                         r"Load ControlNet Model \(diff\)"):
        ControlNetLoader.execute("cn-diff.safetensors")


def test_the_model_weights_are_read_with_its_lora_applied(controlnet_dir, base_dir, sd1):
    """ComfyUI adds the model's state dict as loaded for sampling, LoRA patches included."""
    from loom.nodes.controlnet_diff import DiffControlNetLoader
    from loom.nodes.lora import LoraLoaderModelOnly
    from loom.nodes.runtime.checkpoint_save import _patched
    from tests.fixtures_lora import write_lora

    write_lora("kohya_sd1", base_dir / "models" / "loras" / "tiny.safetensors")
    model = sd1[0]
    (patched,) = LoraLoaderModelOnly.execute(model, "tiny.safetensors", 1.0)
    (plain,) = DiffControlNetLoader.execute(model, "cn-diff.safetensors")
    (built,) = DiffControlNetLoader.execute(patched, "cn-diff.safetensors")
    with _patched(patched):
        lora_unet = {k: v.clone() for k, v in patched.unet.state_dict().items()}
    unet = model.unet.state_dict()
    changed = [k for k in lora_unet if not torch.equal(lora_unet[k], unet[k])]
    assert changed  # the LoRA touches the UNet
    got, before = built.model.state_dict(), plain.model.state_dict()
    for key in (k for k in changed if k in got):
        torch.testing.assert_close(got[key] - before[key], lora_unet[key] - unet[key], rtol=1e-4, atol=1e-5)
    assert any(k in got for k in changed)
