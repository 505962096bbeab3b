"""The demo model's world: captions of simple scenes, the pictures they describe, and a checker.

A scene is one or two flat-coloured shapes on a flat background, described by a caption such as
``"a red circle on the left on a yellow background"`` or ``"a green triangle above a blue square on a
white background"``. :func:`render` draws a scene (anti-aliased, seeded jitter in size and place),
:func:`caption_of` writes its caption, :func:`parse_caption` reads one back, and :func:`check` scores a
generated picture against a caption analytically: does the background colour fill the border, is each
named colour there as one blob in the named place, and does that blob have the named shape (by how much
of its bounding box it fills: square ≈ 1, circle ≈ π/4, triangle ≈ 1/2).

Captions split deterministically into a training set and a held-out set (:func:`is_held_out`), so the
benchmark measures captions the model never saw. Used by ``tools/train_demo_model.py``,
``bench/demo_model.py`` and the demo model's test.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
PLACES = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom",
          "in the center": "center"}
RELATIONS = {"above": "above", "below": "below", "to the left of": "left of", "to the right of": "right of"}

SIZE = 128
HELD_OUT_PERCENT = 10


@dataclass(frozen=True)
class Thing:
    color: str
    shape: str


@dataclass(frozen=True)
class Scene:
    """What a caption says: one thing in a place, or two things in a relation, on a background."""
    background: str
    first: Thing
    place: str | None = None         # one thing: a key of PLACES' values
    relation: str | None = None      # two things: a value of RELATIONS
    second: Thing | None = None


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def caption_of(scene: Scene) -> str:
    first = f"{_a(scene.first.color)} {scene.first.shape}"
    background = f"on {_a(scene.background)} background"
    if scene.second is None:
        place = next(words for words, key in PLACES.items() if key == scene.place)
        return f"{first} {place} {background}"
    relation = next(words for words, key in RELATIONS.items() if key == scene.relation)
    return f"{first} {relation} {_a(scene.second.color)} {scene.second.shape} {background}"


def parse_caption(caption: str) -> Scene:
    """The scene a caption of this grammar describes; ``ValueError`` for any other text."""
    text = caption.strip().lower()
    head, sep, background = text.rpartition(" on ")
    article, _, background = background.partition(" ")
    if not sep or article not in ("a", "an") or not background.endswith(" background"):
        raise ValueError(f"not a demo caption: {caption!r}")
    background = background.removesuffix(" background")
    for words, place in PLACES.items():
        if head.endswith(" " + words):
            return Scene(background, _thing(head.removesuffix(" " + words)), place=place)
    for words, relation in RELATIONS.items():
        left, sep, right = head.partition(f" {words} ")
        right = right.removeprefix("an ").removeprefix("a ")
        if sep:
            return Scene(background, _thing(left), relation=relation, second=_thing(right))
    raise ValueError(f"not a demo caption: {caption!r}")


def _thing(words: str) -> Thing:
    parts = words.split()
    if len(parts) == 2:
        parts = ["a", *parts]
    if len(parts) != 3 or parts[0] not in ("a", "an") or parts[1] not in COLORS or parts[2] not in SHAPES:
        raise ValueError(f"not a coloured shape: {words!r}")
    return Thing(parts[1], parts[2])


def all_scenes() -> Iterator[Scene]:
    """Every scene the grammar can say (colours of one scene all differ)."""
    for background in COLORS:
        for color in COLORS:
            if color == background:
                continue
            for shape in SHAPES:
                for place in PLACES.values():
                    yield Scene(background, Thing(color, shape), place=place)
                for relation in RELATIONS.values():
                    for color2 in COLORS:
                        if color2 in (background, color):
                            continue
                        for shape2 in SHAPES:
                            yield Scene(background, Thing(color, shape), relation=relation,
                                        second=Thing(color2, shape2))


def is_held_out(caption: str) -> bool:
    """A fixed tenth of the captions, never shown in training."""
    digest = hashlib.sha256(caption.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def split_scenes() -> tuple[list[Scene], list[Scene]]:
    """``(training, held_out)`` scenes."""
    training, held_out = [], []
    for scene in all_scenes():
        (held_out if is_held_out(caption_of(scene)) else training).append(scene)
    return training, held_out


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

_REGIONS = {  # centre ranges (fractions of the picture) for a thing in a place
    "left": ((0.18, 0.32), (0.3, 0.7)),
    "right": ((0.68, 0.82), (0.3, 0.7)),
    "top": ((0.3, 0.7), (0.18, 0.32)),
    "bottom": ((0.3, 0.7), (0.68, 0.82)),
    "center": ((0.42, 0.58), (0.42, 0.58)),
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float,
                color: tuple[int, int, int]) -> None:
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=color)


def render(scene: Scene, rng: random.Random, size: int = SIZE) -> Image.Image:
    """The scene as an RGB picture; ``rng`` jitters sizes and positions. Drawn at 4x, then reduced."""
    scale = 4
    canvas = size * scale
    image = Image.new("RGB", (canvas, canvas), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    if scene.second is None:
        (x0, x1), (y0, y1) = _REGIONS[scene.place or "center"]
        half = rng.uniform(0.13, 0.18) * canvas
        _draw_shape(draw, scene.first.shape, rng.uniform(x0, x1) * canvas, rng.uniform(y0, y1) * canvas, half,
                    COLORS[scene.first.color])
    else:
        half1, half2 = (rng.uniform(0.11, 0.15) * canvas for _ in range(2))
        along = rng.uniform(0.4, 0.6)
        near, far = rng.uniform(0.22, 0.3), rng.uniform(0.7, 0.78)
        if scene.relation in ("above", "below"):
            first_y, second_y = (near, far) if scene.relation == "above" else (far, near)
            first = (along + rng.uniform(-0.08, 0.08), first_y)
            second = (along + rng.uniform(-0.08, 0.08), second_y)
        else:
            first_x, second_x = (near, far) if scene.relation == "left of" else (far, near)
            first = (first_x, along + rng.uniform(-0.08, 0.08))
            second = (second_x, along + rng.uniform(-0.08, 0.08))
        _draw_shape(draw, scene.first.shape, first[0] * canvas, first[1] * canvas, half1, COLORS[scene.first.color])
        _draw_shape(draw, scene.second.shape, second[0] * canvas, second[1] * canvas, half2,
                    COLORS[scene.second.color])
    return image.resize((size, size), Image.LANCZOS)


# ---------------------------------------------------------------------------------------------
# Checking a generated picture
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]


_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_NAMES = list(COLORS)
MIN_AREA = 0.015           # of the picture, for a thing to count as there
FILL_SQUARE = 0.86          # fill of the bounding box at or above this: a square
FILL_TRIANGLE = 0.66        # below this: a triangle; between: a circle


def colour_map(image: Image.Image) -> np.ndarray:
    """Each pixel's nearest named colour, as an index into ``COLORS``."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distances = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def shape_of(mask: np.ndarray) -> str:
    """circle, square or triangle, from how much of its bounding box the blob fills."""
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = len(ys) / box
    if fill >= FILL_SQUARE:
        return "square"
    return "triangle" if fill < FILL_TRIANGLE else "circle"


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (scan with a stack; pictures are small)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, blob = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            blob.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _find(colours: np.ndarray, thing: Thing, reasons: list[str]) -> tuple[float, float] | None:
    """The centre (fractions) of the thing's blob, noting in ``reasons`` what is wrong with it."""
    mask = _largest_blob(colours == _NAMES.index(thing.color))
    if mask.sum() < MIN_AREA * mask.size:
        reasons.append(f"no {thing.color} blob")
        return None
    shape = shape_of(mask)
    if shape != thing.shape:
        reasons.append(f"the {thing.color} blob looks like a {shape}, not a {thing.shape}")
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]


