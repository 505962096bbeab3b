"""The kernel's services (loom.nodes.kernel.services): what the server asks of the model runtime through them.

The node library registers the model-file describers when ``default_registry()`` loads it; the model cache
registers its hooks when it is imported. With nothing registered the answers are a runtime-less process's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from loom.nodes.kernel import services
from loom.nodes.kernel.schema import NodeRegistry, default_registry
from loom.server import model_library
from loom.server.executor import Executor
from tests.fixtures_checkpoints import write_checkpoint

DESCRIBED_FOLDERS = ("checkpoints", "diffusion_models", "clip_vision")


def test_loading_the_node_library_registers_the_describers_and_the_model_cache_registers_itself() -> None:
    probe = f"""
import json, sys
from loom.nodes.kernel import services
from loom.nodes.kernel.schema import default_registry
report = {{"before": [services.model_describer(f) is not None for f in {DESCRIBED_FOLDERS!r}],
           "nothing": [services.loaded_model_files(), services.free_models()]}}
default_registry()
report["after"] = [services.model_describer(f) is not None for f in {DESCRIBED_FOLDERS!r}]
from loom.nodes.runtime import model_cache
model_cache.models.put((model_cache.file_key(sys.executable), "probe"), object(), nbytes=1)
report["loaded"] = services.loaded_model_files()
services.free_models()
report["after_free"] = services.loaded_model_files()
print(json.dumps(report))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"] == [False] * 3 and report["nothing"] == [[], None]
    assert report["after"] == [True] * 3
    assert report["loaded"] == [os.path.realpath(sys.executable)] and report["after_free"] == []


def test_the_executor_frees_and_lists_the_models_through_the_service(monkeypatch, tmp_path) -> None:
    from loom.nodes.runtime import model_cache

    models = model_cache.ModelCache(budget_bytes=None)
    monkeypatch.setattr(model_cache, "models", models)  # the hooks read the cache the module holds now
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    models.put((model_cache.file_key(weights), "options"), torch.nn.Linear(2, 2))
    executor = Executor(NodeRegistry())
    assert executor.loaded_models() == [str(weights.resolve())]
    executor.free(unload_models=True)
    assert len(models) == 0 and executor.loaded_models() == []


def test_the_model_library_describes_files_as_the_loaders_see_them(base_dir) -> None:
    default_registry()
    checkpoint = write_checkpoint("sd1", base_dir / "tiny.safetensors")
    assert model_library.detect_family("checkpoints", checkpoint) == ("SD1.x", "eps prediction")
    assert model_library.detect_family("diffusion_models", checkpoint)[0] == "SD1.x"
    junk = base_dir / "junk.safetensors"
    junk.write_bytes(b"not a model")
    for folder in DESCRIBED_FOLDERS:
        family, detail = model_library.detect_family(folder, junk)
        assert family is None and detail, folder
    assert model_library.detect_family("loras", checkpoint) == (None, "")  # no loader describes that folder


def test_a_clip_vision_file_is_described_by_its_architecture(base_dir) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    default_registry()
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=24, num_attention_heads=16,
                              image_size=28, patch_size=14, projection_dim=16, hidden_act="quick_gelu")
    state = {k: v.contiguous() for k, v in CLIPVisionModelWithProjection(config).state_dict().items()
             if not k.endswith("position_ids")}
    path = base_dir / "tiny-vit-l.safetensors"
    save_file(state, str(path))
    family, detail = model_library.detect_family("clip_vision", path)
    assert family is not None and family.lower() == "vit-l" and detail


@pytest.fixture
def no_describer(monkeypatch):
    monkeypatch.setattr(services, "_describers", {})


def test_with_nothing_registered_a_file_has_no_family(no_describer, base_dir) -> None:
    checkpoint = write_checkpoint("sd1", base_dir / "tiny.safetensors")
    assert services.model_describer("checkpoints") is None
    assert model_library.detect_family("checkpoints", checkpoint) == (None, "")
