"""The local worker process transport (issue 14; scale-security X2, X10, X11): prompts run in a child process,
and a hung node, a worker that exits or is killed, or one that runs out of memory costs that prompt only.

Each test drives a real server (``LiveServer`` with ``ServerConfig(workers="process")``, or ``loom serve`` in a
subprocess) with plain aiohttp clients that keep one WebSocket open throughout.
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import aiohttp
import pytest

from tests.fixtures_server import (NODEPACK, LiveServer, ServerProcess, add_prompt, new_client_id, queue_prompt,
                                   run_async, wait_done, wait_history)

TIMEOUT_S = 4.0


def fault_prompt(class_type: str, value: int = 1, **inputs) -> dict:
    """``TestConstInt -> <class_type> -> TestOutput``."""
    prompt = add_prompt(value)
    prompt["2"] = {"class_type": class_type, "inputs": {"value": ["1", 0], **inputs}}
    prompt["9"]["inputs"]["value"] = ["2", 0]
    return prompt


def pid_prompt(value: int) -> dict:
    prompt = add_prompt(value)
    prompt["2"] = {"class_type": "TestPid", "inputs": {"value": ["1", 0]}}
    prompt["9"]["inputs"]["value"] = ["2", 0]
    return prompt


def _start(registry, base, **options):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig

    folders.configure(base)
    server = LiveServer(ServerConfig(registry=registry, workers="process", **options))
    assert server.server.executor.wait_ready(120), server.server.executor.last_start_error
    return server


@pytest.fixture(scope="module")
def live(tmp_path_factory, registry):
    from loom.nodes.kernel import folders

    previous = folders.current()
    server = _start(registry, tmp_path_factory.mktemp("worker_process"), prompt_timeout_s=TIMEOUT_S)
    spawn = server.server.executor.spawn_times[0]
    print(f"\nworker process ready {spawn:.2f} s after spawn")
    yield server
    server.close()
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def run(coro):
    return run_async(coro)


async def _ready(session, base) -> tuple[int, dict]:
    async with session.get(f"{base}/api/ready") as response:
        return response.status, await response.json()


def _error_of(messages: list, prompt_id: str) -> dict:
    errors = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "execution_error"
              and m["data"]["prompt_id"] == prompt_id]
    assert len(errors) == 1, messages
    return errors[0]


async def _fault_then_three(live, prompt: dict, kind: str | tuple[str, ...], timeout: float = 60.0) -> dict:
    """Queue a failing prompt and three behind it on one socket; the failure is ``kind``, the three succeed,
    the socket stays open, the server stays ready. Returns the failed prompt's history entry."""
    kinds = (kind,) if isinstance(kind, str) else kind
    client_id = new_client_id()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
            await ws.receive_json()  # status
            pid_before = live.server.executor.pid
            failing = (await queue_prompt(session, live.url, prompt, client_id))["prompt_id"]
            behind = [(await queue_prompt(session, live.url, pid_prompt(100 + i), client_id))["prompt_id"]
                      for i in range(3)]
            started = time.monotonic()
            messages = await wait_done(ws, failing, timeout=timeout)
            elapsed = time.monotonic() - started
            error = _error_of(messages, failing)
            assert error["exception_type"] in kinds, error
            assert error["node_id"] == "2" and error["node_type"] == prompt["2"]["class_type"]
            assert error["traceback"] == [] and error["prompt_id"] == failing
            status, body = await _ready(session, live.url)  # the server answers while the worker restarts
            assert body["checks"]["queue"] and body["checks"]["worker"]
            for prompt_id in behind:
                done = await wait_done(ws, prompt_id, timeout=60)
                assert any(m["type"] == "execution_success" for m in done if isinstance(m, dict)), done
            entries = [await wait_history(session, live.url, p) for p in [failing, *behind]]
            assert entries[0]["status"]["state"] == "error"
            assert entries[0]["status"]["error"]["exception_type"] in kinds
            assert all(e["status"]["state"] == "success" for e in entries[1:])
            pids = {e["outputs"]["9"]["text"][0] for e in entries[1:]}
            assert len(pids) == 1 and int(pids.pop()) != os.getpid()  # ran in one (new) worker process
            assert entries[1]["status"]["worker"] == f"process:{live.server.executor.pid}"
            assert entries[0]["status"]["worker"] == f"process:{pid_before}"
            assert not ws.closed
            status, body = await _ready(session, live.url)
            assert status == 200 and body["checks"]["worker_process"] is True, body
    return {"entry": entries[0], "elapsed": elapsed, "error": error, "pid_before": pid_before}


