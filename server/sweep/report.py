"""What a sweep reports when it ends: the summary table (:func:`summary_lines`), ``--summary-json``
(:func:`summary_json`) and ``--contact-sheet`` (:func:`contact_sheet`, laid out as :class:`SheetLayout`
says); :func:`finish` prints and writes whichever the command line asked for.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.server.sweep.plan import Dimension, RunResult
from loom.server.sweep.values import SweepError

IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")


def summary_lines(results: list[RunResult], dims: list[Dimension], several_workflows: bool,
                  cwd: Path | None = None) -> list[str]:
    keys = [d.key for d in dims if d.swept]
    header = ["#"] + (["workflow"] if several_workflows else []) + keys + ["seconds", "ran", "cached", "files"]
    rows = []
    for result in results:
        files = ", ".join(_shown(f, cwd) for f in result.files) or "; ".join(result.texts) or "-"
        if result.status != "success":
            files = f"{result.status}: {result.error}" if result.error else result.status
        rows.append([str(result.run.index)] + ([result.run.workflow.path.name] if several_workflows else [])
                    + [result.run.labels.get(k, "") for k in keys]
                    + [f"{result.seconds:.2f}", str(len(result.executed)), str(len(result.cached)), files])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    images = sum(len(r.files) for r in results)
    failed = sum(r.status != "success" for r in results)
    total = sum(r.seconds for r in results)
    lines.append(f"{len(results)} run(s), {images} file(s), {total:.2f}s" + (f", {failed} failed" if failed else ""))
    return lines


def _shown(path: Path, cwd: Path | None) -> str:
    cwd = cwd or Path.cwd()
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path)


def summary_json(results: list[RunResult]) -> list[dict[str, Any]]:
    return [{"index": r.run.index, "workflow": str(r.run.workflow.path), "values": r.run.labels,
             "status": r.status, "error": r.error or None, "seconds": round(r.seconds, 4),
             "files": [str(f) for f in r.files], "texts": r.texts, "executed": r.executed, "cached": r.cached,
             "prompt_id": r.prompt_id} for r in results]


@dataclass
class SheetLayout:
    """Where the contact sheet puts things: ``table`` (rows × columns of two swept values) or ``grid``."""

    mode: str
    size: tuple[int, int]
    cell: tuple[int, int]
    origin: tuple[int, int]  # top-left of the first image cell
    columns: int
    rows: int
    strip: int  # the label strip under each grid cell (0 in a table)


def _font(size: int = 14):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    from PIL import Image, ImageDraw
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def contact_sheet(results: list[RunResult], dims: list[Dimension], several_workflows: bool,
                  zipped: bool) -> tuple[Any, SheetLayout]:
    """One image of every saved picture, labelled by its swept values.

    Two swept dimensions (product, one picture per run): a table with the first dimension's values down the
    left and the second's across the top. Anything else: a grid, each cell labelled underneath, as many
    columns as cells up to 8 (then about a square).
    """
    from PIL import Image, ImageDraw

    swept = [d for d in dims if d.swept]
    axes: list[tuple[str, list[str]]] = []
    if several_workflows:
        names = list(dict.fromkeys(r.run.workflow.path.name for r in results))
        axes.append(("workflow", names))
    axes += [(d.key, d.labels) for d in swept]
    cells: list[tuple[RunResult, Path, Any]] = []
    for result in results:
        for path in result.files:
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                with Image.open(path) as picture:
                    cells.append((result, path, picture.convert("RGB")))
    if not cells:
        raise SweepError("--contact-sheet: the runs saved no images")
    font = _font()
    pad = 4
    line_h = max(_text_size(font, "Ag=0")[1], 8) + pad
    image_w = max(c[2].width for c in cells)
    image_h = max(c[2].height for c in cells)
    one_each = all(sum(1 for c in cells if c[0] is r) <= 1 for r in results)
    background, ink = (255, 255, 255), (0, 0, 0)

    def value_of(result: RunResult, key: str) -> str:
        return result.run.workflow.path.name if key == "workflow" else result.run.labels.get(key, "")

    if len(axes) == 2 and not zipped and one_each:
        (row_key, row_values), (col_key, col_values) = axes
        col_labels = [f"{col_key}={v}" for v in col_values]
        row_labels = [f"{row_key}={v}" for v in row_values]
        cell_w = max([image_w] + [_text_size(font, t)[0] + 2 * pad for t in col_labels])
        left = max(_text_size(font, t)[0] for t in row_labels) + 2 * pad
        top = line_h + pad
        size = (left + cell_w * len(col_values), top + image_h * len(row_values))
        sheet = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(sheet)
        for c, text in enumerate(col_labels):
            draw.text((left + c * cell_w + pad, pad), text, fill=ink, font=font)
        for r, text in enumerate(row_labels):
            draw.text((pad, top + r * image_h + (image_h - line_h) // 2), text, fill=ink, font=font)
        for result, _path, picture in cells:
            r = row_values.index(value_of(result, row_key))
            c = col_values.index(value_of(result, col_key))
            sheet.paste(picture, (left + c * cell_w + (cell_w - picture.width) // 2, top + r * image_h))
        return sheet, SheetLayout("table", size, (cell_w, image_h), (left, top), len(col_values),
                                  len(row_values), 0)

    count = len(cells)
    columns = count if count <= 8 else math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    labels = []
    for index, (result, _path, _picture) in enumerate(cells):
        lines = [f"{key}={value_of(result, key)}" for key, _ in axes] or [f"#{result.run.index}"]
        if not one_each:
            same = [c for c in cells if c[0] is result]
            if len(same) > 1:
                lines.append(f"image {same.index(cells[index]) + 1}/{len(same)}")
        labels.append(lines)
    strip = max(len(lines) for lines in labels) * line_h + pad
    cell_w = max([image_w] + [_text_size(font, t)[0] + 2 * pad for lines in labels for t in lines])
    size = (columns * cell_w, rows * (image_h + strip))
    sheet = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(sheet)
    for index, ((_result, _path, picture), lines) in enumerate(zip(cells, labels)):
        x, y = (index % columns) * cell_w, (index // columns) * (image_h + strip)
        sheet.paste(picture, (x + (cell_w - picture.width) // 2, y))
        for n, text in enumerate(lines):
            draw.text((x + pad, y + image_h + pad // 2 + n * line_h), text, fill=ink, font=font)
    return sheet, SheetLayout("grid", size, (cell_w, image_h + strip), (0, 0), columns, rows, strip)


def finish(args: argparse.Namespace, results: list[RunResult], dims: list[Dimension], several: bool,
           partial: bool = False) -> int:
    """Print the summary table, then write ``--summary-json`` and ``--contact-sheet`` if asked for."""
    from loom.server.cli import EXIT_FAILED, EXIT_OK

    for line in summary_lines(results, dims, several):
        print(line)
    if partial:
        print("(interrupted: the runs above finished)")
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary_json(results), indent=2) + "\n")
    if args.contact_sheet is not None and results:
        try:
            sheet, _layout = contact_sheet(results, dims, several, args.zip)
        except SweepError as problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_FAILED
        args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet} ({sheet.width}x{sheet.height})")
    return EXIT_OK
