"""The cost of a fully cached re-run through the server (issue 15 §3): ``POST /prompt`` to success for a
10-node prompt whose every output is already in the worker's output cache.

Starts ``loom serve`` (temp base dir, the test node pack; ``--workers process`` by default), runs a 10-node
chain (``TestConstInt`` -> 8 x ``TestAdd`` -> ``TestOutput``) once to fill the cache, then queues the same prompt
N times, one after another, each waiting for its end on the WebSocket. Printed, per run: the client's round trip
(POST sent to ``executing: null`` received) and the server-side time from the history entry's own timestamps
(``timing.finished_at - timing.queued_at``: queueing, hand-over to the worker, the cached execution, recording),
as p50 / p95 / min.

    python bench/cached_rerun.py [--runs 200] [--workers process|thread]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server import start_server  # noqa: E402

CHAIN = 8


def chain_prompt() -> dict:
    prompt: dict = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}}}
    source = ["1", 0]
    for index in range(CHAIN):
        node = str(10 + index)
        prompt[node] = {"class_type": "TestAdd", "inputs": {"a": source, "b": index}}
        source = [node, 0]
    prompt["99"] = {"class_type": "TestOutput", "inputs": {"value": source}}
    return prompt


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, runs: int) -> tuple[list[float], list[float], list[int]]:
    prompt = chain_prompt()
    round_trips, server_side, cached_counts = [], [], []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws')}/ws?clientId=bench") as ws:
            await ws.receive_json()
            for run in range(runs + 1):
                started = time.perf_counter()
                async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": "bench"}) as response:
                    prompt_id = (await response.json())["prompt_id"]
                while True:
                    message = await ws.receive_json(timeout=60)
                    data = message.get("data") or {}
                    if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                        break
                elapsed = time.perf_counter() - started
                async with session.get(f"{url}/history/{prompt_id}") as response:
                    entry = (await response.json())[prompt_id]
                assert entry["status"]["status_str"] == "success", entry["status"]
                if run == 0:
                    continue  # the first run fills the cache
                timing = entry["timing"]
                cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
                cached_counts.append(len(cached[0]) if cached else 0)
                round_trips.append(elapsed * 1000)
                server_side.append((timing["finished_at"] - timing["queued_at"]) * 1000)  # time.time() seconds
    return round_trips, server_side, cached_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", choices=("process", "thread"), default="process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        proc, url = start_server(Path(base), args.workers)
        try:
            round_trips, server_side, cached = asyncio.run(measure(url, args.runs))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"cached re-run of a {CHAIN + 2}-node prompt, {args.runs} runs, --workers {args.workers}; "
          f"nodes reported cached per run: {statistics.median(cached):.0f}")
    for name, values in (("round trip (client)", round_trips), ("server side (history timing)", server_side)):
        print(f"{name:30s} p50 {statistics.median(values):6.2f} ms  p95 {_quantile(values, 0.95):6.2f} ms  "
              f"min {min(values):6.2f} ms")


if __name__ == "__main__":
    main()
