"""Generation overhead: Loom's txt2img run against a bare diffusers loop on the same modules.

    python bench/generation.py [--checkpoint PATH] [--steps 20] [--size 64] [--repeats 3] [--threads N]

Both sides use the conformance checkpoint's UNet and VAE as Loom loads them, the same text encodings,
the same noise and the same Euler/normal sigmas with CFG 8:

* **loom** — ``KSampler`` + ``VAEDecode`` through :class:`server.executor.Executor` (a new seed each run,
  so only those nodes re-run; loading and text encoding stay cached, as when a user re-queues);
* **bare** — a plain loop: ``unet(cat([x, x]) / sqrt(sigma^2 + 1), t, context)``, CFG, Euler step, then
  ``vae.decode``.

Runs alternate (loom, bare, loom, ...) so machine noise hits both; the medians and their ratio
(target <= 1.03) are printed, with the process's peak RSS.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

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
    import torch

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


def loop_overhead_per_step(model, positive, negative, steps: int, size: int, repeats: int = 5) -> float:
    """Milliseconds per step that Loom's loop adds around the network: both loops run with a UNet that
    returns zeros at once, so only the bookkeeping (guidance, batching, timesteps, progress) is timed."""
    import torch

    from loom.nodes.runtime.sampling import sample

    class NoOpUNet(torch.nn.Module):
        def __init__(self, config) -> None:
            super().__init__()
            self.config = config
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **_):
            out = torch.zeros_like(sample)
            return (out,) if not return_dict else type("Out", (), {"sample": out})()

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    checkpoint = (args.checkpoint or default_checkpoint()).resolve()
    if not checkpoint.is_file():
        print(f"no checkpoint at {checkpoint}: build it with shared/conformance/make_checkpoint.py "
              f"(or set LOOM_CONFORMANCE_CACHE)", file=sys.stderr)
        return 2

    import tempfile

    import torch

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

    def run_loom(seed: int) -> float:
        started = time.perf_counter()
        result = executor.execute(txt2img_prompt(checkpoint.name, seed, args.steps, args.size), f"run-{seed}")
        elapsed = time.perf_counter() - started
        assert result.ok and set(result.executed) == {"5", "6", "7"}, (result.error, result.executed)
        return elapsed

    def run_bare(seed: int) -> float:
        started = time.perf_counter()
        bare_loop(model, vae, positive, negative, seed, args.steps, args.size)
        return time.perf_counter() - started

    loom_times, bare_times = [], []
    for repeat in range(args.repeats):
        seed = repeat + 1
        if repeat % 2 == 0:  # alternate which side goes first, so order effects cancel
            loom_times.append(run_loom(seed))
            bare_times.append(run_bare(seed))
        else:
            bare_times.append(run_bare(seed))
            loom_times.append(run_loom(seed))
        print(f"run {repeat + 1}: loom {loom_times[-1]:.2f} s (KSampler, VAEDecode, PreviewImage), "
              f"bare {bare_times[-1]:.2f} s", flush=True)
    step_overhead_ms = loop_overhead_per_step(model, positive, negative, args.steps, args.size)

    loom, bare = statistics.median(loom_times), statistics.median(bare_times)
    pair_ratios = [a / b for a, b in zip(loom_times, bare_times)]  # each pair ran back to back
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.size}x{args.size}, {args.steps} steps, euler/normal, cfg 8, torch threads {torch.get_num_threads()}")
    print(f"loom median {loom:.2f} s (min {min(loom_times):.2f}), bare diffusers loop median {bare:.2f} s "
          f"(min {min(bare_times):.2f})")
    print(f"ratio loom/bare: median of pairs {statistics.median(pair_ratios):.3f} "
          f"(pairs {', '.join(f'{r:.3f}' for r in pair_ratios)}), of medians {loom / bare:.3f}; target <= 1.03")
    print(f"Loom's sampling-loop overhead with a no-op UNet: {step_overhead_ms:.2f} ms per step "
          f"({step_overhead_ms * args.steps / 1000 / bare * 100:.2f} % of the bare run's median)")
    print(f"peak RSS: {peak_rss_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
