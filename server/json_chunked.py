"""JSON for big prompts without long pauses: the outer levels are read and written one member at a time.

``json.loads`` and ``json.dumps`` are each one C call that holds the GIL throughout: for a 15 MB prompt of
200,000 nodes that stops every other thread, the event loop included, for about half a second, even when
the call runs in a worker thread. Here the members of the first ``depth`` levels of objects and arrays are
decoded (or encoded) one by one, so a thread doing it lets the event loop run between members. The result
is what the ``json`` module gives (same values, same errors as :class:`json.JSONDecodeError`), only the
work is cut into small calls.
"""
from __future__ import annotations

import json
import re
from json.decoder import scanstring
from typing import Any, Callable

OUTER_LEVELS = 2
"""A request body ``{"prompt": {node_id: node}}``: a node is one decode call."""

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def loads(text: str, *, depth: int = OUTER_LEVELS, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """``json.loads(text)``, decoding the members of the outer ``depth`` levels one call each."""
    decoder = json.JSONDecoder(parse_constant=parse_constant) if parse_constant else json.JSONDecoder()
    value, end = _value(text, _skip(text, 0), depth, decoder)
    end = _skip(text, end)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def dumps(value: Any, *, depth: int = OUTER_LEVELS, separators: tuple[str, str] = (",", ":"),
          allow_nan: bool = False) -> str:
    """``json.dumps(value, separators=..., allow_nan=...)``, encoding the outer members one call each."""
    encoder = json.JSONEncoder(separators=separators, allow_nan=allow_nan)
    parts: list[str] = []
    _encode(value, depth, encoder, separators, parts)
    return "".join(parts)


def _skip(text: str, position: int) -> int:
    return _WHITESPACE.match(text, position).end()  # type: ignore[union-attr]


def _value(text: str, position: int, depth: int, decoder: json.JSONDecoder) -> tuple[Any, int]:
    opener = text[position:position + 1]
    if depth > 0 and opener == "{":
        return _object(text, position + 1, depth - 1, decoder)
    if depth > 0 and opener == "[":
        return _array(text, position + 1, depth - 1, decoder)
    return decoder.raw_decode(text, position)


def _object(text: str, position: int, depth: int, decoder: json.JSONDecoder) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    position = _skip(text, position)
    if text[position:position + 1] == "}":
        return result, position + 1
    while True:
        if text[position:position + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, position)
        key, position = scanstring(text, position + 1)
        position = _skip(text, position)
        if text[position:position + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, position)
        result[key], position = _value(text, _skip(text, position + 1), depth, decoder)
        position = _skip(text, position)
        separator = text[position:position + 1]
        if separator == "}":
            return result, position + 1
        if separator != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        position = _skip(text, position + 1)


def _array(text: str, position: int, depth: int, decoder: json.JSONDecoder) -> tuple[list[Any], int]:
    result: list[Any] = []
    position = _skip(text, position)
    if text[position:position + 1] == "]":
        return result, position + 1
    while True:
        item, position = _value(text, position, depth, decoder)
        result.append(item)
        position = _skip(text, position)
        separator = text[position:position + 1]
        if separator == "]":
            return result, position + 1
        if separator != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        position = _skip(text, position + 1)


def _encode(value: Any, depth: int, encoder: json.JSONEncoder, separators: tuple[str, str],
            parts: list[str]) -> None:
    item_separator, key_separator = separators
    if depth > 0 and isinstance(value, dict):
        parts.append("{")
        for index, (key, member) in enumerate(value.items()):
            if index:
                parts.append(item_separator)
            parts.append(encoder.encode(key if isinstance(key, str) else _key_text(key)))
            parts.append(key_separator)
            _encode(member, depth - 1, encoder, separators, parts)
        parts.append("}")
    elif depth > 0 and isinstance(value, (list, tuple)):
        parts.append("[")
        for index, member in enumerate(value):
            if index:
                parts.append(item_separator)
            _encode(member, depth - 1, encoder, separators, parts)
        parts.append("]")
    else:
        parts.append(encoder.encode(value))


def _key_text(key: Any) -> str:
    """A non-string key as ``json.dumps`` writes it (numbers and booleans become their JSON text)."""
    return json.dumps({key: 0})[1:].split(":", 1)[0][1:-1]