def test_a_hung_node_times_out_and_the_queue_goes_on(live):
    """X2: a node that never checks interrupt is stopped at the wall-clock limit (its worker is killed and
    replaced); the prompt fails as ``timeout``; the three queued behind it run in the new worker."""
    result = run(_fault_then_three(live, fault_prompt("TestHang", seconds=600.0), "timeout"))
    assert TIMEOUT_S - 0.5 <= result["elapsed"] <= TIMEOUT_S + 5.0, result["elapsed"]
    assert "longer than the limit of 4 s" in result["error"]["exception_message"]
    assert live.server.executor.pid != result["pid_before"]


def test_a_worker_that_exits_fails_its_prompt_only(live):
    """X11: ``os._exit(1)`` in a node: ``worker_died`` (never re-run), a new worker, nothing queued is lost."""
    restarts = live.server.executor.restarts
    result = run(_fault_then_three(live, fault_prompt("TestExit", code=1), "worker_died"))
    assert "exited with code 1" in result["error"]["exception_message"]
    assert "not re-run" in result["error"]["exception_message"]
    assert live.server.executor.restarts == restarts + 1
    assert live.server.executor.pid != result["pid_before"]


def test_a_worker_killed_by_a_signal_mid_prompt_fails_as_worker_died(live):
    """The OOM killer's way: SIGKILL from outside while a node runs."""
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                prompt_id = (await queue_prompt(session, live.url, add_prompt(7, sleep=30.0, steps=300),
                                                client_id))["prompt_id"]
                while True:  # wait for the sleeping node to report progress
                    message = await ws.receive_json(timeout=30)
                    if message["type"] == "progress":
                        break
                victim = live.server.executor.pid
                os.kill(victim, signal.SIGKILL)
                messages = await wait_done(ws, prompt_id)
                error = _error_of(messages, prompt_id)
                assert error["exception_type"] == "worker_died" and error["node_id"] == "2"
                assert "SIGKILL" in error["exception_message"]
                follow = (await queue_prompt(session, live.url, pid_prompt(8), client_id))["prompt_id"]
                await wait_done(ws, follow)
                entry = await wait_history(session, live.url, follow)
                assert entry["status"]["state"] == "success"
                assert int(entry["outputs"]["9"]["text"][0]) not in (victim, os.getpid())

    run(main())


def _process_executor(registry):
    from loom.server.worker_process import ProcessExecutor, WorkerSpec
    return ProcessExecutor(WorkerSpec.current(registry), start_timeout_s=600), "worker process"


def _ray_executor(registry):
    from loom.server.ray_worker import RayExecutor
    from loom.server.worker_process import WorkerSpec
    return RayExecutor(WorkerSpec.current(registry), start_timeout_s=600), "Ray worker"


@pytest.mark.parametrize("make", [_process_executor, _ray_executor], ids=["process", "ray"])
def test_a_prompt_stopped_while_its_worker_starts_is_interrupted_not_failed(registry, monkeypatch, make):
    """A loaded machine can take longer to start the worker than a shutdown waits: the prompt waiting for it
    ends as interrupted (not run; the user may queue it again), at once, not as a worker fault."""
    from loom.server.queue import PromptState

    executor, worker = make(registry)
    monkeypatch.setattr(type(executor), "start", lambda self: None)  # a start-up that never ends

    def execute(prompt_id: str, cancel: threading.Event) -> tuple[threading.Thread, list]:
        ended: list = []
        thread = threading.Thread(target=lambda: ended.append(
            executor.execute(add_prompt(1), prompt_id, cancel=cancel,
                             on_event=lambda event, data: ended.append((event, data)))))
        thread.start()
        return thread, ended

    try:
        interrupted = threading.Event()
        thread, ended = execute("p1", interrupted)
        time.sleep(0.2)
        interrupted.set()  # the user's interrupt (or the worker's stop) before a worker is ready
        thread.join(5)
        assert not thread.is_alive()
        (event, data), executing, result = ended
        assert result.status == PromptState.INTERRUPTED and result.error is None
        assert event == "execution_interrupted" and executing[0] == "executing" and executing[1]["node"] is None
        assert data["reason"] == f"it was interrupted before a {worker} was ready for it; it was not run"

        thread, ended = execute("p2", threading.Event())
        time.sleep(0.2)
        executor.close(timeout=5)  # the server stops while the prompt waits
        thread.join(5)
        assert not thread.is_alive() and ended[-1].status == PromptState.INTERRUPTED
        assert ended[0][1]["reason"] == f"the server stopped before a {worker} was ready for it; it was not run"
    finally:
        executor.close(timeout=5)