def _in_place(centre: tuple[float, float], place: str) -> bool:
    x, y = centre
    return {"left": x < 0.42, "right": x > 0.58, "top": y < 0.42, "bottom": y > 0.58,
            "center": abs(x - 0.5) < 0.17 and abs(y - 0.5) < 0.17}[place]


def check(image: Image.Image, caption: str) -> Verdict:
    """Whether ``image`` shows what ``caption`` says, with the reasons when it does not."""
    scene = parse_caption(caption)
    colours = colour_map(image)
    reasons: list[str] = []
    border = np.concatenate([colours[:4].ravel(), colours[-4:].ravel(), colours[:, :4].ravel(),
                             colours[:, -4:].ravel()])
    if (border == _NAMES.index(scene.background)).mean() < 0.7:
        reasons.append(f"the border is not mostly {scene.background}")
    first = _find(colours, scene.first, reasons)
    if scene.second is None:
        if first is not None and not _in_place(first, scene.place or "center"):
            reasons.append(f"the {scene.first.color} {scene.first.shape} is not {scene.place}")
    else:
        second = _find(colours, scene.second, reasons)
        if first is not None and second is not None:
            dx, dy = first[0] - second[0], first[1] - second[1]
            placed = {"above": dy < -0.15, "below": dy > 0.15, "left of": dx < -0.15,
                      "right of": dx > 0.15}[scene.relation or "above"]
            if not placed:
                reasons.append(f"the {scene.first.color} {scene.first.shape} is not {scene.relation} the "
                               f"{scene.second.color} {scene.second.shape}")
    return Verdict(not reasons, tuple(reasons))
