"""Model-affinity routing (issue 14): the policy (server/routing.py), the queue's ``select`` hook, the
required models validation records, and lanes of worker processes that keep their checkpoints.
"""
from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import pytest

from loom.server.routing import Lane, Pending, Router, choose
from tests.fixtures_server import (LiveServer, add_prompt, new_client_id, queue_prompt, run_async, wait_all_done,
                                  wait_history)

A, B, C = "checkpoints/a.safetensors", "checkpoints/b.safetensors", "checkpoints/c.safetensors"


def p(prompt_id: str, *models: str, waited: int = 0) -> Pending:
    return Pending(prompt_id, frozenset(models), waited)


def lane(name: str, *models: str, idle: bool = True) -> Lane:
    return Lane(name, frozenset(models), idle)


def chosen(pending, lanes, index, k=8):
    picked = choose(pending, lanes, index, k)
    return None if picked is None else pending[picked].prompt_id


# -- the policy ------------------------------------------------------------------------------------------------

def test_a_free_lane_takes_the_oldest_prompt_whose_models_it_holds():
    pending = [p("1", B), p("2", A), p("3", A)]
    assert chosen(pending, [lane("x", A, idle=True), lane("y", B, idle=False)], 0) == "2"


def test_without_a_held_prompt_the_lane_takes_the_head():
    pending = [p("1", B), p("2", C)]
    assert chosen(pending, [lane("x", A), lane("y", idle=False)], 0) == "1"


def test_the_head_is_left_to_another_idle_lane_that_holds_it():
    pending = [p("1", B), p("2", C), p("3", B)]
    lanes = [lane("x", A), lane("y", B, idle=True)]
    assert chosen(pending, lanes, 0) == "2"  # y takes 1 (and then 3); x the oldest y does not hold
    assert chosen(pending, lanes, 1) == "1"
    # a busy holder does not keep the head from a free lane
    assert chosen(pending, [lane("x", A), lane("y", B, idle=False)], 0) == "1"


def test_a_lane_waits_when_every_prompt_is_held_by_another_idle_lane():
    pending = [p("1", B), p("2", B)]
    assert chosen(pending, [lane("x", A), lane("y", B)], 0) is None
    assert chosen(pending, [lane("x", A), lane("y", B)], 1) == "1"
    assert chosen([], [lane("x", A)], 0) is None


def test_with_nothing_loaded_anywhere_it_is_first_come_first_served():
    pending = [p("1", B), p("2", A), p("3")]
    assert chosen(pending, [lane("x"), lane("y")], 0) == "1"
    assert chosen(pending, [lane("x")], 0) == "1"


def test_kinds_no_lane_holds_do_not_count():
    # LoRAs are loaded per use: no lane ever holds one, so a LoRA does not keep a prompt off its checkpoint's lane
    pending = [p("1", B), p("2", A, "loras/detail.safetensors")]
    assert chosen(pending, [lane("x", A), lane("y", B)], 0) == "2"
    # a prompt that needs no resident kind at all is held everywhere: the oldest such goes first
    assert chosen([p("1", B), p("2", "loras/x.safetensors")], [lane("x", A), lane("y", B, idle=False)], 0) == "2"
    # but a kind some lane holds counts in full: x holds the checkpoint, not the VAE
    pending = [p("1", A, "vae/v.safetensors"), p("2", C)]
    lanes = [lane("x", A), lane("y", "vae/v.safetensors", idle=False)]
    assert chosen(pending, lanes, 0) == "1"  # held by no idle lane: the head


def test_a_prompt_that_waited_k_dispatches_is_taken_before_held_ones():
    pending = [p("1", B, waited=3), p("2", A)]
    assert chosen(pending, [lane("x", A), lane("y", C, idle=False)], 0, k=4) == "2"
    pending = [p("1", B, waited=4), p("2", A)]
    assert chosen(pending, [lane("x", A), lane("y", C, idle=False)], 0, k=4) == "1"
    # unless another idle lane holds it: that one takes it now
    assert chosen(pending, [lane("x", A), lane("y", B)], 0, k=4) == "2"


