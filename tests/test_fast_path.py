"""The opt-in fast path: how the setting travels (CLI flag and environment -> RuntimeConfig -> the executor, a
prompt's extra_data.loom.fast or its workflow's extra.loom.fast -> the runtime), that it gets cache keys of
its own, and that with it the sampler gives a finite latent close to the exact one (bfloat16 network)."""
from __future__ import annotations

import math

import aiohttp
import pytest
import torch

from loom.nodes.kernel import config
from loom.nodes.kernel.schema import Node, NodeRegistry, Output, Schema
from loom.server.executor import Executor, fast_setting
from tests.fixtures_sampling import tiny_unet
from tests.fixtures_server import LiveServer, run_async


@pytest.fixture
def restore_config():
    previous = config.current()
    yield
    config.configure(previous)


# ---------------------------------------------------------------- the setting


def test_the_flag_and_the_environment_set_the_record(monkeypatch, tmp_path, restore_config):
    from loom.server import cli

    assert config.RuntimeConfig().fast is False
    assert config.from_environment({"LOOM_FAST": "1"}).fast is True
    assert config.from_environment({"LOOM_FAST": "1"}, fast=False).fast is False
    with pytest.raises(ValueError, match="LOOM_FAST='fastest': use 1 or 0"):
        config.from_environment({"LOOM_FAST": "fastest"})
    monkeypatch.delenv("LOOM_FAST", raising=False)
    for command in (["serve"], ["run", "x.json"]):
        args = cli.build_parser().parse_args(command + ["--base-dir", str(tmp_path), "--fast"])
        cli.configure(args)
        assert config.current().fast is True and config.fast_enabled() is True
    cli.configure(cli.build_parser().parse_args(["run", "x.json", "--base-dir", str(tmp_path)]))
    assert config.current().fast is False


def test_a_prompt_setting_wins_inside_its_block_only(restore_config):
    config.configure(config.RuntimeConfig(fast=True))
    with config.prompt_settings(fast=False):
        assert config.fast_enabled() is False
    with config.prompt_settings(fast=None):
        assert config.fast_enabled() is True
    config.configure(config.RuntimeConfig())
    with config.prompt_settings(fast=True):
        assert config.fast_enabled() is True
    assert config.fast_enabled() is False


def test_a_worker_process_gets_the_fast_setting(restore_config):
    from loom.server.worker_process import WorkerSpec

    config.configure(config.RuntimeConfig(fast=True))
    assert config.RuntimeConfig(**WorkerSpec.current().runtime).fast is True


def _workflow(fast) -> dict:
    return {"extra_pnginfo": {"workflow": {"nodes": [], "links": [], "extra": {"loom": {"fast": fast}}}}}


def test_where_a_prompt_says_fast():
    assert fast_setting({}) is None
    assert fast_setting({"client_id": "x", "extra_pnginfo": {"workflow": {"nodes": []}}}) is None
    assert fast_setting({"loom": {"fast": True}}) is True
    assert fast_setting(_workflow(True)) is True
    assert fast_setting({**_workflow(True), "loom": {"fast": False}}) is False  # the API client's choice wins
    assert fast_setting({**_workflow(False), "loom": {}}) is False
    with pytest.raises(ValueError, match=r"extra_data.loom.fast must be true or false, not 'yes'"):
        fast_setting({"loom": {"fast": "yes"}})
    with pytest.raises(ValueError, match=r"the workflow's extra.loom.fast must be true or false, not 1"):
        fast_setting(_workflow(1))
    with pytest.raises(ValueError, match=r"extra_data.loom must be an object"):
        fast_setting({"loom": True})


