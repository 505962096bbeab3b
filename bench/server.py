"""Load benchmark of the server: many concurrent clients, each with its own WebSocket, queueing prompts.

Starts ``loom serve`` in a subprocess (temp base dir, the test node pack), then N clients each open
``/ws?clientId=...`` and queue M prompts (``TestConstInt -> [TestSleep] -> TestOutput`` with values
unique per prompt, so nothing is a cache hit). Prints p50/p95/p99 enqueue latency (``POST /prompt``),
completion throughput, event lag (server timestamp of ``execution_success`` to receipt), checks that
every client saw only its own prompts' events and exactly one terminal event per prompt, and prints
the server's RSS before and after.

    python bench/server.py                 # 50 clients x 20 prompts
    python bench/server.py --clients 10 --prompts 5 --sleep 0.03
    python bench/server.py --big-prompt 200000   # /api/health latency while a 200,000-node prompt is queued
    python bench/server.py --workers process     # one transport only (default: thread, then process)

With both transports it runs the same load against ``loom serve --workers thread`` and ``--workers process``
and prints the figures side by side, with the time from listening to ``/api/ready`` (the worker process's
start-up, for ``process``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
NODEPACK = REPO / "tests" / "nodepack"
TERMINAL = ("execution_success", "execution_error", "execution_interrupted")


def start_server(base_dir: Path, workers: str = "process") -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "loom.server.cli", "serve", "--base-dir", str(base_dir),
                             "--nodes", str(NODEPACK), "--port", "0", "--no-browser", "--workers", workers],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"Loom is running at (http://[^/\s]+)", line)
        if match:
            import threading
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, match.group(1)
    raise RuntimeError("loom serve did not start")


def prompt_for(value: int, sleep: float) -> dict:
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": value}}}
    source = ["1", 0]
    if sleep > 0:
        prompt["2"] = {"class_type": "TestSleep", "inputs": {"value": source, "seconds": sleep, "steps": 2}}
        source = ["2", 0]
    prompt["9"] = {"class_type": "TestOutput", "inputs": {"value": source}}
    return prompt


async def client(index: int, url: str, prompts: int, sleep: float, results: dict) -> None:
    client_id = f"bench-{index}"
    latencies: list[float] = []
    lags: list[float] = []
    mine: set[str] = set()
    foreign: list[dict] = []
    terminal: dict[str, int] = {}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
            await ws.receive_json()

            async def read() -> None:
                while len(terminal) < prompts or any(v == 0 for v in terminal.values()):
                    message = await ws.receive(timeout=300)
                    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                        aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError(f"{client_id}: socket closed ({message.type.name} {message.data} "
                                           f"{message.extra})")
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(message.data)
                    payload = data.get("data") or {}
                    if data["type"] == "status":
                        continue
                    prompt_id = payload.get("prompt_id")
                    if prompt_id not in mine:
                        # an event may arrive before POST /prompt returned its id: check at the end
                        foreign.append(data)
                    if data["type"] in TERMINAL:
                        terminal[prompt_id] = terminal.get(prompt_id, 0) + 1
                        if "timestamp" in payload:
                            lags.append(time.time() - payload["timestamp"] / 1000)

            reader = asyncio.create_task(read())
            try:
                for number in range(prompts):
                    body = {"prompt": prompt_for(index * 1000 + number % 1000, sleep), "client_id": client_id}
                    started = time.perf_counter()
                    async with session.post(f"{url}/prompt", json=body) as response:
                        answer = await response.json()
                        if response.status != 200:
                            raise RuntimeError(f"{client_id}: POST /prompt answered {response.status}: {answer}")
                    latencies.append(time.perf_counter() - started)
                    mine.add(answer["prompt_id"])
            except BaseException:
                reader.cancel()
                raise
            await reader
    cross_talk = [m for m in foreign if (m.get("data") or {}).get("prompt_id") not in mine]
    results[client_id] = {"latencies": latencies, "lags": lags, "cross_talk": len(cross_talk),
                          "terminal_ok": sorted(terminal) == sorted(mine) and all(v == 1 for v in terminal.values()),
                          "finished": time.perf_counter()}


def chain_prompt(nodes: int) -> dict:
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}}}
    for index in range(2, nodes):
        prompt[str(index)] = {"class_type": "TestAdd", "inputs": {"a": [str(index - 1), 0], "b": 1}}
    prompt[str(nodes)] = {"class_type": "TestOutput", "inputs": {"value": [str(nodes - 1), 0]}}
    return prompt


async def big_prompt(url: str, nodes: int, settle: float) -> dict:
    """Poll /api/health every 20 ms while one huge prompt is posted, validated, queued and run."""
    body = json.dumps({"prompt": chain_prompt(nodes)}).encode()
    latencies: list[float] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        async def poll() -> None:
            while not done.is_set():
                started = time.perf_counter()
                async with session.get(f"{url}/api/health") as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        async with session.post(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"}) as response:
            status = response.status
            await response.read()
        post_seconds = time.perf_counter() - started
        await asyncio.sleep(settle)  # the worker validates and runs it meanwhile
        done.set()
        await poller
    return {"bytes": len(body), "status": status, "post_seconds": post_seconds, "latencies": latencies}


async def wait_ready(url: str, timeout: float = 120.0) -> float:
    """Seconds until ``/api/ready`` answers 200 (for process workers: the worker process has started)."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - started < timeout:
            async with session.get(f"{url}/api/ready") as response:
                if response.status == 200:
                    return time.perf_counter() - started
            await asyncio.sleep(0.01)
    raise RuntimeError("the server did not become ready")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def run(url: str, clients: int, prompts: int, sleep: float) -> dict:
    results: dict = {}
    started = time.perf_counter()
    await asyncio.gather(*(client(i, url, prompts, sleep, results) for i in range(clients)))
    elapsed = max(r["finished"] for r in results.values()) - started
    return {"results": results, "elapsed": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=20, help="prompts per client")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each prompt sleeps in TestSleep")
    parser.add_argument("--workers", choices=("thread", "process"), action="append", default=None,
                        help="the transport(s) to measure (repeatable; default: thread, then process)")
    parser.add_argument("--big-prompt", type=int, default=0, metavar="NODES",
                        help="instead: health-check latency while one prompt of this many nodes is queued")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds to keep polling after the big POST")
    args = parser.parse_args()
    transports = args.workers or ["thread", "process"]
    if args.big_prompt:
        ok = True
        for workers in transports:
            with tempfile.TemporaryDirectory() as base:
                proc, url = start_server(Path(base), workers)
                try:
                    asyncio.run(wait_ready(url))
                    big = asyncio.run(big_prompt(url, args.big_prompt, args.settle))
                finally:
                    proc.terminate()
                    proc.wait(30)
            health = big["latencies"]
            print(f"--workers {workers}")
            print(f"big prompt       {args.big_prompt} nodes, {big['bytes'] / 1e6:.1f} MB: POST /prompt answered "
                  f"{big['status']} in {big['post_seconds']:.2f} s")
            print(f"/api/health      p50 {percentile(health, 0.5) * 1000:.1f} ms  "
                  f"p99 {percentile(health, 0.99) * 1000:.1f} ms  max {max(health) * 1000:.1f} ms over "
                  f"{len(health)} checks (while it was parsed, validated, queued, run)")
            ok = ok and big["status"] == 200
        return 0 if ok else 1
    figures = {workers: load(workers, args) for workers in transports}
    if len(figures) > 1:
        names = list(figures)
        print()
        print(f"{'':20}" + "".join(f"{name:>12}" for name in names))
        for label, key, scale, unit in (("enqueue p50", "enqueue_p50", 1000, "ms"),
                                        ("enqueue p95", "enqueue_p95", 1000, "ms"),
                                        ("enqueue p99", "enqueue_p99", 1000, "ms"),
                                        ("event lag p50", "lag_p50", 1000, "ms"),
                                        ("event lag p95", "lag_p95", 1000, "ms"),
                                        ("prompts/s", "throughput", 1, "  "),
                                        ("ready after listen", "ready_s", 1, " s")):
            print(f"{label:20}" + "".join(f"{figures[n][key] * scale:>10.1f}{unit}" for n in names))
    return 0 if all(f["ok"] for f in figures.values()) else 1


