"""The values of a sweep: the command line's texts parsed, and each value coerced to its input's type.

- :func:`parse_seeds` reads ``--seed`` (``7``, ``1-8``, ``1,5,9``, ``1-3,10``); :func:`is_single_seed` says
  whether it names one seed only.
- :func:`split_target` reads ``--set NODE.INPUT=VALUES``; :func:`may_sweep` says whether its value text could
  hold several values; :func:`split_values` splits it by the input's type (a JSON list, else at commas).
- :class:`Definitions` gives a node class's inputs as :class:`InputInfo`, from ``/object_info`` JSON (the local
  registry's or the server's); :func:`coerce` turns one value into its input's type, within its min/max and
  options.
- :class:`SweepError` is a problem with the sweep the user asked for; ``MAX_RUNS`` bounds a sweep's size.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

_INT = re.compile(r"[+-]?\d+")
_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
MAX_RUNS = 100_000


class SweepError(Exception):
    """A problem with the sweep the user asked for (the CLI turns it into exit code 2)."""


def parse_seeds(text: str) -> list[int]:
    """``"7"``, ``"1-8"``, ``"1,5,9"`` or mixes like ``"1-3,10"``, in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if _INT.fullmatch(part):
            seeds.append(int(part))
            continue
        match = _RANGE.fullmatch(part)
        if not match:
            raise SweepError(f"--seed {text!r}: {part!r} is not a seed or a range like 1-8")
        first, last = int(match.group(1)), int(match.group(2))
        if last < first:
            raise SweepError(f"--seed {text!r}: the range {part} runs backwards")
        if last - first >= MAX_RUNS:
            raise SweepError(f"--seed {text!r}: the range {part} has more than {MAX_RUNS} seeds")
        seeds.extend(range(first, last + 1))
    return seeds


def is_single_seed(text: str | None) -> bool:
    return text is None or bool(_INT.fullmatch(text.strip()))


def split_target(item: str) -> tuple[str, str, str]:
    """``NODE.INPUT=VALUES`` → (node, input, values text); NODE may contain dots (a title)."""
    target, sep, value = item.partition("=")
    node_ref, dot, input_name = target.rpartition(".")
    if not sep or not dot or not node_ref or not input_name:
        raise SweepError(f"--set {item!r}: expected NODE.INPUT=VALUE")
    return node_ref.strip(), input_name.strip(), value


def may_sweep(value_text: str) -> bool:
    """Whether a ``--set`` value could hold several values (a comma, or a JSON list)."""
    return "," in value_text or value_text.lstrip().startswith("[")


def split_values(text: str, info: InputInfo) -> list[Any]:
    """The values of one ``--set``: a JSON list, else comma-separated (``\\,`` is a comma in a value).

    STRING inputs are never split at commas (prompts have them): sweep texts with a JSON list. A combo value
    that is one of the options as a whole (a file name with a comma) is one value.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            if not parsed:
                raise SweepError("an empty list")
            return parsed
    if info.type == "STRING" or (info.type == "COMBO" and text in (info.choices or [])):
        return [text]
    parts = [part.replace("\x00", ",").strip() for part in text.replace("\\,", "\x00").split(",")]
    if any(part == "" for part in parts) and len(parts) > 1:
        raise SweepError("an empty value in the list")
    return parts


@dataclass
class InputInfo:
    name: str
    type: str  # INT FLOAT STRING BOOLEAN COMBO, or a socket type (MODEL, LATENT, ...)
    options: dict[str, Any]
    choices: list[str] | None = None

    @property
    def is_seed_like(self) -> bool:
        return self.type == "INT" and bool(self.options.get("control_after_generate"))


class Definitions:
    """Input types by node class, from ``/object_info`` JSON."""

    def __init__(self, object_info: dict[str, Any]) -> None:
        self.info = object_info

    def has(self, class_type: str) -> bool:
        return class_type in self.info

    def inputs(self, class_type: str) -> list[InputInfo]:
        entry = self.info.get(class_type) or {}
        found: list[InputInfo] = []
        for group in ("required", "optional"):
            for name, spec in ((entry.get("input") or {}).get(group) or {}).items():
                kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
                options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 else {}
                options = options if isinstance(options, dict) else {}
                if isinstance(kind, list):
                    found.append(InputInfo(name, "COMBO", options, [str(c) for c in kind]))
                elif kind == "COMBO":
                    found.append(InputInfo(name, "COMBO", options, [str(c) for c in options.get("options") or []]))
                else:
                    found.append(InputInfo(name, str(kind), options))
        return found

    def input(self, class_type: str, name: str) -> InputInfo | None:
        return next((i for i in self.inputs(class_type) if i.name == name), None)


def coerce(info: InputInfo, value: Any) -> Any:
    """``value`` as the input's type, or a :class:`SweepError` saying what is wrong."""
    kind = info.type
    shown = value if isinstance(value, str) else json.dumps(value)
    if kind == "INT":
        number: Any = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and _INT.fullmatch(value.strip()):
            number = int(value.strip())
        if number is None:
            raise SweepError(f"{shown!r} is not an integer")
        return _in_range(info, number)
    if kind == "FLOAT":
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise SweepError(f"{shown!r} is not a number") from None
        if not math.isfinite(number):
            raise SweepError(f"{shown!r} is not a finite number")
        return _in_range(info, number)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise SweepError(f"{shown!r} is not true or false")
    if kind == "COMBO":
        text = value if isinstance(value, str) else shown
        choices = info.choices or []
        if choices and text not in choices:
            listed = ", ".join(choices[:20]) + (", ..." if len(choices) > 20 else "")
            raise SweepError(f"{text!r} is not one of the options: {listed}")
        return text
    if kind == "STRING":
        if isinstance(value, (dict, list)) or value is None:
            raise SweepError(f"{shown} is not text")
        return value if isinstance(value, str) else shown
    raise SweepError(f"it takes a link ({kind}), not a value")


def _in_range(info: InputInfo, number: Any) -> Any:
    low, high = info.options.get("min"), info.options.get("max")
    if low is not None and number < low:
        raise SweepError(f"{number} is below the minimum {low}")
    if high is not None and number > high:
        raise SweepError(f"{number} is above the maximum {high}")
    return number