class FastProbe(Node):
    """Outputs whether the fast path is on while it runs (what the runtime reads)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("FastProbe", category="test", outputs=[Output("BOOLEAN")], output_node=True)

    @classmethod
    def execute(cls) -> tuple:
        from loom.nodes.kernel.schema import NodeOutput

        return NodeOutput(config.fast_enabled(), ui={"fast": [config.fast_enabled()]})


PROBE = {"1": {"class_type": "FastProbe", "inputs": {}}}


def test_the_executor_runs_each_prompt_with_its_own_setting_and_cache_keys(restore_config):
    registry = NodeRegistry()
    registry.add(FastProbe)
    executor = Executor(registry)

    def fast_of(extra_data: dict | None) -> tuple[bool, list[str]]:
        result = executor.execute(PROBE, "p", extra_data=extra_data)
        assert result.status == "success", result.error
        return result.outputs["1"]["fast"][0], result.executed

    assert fast_of(None) == (False, ["1"])
    assert fast_of({"loom": {"fast": True}}) == (True, ["1"])  # not the exact run's cached output
    assert fast_of(_workflow(True)) == (True, [])  # the fast run's own, cached
    assert fast_of({"loom": {"fast": False}}) == (False, [])
    assert config.fast_enabled() is False  # the setting ends with the prompt

    config.configure(config.RuntimeConfig(fast=True))
    assert fast_of(None) == (True, [])
    assert fast_of(_workflow(False)) == (False, [])

    result = executor.execute(PROBE, "bad", extra_data={"loom": {"fast": "on"}})
    assert result.status == "error" and result.executed == []
    assert result.error["details"] == "extra_data.loom.fast must be true or false, not 'on'"


def test_post_prompt_refuses_a_malformed_fast_setting(tmp_path, registry):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig

    previous = folders.current()
    folders.configure(tmp_path)
    server = LiveServer(ServerConfig(registry=registry))

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
                      "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
            body = {"prompt": prompt, "extra_data": {"loom": {"fast": "yes"}}}
            async with session.post(f"{server.url}/prompt", json=body) as response:
                answer = await response.json()
                assert response.status == 400, answer
                assert "extra_data.loom.fast must be true or false" in answer["error"]["details"]
            body["extra_data"] = {"loom": {"fast": True}}
            async with session.post(f"{server.url}/prompt", json=body) as response:
                assert response.status == 200, await response.json()

    try:
        run_async(main())
    finally:
        server.close()
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


# ---------------------------------------------------------------- the runtime


@pytest.fixture
def native_bfloat16(monkeypatch):
    """The fast path as on a CPU with avx512_bf16/AMX (bfloat16 also computes, more slowly, without them)."""
    from loom.nodes.runtime import fast

    monkeypatch.setattr(fast, "cpu_has_fast_bfloat16", lambda: True)


def _model():
    from loom.nodes.runtime.model_types import DiffusionModel, LatentFormat, ModelSampling

    return DiffusionModel(unet=tiny_unet(), family="sd1", sampling=ModelSampling.scaled_linear(),
                          latent_format=LatentFormat())


def test_off_the_model_is_untouched_and_on_the_network_is_a_cached_bfloat16_copy(native_bfloat16, restore_config):
    from loom.nodes.runtime import fast

    model = _model()
    assert fast.sampling_model(model) is model
    with config.prompt_settings(fast=True):
        fast_model = fast.sampling_model(model)
        assert fast.sampling_model(model).unet is fast_model.unet  # made once per network
    assert fast_model.unet is not model.unet and fast_model.family == model.family
    assert {p.dtype for p in fast_model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}
    assert all(not p.requires_grad for p in fast_model.unet.parameters())
    float16_model = model.replace(unet=tiny_unet().to(torch.float16))  # already reduced: left alone
    assert fast.fast_network(float16_model.unet) is float16_model.unet


def test_the_bfloat16_copy_counts_against_the_model_cache_budget(native_bfloat16, restore_config, monkeypatch):
    from loom.nodes.runtime import fast, model_cache

    model = _model()
    exact = model_cache.tensor_bytes(model)
    other = torch.nn.Linear(64, 64)  # an older entry, small enough to fit beside the model but not its copy
    cache = model_cache.ModelCache(budget_bytes=exact + exact // 4)
    monkeypatch.setattr(model_cache, "models", cache)
    cache.put("older", (other,))
    cache.put("checkpoint", (model, None, None))
    assert cache.total_bytes == exact + model_cache.tensor_bytes(other)
    with config.prompt_settings(fast=True):
        fast_model = fast.sampling_model(model)
    assert cache.keys() == ["checkpoint"]  # the copy pushed the older entry out
    assert cache.total_bytes == exact + model_cache.tensor_bytes(fast_model.unet) == exact + exact // 2
    with config.prompt_settings(fast=True):
        fast.sampling_model(model)  # the same copy again: counted once
    assert cache.total_bytes == exact + exact // 2


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of ``a`` against ``b`` over ``b``'s value range."""
    mse = float(((a - b) ** 2).mean())
    span = float(b.max() - b.min())
    return math.inf if mse == 0 else 10 * math.log10(span ** 2 / mse)


def test_the_fast_sampler_gives_a_finite_latent_close_to_the_exact_one(native_bfloat16, tiny_conds):
    from loom.nodes.runtime.sampling import sample

    model = _model()
    positive, negative = tiny_conds
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def run() -> torch.Tensor:
        return sample(model, positive, negative, latent, seed=3, steps=6, cfg=6.0, sampler_name="euler",
                      scheduler="normal")

    exact = run()
    with config.prompt_settings(fast=True):
        fast = run()
    assert torch.equal(run(), exact)  # off again: bit for bit the exact result
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert not torch.equal(fast, exact)
    assert _psnr(fast, exact) >= 30, _psnr(fast, exact)
