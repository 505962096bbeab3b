"""ComfyUI's extra_model_paths.yaml adds model search paths (``--extra-model-paths``)."""
from __future__ import annotations

import pytest

from loom.nodes.kernel import folders


def test_extra_model_paths_yaml(base_dir, tmp_path, monkeypatch):
    webui = tmp_path / "webui"
    for sub, name in (("models/Stable-diffusion", "a1111.safetensors"), ("models/Lora", "one.safetensors"),
                      ("models/LyCORIS", "two.safetensors"), ("embeddings", "style.pt")):
        (webui / sub).mkdir(parents=True)
        (webui / sub / name).write_bytes(b"x")
    other = tmp_path / "other" / "unet"
    other.mkdir(parents=True)
    (other / "flux.safetensors").write_bytes(b"x")
    monkeypatch.setenv("OTHER_MODELS", str(tmp_path / "other"))
    yaml_file = tmp_path / "config" / "extra_model_paths.yaml"
    yaml_file.parent.mkdir()
    yaml_file.write_text(
        "a111:\n"
        "    base_path: ../webui\n"
        "    checkpoints: models/Stable-diffusion\n"
        "    configs: models/Stable-diffusion\n"
        "    loras: |\n"
        "         models/Lora\n"
        "         models/LyCORIS\n"
        "    embeddings: embeddings\n"
        "comfyui:\n"
        "    base_path: $OTHER_MODELS\n"
        "    is_default: true\n"
        "    unet: unet\n")
    found = folders.load_extra_model_paths(yaml_file)
    assert found["loras"] == [webui / "models/Lora", webui / "models/LyCORIS"]
    assert "configs" not in found
    assert folders.list_files("checkpoints") == ["a1111.safetensors", "loom-demo.safetensors"]  # + built-in
    assert folders.list_files("loras") == ["one.safetensors", "two.safetensors"]
    assert folders.list_files("diffusion_models") == ["flux.safetensors"]
    assert folders.resolve("loras", "two.safetensors") == (webui / "models/LyCORIS/two.safetensors").resolve()


def test_bad_extra_model_paths_yaml_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        folders.read_extra_model_paths(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [unclosed\n")
    with pytest.raises(ValueError, match="cannot read extra model paths"):
        folders.read_extra_model_paths(broken)
