"""Draw the Templates dialog's pictures: run every example workflow of ``workflows/`` that needs only the
built-in demo model with ``loom run`` and keep its image as ``web/templates/<name>.png`` (no metadata).

    python tools/template_thumbnails.py

A few seconds on a CPU. Workflows that need other models get no picture (the dialog says what they need).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from loom.nodes.kernel import folders
    from loom.server import cli
    from loom.server.templates import THUMBNAILS, list_templates

    names = [t["name"] for t in list_templates() if t["builtin_model"]]
    target = folders.WEB_DIR / THUMBNAILS
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out"
        for name in names:
            code = cli.main(["run", str(folders.EXAMPLE_WORKFLOWS_DIR / f"{name}.json"), "--base-dir", scratch,
                             "--output-dir", str(out / name), "--quiet"])
            if code != 0:
                print(f"{name}: loom run failed ({code})", file=sys.stderr)
                return code
            picture = sorted((out / name).rglob("*.png"))[-1]
            Image.open(picture).convert("RGB").save(target / f"{name}.png", optimize=True)
            print(f"{name}: {target / f'{name}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