def test_starvation_is_bounded_under_a_stream_of_held_prompts():
    """One lane holding A, a stream of A prompts behind a B prompt: B waits exactly k dispatches."""
    k = 5
    queue = [p("b", B)] + [p(f"a{i}", A) for i in range(20)]
    lanes = [lane("x", A)]
    order = []
    while queue:
        index = choose(queue, lanes, 0, k)
        taken = queue.pop(index)
        order.append(taken.prompt_id)
        queue = [Pending(q.prompt_id, q.models, q.waited + 1) if i < index else q for i, q in enumerate(queue)]
        if taken.models:
            lanes = [lane("x", *taken.models)]
    assert order.index("b") == k


def test_no_prompt_waits_more_than_k_dispatches_behind_newer_ones():
    """A random simulation with several lanes: the waited count of every prompt stays within k."""
    import random

    rng = random.Random(7)
    models = [f"checkpoints/m{i}.safetensors" for i in range(6)]
    k = 6
    lanes = [lane(f"l{i}") for i in range(3)]
    queue: list[Pending] = []
    worst = 0
    for step in range(2000):
        for n in range(rng.choice([0, 0, 1, 2, 3])):  # more arrive than leave: a backlog builds
            queue.append(p(f"{step}.{n}", rng.choices(models, weights=[20, 8, 4, 2, 1, 1])[0]))
        free = rng.randrange(len(lanes))
        index = choose(queue, [Lane(x.name, x.models, i == free) for i, x in enumerate(lanes)], free, k)
        if index is None:
            continue
        taken = queue.pop(index)
        worst = max([worst, taken.waited])
        queue = [Pending(q.prompt_id, q.models, q.waited + 1) if i < index else q for i, q in enumerate(queue)]
        lanes[free] = lane(lanes[free].name, *taken.models)
    assert worst == k  # the bound is reached (affinity reorders) and never passed


def test_the_router_marks_a_lane_busy_when_it_takes_a_prompt():
    router = Router(k=8)
    x, y = router.add_lane("x"), router.add_lane("y")
    router.finished(x, [A])
    router.finished(y, [B])
    pending = [p("1", B), p("2", A)]
    assert router.selector(x)(pending) == 1
    assert [lane.idle for lane in router.snapshot()] == [False, True]
    assert router.selector(y)(pending) == 0
    router.finished(x, [A, C])
    assert router.snapshot()[0] == Lane("x", frozenset({A, C}), True)
    router.remove(y)  # a stopped lane is no longer left work
    assert router.selector(x)([p("1", B)]) == 0


def test_a_lane_is_idle_in_the_router_before_its_prompt_is_recorded_done(tmp_path):
    """Clients learn a prompt is done from its history and events; a prompt they queue on that news must
    find the lane that finished idle, or another idle lane takes it although that lane holds its models."""
    from loom.server.clients import ClientHub
    from loom.server.executor import ExecutionResult
    from loom.server.queue import PromptQueue
    from loom.server.worker import Worker

    class Executor:
        def execute(self, prompt, prompt_id, **_):
            return ExecutionResult(prompt_id=prompt_id, status="success", loaded_models=[])

        def loaded_models(self):
            return []

    queue = PromptQueue(tmp_path / "q.sqlite3")
    router = Router(k=8)
    lanes_when_recorded = []
    record = queue.finish

    def finish(prompt_id, outcome):
        lanes_when_recorded.append([lane.idle for lane in router.snapshot()])
        record(prompt_id, outcome)

    queue.finish = finish
    worker = Worker(queue, Executor(), ClientHub(), router=router, name="x")
    Worker(queue, Executor(), ClientHub(), router=router, name="y")  # a second lane that never starts
    queue.put("1", {}, {}, [], required_models=[A])
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while queue.history_item("1") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        recorded = queue.history_item("1")
    finally:
        worker.stop()
        queue.close()
    assert recorded is not None and recorded["status"]["status_str"] == "success", recorded
    assert lanes_when_recorded == [[True, True]]


# -- the queue and validation ------------------------------------------------------------------------------

