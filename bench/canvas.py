"""Canvas benchmark: big workflows in the editor, in headless Chromium against a real ``loom serve``.

Generates UI workflows of 1,000 and 3,000 nodes (blocks of the txt2img graph: checkpoint loader, two
prompts, empty latent, KSampler, VAE decode, save; 9 links per block, blocks on a grid), loads each in
the editor and prints

* load time: ``loom.load(workflow)`` (parse, build nodes and links, size them) plus the first drawn frame;
* frame time while panning at zoom 0.6, at the minimum zoom and at fit-to-view: each frame is drawn
  and then flushed to pixels (a 1-pixel ``getImageData``), so rasterisation is counted, not just the
  JavaScript that issues the drawing; median and p95 over the pan.

    python bench/canvas.py                     # 1,000 and 3,000 nodes
    python bench/canvas.py --nodes 3000 --frames 120
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 820}

# one block: (type, widgets_values, size, offset inside the block)
BLOCK = [
    ("CheckpointLoaderSimple", ["model.safetensors"], [315, 98], (0, 0)),
    ("CLIPTextEncode", ["a photo of a cat"], [400, 200], (400, -150)),
    ("CLIPTextEncode", ["blurry"], [400, 200], (400, 150)),
    ("EmptyLatentImage", [512, 512, 1], [315, 106], (400, 420)),
    ("KSampler", [1, "fixed", 20, 8.0, "euler", "normal", 1.0], [315, 262], (880, 0)),
    ("VAEDecode", [], [210, 46], (1250, 0)),
    ("SaveImage", ["ComfyUI"], [300, 270], (1500, 0)),
]
# (origin index, origin slot, target index, target slot, type) inside a block
BLOCK_LINKS = [(0, 0, 4, 0, "MODEL"), (0, 1, 1, 0, "CLIP"), (0, 1, 2, 0, "CLIP"), (1, 0, 4, 1, "CONDITIONING"),
               (2, 0, 4, 2, "CONDITIONING"), (3, 0, 4, 3, "LATENT"), (4, 0, 5, 0, "LATENT"), (0, 2, 5, 1, "VAE"),
               (5, 0, 6, 0, "IMAGE")]
BLOCK_SIZE = (1900, 800)


def generate_workflow(count: int) -> dict:
    """A litegraph 0.4 workflow of exactly ``count`` nodes (whole blocks, the last one cut short)."""
    nodes, links = [], []
    columns = max(1, round((count / len(BLOCK) * 1.7 * BLOCK_SIZE[1] / BLOCK_SIZE[0]) ** 0.5))  # viewport-shaped
    block = 0
    while len(nodes) < count:
        bx, by = (block % columns) * BLOCK_SIZE[0], (block // columns) * BLOCK_SIZE[1]
        first = len(nodes) + 1
        for type_, values, size, (dx, dy) in BLOCK[: count - len(nodes)]:
            nodes.append({"id": len(nodes) + 1, "type": type_, "pos": [bx + dx, by + dy + 150], "size": size,
                          "flags": {}, "order": 0, "mode": 0, "properties": {"Node name for S&R": type_},
                          "widgets_values": list(values)})
        for origin, out_slot, target, in_slot, type_ in BLOCK_LINKS:
            if first + max(origin, target) <= len(nodes):
                links.append([len(links) + 1, first + origin, out_slot, first + target, in_slot, type_])
        block += 1
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


LOAD_SCRIPT = """async (workflow) => {
    const started = performance.now();
    loom.load(workflow);
    await loom.nextFrame();
    return performance.now() - started;
}"""

PAN_SCRIPT = """async ({ zoom, frames }) => {
    const { MIN_SCALE } = await import('/canvas/viewport.js');
    const canvas = loom.canvas;
    if (zoom === 'fit') { canvas.selected.clear(); canvas.fitView(); }
    else if (zoom === 'min') canvas.viewport.scale = MIN_SCALE;
    else canvas.viewport.scale = zoom;
    if (zoom !== 'fit') canvas.viewport.offset = [-200, -100];
    await loom.nextFrame();
    const ctx = canvas.ctx;
    const ratio = window.devicePixelRatio || 1;
    const times = [];
    for (let i = 0; i < frames; i++) {
        canvas.viewport.panBy(i % 40 < 20 ? -12 : 12, i % 80 < 40 ? -4 : 4);
        const started = performance.now();
        ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
        canvas.renderer.draw(ctx, canvas.width, canvas.height);
        ctx.getImageData(0, 0, 1, 1);  // flush: rasterise what was drawn
        times.push(performance.now() - started);
        await new Promise((resolve) => setTimeout(resolve, 0));
    }
    return { times, scale: canvas.viewport.scale, drawn: canvas.renderer.stats.nodes };
}"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run(counts: list[int], frames: int) -> None:
    from playwright.sync_api import sync_playwright

    from fixtures_server import ServerProcess

    executable = shutil.which("chromium")
    if executable is None:
        sys.exit("the system Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="loom-bench-canvas-") as base_dir:
        server = ServerProcess(Path(base_dir))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(server.url + "/?test-hook")  # the test hook: window.loom
                page.wait_for_function("window.loom && window.loom.ready", timeout=30000)
                for count in counts:
                    workflow = generate_workflow(count)
                    page.evaluate(LOAD_SCRIPT, generate_workflow(min(count, 50)))  # warm the code paths
                    loads = [page.evaluate(LOAD_SCRIPT, workflow) for _ in range(3)]
                    print(f"{count} nodes, {len(workflow['links'])} links: load {statistics.median(loads):.0f} ms "
                          f"(median of 3: {', '.join(f'{t:.0f}' for t in loads)})", flush=True)
                    for zoom in (0.6, "min", "fit"):
                        result = page.evaluate(PAN_SCRIPT, {"zoom": zoom, "frames": frames})
                        times = result["times"][5:]  # the first frames warm caches
                        print(f"  pan at {'zoom ' + str(zoom) if zoom != 'fit' else 'fit-to-view'} "
                              f"(scale {result['scale']:.2f}, {result['drawn']} nodes drawn): "
                              f"median {statistics.median(times):.1f} ms, p95 {percentile(times, 0.95):.1f} ms",
                              flush=True)
                browser.close()
        finally:
            server.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--frames", type=int, default=80)
    args = parser.parse_args()
    run(args.nodes, args.frames)


if __name__ == "__main__":
    main()
