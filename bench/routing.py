"""Simulate Loom's model-affinity routing (server/routing.py) at internet scale, against the obvious others.

    python bench/routing.py                     # 64 workers, 200 models, 10,000 prompts, load 50 % and 80 %
    python bench/routing.py --load 0.9 --slots 1 --k 16

The model of the world (stated, so the numbers can be argued with):

- ``--workers`` GPUs (64), each holding at most ``--slots`` models (2: two SDXL-class checkpoints fit an
  80 GB card with room to sample), evicted least-recently-used.
- ``--models`` checkpoints (200) whose popularity is Zipf-distributed (``--zipf`` s = 1.0: the most popular
  model gets ~17 % of prompts, the top 10 ~50 %); loading one takes 10-60 s (uniform, fixed per model: its
  size and the disk it comes from).
- ``--prompts`` prompts (10,000) arriving as a Poisson process at ``--load`` times the cluster's pure compute
  capacity (workers / mean run time), so 0.7 leaves 30 % for model loads.
- A prompt runs for a log-normal time, median 8 s, sigma 0.5 (mean 9.1 s; p5 3.5 s, p95 18 s; clipped to
  2-120 s): a 20-30 step SDXL image on a current GPU, with the occasional large batch or upscale.

Policies:

- ``affinity``: Loom's (one queue; a free worker takes the oldest prompt whose model it holds, else the head
  unless another idle worker holds it; starvation bound ``--k`` dispatches) - :func:`server.routing.choose`
  itself is what runs here.
- ``fifo``: one queue, a free worker takes the head (N lanes without routing).
- ``round-robin``: prompt i goes to worker i mod N, which runs its own queue in order (a naive dispatcher).
- ``random``: each prompt to a worker chosen at random (ditto).

Reported: model loads; wait (arrival to the start of the prompt's own run, so it includes queueing and any
model load it needed) at p50 / p95 / max; GPU utilisation (time spent running prompts over workers x
makespan; loading is not useful work); the time to drain all prompts.
"""
from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import sys
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loom.server.routing import Lane, Pending, choose  # noqa: E402

WINDOW = 1000  # as server.queue.ROUTING_WINDOW: the policy sees the first 1,000 pending prompts


@dataclass
class World:
    workers: int
    models: int
    slots: int
    load_s: list[float]
    arrivals: list[float]
    model_of: list[int]
    run_s: list[float]


def make_world(args: argparse.Namespace, load: float, seed: int) -> World:
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** args.zipf for rank in range(args.models)]
    total = sum(weights)
    cumulative = []
    acc = 0.0
    for w in weights:
        acc += w / total
        cumulative.append(acc)
    load_s = [rng.uniform(10.0, 60.0) for _ in range(args.models)]
    mean_run = 8.0 * math.exp(0.5 ** 2 / 2)
    rate = load * args.workers / mean_run
    t = 0.0
    arrivals, model_of, run_s = [], [], []
    for _ in range(args.prompts):
        t += rng.expovariate(rate)
        arrivals.append(t)
        model_of.append(min(bisect.bisect_left(cumulative, rng.random()), args.models - 1))
        run_s.append(min(120.0, max(2.0, rng.lognormvariate(math.log(8.0), 0.5))))
    return World(args.workers, args.models, args.slots, load_s, arrivals, model_of, run_s)


class Gpu:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.resident: OrderedDict[int, None] = OrderedDict()
        self.busy = False
        self.queue: deque[int] = deque()  # own queue (round-robin / random)

    def holds(self, model: int) -> bool:
        return model in self.resident

    def use(self, model: int) -> bool:
        """Make ``model`` resident; True if it had to be loaded."""
        if model in self.resident:
            self.resident.move_to_end(model)
            return False
        while len(self.resident) >= self.slots:
            self.resident.popitem(last=False)
        self.resident[model] = None
        return True


