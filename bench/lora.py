"""The cost of a LoRA: loading it, patching it in for a sampling run, and what it adds per step.

    python bench/lora.py [--checkpoint PATH] [--lora PATH] [--steps 8] [--size 64] [--repeats 5] [--threads N]

Defaults: the conformance SD1.5 checkpoint and ``sd15-conformance-lora-a.safetensors`` (267 modules, rank 4,
including three 3x3 convolutions) from ``$LOOM_CONFORMANCE_CACHE`` (``~/.cache/loom-conformance``) or
``/work/cache``; make them with ``shared/conformance/make_checkpoint.py`` / ``make_lora.py``.

Measured (medians over ``--repeats``):

* **load** — reading and parsing the file (``load_lora_file``) and mapping its modules onto the model;
* **patch** — entering and leaving :meth:`LoraStack.applied` (patched copies of the affected weights
  swapped in, originals put back): the fixed cost a LoRA adds to each sampling run;
* **step** — one CFG UNet call (batch 2) without and with the LoRA in place: LoRAs are merged into the
  weights, so the per-step overhead should be nil;
* **sample** — a whole ``sample()`` of ``--steps`` Euler steps without and with the LoRA.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def find(name: str) -> Path:
    for folder in (os.environ.get("LOOM_CONFORMANCE_CACHE"), Path.home() / ".cache" / "loom-conformance",
                   "/work/cache"):
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    raise SystemExit(f"{name} not found; make it with shared/conformance/make_*.py or pass its path")


def timed(action, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--lora", type=Path)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from loom.nodes.runtime.checkpoint import load_checkpoint
    from loom.nodes.runtime.lora import LoraPatch, load_lora_file, with_lora
    from loom.nodes.runtime.sampling import sample
    from loom.nodes.runtime.text_encoding import encode_text

    checkpoint = args.checkpoint or find("sd15-conformance-s0.safetensors")
    lora_path = args.lora or find("sd15-conformance-lora-a.safetensors")
    started = time.perf_counter()
    model, clip, _vae = load_checkpoint(checkpoint, device="cpu", use_cache=False)
    print(f"checkpoint {checkpoint.name} loaded in {time.perf_counter() - started:.1f}s")

    read, lora = timed(lambda: load_lora_file(lora_path), args.repeats)
    resolve, (unet_updates, te_updates) = timed(lambda: lora.for_models(model, clip), args.repeats)
    patched = model.replace(patches=with_lora(model.patches, LoraPatch(lora_path.name, 0.8, unet_updates)))
    stack = patched.patches[0]
    affected = sum(model.unet.get_submodule(path).weight.numel() for _c, path in unet_updates)
    total = sum(p.numel() for p in model.unet.parameters())
    print(f"{lora_path.name}: {len(lora.modules)} modules ({len(unet_updates)} UNet, {len(te_updates)} text "
          f"encoder), {lora_path.stat().st_size / 1e6:.1f} MB; patches {affected / 1e6:.1f} M of the UNet's "
          f"{total / 1e6:.0f} M weights")
    print(f"load:  read+parse {read * 1e3:.1f} ms, map onto model {resolve * 1e3:.1f} ms")

    def enter_and_leave() -> None:
        with stack.applied(patched):
            pass

    patch, _ = timed(enter_and_leave, args.repeats)
    print(f"patch: apply+restore per sampling run {patch * 1e3:.1f} ms")

    positive, negative = encode_text(clip, "a watercolor of a cat"), encode_text(clip, "")
    latent = args.size // 8
    x = torch.randn(2, 4, latent, latent)
    t = torch.tensor([500.0, 500.0])
    context = torch.cat([negative[0][0], positive[0][0]])

    def step() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            model.unet(x, t, encoder_hidden_states=context, return_dict=False)
        return time.perf_counter() - started

    def run(handle) -> float:
        started = time.perf_counter()
        sample(handle, positive, negative, {"samples": torch.zeros(1, 4, latent, latent)}, seed=1,
               steps=args.steps, cfg=7.0, sampler_name="euler", scheduler="normal")
        return time.perf_counter() - started

    # alternate with and without, so that load from other processes hits both alike
    plain_steps, lora_steps, plain_runs, lora_runs = [], [], [], []
    for _ in range(args.repeats):
        plain_steps.append(step())
        with stack.applied(patched):
            lora_steps.append(step())
        plain_runs.append(run(model))
        lora_runs.append(run(patched))
    plain_step, lora_step = statistics.median(plain_steps), statistics.median(lora_steps)
    plain_run, lora_run = statistics.median(plain_runs), statistics.median(lora_runs)
    print(f"step:  UNet call (batch 2, {args.size}x{args.size}) {plain_step * 1e3:.1f} ms without, "
          f"{lora_step * 1e3:.1f} ms with the LoRA ({(lora_step / plain_step - 1) * 100:+.1f} %)")
    print(f"sample: {args.steps} steps {plain_run:.2f} s without, {lora_run:.2f} s with the LoRA "
          f"({(lora_run - plain_run) * 1e3:+.0f} ms, {(lora_run / plain_run - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
