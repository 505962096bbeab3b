"""Per-step time and peak memory of a model family's sampling loop: the SD3 conformance model by default.

    python bench/dit_steps.py [--checkpoint PATH] [--size 64] [--steps 8] [--cfg 4.5] [--threads N]

The checkpoint is ``sd3-conformance-s4.safetensors`` (shared/conformance: MMDiT depth 2 at hidden 128, full
CLIP-L and CLIP-G, the 16-channel VAE; 1.82 GB) from ``$LOOM_CONFORMANCE_CACHE`` or
``~/.cache/loom-conformance``; any single-file checkpoint Loom loads works (SD1/SD2/SDXL too). Everything
runs on the CPU in float32, as the conformance references were made.

Printed: the load time, the prompt-encoding time, the sampler's time per step (median and min over the
steps of the run; each step is one model call over the positive and negative batch, so CFG doubles the
batch, not the calls), the VAE decode time, and ``getrusage`` peak RSS of the process (and over the RSS
before loading, i.e. what the model and the run add).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import peak_mb, rss_mb  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = Path(os.environ.get("LOOM_CONFORMANCE_CACHE") or Path.home() / ".cache" / "loom-conformance")
    parser.add_argument("--checkpoint", type=Path, default=cache / "sd3-conformance-s4.safetensors")
    parser.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cfg", type=float, default=4.5)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--scheduler", default="sgm_uniform")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        print(f"{args.checkpoint} not found: build it with shared/conformance/make_checkpoint.py (README)")
        return 2

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from loom.nodes.runtime import checkpoint, sampling, text_encoding, vae as vae_ops

    before = rss_mb()
    t = time.perf_counter()
    model, clip, vae = checkpoint.load_checkpoint(args.checkpoint, use_cache=False, device="cpu")
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    positive = text_encoding.encode_text(clip, "a red fox in a snowy forest, photograph")
    negative = text_encoding.encode_text(clip, "cartoon, drawing")
    encode_s = time.perf_counter() - t

    channels = model.latent_format.channels
    latent = {"samples": torch.zeros(1, channels, args.size // 8, args.size // 8)}
    step_times: list[float] = []
    calls = {"n": 0}
    hook = model.unet.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    from loom.nodes.kernel import progress

    class Timer(progress.ProgressBar):
        last = [time.perf_counter()]

        def update_absolute(self, value, preview=None):  # called once per finished step
            now = time.perf_counter()
            step_times.append(now - Timer.last[0])
            Timer.last[0] = now

    original_bar = progress.ProgressBar
    sampling.progress.ProgressBar = Timer  # type: ignore[misc]
    try:
        Timer.last[0] = time.perf_counter()
        t = time.perf_counter()
        samples = sampling.sample(model, positive, negative, latent, seed=2025, steps=args.steps, cfg=args.cfg,
                                  sampler_name=args.sampler, scheduler=args.scheduler)
        sample_s = time.perf_counter() - t
    finally:
        sampling.progress.ProgressBar = original_bar  # type: ignore[misc]
        hook.remove()
    t = time.perf_counter()
    vae_ops.decode(vae, samples)
    decode_s = time.perf_counter() - t

    print(f"checkpoint   {args.checkpoint.name} ({model.family}, {type(model.unet).__name__}, "
          f"{sum(p.numel() for p in model.unet.parameters()) / 1e6:.1f} M network parameters)")
    print(f"settings     {args.size}x{args.size}, {args.steps} steps, {args.sampler}/{args.scheduler}, cfg {args.cfg}, "
          f"{torch.get_num_threads()} threads")
    print(f"load         {load_s:.2f} s;  encode 2 prompts {encode_s:.2f} s;  VAE decode {decode_s:.2f} s")
    print(f"sampling     {sample_s:.3f} s total, {calls['n']} network calls")
    print(f"per step     median {statistics.median(step_times) * 1000:.1f} ms, min {min(step_times) * 1000:.1f} ms, "
          f"max {max(step_times) * 1000:.1f} ms")
    print(f"peak RSS     {peak_mb():.0f} MiB (process), {peak_mb() - before:.0f} MiB over the RSS before loading")
    return 0


if __name__ == "__main__":
    sys.exit(main())