def simulate(world: World, policy: str, k: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed + 1)
    gpus = [Gpu(world.slots) for _ in range(world.workers)]
    names = [f"checkpoints/m{m}.safetensors" for m in range(world.models)]
    central: list[Pending] = []  # affinity / fifo, queue order
    events: list[tuple[float, int, int, int]] = []  # (time, kind 0=done 1=arrival, prompt, gpu)
    for i, t in enumerate(world.arrivals):
        heapq.heappush(events, (t, 1, i, -1))
    loads = 0
    waits = [0.0] * len(world.arrivals)
    busy_run = 0.0
    worst_waited = 0
    now = 0.0
    rr = 0

    def start(g: int, prompt: int) -> None:
        nonlocal loads, busy_run
        gpu = gpus[g]
        gpu.busy = True
        load = world.load_s[world.model_of[prompt]] if gpu.use(world.model_of[prompt]) else 0.0
        loads += load > 0
        waits[prompt] = now + load - world.arrivals[prompt]
        busy_run += world.run_s[prompt]
        heapq.heappush(events, (now + load + world.run_s[prompt], 0, prompt, g))

    def dispatch() -> None:
        nonlocal worst_waited
        if policy in ("round-robin", "random"):
            for g, gpu in enumerate(gpus):
                if not gpu.busy and gpu.queue:
                    start(g, gpu.queue.popleft())
            return
        while central:
            idle = [g for g, gpu in enumerate(gpus) if not gpu.busy]
            if not idle:
                return
            if policy == "fifo":
                start(idle[0], int(central.pop(0).prompt_id))
                continue
            lanes = [Lane(str(g), frozenset(names[m] for m in gpu.resident), not gpu.busy)
                     for g, gpu in enumerate(gpus)]
            window = central[:WINDOW]
            took = False
            for g in idle:
                index = choose(window, lanes, g, k)
                if index is None:
                    continue
                taken = central.pop(index)
                worst_waited = max(worst_waited, taken.waited)
                for i in range(index):
                    q = central[i]
                    central[i] = Pending(q.prompt_id, q.models, q.waited + 1)
                start(g, int(taken.prompt_id))
                took = True
                break
            if not took:
                return

    while events:
        now, kind, prompt, g = heapq.heappop(events)
        if kind == 1:
            if policy == "round-robin":
                gpus[rr % world.workers].queue.append(prompt)
                rr += 1
            elif policy == "random":
                gpus[rng.randrange(world.workers)].queue.append(prompt)
            else:
                central.append(Pending(str(prompt), frozenset({names[world.model_of[prompt]]})))
        else:
            gpus[g].busy = False
        dispatch()
    makespan = now
    ordered = sorted(waits)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"loads": loads, "p50": pct(0.50), "p95": pct(0.95), "max": ordered[-1],
            "util": busy_run / (world.workers * makespan), "makespan": makespan, "waited": worst_waited}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=2, help="models a GPU holds at once (LRU)")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of model popularity")
    parser.add_argument("--load", type=float, action="append", default=None,
                        help="arrival rate as a fraction of pure compute capacity (repeatable; default 0.5 and 0.8)")
    parser.add_argument("--k", type=int, default=None, help="starvation bound (default server.routing's: 16 per worker)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    from loom.server.routing import starvation_bound

    k = args.k if args.k is not None else starvation_bound(args.workers)
    print(f"{args.workers} workers x {args.slots} model slots, {args.models} models (Zipf s={args.zipf:g}, load "
          f"10-60 s), {args.prompts:,} prompts (run log-normal median 8 s, sigma 0.5), affinity k={k}")
    print()
    print("| load | policy | model loads | wait p50 (s) | wait p95 (s) | wait max (s) | GPU utilisation | drained in (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for load in args.load or [0.5, 0.8]:
        world = make_world(args, load, args.seed)
        for policy in ("affinity", "fifo", "round-robin", "random"):
            r = simulate(world, policy, k, args.seed)
            print(f"| {load:.0%} | {policy} | {r['loads']:,} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.0f} | "
                  f"{r['util']:.0%} | {r['makespan']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
