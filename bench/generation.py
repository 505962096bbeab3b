"""Generation overhead: Loom's txt2img run against a bare diffusers loop on the same modules.

    python bench/generation.py [--checkpoint PATH] [--steps 20] [--size 64] [--repeats 3] [--threads N]
                               [--fast] [--sizes 64,128,256,512] [--unet-repeats 3]

Both sides use the conformance checkpoint's UNet and VAE as Loom loads them, the same text encodings,
the same noise and the same Euler/normal sigmas with CFG 8:

* **loom** — ``KSampler`` + ``VAEDecode`` through :class:`server.executor.Executor` (a new seed each run,
  so only those nodes re-run; loading and text encoding stay cached, as when a user re-queues);
* **bare** — a plain loop: ``unet(cat([x, x]) / sqrt(sigma^2 + 1), t, context)``, CFG, Euler step, then
  ``vae.decode``.

* **loom --fast** (with ``--fast``) — the same prompt with ``extra_data.loom.fast`` on
  (:mod:`nodes.runtime.fast`: the UNet in bfloat16).

Runs alternate (loom, bare, loom, ...; with ``--fast`` the three in turn) so machine noise hits each; the
medians and their ratio (target <= 1.03) are printed, with the process's peak RSS. Then:

* the time per step outside the network (sampler, CFG, callbacks) with a no-op UNet, and what previews add
  per step (a progress listener installed, each step's latent preview made and JPEG-encoded as the server
  does, against no listener);
* per resolution in ``--sizes``: the UNet's FLOPs per CFG call (batch 2, counted by
  ``torch.utils.flop_counter``, attention through its math form), the time of one call exact and fast
  (alternating, medians) and the FLOP/s they achieve, next to the measured 2048² matmul peak of this machine
  in float32 and bfloat16 (the physical limit each path can reach).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHECKPOINT = "sd15-conformance-s0.safetensors"


def default_checkpoint() -> Path:
    cache = Path(os.environ.get("LOOM_CONFORMANCE_CACHE") or Path.home() / ".cache" / "loom-conformance")
    return cache / CHECKPOINT


def txt2img_prompt(ckpt_name: str, seed: int, steps: int, size: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house with a red roof", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def bare_loop(model, vae, positive, negative, seed: int, steps: int, size: int):
    """The same generation written directly against the diffusers modules."""

    from loom.nodes.runtime.schedules import calculate_sigmas

    unet = model.unet
    sampling = model.sampling
    sigmas = calculate_sigmas(sampling, "normal", steps)
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn((1, 4, size // 8, size // 8), generator=generator)
    x = latent * torch.sqrt(1.0 + sigmas[0] ** 2)
    context = torch.cat([negative, positive])
    with torch.no_grad():
        for i in range(steps):
            sigma = sigmas[i]
            t = sampling.timestep(sigma.reshape(1)).float().repeat(2)
            eps = unet(torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5, t, encoder_hidden_states=context).sample
            denoised = torch.cat([x, x]) - eps * sigma
            uncond, cond = denoised.chunk(2)
            guided = uncond + (cond - uncond) * 8.0
            x = x + (x - guided) / sigma * (sigmas[i + 1] - sigma)
        image = vae.vae.decode(x / model.latent_format.scale_factor).sample
    return ((image + 1) / 2).clamp(0, 1)


class NoOpUNet(torch.nn.Module):
    """A UNet that returns zeros at once: what is left of a step is Loom's own bookkeeping."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **_):
        out = torch.zeros_like(sample)
        return (out,) if not return_dict else type("Out", (), {"sample": out})()


def loop_overhead_per_step(model, positive, negative, steps: int, size: int, repeats: int = 5) -> float:
    """Milliseconds per step that Loom's loop adds around the network: both loops run with a UNet that
    returns zeros at once, so only the bookkeeping (guidance, batching, timesteps, progress) is timed."""

    from loom.nodes.runtime.sampling import sample

    stub = model.replace(unet=NoOpUNet(model.unet.config))
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    conds = ([[positive, {}]], [[negative, {}]])

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return best

    loom = timed(lambda: sample(stub, *conds, latent, seed=1, steps=steps, cfg=8.0, sampler_name="euler",
                                scheduler="normal"))

    class NoVAE:
        class vae:  # noqa: N801 - mimics VAEModel.vae
            @staticmethod
            def decode(x):
                return type("Out", (), {"sample": x})()

    bare = timed(lambda: bare_loop(stub, NoVAE, positive, negative, 1, steps, size))
    return max(0.0, loom - bare) * 1000 / steps