@pytest.mark.parametrize("make", [_process_executor, _ray_executor], ids=["process", "ray"])
def test_a_prompt_whose_worker_cannot_start_fails_as_worker_died_naming_why(registry, monkeypatch, make):
    from loom.server.queue import PromptState

    executor, worker = make(registry)

    def failed_start_up(self, *ray):
        self.last_start_error = "ImportError: no module named 'broken_pack'"
        return None

    monkeypatch.setattr(type(executor), "_spawn", failed_start_up)
    events: list = []
    try:
        result = executor.execute(add_prompt(1), "p1", cancel=threading.Event(),
                                  on_event=lambda event, data: events.append((event, data)))
    finally:
        executor.close(timeout=5)
    assert result.status == PromptState.ERROR and result.error["exception_type"] == "worker_died"
    assert result.error["exception_message"] == (f"the {worker} cannot start: ImportError: no module named "
                                                 "'broken_pack'; the prompt was not run")
    assert [event for event, _ in events] == ["execution_error", "executing"]


def test_a_worker_that_dies_while_idle_is_replaced(live):
    """Nothing was running: no prompt fails; /api/ready says so until a new worker is up."""
    async def main():
        async with aiohttp.ClientSession() as session:
            victim = live.server.executor.pid
            os.kill(victim, signal.SIGKILL)
            seen = set()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, body = await _ready(session, live.url)
                seen.add(status)
                if status == 200 and live.server.executor.pid not in (None, victim):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("no new worker process")
            client_id = new_client_id()
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                prompt_id = (await queue_prompt(session, live.url, pid_prompt(9), client_id))["prompt_id"]
                await wait_done(ws, prompt_id)
            entry = await wait_history(session, live.url, prompt_id)
            assert entry["status"]["state"] == "success"
            return seen

    seen = run(main())
    assert 200 in seen


def test_interrupt_reaches_the_worker_between_steps(live):
    """X3 in a worker process: the running TestSleep stops within a couple of steps; the worker lives on."""
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                pid = live.server.executor.pid
                prompt_id = (await queue_prompt(session, live.url, add_prompt(3, sleep=20.0, steps=200),
                                                client_id))["prompt_id"]
                while True:
                    message = await ws.receive_json(timeout=30)
                    if message["type"] == "progress":
                        break
                async with session.post(f"{live.url}/interrupt", json={"prompt_id": "someone-else"}) as response:
                    assert (await response.json())["interrupted"] is False
                started = time.monotonic()
                async with session.post(f"{live.url}/interrupt", json={"prompt_id": prompt_id}) as response:
                    assert (await response.json())["interrupted"] is True
                messages = await wait_done(ws, prompt_id)
                took = time.monotonic() - started
                assert any(m["type"] == "execution_interrupted" for m in messages if isinstance(m, dict))
                entry = await wait_history(session, live.url, prompt_id)
                assert entry["status"]["state"] == "interrupted"
                assert live.server.executor.pid == pid  # interrupted, not killed
                return took

    assert run(main()) < 2.0


def test_events_reach_only_the_prompts_client(live):
    async def main():
        mine, other = new_client_id(), new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={mine}") as ws_a, \
                    session.ws_connect(f"{live.ws_url}?clientId={other}") as ws_b:
                await ws_a.receive_json()
                await ws_b.receive_json()
                prompt_id = (await queue_prompt(session, live.url, add_prompt(11, sleep=0.2, steps=4),
                                                mine))["prompt_id"]
                messages = await wait_done(ws_a, prompt_id)
                types = [m["type"] for m in messages if isinstance(m, dict)]
                assert types.count("progress") == 4 and "execution_success" in types
                assert [m for m in messages if isinstance(m, dict) and m["type"] == "executed"][0]["data"][
                    "output"] == {"text": ["11"]}
                leaked = []
                while True:
                    try:
                        message = await ws_b.receive_json(timeout=0.5)
                    except asyncio.TimeoutError:
                        break
                    leaked.append(message["type"])
                assert set(leaked) <= {"status"}, leaked

    run(main())


