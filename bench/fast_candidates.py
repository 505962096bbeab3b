"""What could make a diffusion step faster on this machine, measured one UNet call at a time.

    python bench/fast_candidates.py [--checkpoint PATH] [--sizes 64,128,256] [--rounds 5] [--compile]

The SD1.5 conformance UNet, one CFG call (batch 2, a 77-token context) per size; every candidate runs in
turn in each round (the order reversed every other round, so machine noise hits all of them), and the
medians and their ratio to the exact call are printed with each candidate's relative L2 difference from the
exact output. The candidates (docs/performance.md "The fast path" has the verdicts):

* ``bf16 weights`` — a bfloat16 copy of the UNet (what ``--fast`` uses, :mod:`nodes.runtime.fast`);
* ``bf16 autocast`` — ``torch.autocast("cpu", bfloat16)`` around the float32 UNet (weights cast every call);
* ``channels_last`` — the UNet's convolutions and the input in channels-last memory format;
* ``cfg split`` — the cond and uncond halves as two batch-1 calls instead of one batch of 2;
* ``1 thread`` — the exact call with ``torch.set_num_threads(1)`` instead of the default.

``--compile`` also measures ``torch.compile`` of the float32 and the bfloat16 UNet at the first size: the
compile time (the first call) and the compiled call against the eager one, with the break-even number of
calls (``inf`` when compiled calls are not faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.generation import default_checkpoint  # noqa: E402


def candidates(unet, fast_unet, x, t, context) -> dict:
    """name -> a function making one CFG call of the UNet that way."""
    threads = torch.get_num_threads()
    x16, c16 = x.to(torch.bfloat16), context.to(torch.bfloat16)
    x_last = x.contiguous(memory_format=torch.channels_last)

    def exact():
        return unet(x, t, encoder_hidden_states=context, return_dict=False)[0]

    def bf16_weights():
        return fast_unet(x16, t, encoder_hidden_states=c16, return_dict=False)[0].float()

    def bf16_autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return unet(x, t, encoder_hidden_states=context, return_dict=False)[0].float()

    def channels_last():
        unet.to(memory_format=torch.channels_last)
        try:
            return unet(x_last, t, encoder_hidden_states=context, return_dict=False)[0]
        finally:
            unet.to(memory_format=torch.contiguous_format)

    def cfg_split():
        halves = [unet(x[i:i + 1], t[i:i + 1], encoder_hidden_states=context[i:i + 1], return_dict=False)[0]
                  for i in range(2)]
        return torch.cat(halves)

    def one_thread():
        torch.set_num_threads(1)
        try:
            return exact()
        finally:
            torch.set_num_threads(threads)

    return {"exact": exact, "bf16 weights": bf16_weights, "bf16 autocast": bf16_autocast,
            "channels_last": channels_last, "cfg split": cfg_split, f"1 thread (not {threads})": one_thread}


def measure(calls: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """name -> (median seconds, relative L2 difference from the exact output)."""
    with torch.no_grad():
        reference = calls["exact"]()
        errors = {}
        for name, fn in calls.items():  # also the warm-up: oneDNN builds its kernels on a shape's first call
            out = fn()
            errors[name] = float((out.float() - reference).norm() / reference.norm())
        times: dict[str, list[float]] = {name: [] for name in calls}
        for i in range(rounds):
            for name in (list(calls) if i % 2 == 0 else list(calls)[::-1]):
                started = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - started)
    return {name: (statistics.median(times[name]), errors[name]) for name in calls}


def compile_break_even(unet, x, t, context, rounds: int) -> str:
    """One line: compile time, eager and compiled medians and the break-even number of calls."""
    compiled = torch.compile(unet)
    with torch.no_grad():
        started = time.perf_counter()
        compiled(x, t, encoder_hidden_states=context, return_dict=False)
        first = time.perf_counter() - started
        eager, fast = [], []
        for i in range(rounds):
            pair = [(eager, unet), (fast, compiled)]
            for into, fn in (pair if i % 2 == 0 else pair[::-1]):
                started = time.perf_counter()
                fn(x, t, encoder_hidden_states=context, return_dict=False)
                into.append(time.perf_counter() - started)
    e, c = statistics.median(eager), statistics.median(fast)
    break_even = (first - c) / (e - c) if e > c else float("inf")
    return (f"compile + first call {first:.1f} s; eager {e * 1000:.0f} ms, compiled {c * 1000:.0f} ms "
            f"(ratio {c / e:.2f}); break-even after {break_even:.0f} calls")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes)")
    args = parser.parse_args()
    checkpoint = (args.checkpoint or default_checkpoint()).resolve()
    if not checkpoint.is_file():
        print(f"no checkpoint at {checkpoint}: build it with shared/conformance/make_checkpoint.py", file=sys.stderr)
        return 2
    from loom.nodes.runtime import fast
    from loom.nodes.runtime.checkpoint import load_checkpoint

    model, _clip, _vae = load_checkpoint(checkpoint, output_clip=False, output_vae=False)
    unet = model.unet
    fast_unet = fast.bfloat16_copy(unet)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bfloat16: "
          f"{fast.cpu_has_fast_bfloat16()}, attention: "
          f"{sorted({type(p).__name__ for p in unet.attn_processors.values()})}", flush=True)
    sizes = [int(v) for v in args.sizes.split(",")]
    print("| size | candidate | median ms | ratio to exact | rel. L2 diff |")
    print("|---|---|---|---|---|")
    for size in sizes:
        generator = torch.Generator().manual_seed(size)
        x = torch.randn((2, 4, size // 8, size // 8), generator=generator)
        t = torch.tensor([500.0, 500.0])
        context = torch.randn((2, 77, 768), generator=generator)
        results = measure(candidates(unet, fast_unet, x, t, context), args.rounds)
        base = results["exact"][0]
        for name, (seconds, error) in results.items():
            print(f"| {size}² | {name} | {seconds * 1000:.0f} | {seconds / base:.2f} | {error:.1e} |", flush=True)
    if args.compile:
        size = sizes[0]
        generator = torch.Generator().manual_seed(size)
        x = torch.randn((2, 4, size // 8, size // 8), generator=generator)
        t = torch.tensor([500.0, 500.0])
        context = torch.randn((2, 77, 768), generator=generator)
        print(f"torch.compile, {size}², float32: {compile_break_even(unet, x, t, context, args.rounds)}", flush=True)
        print(f"torch.compile, {size}², bfloat16: "
              f"{compile_break_even(fast_unet, x.bfloat16(), t, context.bfloat16(), args.rounds)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