def preview_cost_per_step(model, positive, negative, steps: int, size: int, repeats: int = 5) -> float:
    """Milliseconds per step that previews add: the no-op-UNet loop with a progress listener that encodes
    each step's latent preview as the server does (JPEG), against the same loop with no listener."""

    from loom.nodes.kernel import progress
    from loom.nodes.runtime.sampling import sample
    from loom.server.worker import encode_preview

    stub = model.replace(unet=NoOpUNet(model.unet.config))
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    conds = ([[positive, {}]], [[negative, {}]])

    def run() -> None:
        sample(stub, *conds, latent, seed=1, steps=steps, cfg=8.0, sampler_name="euler", scheduler="normal")

    def with_previews() -> None:
        def on_progress(_value: int, _total: int, preview) -> None:
            if preview is not None:
                encode_preview(preview)

        context = progress.ExecutionContext("bench", "5", "KSampler", on_progress, lambda: False)
        with progress.running_node(context):
            run()

    off, on = [], []
    for i in range(repeats):
        for name, fn in ((("off", run), ("on", with_previews)) if i % 2 == 0 else (("on", with_previews), ("off", run))):
            started = time.perf_counter()
            fn()
            (off if name == "off" else on).append(time.perf_counter() - started)
    return max(0.0, statistics.median(on) - statistics.median(off)) * 1000 / steps


