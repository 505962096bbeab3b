"""The runtime configuration: one frozen record set once by the CLI (flags, environment fallbacks),
read by the runtime through loom.nodes.kernel.config.current(), and handed to worker processes."""
from __future__ import annotations

import pytest
import torch

from loom.nodes.kernel import config


@pytest.fixture
def restore_config():
    previous = config.current()
    yield
    config.configure(previous)


def test_flags_win_over_the_environment_and_the_environment_over_defaults():
    environ = {"LOOM_DEVICE": "cuda:1", "LOOM_FORCE_FP32": "1", "LOOM_MODEL_CACHE_BYTES": "8G",
               "LOOM_ALLOW_PICKLE": "0"}
    from_env = config.from_environment(environ)
    assert from_env == config.RuntimeConfig(device="cuda:1", force_fp32=True, model_cache_bytes=8 << 30,
                                            allow_pickle=False)
    given = config.from_environment(environ, device="cpu", allow_pickle=True, model_cache_bytes=1000)
    assert (given.device, given.allow_pickle, given.model_cache_bytes, given.force_fp32) == ("cpu", True, 1000, True)
    assert config.from_environment({}) == config.RuntimeConfig()


@pytest.mark.parametrize(("environ", "message"), [
    ({"LOOM_MODEL_CACHE_BYTES": "lots"}, "LOOM_MODEL_CACHE_BYTES='lots': a size in bytes"),
    ({"LOOM_FORCE_FP32": "maybe"}, "LOOM_FORCE_FP32='maybe': use 1 or 0"),
    ({"LOOM_DEVICE": "gpu please"}, "'gpu please' is not a torch device name"),
])
def test_a_malformed_setting_names_its_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        config.from_environment(environ)


def test_sizes_take_binary_units():
    assert [config.parse_bytes(t) for t in ("123", "1k", "512MiB", "1.5G", "2 TB")] == \
        [123, 1024, 512 << 20, 3 << 29, 2 << 40]


def test_the_record_is_frozen():
    with pytest.raises(Exception):
        config.current().device = "cuda"  # type: ignore[misc]


def test_the_cli_sets_the_config_from_its_flags(monkeypatch, tmp_path, restore_config):
    from loom.server import cli

    monkeypatch.setenv("LOOM_MODEL_CACHE_BYTES", "1G")
    args = cli.build_parser().parse_args(["validate", "x.json", "--base-dir", str(tmp_path), "--cpu",
                                          "--force-fp32", "--allow-pickle"])
    cli.configure(args)
    assert config.current() == config.RuntimeConfig(device="cpu", force_fp32=True, model_cache_bytes=1 << 30,
                                                    allow_pickle=True)
    args = cli.build_parser().parse_args(["validate", "x.json", "--base-dir", str(tmp_path),
                                          "--model-cache-bytes", "nonsense"])
    with pytest.raises(cli.UsageError, match="a size in bytes"):
        cli.configure(args)


def test_the_runtime_reads_the_config(restore_config):
    from loom.nodes.runtime import devices, model_cache

    config.configure(config.RuntimeConfig(device="cpu", model_cache_bytes=12345))
    assert devices.compute_device() == torch.device("cpu")
    assert devices.diffusion_dtype() == torch.float32
    assert model_cache.ModelCache().budget == 12345
    assert model_cache.ModelCache(budget_bytes=7).budget == 7
    config.configure(config.RuntimeConfig())
    assert model_cache.ModelCache().budget is None


def test_a_worker_process_gets_the_same_config(restore_config):
    from loom.server.worker_process import WorkerSpec

    settings = config.RuntimeConfig(device="cpu", force_fp32=True, model_cache_bytes=99, allow_pickle=True)
    config.configure(settings)
    spec = WorkerSpec.current()
    assert config.RuntimeConfig(**spec.runtime) == settings
