"""Loading a checkpoint against the physical limit: the time to read the file plus one dtype conversion.

    python bench/load.py [--checkpoint PATH ...] [--repeats 3] [--threads N] [--cold-cache] [--profile OUT]

Files: each ``--checkpoint``; by default the conformance SD1.5 file ``sd15-conformance-s0.safetensors``
(2.1 GB, full size, float16) from ``$LOOM_CONFORMANCE_CACHE``, ``~/.cache/loom-conformance`` or
``/work/cache``. When it is not there, the bench builds it into a temporary directory with
``shared/conformance/make_checkpoint.py`` (about a minute). Any family Loom loads works, e.g. the SD3
conformance file ``sd3-conformance-s4.safetensors``.

Every measurement runs in a fresh Python process (``python -c``), one after another, so each sees a cold
process (nothing imported, no model cache) and, unless ``--cold-cache``, a **warm page cache** (the file is
read once beforehand). ``--cold-cache`` drops the file's pages first with ``posix_fadvise(DONTNEED)``
(no root needed) so the disk is part of the figure too.

Printed per file (medians over ``--repeats``; the ratios also from the best run of each, which is steadier on
a shared machine):

* **load** — ``load_checkpoint(path, use_cache=False)`` on the CPU, CheckpointLoaderSimple's path: UNet +
  CLIP + VAE built, in float32 (the CPU's compute dtype); ``process`` adds the imports (torch, diffusers,
  transformers, loom), i.e. a cold process's time to a loaded model;
* **limit** — in its own fresh process: every tensor's bytes read from the file (positioned reads, page
  cache → memory) into a reused scratch buffer and converted once into freshly allocated float32 memory
  the size of the model (first touch included: the model has to live somewhere). ``read`` and
  ``convert`` are its two halves;
* **ratio** — load / limit (aim <= 1.5);
* **peak RSS** — ``getrusage(RUSAGE_SELF).ru_maxrss`` of the loading process, minus its RSS just before the
  load (the imported libraries), over the model's own bytes (the parameters and buffers of the three
  modules: aim <= 1.2); the total peak is printed too.

``--profile OUT`` also writes a cProfile of one load (``python -m pstats OUT``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOOM_SHARED", "/work/shared"))
CHECKPOINT = "sd15-conformance-s0.safetensors"

_LOAD = r"""
import json, os, resource, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads({threads})
module_file = {module_file!r}
if module_file:  # another version of the loader, for before/after figures
    import importlib.util
    import loom.nodes.runtime
    spec = importlib.util.spec_from_file_location("loom.nodes.runtime.checkpoint", module_file)
    checkpoint = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loom.nodes.runtime.checkpoint = checkpoint
    spec.loader.exec_module(checkpoint)
from loom.nodes.runtime import checkpoint
from loom.nodes.kernel.schema import default_registry
default_registry()  # what a server has imported when it is ready
if {alone!r}:  # what the load imports on first use, so that "load" is the loading alone
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
imported = time.perf_counter()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
profile = {profile!r}
if profile:
    import cProfile
    profiler = cProfile.Profile(); profiler.enable()
t = time.perf_counter()
model, clip, vae = checkpoint.load_checkpoint({path!r}, use_cache=False, device="cpu")
load = time.perf_counter() - t
if profile:
    profiler.disable(); profiler.dump_stats(profile)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
modules = [model.unet, vae.vae] + [m for _, m in clip.encoders.values()]
storages, dtypes, meta = {{}}, set(), 0
for module in modules:
    for tensor in list(module.parameters()) + list(module.buffers()):
        meta += tensor.is_meta
        dtypes.add(str(tensor.dtype))
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
print(json.dumps(dict(load=load, imports=imported - started, process=time.perf_counter() - started,
                      before=before, peak=peak, model_bytes=sum(storages.values()), meta=meta,
                      dtypes=sorted(dtypes), after=rss())))
"""

_LIMIT = r"""
import json, math, os, time
import torch
torch.set_num_threads({threads})
from loom.nodes.runtime.checkpoint import StateDictFile
file = StateDictFile({path!r})
locations = sorted(file._locations.values(), key=lambda item: item[1])
fd = file._file.fileno()
target_dtype = torch.float32
total = sum(nbytes // dtype.itemsize * (target_dtype.itemsize if dtype.is_floating_point else dtype.itemsize)
            for dtype, _, nbytes in locations)
chunk = 64 << 20
t0 = time.perf_counter()
scratch = torch.empty(chunk, dtype=torch.uint8)
view = memoryview(scratch.numpy())
out = torch.empty(total, dtype=torch.uint8)
read = convert = 0.0
done = 0
# the file's tensors in file order, read in chunks of whole elements and converted once
for dtype, offset, nbytes in locations:
    scale = target_dtype.itemsize // dtype.itemsize if dtype.is_floating_point and dtype != target_dtype else 1
    position = 0
    while position < nbytes:
        n = min(chunk, nbytes - position)
        t = time.perf_counter()
        got = 0
        while got < n:
            got += os.preadv(fd, [view[got:n]], offset + position + got)
        t1 = time.perf_counter()
        if scale == 1:
            out[done:done + n].copy_(scratch[:n])
        else:
            out[done:done + n * scale].view(target_dtype).copy_(scratch[:n].view(dtype))
        t2 = time.perf_counter()
        read += t1 - t
        convert += t2 - t1
        done += n * scale
        position += n