def matmul_peak(dtype, n: int = 2048, repeats: int = 7) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` on this machine (the best of ``repeats``)."""

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def unet_flops(unet, x, t, context) -> int:
    """FLOPs of one UNet call, attention counted through its math form (the fused CPU kernel has no count)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=context, return_dict=False)
    return counter.get_total_flops()


def unet_throughput(model, positive, negative, sizes: list[int], repeats: int) -> list[dict]:
    """Per size: the UNet's FLOPs per CFG call and the median seconds of one call, exact and fast."""

    from loom.nodes.runtime import fast

    exact_unet = model.unet
    fast_unet = fast.fast_network(exact_unet)
    context = torch.cat([negative, positive])
    rows = []
    for size in sizes:
        generator = torch.Generator().manual_seed(size)
        x = torch.randn((2, 4, size // 8, size // 8), generator=generator)
        t = torch.tensor([500.0, 500.0])
        flops = unet_flops(exact_unet, x, t, context)
        calls = {"exact": lambda: exact_unet(x, t, encoder_hidden_states=context, return_dict=False)}
        if fast_unet is not exact_unet:
            dtype = next(fast_unet.parameters()).dtype
            xf, cf = x.to(dtype), context.to(dtype)
            calls["fast"] = lambda: fast_unet(xf, t, encoder_hidden_states=cf, return_dict=False)
        times: dict[str, list[float]] = {name: [] for name in calls}
        with torch.no_grad():
            for fn in calls.values():  # warm-up: oneDNN builds its kernels on the first call of a shape
                fn()
            for i in range(repeats):
                order = list(calls.items()) if i % 2 == 0 else list(calls.items())[::-1]
                for name, fn in order:
                    started = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - started)
        row = {"size": size, "flops": flops}
        row.update({name: statistics.median(values) for name, values in times.items()})
        rows.append(row)
        print(f"  {size}x{size}: {flops / 1e9:.1f} GFLOP per call, exact {row['exact'] * 1000:.0f} ms"
              + (f", fast {row['fast'] * 1000:.0f} ms" if "fast" in row else ""), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fast", action="store_true", help="also time Loom with the fast path on")
    parser.add_argument("--sizes", default="64,128,256,512",
                        help="resolutions of the UNet FLOP/s table (comma-separated; empty: none)")
    parser.add_argument("--unet-repeats", type=int, default=3, help="calls per path and size in that table")
    args = parser.parse_args()
    checkpoint = (args.checkpoint or default_checkpoint()).resolve()
    if not checkpoint.is_file():
        print(f"no checkpoint at {checkpoint}: build it with shared/conformance/make_checkpoint.py "
              f"(or set LOOM_CONFORMANCE_CACHE)", file=sys.stderr)
        return 2

    import tempfile


    if args.threads:
        torch.set_num_threads(args.threads)
    from loom.nodes.kernel import folders
    from loom.nodes.kernel.schema import default_registry
    from loom.server.executor import Executor

    base = Path(tempfile.mkdtemp(prefix="loom-bench-"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    try:
        os.link(checkpoint, base / "models" / "checkpoints" / checkpoint.name)
    except OSError:
        import shutil
        shutil.copy(checkpoint, base / "models" / "checkpoints" / checkpoint.name)
    folders.configure(base)
    registry = default_registry()
    executor = Executor(registry)

    started = time.perf_counter()
    first = executor.execute(txt2img_prompt(checkpoint.name, 0, args.steps, args.size), "warm-up")
    if not first.ok:
        print(f"Loom run failed: {first.error}", file=sys.stderr)
        return 1
    print(f"first run (load + encode + sample + decode): {time.perf_counter() - started:.1f} s", flush=True)

    from loom.nodes.runtime.checkpoint import load_checkpoint
    from loom.nodes.runtime.text_encoding import encode_text

    # the same path the loader node resolved, so the model cache hands back the modules the executor used
    model, clip, vae = load_checkpoint(base / "models" / "checkpoints" / checkpoint.name)
    positive = encode_text(clip, "a house with a red roof")[0][0]
    negative = encode_text(clip, "blurry")[0][0]

    def run_loom(seed: int, fast: bool = False) -> float:
        started = time.perf_counter()
        result = executor.execute(txt2img_prompt(checkpoint.name, seed, args.steps, args.size), f"run-{seed}-{fast}",
                                  extra_data={"loom": {"fast": fast}})
        elapsed = time.perf_counter() - started
        assert result.ok and {"5", "6", "7"} <= set(result.executed), (result.error, result.executed)
        return elapsed

    def run_bare(seed: int) -> float:
        started = time.perf_counter()
        bare_loop(model, vae, positive, negative, seed, args.steps, args.size)
        return time.perf_counter() - started

    sides = {"loom": run_loom, "bare": run_bare}
    if args.fast:
        sides["loom --fast"] = lambda seed: run_loom(seed, fast=True)
        run_loom(0, fast=True)  # the first fast run makes the network's bfloat16 copy (once per model)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        seed = repeat + 1
        names = list(sides)
        names = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate who goes first
        for name in names:
            times[name].append(sides[name](seed))
        print(f"run {repeat + 1}: " + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in sides)
              + " (loom: KSampler, VAEDecode, PreviewImage)", flush=True)
    loom_times, bare_times = times["loom"], times["bare"]
    step_overhead_ms = loop_overhead_per_step(model, positive, negative, args.steps, args.size)
    preview_ms = preview_cost_per_step(model, positive, negative, args.steps, args.size)

    loom, bare = statistics.median(loom_times), statistics.median(bare_times)
    pair_ratios = [a / b for a, b in zip(loom_times, bare_times)]  # each pair ran back to back
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.size}x{args.size}, {args.steps} steps, euler/normal, cfg 8, torch threads {torch.get_num_threads()}")
    print(f"loom median {loom:.2f} s (min {min(loom_times):.2f}), bare diffusers loop median {bare:.2f} s "
          f"(min {min(bare_times):.2f})")
    print(f"ratio loom/bare: median of pairs {statistics.median(pair_ratios):.3f} "
          f"(pairs {', '.join(f'{r:.3f}' for r in pair_ratios)}), of medians {loom / bare:.3f}; target <= 1.03")
    if args.fast:
        fast_times = times["loom --fast"]
        fast_ratios = [f / e for f, e in zip(fast_times, loom_times)]
        print(f"loom --fast median {statistics.median(fast_times):.2f} s (min {min(fast_times):.2f}); "
              f"fast/exact: median of pairs {statistics.median(fast_ratios):.3f} "
              f"(pairs {', '.join(f'{r:.3f}' for r in fast_ratios)})")
    print(f"Loom's sampling-loop overhead with a no-op UNet: {step_overhead_ms:.2f} ms per step "
          f"({step_overhead_ms * args.steps / 1000 / bare * 100:.2f} % of the bare run's median)")
    print(f"previews (latent2rgb + JPEG, as the server sends them) add {preview_ms:.2f} ms per step "
          f"({preview_ms * args.steps / 1000 / loom * 100:.2f} % of the loom run's median)")

    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    if sizes:
        print("UNet calls (CFG batch 2), alternating exact/fast:", flush=True)
        rows = unet_throughput(model, positive, negative, sizes, args.unet_repeats)
        peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
        print(f"measured 2048² matmul peak: float32 {peak32 / 1e9:.0f} GFLOP/s, bfloat16 {peak16 / 1e9:.0f} GFLOP/s")
        print("| size | GFLOP per call | exact: ms, GFLOP/s, % of fp32 peak | fast: ms, GFLOP/s, % of bf16 peak "
              "| fast/exact |")
        print("|---|---|---|---|---|")
        for row in rows:
            flops = row["flops"]
            exact = f"{row['exact'] * 1000:.0f}, {flops / row['exact'] / 1e9:.0f}, {flops / row['exact'] / peak32:.0%}"
            fast = "-" if "fast" not in row else \
                f"{row['fast'] * 1000:.0f}, {flops / row['fast'] / 1e9:.0f}, {flops / row['fast'] / peak16:.0%}"
            ratio = "-" if "fast" not in row else f"{row['fast'] / row['exact']:.2f}"
            print(f"| {row['size']}² | {flops / 1e9:.1f} | {exact} | {fast} | {ratio} |")
    print(f"peak RSS: {peak_rss_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
