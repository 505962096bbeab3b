"""Ray actors as workers (issue 14, Ray part): two CPU ``LoomWorker`` actors on a local Ray cluster, each
behind a ``RayExecutor``, with two tiny checkpoints.

Ray rewrites 127.0.0.1 to the host's address, so the Ray scenario runs in a subprocess in a network
namespace of its own with only ``lo`` up (``unshare -n``, or ``unshare -rn`` where only user namespaces are
allowed): the cluster can reach nothing and nothing can reach it. The scenario (``main`` below, run as
``python -m tests.test_ray_worker REPORT.json``) starts Ray once (token authentication on), runs every case
and writes what it saw to a JSON report; the tests assert on that report, one acceptance item each. Where no
namespace can be made, or Ray is not installed, the tests skip and say why.

Routing by model is done by hand here (``_route``: the executor whose actor holds the prompt's checkpoint,
else an empty one): the lanes of the routing work take RayExecutors as they take other executors.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIO_TIMEOUT_S = 900  # a hang detector: about 60 s on a quiet 2-core machine, 5 min under heavy load


# -------------------------------------------------------------------------------------------------
# Running the scenario in a network namespace
# -------------------------------------------------------------------------------------------------

def _namespace_prefix() -> tuple[list[str] | None, str]:
    """The command prefix that makes a network namespace here (or None, and why not)."""
    if shutil.which("unshare") is None:
        return None, "the unshare command (util-linux) is not installed"
    reasons = []
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as error:
            reasons.append(f"{' '.join(prefix)}: {error}")
            continue
        if probe.returncode == 0:
            return prefix, ""
        reasons.append(f"{' '.join(prefix)}: {probe.stderr.strip() or probe.returncode}")
    return None, "a network namespace cannot be made here (" + "; ".join(reasons) + ")"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Any]:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'loom[ray]' or '.[test]')")
    prefix, why = _namespace_prefix()
    if prefix is None:
        pytest.skip(f"the Ray tests need a network namespace with only loopback up: {why}")
    folder = tmp_path_factory.mktemp("ray")
    out = folder / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0", "LOOM_RAY_TEST_BASE": str(folder / "base")}
    env.pop("RAY_ADDRESS", None)
    script = (f"ip link set lo up 2>/dev/null; exec {_quote(sys.executable)} -m tests.test_ray_worker "
              f"{_quote(str(out))}")
    started = time.monotonic()
    proc = subprocess.run([*prefix, "sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=SCENARIO_TIMEOUT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.is_file(), f"the Ray scenario failed ({proc.returncode}):\n{log[-8000:]}"
    data = json.loads(out.read_text())
    data["wall_s"] = time.monotonic() - started
    print(f"\nRay scenario: {data['wall_s']:.1f} s in all; ray.init {data['timings']['ray_init_s']:.2f} s; "
          f"actors ready {data['timings']['actors_ready_s']:.2f} s (each {data['timings']['spawn_s']}); "
          f"first prompt {data['timings']['first_prompt_s']:.2f} s; "
          f"actor re-created {data['timings'].get('respawn_s', float('nan')):.2f} s")
    return data


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


# -------------------------------------------------------------------------------------------------
# The tests (assertions on the report)
# -------------------------------------------------------------------------------------------------

def test_ray_runs_on_loopback_only_with_token_authentication(report):
    assert report["interfaces"] == ["lo"]
    assert report["ray"]["auth_mode"] == "token"
    assert report["ray"]["node_ip"] == "127.0.0.1"
    assert tuple(int(part) for part in report["ray"]["version"].split(".")[:2]) >= (2, 52)  # token auth


def test_two_cpu_actors_each_load_their_checkpoint_once_and_prompts_follow_their_model(report):
    affinity = report["affinity"]
    assert [run["status"] for run in affinity["runs"]] == ["success"] * len(affinity["runs"])
    by_ckpt: dict[str, set[str]] = {}
    for run in affinity["runs"]:
        by_ckpt.setdefault(run["ckpt"], set()).add(run["worker"])
    assert all(len(workers) == 1 for workers in by_ckpt.values()), by_ckpt  # A always on one actor, B on the other
    assert by_ckpt["A"] != by_ckpt["B"]
    assert all(run["worker"].startswith("ray:") for run in affinity["runs"])
    assert len({run["pid"] for run in affinity["runs"]}) == 2 and os.getpid() not in {r["pid"] for r in affinity["runs"]}
    # each actor loaded exactly its own checkpoint, once, however many prompts it ran
    assert affinity["loads"] == [[affinity["paths"]["A"]], [affinity["paths"]["B"]]]
    assert affinity["models"] == [[affinity["paths"]["A"]], [affinity["paths"]["B"]]]
    # the second prompt on an actor found the loaded model (and the text encodings) in its caches
    later = [run for run in affinity["runs"][2:]]
    assert all({"4", "6", "7"} <= set(run["cached"]) for run in later), later


def test_interrupt_on_one_actor_leaves_the_other_running(report):
    case = report["interrupt"]
    assert case["interrupted"]["status"] == "interrupted"
    assert case["interrupted"]["seconds"] < 15  # a 30 s node, stopped between its progress ticks
    assert case["interrupted"]["after_interrupt_s"] < 5
    assert case["other"]["status"] == "success"
    assert case["other_running_at_interrupt"] and case["other"]["progress_after_interrupt"] > 0
    assert case["interrupted"]["events"][-1] == "executing" and "execution_interrupted" in case["interrupted"]["events"]
    assert case["after"]["status"] == "success"  # the interrupted actor runs the next prompt


def test_killing_an_actor_fails_only_its_prompt_and_the_next_one_succeeds(report):
    case = report["kill"]
    assert case["killed"]["status"] == "error"
    assert case["killed"]["exception_type"] == "worker_died", case["killed"]
    assert "died" in case["killed"]["message"] and case["killed"]["node_id"] == "2"
    assert case["killed"]["events"][-2:] == ["execution_error", "executing"]
    assert case["other"]["status"] == "success"
    assert case["next"]["status"] == "success" and case["next"]["pid"] != case["killed_pid"]
    assert case["restarts"] == 1
    # killed while idle: found dead before the prompt is handed over, so no prompt fails
    assert case["idle_killed_next"]["status"] == "success" and case["idle_killed_next"]["pid"] != case["next"]["pid"]
    # killed while idle and not noticed before the hand-over: the prompt goes to the next actor
    unnoticed = case["unnoticed_next"]
    assert unnoticed["status"] == "success", unnoticed
    assert unnoticed["pid"] != case["unnoticed_pid"] and "execution_error" not in unnoticed["events"]


def test_a_prompt_past_its_time_limit_fails_as_timeout_and_the_actor_is_replaced(report):
    case = report["timeout"]
    assert case["hung"]["status"] == "error" and case["hung"]["exception_type"] == "timeout"
    assert case["hung"]["seconds"] < 15
    assert case["next"]["status"] == "success" and case["next"]["pid"] != case["hung_pid"]


def test_outputs_come_back_as_bytes_identical_to_the_thread_transport(report):
    files = report["files"]
    # txt2img: the same PNG bytes as the in-thread executor, written by the server into its own output folder
    assert files["txt2img"]["identical"], files["txt2img"]
    assert files["txt2img"]["ray_name"] != files["txt2img"]["thread_name"]  # the server took the next free name
    assert files["txt2img"]["in_server_output"]
    # the actor kept only an empty placeholder in its own folder (no shared storage)
    assert files["txt2img"]["actor_copy_size"] == 0 and files["txt2img"]["actor_root_is_separate"]
    # an input image went to the actor as bytes; the saved and previewed results came back identical
    assert files["load_image"]["identical_output"] and files["load_image"]["identical_preview"]
    assert files["load_image"]["preview_type"] == "temp"
    assert files["load_image"]["sent_again"] is False  # the actor has that version of the file already


def test_a_server_with_ray_lanes_streams_events_records_the_worker_and_serves_the_image(report):
    server = report["server"]
    runs = server["first"] + server["runs"]
    assert [run["status"] for run in runs] == ["success"] * len(runs)
    assert all(run["worker"].startswith("ray:") for run in runs)
    assert server["view_identical"]  # /view serves the server's copy: the thread transport's bytes
    first = runs[0]["ws_types"]
    assert first[:2] == ["execution_start", "execution_cached"]
    assert "progress" in first and "executed" in first and first[-2:] == ["execution_success", "executing"]
    assert server["ws_open"]


def test_prompts_for_a_checkpoint_go_to_the_ray_lane_holding_it(report):
    server = report["server"]
    if not server["lanes"]:
        pytest.skip("the server has no lanes (ServerConfig.executors) yet: routing was tested by hand above")
    workers: dict[str, set[str]] = {}
    for run in server["runs"]:
        workers.setdefault(run["ckpt"], set()).add(run["worker"].rsplit(":", 2)[0])  # ray:<index>
    # after the first two (A and B queued together: each free lane took one), A always runs on the lane that
    # ran A and B on the other
    assert len(workers["A"]) == len(workers["B"]) == 1 and workers["A"] != workers["B"], server
    first = {run["ckpt"]: run["worker"].rsplit(":", 2)[0] for run in server["first"]}
    assert first == {"A": next(iter(workers["A"])), "B": next(iter(workers["B"]))}, server


def test_loom_serve_backend_ray_flags_make_one_lane_per_actor(monkeypatch):
    """``loom serve --backend ray --ray-address ADDR --ray-actors N`` reaches serve_executors (no Ray started)."""
    from loom.server import ray_worker
    from loom.server.cli import build_parser
    from loom.server.serve import server_config

    seen: dict[str, Any] = {}

    def fake(registry, **options):
        seen.update(options)
        return ["lane0", "lane1"]

    monkeypatch.setattr(ray_worker, "serve_executors", fake)
    args = build_parser().parse_args(["serve", "--backend", "ray", "--ray-address", "10.0.0.5:6379",
                                      "--ray-actors", "2", "--prompt-timeout", "30"])
    config = server_config(args, registry=None)
    assert seen == {"address": "10.0.0.5:6379", "actors": 2, "prompt_timeout_s": 30.0, "node_packs": ()}
    assert list(config.executors) == ["lane0", "lane1"]
    local = server_config(build_parser().parse_args(["serve"]), registry=None)
    assert not getattr(local, "executors", None)


# -------------------------------------------------------------------------------------------------
# The scenario (runs inside the namespace)
# -------------------------------------------------------------------------------------------------

def _txt2img(ckpt: str, seed: int, prefix: str = "fox", steps: int = 2) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0], "seed": seed, "steps": steps,
                                                   "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                                   "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def _sleep_prompt(value: int, seconds: float, steps: int) -> dict:
    from tests.fixtures_server import add_prompt
    return add_prompt(value, sleep=seconds, steps=steps)


def _hang_prompt() -> dict:
    from tests.fixtures_server import add_prompt
    prompt = add_prompt(1)
    prompt["2"] = {"class_type": "TestHang", "inputs": {"value": ["1", 0], "seconds": 600.0}}
    prompt["9"]["inputs"]["value"] = ["2", 0]
    return prompt


class _Run:
    """One prompt on one executor, on a thread, with its events."""

    def __init__(self, executor: Any, prompt: dict, prompt_id: str) -> None:
        self.executor, self.prompt, self.prompt_id = executor, prompt, prompt_id
        self.events: list[tuple[float, str, dict]] = []
        self.result: Any = None
        self.started = time.monotonic()
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._go, daemon=True)
        self.thread.start()

    def _go(self) -> None:
        self.result = self.executor.execute(self.prompt, self.prompt_id,
                                            on_event=lambda e, d: self.events.append((time.monotonic(), e, d)))
        self.seconds = time.monotonic() - self.started

    def wait(self, timeout: float = 240.0) -> "_Run":
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.prompt_id} did not finish"
        return self

    def wait_for(self, event: str, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, name, _ in list(self.events):
                if name == event:
                    return at
            time.sleep(0.02)
        raise AssertionError(f"{self.prompt_id}: no {event} event in {timeout} s: {[e for _, e, _ in self.events]}")

    def summary(self) -> dict[str, Any]:
        result = self.result
        error = result.error or {}
        worker = result.worker or ""
        return {"status": result.status, "worker": worker,
                "pid": int(worker.rsplit(":", 1)[-1]) if worker.startswith("ray:") else None,
                "exception_type": error.get("exception_type"), "message": error.get("exception_message"),
                "node_id": error.get("node_id"), "cached": list(result.cached), "seconds": self.seconds,
                "events": [e for _, e, _ in self.events if e not in ("progress", "preview")]}


def _route(executors: list, path: str) -> Any:
    """By hand: the executor whose actor holds ``path``; else one that holds nothing; else the first."""
    for executor in executors:
        if path in executor.loaded_models():
            return executor
    return next((e for e in executors if not e.loaded_models()), executors[0])


def _interfaces() -> list[str]:
    return sorted(name for _, name in __import__("socket").if_nameindex())


def _loopback_up() -> None:
    """Bring ``lo`` up (SIOCSIFFLAGS) where the ``ip`` command did not."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, 0x8913, request))[1]  # SIOCGIFFLAGS
        if not flags & 0x1:  # IFF_UP
            fcntl.ioctl(sock, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))  # SIOCSIFFLAGS