limit = time.perf_counter() - t0
file.close()
print(json.dumps(dict(limit=limit, read=read, convert=convert, file_bytes=os.path.getsize({path!r}),
                      out_bytes=total)))
"""


def find_checkpoint() -> Path | None:
    for folder in (os.environ.get("LOOM_CONFORMANCE_CACHE"), Path.home() / ".cache" / "loom-conformance",
                   "/work/cache"):
        if folder and (Path(folder) / CHECKPOINT).is_file():
            return Path(folder) / CHECKPOINT
    return None


def build_checkpoint(folder: Path) -> Path:
    out = folder / CHECKPOINT
    print(f"building a full-size SD1.5-layout random checkpoint in {folder} (about a minute)...", flush=True)
    subprocess.run([sys.executable, str(SHARED / "conformance" / "make_checkpoint.py"),
                    str(SHARED / "conformance" / "sd15-keys.json"), str(out), "--seed", "0"], check=True)
    return out


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass


def drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run(code: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO.parent) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def runs(rows: list[dict], key: str) -> str:
    return ", ".join(f"{row[key]:.2f}" for row in rows)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def bench(path: Path, repeats: int, threads: int, cold: bool, profile: str | None,
          module_file: str | None) -> dict:
    loads, firsts, limits = [], [], []
    for i in range(repeats):
        for rows, code in ((limits, _LIMIT.format(path=str(path), threads=threads)),
                           (firsts, _LOAD.format(path=str(path), threads=threads, alone=False, profile=None,
                                                 module_file=module_file)),
                           (loads, _LOAD.format(path=str(path), threads=threads, alone=True,
                                                module_file=module_file,
                                                profile=profile if profile and i == 0 else None))):
            (drop if cold else warm)(path)
            rows.append(run(code))
    med = lambda rows, key: statistics.median(row[key] for row in rows)  # noqa: E731
    best = lambda rows, key: min(row[key] for row in rows)  # noqa: E731
    load, first, limit = med(loads, "load"), med(firsts, "load"), med(limits, "limit")
    model_bytes = loads[0]["model_bytes"]
    extra = med([dict(x=row["peak"] - row["before"]) for row in loads], "x")
    cache = "cold page cache (posix_fadvise DONTNEED)" if cold else "warm page cache"
    print(f"\n{path.name}: {gb(path.stat().st_size)} on disk, model {gb(model_bytes)} "
          f"({', '.join(loads[0]['dtypes'])}); {repeats} fresh processes per row, {cache}, {threads} threads")
    print(f"  first load {first:6.2f} s  ratio {first / limit:4.2f} x  best-of-runs ratio "
          f"{best(firsts, 'load') / best(limits, 'limit'):4.2f} x  (a fresh process that has imported torch "
          f"and the nodes, as a ready server: the load imports diffusers/transformers; runs {runs(firsts, 'load')})")
    print(f"  load alone {load:6.2f} s  ratio {load / limit:4.2f} x  best-of-runs ratio "
          f"{best(loads, 'load') / best(limits, 'limit'):4.2f} x  (diffusers/transformers imported before; "
          f"runs {runs(loads, 'load')})")
    print(f"  limit      {limit:6.2f} s               (read {med(limits, 'read'):.2f} s + convert "
          f"{med(limits, 'convert'):.2f} s; runs {runs(limits, 'limit')})")
    print(f"  imports    {med(loads, 'imports'):6.2f} s               (torch, the nodes, diffusers, transformers: "
          f"what precedes 'load alone'); aim for the ratios: <= 1.5")
    print(f"  peak RSS   {gb(extra)} over the {gb(med(loads, 'before'))} before the load = "
          f"{extra / model_bytes:.2f} x the model's bytes (aim <= 1.2); {gb(med(loads, 'peak'))} in all; "
          f"first load: {gb(med(firsts, 'peak'))} in all")
    if loads[0]["meta"]:
        print(f"  WARNING: {loads[0]['meta']} tensors left on the meta device")
    return dict(first=first, load=load, limit=limit, peak_ratio=extra / model_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cold-cache", action="store_true")
    parser.add_argument("--profile")
    parser.add_argument("--module-file", help="load with this version of nodes/runtime/checkpoint.py instead "
                        "(e.g. `git show HEAD~1:nodes/runtime/checkpoint.py > old.py`), for before/after figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loom-bench-load-") as tmp:
        paths = args.checkpoint or [find_checkpoint() or build_checkpoint(Path(tmp))]
        for path in paths:
            bench(path, args.repeats, args.threads, args.cold_cache, args.profile, args.module_file)


if __name__ == "__main__":
    main()
