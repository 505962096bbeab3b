"""The fast path against the exact one on the conformance cases: PSNR of every image, and both against ComfyUI.

    python bench/fast_psnr.py [--cases txt2img_euler_normal,sd3_txt2img_euler_sgm] [--json FILE]

Each case of ``shared/conformance/cases`` runs twice through :class:`server.executor.Executor`, with
``extra_data.loom.fast`` false (the exact path) and true (``--fast``), in a base directory holding the
conformance model files (built by the README's commands into ``$LOOM_CONFORMANCE_CACHE``; a case whose files
are missing is skipped). Printed per case: PSNR of each fast image against the exact image, the final
latent's relative L2 difference, the PSNR of both against ComfyUI's reference, and the sampler node's time on
each path (the models are loaded and unloaded around each case, so that time is the sampling alone).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("LOOM_SHARED_DIR") or REPO.parent / "shared")
CONFORMANCE = SHARED / "conformance"

# (models folder, file) each case family needs, as tests/test_conformance.py links them
MODEL_FILES = [
    ("checkpoints", "sd15-conformance-s0.safetensors"), ("checkpoints", "sd3-conformance-s4.safetensors"),
    ("loras", "sd15-conformance-lora-a.safetensors"), ("loras", "sd15-conformance-lora-b.safetensors"),
    ("controlnet", "sd15-conformance-controlnet.safetensors"),
    ("diffusion_models", "flux-dev-conformance-s5.safetensors"),
    ("text_encoders", "clip-l-conformance-s7.safetensors"),
    ("text_encoders", "t5xxl-2layer-conformance-s8.safetensors"), ("vae", "flux-vae-conformance-s9.safetensors"),
]


def cache_dir() -> Path:
    return Path(os.environ.get("LOOM_CONFORMANCE_CACHE") or Path.home() / ".cache" / "loom-conformance")


def psnr(a, b) -> float:
    """PSNR in dB of two uint8 images of one shape (inf when equal)."""
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def read_png(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def read_latent(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"].float()


def make_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="loom-fast-psnr-"))
    for folder, name in MODEL_FILES:
        source = cache_dir() / name
        if not source.is_file():
            continue
        target = base / "models" / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy(source, target)
    (base / "input").mkdir()
    for item in (CONFORMANCE / "inputs").iterdir():
        shutil.copy(item, base / "input" / item.name)
    return base


def needed_files(prompt: dict) -> list[str]:
    names = [value for node in prompt.values() for value in (node.get("inputs") or {}).values()
             if isinstance(value, str) and value.endswith(".safetensors")]
    return sorted(set(names))


def run_case(executor, base: Path, prompt: dict, case: str, fast: bool) -> dict:
    """One run of a case: its images (uint8 arrays) and final latent."""
    result = executor.execute(prompt, f"{case}-{'fast' if fast else 'exact'}", extra_data={"loom": {"fast": fast}})
    if result.status != "success":
        raise RuntimeError(f"{case} ({'fast' if fast else 'exact'}) failed: {result.error}")
    images, latent = [], None
    for node_id in sorted(result.outputs, key=lambda n: int(n) if n.isdigit() else n):
        for entry in result.outputs[node_id].get("images", []):
            images.append(read_png(base / "output" / entry.get("subfolder", "") / entry["filename"]))
        for entry in result.outputs[node_id].get("latents", []):
            latent = read_latent(base / "output" / entry.get("subfolder", "") / entry["filename"])
    return {"images": images, "latent": latent}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from loom.nodes.kernel import folders
    from loom.nodes.kernel.schema import default_registry
    from loom.nodes.runtime import fast as fast_path
    from loom.server.executor import Executor

    if not fast_path.cpu_has_fast_bfloat16():
        print("this CPU has no native bfloat16 (avx512_bf16/AMX): the fast path changes nothing here")
    base = make_base()
    folders.configure(base)
    executor = Executor(default_registry())
    names = args.cases.split(",") if args.cases else sorted(p.stem for p in (CONFORMANCE / "cases").glob("*.json"))
    rows = []
    print("| case | fast vs exact PSNR (dB) | latent rel. diff | exact vs ComfyUI (dB) | fast vs ComfyUI (dB) |")
    print("|---|---|---|---|---|")
    for case in names:
        prompt = json.loads((CONFORMANCE / "cases" / f"{case}.json").read_text())
        missing = [n for n in needed_files(prompt) if not (cache_dir() / n).is_file()]
        if missing:
            print(f"| {case} | skipped: {', '.join(missing)} not built | | | |", flush=True)
            continue
        exact = run_case(executor, base, prompt, case, fast=False)
        fast = run_case(executor, base, prompt, case, fast=True)
        refs = [read_png(p) for p in sorted((CONFORMANCE / "refs").glob(f"{case}.*.png"))]
        between = [psnr(a, b) for a, b in zip(fast["images"], exact["images"])]
        latent_diff = None
        if exact["latent"] is not None and fast["latent"] is not None:
            latent_diff = float((fast["latent"] - exact["latent"]).norm() / exact["latent"].norm())
        vs_ref_exact = [psnr(a, r) for a, r in zip(exact["images"], refs)]
        vs_ref_fast = [psnr(a, r) for a, r in zip(fast["images"], refs)]
        row = {"case": case, "psnr_fast_vs_exact": between, "latent_rel_diff": latent_diff,
               "psnr_exact_vs_comfyui": vs_ref_exact, "psnr_fast_vs_comfyui": vs_ref_fast}
        rows.append(row)

        def db(values: list[float]) -> str:
            return ", ".join("identical" if math.isinf(v) else f"{v:.1f}" for v in values) or "-"

        print(f"| {case} | {db(between)} | {'-' if latent_diff is None else f'{latent_diff:.2e}'} | "
              f"{db(vs_ref_exact)} | {db(vs_ref_fast)} |",
              flush=True)
        executor.free(unload_models=True, free_memory=True)  # one family's models at a time
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=lambda v: None if v != v else v))
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
