"""Generate with the demo model through Loom's own executor and score the pictures against their captions.

    results = evaluate(held_out_captions(20), base_dir=tmp)   # list of Result
    adherence(results)                                        # fraction the checker accepts

Each caption runs as an ordinary API prompt (CheckpointLoaderSimple → CLIPTextEncode ×2 →
EmptyLatentImage → KSampler → VAEDecode → SaveImage), the same graph as ``workflows/txt2img.json``,
so what is measured is what a user gets. Used by ``bench/demo_model.py`` and the demo model's test.
"""
from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from loom.nodes.kernel.folders import DEMO_CHECKPOINT
from tools import demo_scenes


@dataclass(frozen=True)
class Settings:
    """The default workflow's sampling settings (keep in step with workflows/txt2img.json)."""
    steps: int = 20
    cfg: float = 5.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    size: int = demo_scenes.SIZE


@dataclass(frozen=True)
class Result:
    caption: str
    seed: int
    verdict: demo_scenes.Verdict
    seconds: float
    image: Image.Image


def held_out_captions(count: int, seed: int = 0) -> list[str]:
    """``count`` captions the model never saw in training, a fixed sample (half one thing, half two)."""
    _training, held_out = demo_scenes.split_scenes()
    rng = random.Random(seed)
    singles = [s for s in held_out if s.second is None]
    pairs = [s for s in held_out if s.second is not None]
    chosen = rng.sample(singles, min(len(singles), (count + 1) // 2)) + rng.sample(pairs, count // 2)
    rng.shuffle(chosen)
    return [demo_scenes.caption_of(scene) for scene in chosen[:count]]


def prompt_for(caption: str, seed: int, settings: Settings, checkpoint: str = DEMO_CHECKPOINT) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": caption, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": settings.size, "height": settings.size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "seed": seed, "steps": settings.steps, "cfg": settings.cfg, "sampler_name": settings.sampler_name,
            "scheduler": settings.scheduler, "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "demo"}},
    }


def evaluate(captions: list[str], base_dir: Path, settings: Settings = Settings(), first_seed: int = 1,
             checkpoint: str = DEMO_CHECKPOINT) -> list[Result]:
    """Run each caption once (seeds ``first_seed``, ``first_seed + 1``, ...) and check its picture."""
    from loom.nodes.kernel import folders
    from loom.nodes.kernel.schema import default_registry
    from loom.server.executor import Executor

    folders.configure(base_dir)
    registry = default_registry()
    executor = Executor(registry)
    output = folders.current().data_dir("output")
    results = []
    for offset, caption in enumerate(captions):
        seed = first_seed + offset
        before = set(output.glob("*.png"))
        started = time.perf_counter()
        result = executor.execute(prompt_for(caption, seed, settings, checkpoint), uuid.uuid4().hex)
        seconds = time.perf_counter() - started
        if result.status != "success":
            raise RuntimeError(f"the demo prompt for {caption!r} failed: {result.error}")
        (saved,) = set(output.glob("*.png")) - before
        image = Image.open(saved).convert("RGB")
        results.append(Result(caption, seed, demo_scenes.check(image, caption), seconds, image))
    return results


def adherence(results: list[Result]) -> float:
    return sum(r.verdict.ok for r in results) / max(1, len(results))