def test_free_is_sent_to_the_worker(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{live.url}/free", json={"unload_models": True, "free_memory": True}) as r:
                assert r.status == 200
            client_id = new_client_id()
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                prompt_id = (await queue_prompt(session, live.url, add_prompt(12), client_id))["prompt_id"]
                await wait_done(ws, prompt_id)
            assert (await wait_history(session, live.url, prompt_id))["status"]["state"] == "success"

    run(main())


def test_a_memory_hog_under_an_rlimit_fails_and_the_next_prompt_succeeds(tmp_path, registry):
    """X10: the worker's address space is limited (a test-only spec option); the hog fails its prompt (as
    ``oom`` when Python raises MemoryError, ``worker_died`` when the process is killed), the next succeeds."""
    from loom.nodes.kernel import folders
    from loom.server.worker_process import WorkerSpec

    previous = folders.current()
    folders.configure(tmp_path)
    spec = WorkerSpec.current(registry, rlimit_as_headroom=768 << 20)
    server = _start(registry, tmp_path, worker_spec=spec)
    try:
        result = run(_fault_then_three(server, fault_prompt("TestHog", max_mb=8192, chunk_mb=32),
                                       ("oom", "worker_died")))
        assert result["entry"]["status"]["error"]["exception_type"] in ("oom", "worker_died")
    finally:
        server.close()
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def test_the_spec_carries_the_configuration(tmp_path, registry):
    from loom.nodes.kernel import folders
    from loom.server.worker_process import WorkerSpec

    previous = folders.current()
    try:
        folders.configure(tmp_path, tmp_path / "models", extra_paths={"checkpoints": [tmp_path / "more"]},
                          data_dirs={"output": tmp_path / "out"})
        spec = WorkerSpec.current(registry)
        assert spec.base_dir == str(tmp_path.resolve()) and spec.models_dir == str((tmp_path / "models").resolve())
        assert spec.extra_paths == {"checkpoints": [str(tmp_path / "more")]}
        assert spec.data_dirs == {"output": str((tmp_path / "out").resolve())}
        assert spec.builtin_nodes and spec.node_packs == [str(NODEPACK)] and spec.node_modules == []
        import pickle
        assert pickle.loads(pickle.dumps(spec)) == spec
    finally:
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def test_a_timeout_needs_process_workers(registry):
    from loom.server.app import ServerConfig, create_app

    with pytest.raises(ValueError, match="process workers"):
        create_app(ServerConfig(registry=registry, prompt_timeout_s=5, start_worker=False))
    with pytest.raises(ValueError, match="workers must be one of"):
        create_app(ServerConfig(registry=registry, workers="ray", start_worker=False))


# -- the tiny SD1 model: caches in the worker, outputs identical to the thread transport ----------------------

def _txt2img(seed: int, ckpt: str) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0], "seed": seed, "steps": 2, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "fox"}},
    }


async def _run_prompts(server, prompts: list[dict]) -> list[tuple[dict, list]]:
    client_id = new_client_id()
    out = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.ws_url}?clientId={client_id}") as ws:
            await ws.receive_json()
            for prompt in prompts:
                prompt_id = (await queue_prompt(session, server.url, prompt, client_id))["prompt_id"]
                messages = await wait_done(ws, prompt_id, timeout=120)
                out.append((await wait_history(session, server.url, prompt_id), messages))
    return out


