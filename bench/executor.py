"""Executor overhead: validate+plan of 10,000-node graphs, and a fully cached re-run of a 10-node graph.

    python bench/executor.py

Targets (2-core CPU): validate+plan <= 0.5 s for a 10,000-node chain and a 10,000-node wide graph;
fully cached re-run of a 10-node graph <= 5 ms. Figures are printed, not asserted.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loom.nodes.kernel.schema import default_registry  # noqa: E402
from loom.server.executor import Executor  # noqa: E402
from loom.server.validation import validate_prompt  # noqa: E402

NODEPACK = Path(__file__).resolve().parents[1] / "tests" / "nodepack"


def chain(n: int) -> dict:
    prompt = {"0": {"class_type": "TestConstInt", "inputs": {"value": 0}}}
    for i in range(1, n - 1):
        prompt[str(i)] = {"class_type": "TestAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "TestOutput", "inputs": {"value": [str(n - 2), 0]}}
    return prompt


def wide(n: int) -> dict:
    """n/2 independent const → output pairs."""
    prompt = {}
    for i in range(n // 2):
        prompt[f"c{i}"] = {"class_type": "TestConstInt", "inputs": {"value": i}}
        prompt[f"o{i}"] = {"class_type": "TestOutput", "inputs": {"value": [f"c{i}", 0]}}
    return prompt


def small(n: int = 10) -> dict:
    prompt = {"0": {"class_type": "TestConstInt", "inputs": {"value": 1}}}
    for i in range(1, n - 1):
        prompt[str(i)] = {"class_type": "TestAdd", "inputs": {"a": [str(i - 1), 0], "b": i}}
    prompt[str(n - 1)] = {"class_type": "TestOutput", "inputs": {"value": [str(n - 2), 0]}}
    return prompt


def best_of(repeats: int, fn) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    registry = default_registry([NODEPACK])
    for name, prompt in (("chain", chain(10_000)), ("wide", wide(10_000))):
        result = validate_prompt(prompt, registry)
        assert result.ok, result.messages()[:3]
        best, median = best_of(5, lambda: validate_prompt(prompt, registry))
        print(f"validate+plan 10,000-node {name:5s}: best {best * 1000:7.1f} ms  median {median * 1000:7.1f} ms"
              f"  (target <= 500 ms)")

    executor = Executor(registry)
    prompt = small()
    first = executor.execute(prompt, "warm")
    assert first.ok and len(first.executed) == 10
    runs = []
    for i in range(200):
        start = time.perf_counter()
        result = executor.execute(prompt, f"cached-{i}")
        runs.append(time.perf_counter() - start)
        assert result.ok and result.executed == []
    print(f"fully cached re-run, 10 nodes:      best {min(runs) * 1000:7.3f} ms  median "
          f"{statistics.median(runs) * 1000:7.3f} ms  p95 {sorted(runs)[int(len(runs) * 0.95)] * 1000:7.3f} ms"
          f"  (target <= 5 ms)")

    big = chain(10_000)
    start = time.perf_counter()
    executor.execute(big, "big-first")
    cold = time.perf_counter() - start
    start = time.perf_counter()
    executor.execute(big, "big-cached")
    warm = time.perf_counter() - start
    print(f"10,000-node chain: first run {cold:.2f} s, fully cached re-run {warm:.2f} s")


if __name__ == "__main__":
    main()