def main(out_path: str) -> None:  # noqa: C901 - one scenario, in order
    import logging

    import faulthandler

    faulthandler.dump_traceback_later(SCENARIO_TIMEOUT_S - 60, exit=True)  # stuck: say where, then stop
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _loopback_up()
    from loom.nodes.kernel import folders
    from loom.nodes.kernel.schema import default_registry
    from loom.server.executor import Executor
    from loom.server.ray_worker import init_ray, ray_executors
    from loom.server.worker_process import WorkerSpec
    from tests.fixtures_checkpoints import write_checkpoint
    from tests.fixtures_server import NODEPACK

    report: dict[str, Any] = {"interfaces": _interfaces(), "timings": {}}
    timings = report["timings"]
    base = Path(os.environ["LOOM_RAY_TEST_BASE"])
    ckpts = {"A": "tiny-sd1-a.safetensors", "B": "tiny-sd1-b.safetensors"}
    write_checkpoint("sd1", base / "models" / "checkpoints" / ckpts["A"], seed=0)
    write_checkpoint("sd1", base / "models" / "checkpoints" / ckpts["B"], seed=1)
    folders.configure(base)
    paths = {key: os.path.realpath(base / "models" / "checkpoints" / name) for key, name in ckpts.items()}
    registry = default_registry([NODEPACK])
    spec = WorkerSpec.current(registry)

    started = time.perf_counter()
    ray = init_ray(num_cpus=2, object_store_memory=100 * 2 ** 20, node_ip_address="127.0.0.1")
    timings["ray_init_s"] = time.perf_counter() - started
    report["ray"] = {"auth_mode": os.environ.get("RAY_AUTH_MODE"), "version": ray.__version__,
                     "node_ip": ray.util.get_node_ip_address()}

    started = time.perf_counter()
    executors = ray_executors(spec, 2, expected_nodes=registry.names())
    for executor in executors:
        executor.start()
    for executor in executors:
        assert executor.wait_ready(300), executor.last_start_error
    timings["actors_ready_s"] = time.perf_counter() - started
    timings["spawn_s"] = [round(e.spawn_times[0], 2) for e in executors]

    try:
        # -- affinity, by hand: A, B, A, B, A (new seeds each time) ---------------------------------
        runs = []
        for number, key in enumerate("ABABA"):
            executor = _route(executors, paths[key])
            run = _Run(executor, _txt2img(ckpts[key], seed=10 + number, prefix=f"aff{key}"), f"aff-{number}")
            run.wait()
            if number == 0:
                timings["first_prompt_s"] = run.seconds
            runs.append({**run.summary(), "ckpt": key})
            print(f"affinity: {key} ran on {run.result.worker}; held now: {[e.loaded_models() for e in executors]}",
                  flush=True)
        report["affinity"] = {"runs": runs, "paths": paths, "loads": [list(e.loads) for e in executors],
                              "models": [e.loaded_models() for e in executors]}
        exA, exB = _route(executors, paths["A"]), _route(executors, paths["B"])

        # -- interrupt one, the other keeps running ---------------------------------------------------
        long_run = _Run(exA, _sleep_prompt(1, 30.0, 300), "int-long")
        other = _Run(exB, _sleep_prompt(2, 4.0, 40), "int-other")
        long_run.wait_for("progress")
        other.wait_for("progress")
        at = time.monotonic()
        assert exA.interrupt("int-long")
        long_run.wait()
        other_running = other.thread.is_alive()
        other.wait()
        interrupted = {**long_run.summary(), "after_interrupt_s": long_run.started + long_run.seconds - at}
        report["interrupt"] = {
            "interrupted": interrupted, "other": {**other.summary(), "progress_after_interrupt": sum(
                1 for t, e, _ in other.events if e == "progress" and t > at)},
            "other_running_at_interrupt": other_running,
            "after": _Run(exA, _sleep_prompt(3, 0.1, 2), "int-after").wait().summary()}

        # -- kill one actor while it runs ---------------------------------------------------------------
        doomed = _Run(exA, _sleep_prompt(4, 30.0, 300), "kill-long")
        other = _Run(exB, _sleep_prompt(5, 3.0, 30), "kill-other")
        doomed.wait_for("progress")
        killed_pid = exA.pid
        ray.kill(exA.actor)
        doomed.wait()
        other.wait()
        started = time.perf_counter()
        following = _Run(exA, _sleep_prompt(6, 0.1, 2), "kill-next").wait()
        timings["respawn_s"] = time.perf_counter() - started
        restarts = exA.restarts
        # killed while idle: the next prompt waits for a new actor instead of failing
        ray.kill(exA.actor)
        idle_next = _Run(exA, _sleep_prompt(7, 0.1, 2), "kill-idle-next").wait()
        # killed while idle and the liveness check misses it (ray.kill is asynchronous: a ping can still be
        # answered): the dead actor never accepts the prompt, so it goes to a new actor, and is not failed
        unnoticed_pid = exA.pid
        exA._alive = lambda actor, timeout=10.0: True
        ray.kill(exA.actor)
        unnoticed_next = _Run(exA, _sleep_prompt(9, 0.1, 2), "kill-unnoticed-next").wait()
        del exA._alive
        report["kill"] = {"killed": doomed.summary(), "killed_pid": killed_pid, "other": other.summary(),
                          "next": following.summary(), "restarts": restarts,
                          "idle_killed_next": idle_next.summary(), "unnoticed_pid": unnoticed_pid,
                          "unnoticed_next": unnoticed_next.summary()}

        # -- a prompt past its time limit -----------------------------------------------------------------
        exB.prompt_timeout_s = 3.0
        hung_pid = exB.pid
        hung = _Run(exB, _hang_prompt(), "timeout-hung").wait()
        exB.prompt_timeout_s = None
        report["timeout"] = {"hung": hung.summary(), "hung_pid": hung_pid,
                             "next": _Run(exB, _sleep_prompt(8, 0.1, 2), "timeout-next").wait().summary()}

        # -- files: bytes there and back, identical to the thread transport ------------------------------
        thread_executor = Executor(registry)
        reference = thread_executor.execute(_txt2img(ckpts["A"], seed=1), "thread-txt2img")
        assert reference.ok, reference.error
        (thread_image,) = reference.outputs["9"]["images"]
        ray_run = _Run(exA, _txt2img(ckpts["A"], seed=1), "ray-txt2img").wait()
        assert ray_run.result.ok, ray_run.result.error
        (ray_image,) = ray_run.result.outputs["9"]["images"]
        executed = [d for _, e, d in ray_run.events if e == "executed" and d["node"] == "9"]
        output = folders.output_dir()
        actor_root = Path(exA._actor.info["root"])
        actor_copy = actor_root / "output" / "fox_00001_.png"
        report["files"] = {"txt2img": {
            "identical": (output / ray_image["filename"]).read_bytes()
            == (output / thread_image["filename"]).read_bytes(),
            "ray_name": ray_image["filename"], "thread_name": thread_image["filename"],
            "in_server_output": (output / ray_image["filename"]).is_file()
            and executed[0]["output"]["images"][0]["filename"] == ray_image["filename"],
            "actor_copy_size": actor_copy.stat().st_size if actor_copy.exists() else -1,
            "actor_root_is_separate": not str(actor_root).startswith(str(base))}}

        from PIL import Image
        import numpy as np

        pixels = (np.arange(64 * 64 * 3).reshape(64, 64, 3) % 251).astype("uint8")
        Image.fromarray(pixels).save(folders.input_dir() / "pattern.png")
        load = {"1": {"class_type": "LoadImage", "inputs": {"image": "pattern.png"}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
                "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
        local = thread_executor.execute(load, "thread-load")
        assert local.ok, local.error
        remote = _Run(exB, load, "ray-load").wait().result
        assert remote.ok, remote.error

        def read(ui: dict) -> bytes:
            (image,) = ui["images"]
            return (folders.current().data_dir(image["type"]) / image["subfolder"] / image["filename"]).read_bytes()

        from loom.server import ray_worker

        resend = ray_worker._input_files(load, exB._actor)
        report["files"]["load_image"] = {
            "identical_output": read(local.outputs["3"]) == read(remote.outputs["3"]),
            "identical_preview": read(local.outputs["4"]) == read(remote.outputs["4"]),
            "preview_type": remote.outputs["4"]["images"][0]["type"],
            "sent_again": resend[0][2] is not None if resend else None}

        # -- a server with the two Ray actors as its lanes ---------------------------------------------------
        # exB's actor is the one started after the timeout: give it checkpoint B again
        assert _Run(exB, _txt2img(ckpts["B"], seed=20, prefix="warm"), "warm-B").wait().result.ok
        report["server"] = _server_case(registry, exA, exB, ckpts, (output / thread_image["filename"]).read_bytes())
    finally:
        for executor in executors:
            executor.close()
        ray.shutdown()
    Path(out_path).write_text(json.dumps(report, indent=1, default=str))


def _server_case(registry: Any, exA: Any, exB: Any, ckpts: dict[str, str], expected: bytes) -> dict[str, Any]:
    """A LiveServer whose lanes are the two RayExecutors (the routing work's ``ServerConfig.executors``; where
    that is missing, one lane on exA). Prompts one at a time over HTTP + one WebSocket: A, B, A, B (new
    seeds: the sampler runs), then A with seed 1 (the thread transport's image, served by /view)."""
    import dataclasses

    import aiohttp

    from loom.server.app import ServerConfig
    from tests.fixtures_server import (LiveServer, new_client_id, queue_prompt, run_async, wait_all_done, wait_done,
                                      wait_history)

    lanes = "executors" in {f.name for f in dataclasses.fields(ServerConfig)}
    config = ServerConfig(registry=registry, executors=[exA, exB]) if lanes else \
        ServerConfig(registry=registry, executor=exA)
    server = LiveServer(config)
    plan = [("A", 31), ("B", 32), ("A", 33), ("B", 34), ("A", 35), ("B", 36), ("A", 1)] if lanes \
        else [("A", 31), ("A", 33), ("A", 1)]

    async def one(session: Any, ws: Any, client_id: str, key: str, seed: int, prompt_id: str | None = None,
                  messages: list | None = None) -> dict[str, Any]:
        if prompt_id is None:
            prompt_id = (await queue_prompt(session, server.url, _txt2img(ckpts[key], seed), client_id))["prompt_id"]
        if messages is None:
            messages = await wait_done(ws, prompt_id, timeout=120)
        entry = await wait_history(session, server.url, prompt_id)
        status = entry["status"]
        return {"ckpt": key, "seed": seed, "status": status.get("status_str"), "worker": status.get("worker"),
                "ws_types": [m["type"] for m in messages if isinstance(m, dict)
                             and m["type"] not in ("status", "progress_state")
                             and (m.get("data") or {}).get("prompt_id") == prompt_id],
                "image": entry["outputs"]["9"]["images"][0]}

    async def go() -> dict[str, Any]:
        client_id = new_client_id()
        runs = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                start = plan[:2] if lanes else plan[:1]
                # the lanes learn what their actors hold from the prompts they run: A and B together first
                ids = [(await queue_prompt(session, server.url, _txt2img(ckpts[key], seed), client_id))["prompt_id"]
                       for key, seed in start]
                ended = await wait_all_done(ws, ids, timeout=120)  # they run at once, on two lanes
                first = [await one(session, ws, client_id, key, seed, prompt_id, ended[prompt_id])
                         for (key, seed), prompt_id in zip(start, ids)]
                for key, seed in plan[len(start):]:  # then one at a time, both lanes idle each time
                    runs.append(await one(session, ws, client_id, key, seed))
                image = runs[-1]["image"]
                async with session.get(f"{server.url}/view", params={"filename": image["filename"],
                                                                      "type": "output"}) as response:
                    body = await response.read()
                return {"lanes": lanes, "first": first, "runs": runs, "view_identical": body == expected,
                        "ws_open": not ws.closed}

    try:
        return run_async(go())
    finally:
        server.close()


if __name__ == "__main__":
    main(sys.argv[1])