def test_tiny_sd1_in_the_worker_keeps_its_caches_and_matches_the_thread_transport(tmp_path, registry):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig
    from tests.fixtures_checkpoints import FILE_NAMES, write_checkpoint

    previous = folders.current()
    ckpt = FILE_NAMES["sd1"]
    try:
        folders.configure(tmp_path)
        write_checkpoint("sd1", tmp_path / "models" / "checkpoints" / ckpt)
        process = _start(registry, tmp_path)
        try:
            (first, _), (second, messages) = run(_run_prompts(process, [_txt2img(1, ckpt), _txt2img(2, ckpt)]))
        finally:
            process.close()
        thread = LiveServer(ServerConfig(registry=registry))
        try:
            ((threaded, _),) = run(_run_prompts(thread, [_txt2img(1, ckpt)]))
        finally:
            thread.close()
    finally:
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)
    assert first["status"]["state"] == second["status"]["state"] == threaded["status"]["state"] == "success"
    assert first["status"]["worker"] == second["status"]["worker"] != f"process:{os.getpid()}"
    assert threaded["status"]["worker"] == "thread"
    # the second prompt found the loaded model (and its text encodings) in the worker's cache
    cached = next(m["data"]["nodes"] for m in messages if isinstance(m, dict) and m["type"] == "execution_cached")
    assert {"4", "6", "7", "5"} <= set(cached)
    ran = [m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"
           and m["data"]["node"] is not None]
    assert "4" not in ran and ran == ["3", "8", "9"]

    def image_bytes(entry: dict) -> bytes:
        (image,) = entry["outputs"]["9"]["images"]
        return (tmp_path / "output" / image["subfolder"] / image["filename"]).read_bytes()

    assert image_bytes(first) == image_bytes(threaded)
    assert image_bytes(first) != image_bytes(second)


# -- loom serve ------------------------------------------------------------------------------------------------

def test_loom_serve_runs_prompts_in_a_worker_process_with_a_timeout(tmp_path):
    async def main(server: ServerProcess, prompts: list[dict]) -> list[dict]:
        client_id = new_client_id()
        entries = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
                await ws.receive_json()
                for prompt in prompts:
                    prompt_id = (await queue_prompt(session, server.url, prompt, client_id))["prompt_id"]
                    await wait_done(ws, prompt_id, timeout=90)
                    entries.append(await wait_history(session, server.url, prompt_id))
                assert not ws.closed
        return entries

    server = ServerProcess(tmp_path, "--prompt-timeout", "3")
    try:
        hung, after = run(main(server, [fault_prompt("TestHang", seconds=600.0), pid_prompt(1)]))
    finally:
        assert server.terminate() == 0
    assert hung["status"]["error"]["exception_type"] == "timeout"
    assert after["status"]["state"] == "success"
    pid = int(after["outputs"]["9"]["text"][0])
    assert not _alive(pid)  # SIGTERM stopped the worker with the server
    assert pid != server.proc.pid and after["status"]["worker"] == f"process:{pid}"
    assert any("worker process" in line and "ready" in line for line in server.lines), "".join(server.lines)

    threaded = ServerProcess(tmp_path, "--workers", "thread")
    try:
        (entry,) = run(main(threaded, [pid_prompt(2)]))
    finally:
        threaded.terminate()
    assert entry["status"]["worker"] == "thread" and int(entry["outputs"]["9"]["text"][0]) == threaded.proc.pid


def _alive(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` still runs after waiting up to ``within`` seconds for it to end."""
    import psutil

    try:
        psutil.Process(pid).wait(within)
    except psutil.NoSuchProcess:
        return False
    except psutil.TimeoutExpired:
        return True
    return False


def test_a_worker_process_does_not_outlive_a_killed_server(tmp_path):
    """SIGKILL of ``loom serve`` (X8) leaves no worker behind holding the models and the GPU."""
    import psutil

    server = ServerProcess(tmp_path)
    try:
        async def ready():
            async with aiohttp.ClientSession() as session:
                for _ in range(600):
                    status, _ = await _ready(session, server.url)
                    if status == 200:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError("the worker process did not start")

        run(ready())
        children = psutil.Process(server.proc.pid).children()
        (worker,) = [c for c in children if "spawn_main" in " ".join(c.cmdline())]  # and the resource tracker
    finally:
        server.kill()
    assert not _alive(worker.pid)
    assert not any(_alive(child.pid) for child in children)


def test_loom_serve_flags_choose_the_transport_and_the_timeout():
    from loom.server.cli import build_parser
    from loom.server.serve import server_config

    defaults = server_config(build_parser().parse_args(["serve"]))
    assert defaults.workers == "process" and defaults.prompt_timeout_s is None
    config = server_config(build_parser().parse_args(["serve", "--workers", "thread", "--prompt-timeout", "30",
                                                      "--nodes", str(NODEPACK)]))
    assert config.workers == "thread" and config.prompt_timeout_s == 30.0
    assert [str(p) for p in config.extra_node_packs] == [str(NODEPACK)]
    assert server_config(build_parser().parse_args(["serve", "--prompt-timeout", "0"])).prompt_timeout_s is None
