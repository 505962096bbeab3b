"""What the shipped demo model draws, measured: adherence to held-out captions and seconds per image.

    python bench/demo_model.py                 # 120 held-out captions at the default workflow's settings
    python bench/demo_model.py --count 40 --cfg 7 --steps 30 --save /tmp/demo-grid.png

Each caption runs through Loom's executor exactly as ``workflows/txt2img.json`` does (128×128, euler,
normal, 20 steps) and an analytic checker (``tools/demo_scenes.check``) decides whether the picture
shows it: background colour on the border, each named colour as a blob in the named place, the named
shape by how much of its bounding box it fills. Prints the adherence rate (all, one-thing and two-thing
captions), the commonest reasons for a miss, and the median/max seconds per image after the first
(which also loads the model). Goal: ≥ 90 % adherence, ≤ 2 s per 128 px image on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tools import demo_eval, demo_scenes  # noqa: E402


def grid(results: list[demo_eval.Result], columns: int = 10):
    from PIL import Image, ImageDraw

    size = results[0].image.size[0]
    rows = (len(results) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * size), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for index, result in enumerate(results):
        x, y = (index % columns) * size, (index // columns) * size
        sheet.paste(result.image, (x, y))
        draw.rectangle((x, y, x + size - 1, y + size - 1), outline=(0, 200, 0) if result.verdict.ok else (230, 0, 0),
                       width=2)
    return sheet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--steps", type=int, default=demo_eval.Settings.steps)
    parser.add_argument("--cfg", type=float, default=demo_eval.Settings.cfg)
    parser.add_argument("--sampler", default=demo_eval.Settings.sampler_name)
    parser.add_argument("--scheduler", default=demo_eval.Settings.scheduler)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write a contact sheet (green: accepted, red: missed)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = demo_eval.Settings(steps=args.steps, cfg=args.cfg, sampler_name=args.sampler,
                                  scheduler=args.scheduler)
    captions = demo_eval.held_out_captions(args.count)
    with tempfile.TemporaryDirectory() as base:
        results = demo_eval.evaluate(captions, Path(base), settings)

    singles = [r for r in results if demo_scenes.parse_caption(r.caption).second is None]
    pairs = [r for r in results if r not in singles]
    seconds = [r.seconds for r in results[1:]] or [results[0].seconds]
    print(f"demo model, {len(results)} held-out captions, {settings}")
    print(f"adherence: {demo_eval.adherence(results):.1%} (one thing {demo_eval.adherence(singles):.1%} "
          f"of {len(singles)}, two things {demo_eval.adherence(pairs):.1%} of {len(pairs)})")
    print(f"seconds per image: median {statistics.median(seconds):.2f}, max {max(seconds):.2f} "
          f"(first, with loading: {results[0].seconds:.2f})")
    reasons = collections.Counter(reason.split(",")[0] for r in results for reason in r.verdict.reasons)
    for reason, count in reasons.most_common(8):
        print(f"  {count:4d}  {reason}")
    if args.save:
        grid(results).save(args.save)
        print(f"contact sheet: {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
