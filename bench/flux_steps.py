"""Per-step time and peak memory of FLUX.1 dev loaded in parts: the conformance files by default.

    python bench/flux_steps.py [--size 64] [--steps 6] [--threads N] [--weight-dtype default|fp8_e4m3fn|...]

The files are the ``flux_dev_custom_advanced`` case's (shared/conformance README "SD3 and FLUX.1 files"):
``flux-dev-conformance-s5`` (1 double + 1 single block at ComfyUI's width 3072), ``clip-l-conformance-s7``,
``t5xxl-2layer-conformance-s8`` (T5-XXL width, 2 blocks) and ``flux-vae-conformance-s9``, from
``$LOOM_CONFORMANCE_CACHE`` or ``~/.cache/loom-conformance``. They are loaded as UNETLoader, DualCLIPLoader
(type flux) and VAELoader do, the prompt is encoded (T5 256 tokens + CLIP-L pooled), and the ComfyUI FLUX dev
graph's sampling runs: ModelSamplingFlux at the image size, BasicGuider (one model call per step), euler,
the simple schedule. Everything runs on the CPU in float32 (T5 stored in float16, computed in float32).

Printed: load times per part, the prompt-encoding time, the sampler's time per step (median and min), the VAE
decode time, and ``getrusage`` peak RSS of the process (and over the RSS before loading).
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
    parser.add_argument("--dir", type=Path, default=cache, help="folder holding the four conformance files")
    parser.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weight-dtype", default="default")
    parser.add_argument("--prompt", default="a cozy cabin in a pine forest, warm light in the windows")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from loom.nodes.runtime import split_loading, text_encoding, vae as vae_ops
    from loom.nodes.runtime.checkpoint import load_vae
    from loom.nodes.runtime.families.flux import FAMILY
    from loom.nodes.runtime.model_sampling import FluxSampling, flux_mu

    names = {"unet": "flux-dev-conformance-s5.safetensors", "clip_l": "clip-l-conformance-s7.safetensors",
             "t5": "t5xxl-2layer-conformance-s8.safetensors", "vae": "flux-vae-conformance-s9.safetensors"}
    missing = [n for n in names.values() if not (args.dir / n).is_file()]
    if missing:
        print(f"missing in {args.dir}: {', '.join(missing)} (build them with shared/conformance/make_checkpoint.py, "
              "or run tests/test_runtime_flux.py once)", file=sys.stderr)
        return 2
    before = rss_mb()
    t = time.perf_counter()
    model = split_loading.load_diffusion_model(args.dir / names["unet"], args.weight_dtype, device="cpu",
                                               use_cache=False)
    load_unet = time.perf_counter() - t
    t = time.perf_counter()
    clip = split_loading.load_clip("DualCLIPLoader", [args.dir / names["clip_l"], args.dir / names["t5"]], "flux",
                                   device="cpu", use_cache=False)
    load_clip = time.perf_counter() - t
    t = time.perf_counter()
    vae = load_vae(args.dir / names["vae"], device="cpu", use_cache=False)
    load_vae_s = time.perf_counter() - t

    t = time.perf_counter()
    [[context, options]] = text_encoding.encode_text(clip, args.prompt)
    encode_s = time.perf_counter() - t

    sampling = FluxSampling(shift=flux_mu(args.size, args.size))
    # ComfyUI's "simple" schedule: every len/steps-th sigma of the table, from the top, then 0
    table = sampling.sigmas
    stride = len(table) / args.steps
    sigmas = torch.tensor([float(table[-(1 + int(i * stride))]) for i in range(args.steps)] + [0.0])
    extra = FAMILY.extra_conds(model, {**options, "guidance": 3.5}, (1, 16, args.size // 8, args.size // 8), "positive")
    x = torch.randn(1, 16, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(808)) * sigmas[0]
    step_times = []
    for i in range(args.steps):
        t = time.perf_counter()
        sigma = sigmas[i:i + 1]
        output = FAMILY.apply_network(model, sampling.calculate_input(sigma, x), sampling.timestep(sigma), sigma,
                                      context, extra)
        denoised = sampling.calculate_denoised(sigma, output, x)
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)  # euler
        step_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    image = vae_ops.decode(vae, model.latent_format.process_out(x))
    decode_s = time.perf_counter() - t
    assert torch.isfinite(image).all()

    print(f"FLUX dev conformance files, {args.size}x{args.size}, {args.steps} steps, {args.threads} threads, "
          f"weight_dtype {args.weight_dtype}")
    print(f"load: transformer {load_unet:.2f}s, CLIP-L + T5 {load_clip:.2f}s, VAE {load_vae_s:.2f}s")
    print(f"encode prompt (CLIP-L + T5, 256 tokens): {encode_s:.2f}s")
    print(f"per step: median {statistics.median(step_times):.3f}s, min {min(step_times):.3f}s")
    print(f"VAE decode: {decode_s:.2f}s")
    print(f"peak RSS {peak_mb():.0f} MB ({peak_mb() - before:.0f} MB over the {before:.0f} MB before loading)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
