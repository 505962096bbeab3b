"""The demo model Loom is to ship: its world (captions, scenes, the analytic checker) and, once the trained
file is in the checkout, that it is found on a fresh install, loads as SD1 and draws what it is told.

The checker is tested on its own, so an adherence floor met by a checker that accepts anything cannot pass.
The file itself is ``nodes/builtin_models/checkpoints/loom-demo.safetensors`` (from
``tools/train_demo_model.py``). The adherence floor only catches regressions: the shipped file meets 11 of
these 20 held-out captions (55 %), the floor is 8 (40 %) so that a thread count's rounding cannot fail it;
the real figure comes from ``python bench/demo_model.py`` (120 captions).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import demo_eval, demo_scenes

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "nodes" / "builtin_models" / "checkpoints" / demo_eval.DEMO_CHECKPOINT  # in the checkout
MAX_BYTES = 30 * 2**20


def test_demo_checkpoint_is_shipped_small_and_in_the_sd1_layout():
    from safetensors import safe_open

    assert DEMO.stat().st_size <= MAX_BYTES
    with safe_open(str(DEMO), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    prefixes = {key.split(".")[0] for key in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert any(key.startswith("cond_stage_model.transformer.text_model.") for key in keys)
    assert metadata["license"] == "MIT" and metadata["trained_by"] == "tools/train_demo_model.py"
    assert (DEMO.parent / "loom-demo.md").is_file(), "the model card is missing"


def test_demo_checkpoint_is_listed_on_a_fresh_install(base_dir, registry):
    assert not any((base_dir / "models" / "checkpoints").iterdir())
    info = registry.object_info("CheckpointLoaderSimple")["CheckpointLoaderSimple"]
    assert demo_eval.DEMO_CHECKPOINT in info["input"]["required"]["ckpt_name"][0]


def test_a_file_of_the_same_name_in_models_wins(base_dir):
    from loom.nodes.kernel import folders

    own = base_dir / "models" / "checkpoints" / demo_eval.DEMO_CHECKPOINT
    own.write_bytes(b"mine")
    assert folders.resolve("checkpoints", demo_eval.DEMO_CHECKPOINT) == own.resolve()


def test_demo_checkpoint_loads_through_the_sd1_path():
    from loom.nodes.runtime.checkpoint import inspect_checkpoint

    detected = inspect_checkpoint(DEMO)
    assert detected.family.name == "sd1" and detected.prediction == "eps"


# ---------------------------------------------------------------------------------------------
# The checker: it must tell right pictures from wrong ones, or the adherence floor means nothing
# ---------------------------------------------------------------------------------------------

def test_checker_accepts_drawn_scenes_and_refuses_mismatched_captions():
    training, held_out = demo_scenes.split_scenes()
    assert len(held_out) > 0.05 * (len(training) + len(held_out))
    assert not {demo_scenes.caption_of(s) for s in training} & {demo_scenes.caption_of(s) for s in held_out}
    rng = random.Random(3)
    scenes = rng.sample(training, 60)
    for scene in scenes:
        caption = demo_scenes.caption_of(scene)
        assert demo_scenes.parse_caption(caption) == scene
        picture = demo_scenes.render(scene, rng)
        assert demo_scenes.check(picture, caption).ok, caption
        other = demo_scenes.caption_of(rng.choice([s for s in scenes if s != scene]))
        wrong = demo_scenes.check(picture, other)
        assert not wrong.ok and wrong.reasons, (caption, other)


@pytest.mark.parametrize("caption,reason", [
    ("a red square on the left on a blue background", "looks like a circle"),
    ("a red circle on the right on a blue background", "is not right"),
    ("a red circle on the left on a green background", "border is not mostly green"),
    ("a yellow circle on the left on a blue background", "no yellow blob"),
])
def test_checker_names_what_is_wrong(caption, reason):
    scene = demo_scenes.parse_caption("a red circle on the left on a blue background")
    picture = demo_scenes.render(scene, random.Random(0))
    verdict = demo_scenes.check(picture, caption)
    assert not verdict.ok and any(reason in r for r in verdict.reasons), verdict.reasons


def test_checker_refuses_noise_and_blank_pictures():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    blank = Image.new("RGB", (128, 128), demo_scenes.COLORS["blue"])
    for picture in (noise, blank):
        assert not demo_scenes.check(picture, "a red circle on the left on a blue background").ok


def test_unknown_caption_is_a_clear_error():
    with pytest.raises(ValueError, match="not a demo caption"):
        demo_scenes.parse_caption("a glass bottle holding a tiny galaxy")


# ---------------------------------------------------------------------------------------------
# What it draws
# ---------------------------------------------------------------------------------------------

def test_demo_model_follows_held_out_captions(tmp_path):
    results = demo_eval.evaluate(demo_eval.held_out_captions(20), tmp_path)
    misses = [(r.caption, r.verdict.reasons) for r in results if not r.verdict.ok]
    assert demo_eval.adherence(results) >= 0.4, misses
    singles = [r for r in results if demo_scenes.parse_caption(r.caption).second is None]
    assert demo_eval.adherence(singles) >= 0.5, misses  # one-thing captions: 7 of 10 today