def load(workers: str, args: argparse.Namespace) -> dict:
    """One load run against ``loom serve --workers <workers>``; prints and returns its figures."""
    with tempfile.TemporaryDirectory() as base:
        proc, url = start_server(Path(base), workers)
        try:
            ready_s = asyncio.run(wait_ready(url))
            server = psutil.Process(proc.pid)
            time.sleep(0.5)
            rss_before = server.memory_info().rss
            outcome = asyncio.run(run(url, args.clients, args.prompts, args.sleep))
            rss_after = server.memory_info().rss
            children = server.children()
            worker_rss = sum(child.memory_info().rss for child in children)
        finally:
            proc.terminate()
            proc.wait(30)
    results = outcome["results"]
    latencies = [x for r in results.values() for x in r["latencies"]]
    lags = [x for r in results.values() for x in r["lags"]]
    total = args.clients * args.prompts
    cross_talk = sum(r["cross_talk"] for r in results.values())
    terminal_ok = all(r["terminal_ok"] for r in results.values())
    print(f"--workers {workers}: clients {args.clients} x prompts {args.prompts} = {total} prompts "
          f"(TestSleep {args.sleep} s); /api/ready {ready_s:.2f} s after it listened")
    print(f"enqueue latency  p50 {percentile(latencies, 0.5) * 1000:.1f} ms  "
          f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms  p99 {percentile(latencies, 0.99) * 1000:.1f} ms  "
          f"mean {statistics.mean(latencies) * 1000:.1f} ms")
    print(f"completion       {total} prompts in {outcome['elapsed']:.2f} s = "
          f"{total / outcome['elapsed']:.1f} prompts/s")
    if lags:
        print(f"event lag        p50 {percentile(lags, 0.5) * 1000:.1f} ms  p95 {percentile(lags, 0.95) * 1000:.1f} ms "
              "(execution_success timestamp -> received)")
    print(f"cross-talk       {cross_talk} foreign events; one terminal event per prompt: {terminal_ok}")
    print(f"server RSS       before {rss_before / 2**20:.1f} MiB  after {rss_after / 2**20:.1f} MiB  "
          f"(+{(rss_after - rss_before) / 2**20:.1f} MiB)"
          + (f"; worker process {worker_rss / 2**20:.1f} MiB" if children else ""))
    return {"ok": cross_talk == 0 and terminal_ok, "ready_s": ready_s,
            "enqueue_p50": percentile(latencies, 0.5), "enqueue_p95": percentile(latencies, 0.95),
            "enqueue_p99": percentile(latencies, 0.99),
            "lag_p50": percentile(lags, 0.5) if lags else float("nan"),
            "lag_p95": percentile(lags, 0.95) if lags else float("nan"),
            "throughput": total / outcome["elapsed"]}


if __name__ == "__main__":
    sys.exit(main())
