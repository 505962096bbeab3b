"""The durable queue: ComfyUI's priority order, persistence, crash recovery, bounded history; and
restarts of a real ``loom serve`` process (SIGKILL and SIGTERM with queued prompts)."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from loom.server.queue import Outcome, PromptQueue, QueueStoreError
from tests.fixtures_server import ServerProcess, add_prompt, queue_prompt, run_async, wait_history


def put(queue: PromptQueue, prompt_id: str, **kwargs) -> float:
    return queue.put(prompt_id, {"1": {"class_type": "X"}}, {"client_id": "c"}, ["1"], **kwargs)


def test_priority_order_number_and_front(tmp_path):
    queue = PromptQueue(tmp_path / "q.sqlite3")
    assert put(queue, "a") == 0 and put(queue, "b") == 1
    assert put(queue, "front1", front=True) == -2
    assert put(queue, "front2", front=True) == -3  # several "front" prompts run newest first
    assert put(queue, "between", number=0.5) == 0.5
    assert [i.prompt_id for i in queue.pending()] == ["front2", "front1", "a", "between", "b"]
    assert queue.pending()[3].as_list()[0] == 0.5 and queue.pending()[2].as_list()[0] == 0
    with pytest.raises(KeyError):
        put(queue, "a")
    order = [queue.get(timeout=0).prompt_id for _ in range(5)]
    assert order == ["front2", "front1", "a", "between", "b"]
    assert queue.get(timeout=0.01) is None
    assert queue.counts() == (0, 5)


def test_pending_survive_reopen_and_running_becomes_interrupted(tmp_path):
    path = tmp_path / "q.sqlite3"
    queue = PromptQueue(path)
    for name in ("p1", "p2", "p3"):
        put(queue, name)
    running = queue.get(timeout=0)
    assert running.prompt_id == "p1"
    del queue  # the process "dies" without closing anything

    reopened = PromptQueue(path)
    assert reopened.recovered == ["p1"]
    assert [i.prompt_id for i in reopened.pending()] == ["p2", "p3"]
    entry = reopened.history_item("p1")
    assert entry["status"]["state"] == "interrupted" and entry["status"]["status_str"] == "error"
    assert entry["status"]["error"]["type"] == "server_restarted"
    assert reopened.history_prompt("p1").prompt == {"1": {"class_type": "X"}}  # can be re-queued
    assert put(reopened, "p4") == 3  # the counter continues across restarts


def test_history_finish_paging_and_bounds(tmp_path):
    queue = PromptQueue(tmp_path / "q.sqlite3", max_history_items=3, max_history_age_s=3600)
    for i in range(5):
        put(queue, f"h{i}")
        item = queue.get(timeout=0)
        queue.finish(item.prompt_id, Outcome(state="success", outputs={"1": {"text": [str(i)]}},
                                             messages=[["execution_success", {"prompt_id": item.prompt_id}]]))
    assert list(queue.history()) == ["h2", "h3", "h4"]  # bounded by count, oldest dropped
    assert list(queue.history(max_items=2)) == ["h3", "h4"]
    assert list(queue.history(max_items=1, offset=1)) == ["h3"]
    entry = queue.history_item("h4")
    assert entry["outputs"] == {"1": {"text": ["4"]}} and entry["status"]["completed"] is True
    assert entry["prompt"][1] == "h4" and entry["timing"]["finished_at"] >= entry["timing"]["started_at"]
    queue.max_history_age_s = 0.0  # bounded by age too
    time.sleep(0.01)
    put(queue, "late")
    queue.finish(queue.get(timeout=0).prompt_id, Outcome(state="error", error={"message": "x"}))
    assert list(queue.history()) == []


def test_cancel_delete_clear_and_secrets(tmp_path):
    queue = PromptQueue(tmp_path / "q.sqlite3")
    queue.put("s", {}, {"client_id": "c", "api_key_comfy_org": "secret", "extra_pnginfo": {"w": 1}}, [])
    for name in ("x", "y", "z"):
        put(queue, name)
    assert queue.pending()[0].extra_data == {"client_id": "c", "extra_pnginfo": {"w": 1}}
    assert "secret" not in (tmp_path / "q.sqlite3").read_bytes().decode("latin-1")
    assert queue.cancel("x") and not queue.cancel("x")
    assert queue.history_item("x")["status"]["state"] == "cancelled"
    assert queue.delete_pending(["y", "nope"]) == 1
    assert queue.state_of("z") == "pending" and queue.state_of("nope") is None
    assert queue.clear_pending() == 2
    assert queue.remaining() == 0
    assert queue.delete_history(["x"]) == 1 and queue.clear_history() == 0


def test_listeners_and_blocking_get(tmp_path):
    queue = PromptQueue(tmp_path / "q.sqlite3")
    changes = []
    queue.add_listener(lambda: changes.append(queue.remaining()))
    import threading
    got = []
    reader = threading.Thread(target=lambda: got.append(queue.get(timeout=5)))
    reader.start()
    time.sleep(0.05)
    put(queue, "wake")
    reader.join(5)
    assert got[0].prompt_id == "wake" and changes == [1, 1]
    queue.close()
    assert queue.get(timeout=0) is None


def test_unreadable_database_refuses_to_start(tmp_path):
    """X14: a corrupt or foreign database file is refused with a clear message, never silently dropped."""
    path = tmp_path / "q.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QueueStoreError, match="cannot open the queue database"):
        PromptQueue(path)
    assert path.read_bytes().startswith(b"this is not a database")


# -------------------------------------------------------------------------------------------------
# A real process, killed and restarted (B.3.5 X7, X8; B.3.4 A1)
# -------------------------------------------------------------------------------------------------

async def _queue_five(url: str) -> tuple[str, list[str]]:
    async with aiohttp.ClientSession() as session:
        running = await queue_prompt(session, url, add_prompt(0, sleep=30.0, steps=300))
        while True:
            async with session.get(f"{url}/queue") as response:
                if (await response.json())["queue_running"]:
                    break
            await asyncio.sleep(0.05)
        ids = [(await queue_prompt(session, url, add_prompt(10 + i, sleep=0.05)))["prompt_id"] for i in range(5)]
        async with session.get(f"{url}/queue") as response:
            assert [item[1] for item in (await response.json())["queue_pending"]] == ids
        return running["prompt_id"], ids


async def _all_finish(url: str, running_id: str, ids: list[str]) -> None:
    async with aiohttp.ClientSession() as session:
        for index, prompt_id in enumerate(ids):
            entry = await wait_history(session, url, prompt_id, timeout=60)
            assert entry["status"]["status_str"] == "success", entry["status"]
            assert entry["outputs"]["9"] == {"text": [str(10 + index)]}
        entry = await wait_history(session, url, running_id)
        assert entry["status"]["state"] == "interrupted", entry["status"]
        finished = [entry["timing"]["finished_at"] for entry in
                    [(await (await session.get(f"{url}/history/{p}")).json())[p] for p in ids]]
        assert finished == sorted(finished)  # in their original order
        async with session.post(f"{url}/api/history/{running_id}/requeue", json={"front": True}) as response:
            assert response.status == 200
            requeued = (await response.json())["prompt_id"]
        async with session.post(f"{url}/api/queue/{requeued}/cancel") as response:
            assert response.status == 200


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_restart_keeps_queued_prompts(tmp_path, stop):
    """5 queued prompts behind a running one; the process dies; after a restart all 5 run, none lost,
    and the one that was running is in history as interrupted (never silently re-run)."""
    first = ServerProcess(tmp_path)
    try:
        import psutil
        listening = [c.laddr for c in psutil.Process(first.proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(address.ip in ("127.0.0.1", "::1") for address in listening)  # A1: loopback only
        running_id, ids = run_async(_queue_five(first.url))
        if stop == "SIGKILL":
            first.kill()
        else:
            assert first.terminate() == 0
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    second = ServerProcess(tmp_path)
    try:
        run_async(_all_finish(second.url, running_id, ids))
        output = "".join(second.lines)
        if stop == "SIGKILL":
            assert "were running when Loom last stopped" in output
        assert "5 queued prompt(s) from the last run will run now" in output
    finally:
        second.terminate()
    assert not any("Traceback" in line for line in first.lines + second.lines), "".join(second.lines)