def test_the_queue_stores_required_models_and_select_takes_the_chosen_prompt(tmp_path):
    from loom.server.queue import PromptQueue

    queue = PromptQueue(tmp_path / "q.sqlite3")
    for prompt_id, models in (("1", [B]), ("2", [A]), ("3", [A, "vae/v.safetensors"])):
        queue.put(prompt_id, {}, {}, [], required_models=models)
    seen = []

    def select(pending):
        seen.append([(c.prompt_id, sorted(c.models), c.waited) for c in pending])
        return 1

    item = queue.get(timeout=0, select=select)
    assert item.prompt_id == "2" and item.required_models == [A]
    assert seen == [[("1", [B], 0), ("2", [A], 0), ("3", [A, "vae/v.safetensors"], 0)]]
    assert [i.prompt_id for i in queue.running()] == ["2"]
    item = queue.get(timeout=0, select=lambda pending: 1)
    assert item.prompt_id == "3"
    (head,) = queue.pending()
    assert head.prompt_id == "1" and head.required_models == [B]
    assert queue.get(timeout=0.05, select=lambda pending: None) is None  # it waited, took nothing
    item = queue.get(timeout=0, select=lambda pending: [c.waited for c in pending].index(2))
    assert item.prompt_id == "1"
    queue.close()


def test_an_older_queue_database_gains_the_routing_columns(tmp_path):
    import sqlite3

    from loom.server.queue import _SCHEMA, PromptQueue

    db = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(db)
    connection.executescript(_SCHEMA)
    connection.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    connection.execute("INSERT INTO queue (prompt_id, number, prompt, extra_data, outputs, queued_at) "
                       "VALUES ('old', 0, '{}', '{}', '[]', 0)")
    connection.commit()
    connection.close()
    queue = PromptQueue(db)
    item = queue.get(timeout=0, select=lambda pending: 0 if pending[0].models == frozenset() else None)
    assert item.prompt_id == "old" and item.required_models == []
    queue.close()


def test_validation_records_the_model_files_a_prompt_needs(tmp_path):
    from loom.nodes.kernel import folders
    from loom.nodes.kernel.schema import default_registry
    from loom.server.validation import validate_prompt

    previous = folders.current()
    try:
        folders.configure(tmp_path)
        for folder, name in (("checkpoints", "a.safetensors"), ("loras", "sub/l.safetensors"),
                             ("vae", "v.safetensors")):
            path = tmp_path / "models" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        prompt = _txt2img(1, "a.safetensors")
        prompt["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                             "lora_name": "sub/l.safetensors",
                                                             "strength_model": 1.0, "strength_clip": 1.0}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
        prompt["11"] = {"class_type": "VAELoader", "inputs": {"vae_name": "v.safetensors"}}  # feeds no output
        result = validate_prompt(prompt, default_registry())
        assert result.ok, result.messages()
        assert result.required_models == ["checkpoints/a.safetensors", "loras/sub/l.safetensors"]
        prompt["8"]["inputs"]["vae"] = ["11", 0]
        assert validate_prompt(prompt, default_registry()).required_models == [
            "checkpoints/a.safetensors", "loras/sub/l.safetensors", "vae/v.safetensors"]
    finally:
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def test_thread_workers_refuse_more_than_one_lane(registry):
    from loom.server.app import ServerConfig, create_app
    from loom.server.cli import build_parser
    from loom.server.serve import server_config

    with pytest.raises(ValueError, match="only one thread lane makes sense"):
        create_app(ServerConfig(registry=registry, workers="thread", lanes=2, start_worker=False))
    assert server_config(build_parser().parse_args(["serve"])).lanes == 1
    assert server_config(build_parser().parse_args(["serve", "--lanes", "3"])).lanes == 3


# -- two process lanes, two checkpoints ------------------------------------------------------------------------

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


def test_two_process_lanes_route_each_checkpoint_to_the_lane_that_holds_it(tmp_path, registry):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig
    from tests.fixtures_checkpoints import write_checkpoint

    previous = folders.current()
    folders.configure(tmp_path)
    names = {"a": "tiny-a.safetensors", "b": "tiny-b.safetensors"}
    write_checkpoint("sd1", tmp_path / "models" / "checkpoints" / names["a"], seed=1)
    write_checkpoint("sd1", tmp_path / "models" / "checkpoints" / names["b"], seed=2)
    server = LiveServer(ServerConfig(registry=registry, workers="process", lanes=2))
    try:
        lanes = server.server.executors
        assert len(lanes) == 2 and len(server.server.workers) == 2
        for executor in lanes:
            assert executor.wait_ready(120), executor.last_start_error
        order = ["a", "b", "a", "b", "a", "b"]

        async def scenario():
            client_id = new_client_id()
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{server.ws_url}?clientId={client_id}") as ws:
                    await ws.receive_json()
                    # a pair at a time, both lanes idle at each hand-out: which lane takes which prompt then
                    # depends on what the lanes hold, not on which one finished first (with all six queued at
                    # once, a lane that runs dry takes the other checkpoint while its lane is busy: the policy
                    # keeps lanes working, and the timing decides)
                    ids, queued = [], None
                    for pair in range(0, len(order), 2):
                        pair_ids = [(await queue_prompt(session, server.url, _txt2img(seed, names[which]),
                                                        client_id))["prompt_id"]
                                    for seed, which in list(enumerate(order))[pair:pair + 2]]
                        ids += pair_ids
                        while queued is None:  # the first pair: both lanes run at once
                            async with session.get(f"{server.url}/queue") as response:
                                snapshot = await response.json()
                            if len(snapshot["queue_running"]) == 2:
                                queued = snapshot
                            elif not snapshot["queue_running"] and not snapshot["queue_pending"]:
                                break
                            await asyncio.sleep(0.02)
                        await wait_all_done(ws, pair_ids, timeout=180)
                    entries = [await wait_history(session, server.url, i) for i in ids]
                    # interrupt by prompt_id reaches the lane running it; the other lane runs on
                    slow = [(await queue_prompt(session, server.url, add_prompt(n, sleep=s, steps=40),
                                                client_id))["prompt_id"] for n, s in ((1, 8.0), (2, 1.0))]
                    for _ in range(200):
                        async with session.get(f"{server.url}/queue") as response:
                            running = (await response.json())["queue_running"]
                        if len(running) == 2:
                            break
                        await asyncio.sleep(0.05)
                    assert {r[1] for r in running} == set(slow)
                    await asyncio.sleep(0.3)
                    async with session.post(f"{server.url}/interrupt", json={"prompt_id": slow[0]}) as response:
                        assert (await response.json()) == {"interrupted": True}
                    slow_entries = [await wait_history(session, server.url, i, timeout=60) for i in slow]
                    return ids, queued, entries, slow_entries

        ids, queued, entries, slow_entries = run_async(scenario())
        held = [sorted(os.path.basename(m) for m in w.models) for w in server.server.workers]
        loaded = [sorted(os.path.basename(f) for f in e.loaded_models()) for e in lanes]
        labels = {f"process:{e.pid}" for e in lanes}
    finally:
        server.close()
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)

    assert all(e["status"]["state"] == "success" for e in entries), [e["status"] for e in entries]
    # /queue showed both lanes' running prompts
    assert queued is not None and len(queued["queue_running"]) == 2, queued
    by_checkpoint: dict[str, set[str]] = {"a": set(), "b": set()}
    for which, entry in zip(order, entries):
        by_checkpoint[which].add(entry["status"]["worker"])
    # with the lanes' models in the message: a lane that reported no models would be routed by idleness alone
    assert len(by_checkpoint["a"]) == len(by_checkpoint["b"]) == 1, (by_checkpoint, held, loaded)
    assert by_checkpoint["a"] != by_checkpoint["b"]
    assert {w for ws in by_checkpoint.values() for w in ws} == labels
    # each lane loaded its checkpoint once: after the first prompt the loader came from the cache
    for which, entry in list(zip(order, entries))[2:]:
        cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
        assert cached and "4" in cached[0], entry["status"]["messages"]
    assert sorted(held) == [[names["a"]], [names["b"]]]
    interrupted, finished = slow_entries
    assert interrupted["status"]["state"] == "interrupted" and finished["status"]["state"] == "success"
    assert interrupted["status"]["worker"] != finished["status"]["worker"]
    assert sorted(loaded) == [[names["a"]], [names["b"]]]
