"""A litegraph graph normalised for conversion: string node ids, integer slots, links by id.

Saved graphs write ids as ints or strings, slots as numbers or numeric strings, links as 6-tuples (schema
0.4) or objects (schema 1 and subgraph definitions), and carry the same link twice (``inputs[].link``
and ``outputs[].links``), not always consistently. :func:`build_graph` reads all of that into one shape,
keeping ``links[]`` as the authority on a link's ends and skipping malformed entries with a warning.
"""
from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass, field
from typing import Any

from loom.nodes.kernel.schema import types_compatible

MODE_MUTED = 2
MODE_BYPASS = 4
SUBGRAPH_INPUT_NODE = "-10"
SUBGRAPH_OUTPUT_NODE = "-20"


def list_at(container: Any, key: str) -> list[Any]:
    """``container[key]`` when it is a list, else an empty list (saved files are not to be trusted)."""
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class Link:
    id: Any
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: str


@dataclass
class Graph:
    """One graph (the root, a subgraph definition, or a rewritten group node) with normalised ids."""

    label: str
    nodes: dict[str, dict[str, Any]]
    links: dict[Any, Link]
    inputs: list[dict[str, Any]] = field(default_factory=list)   # subgraph input slots
    outputs: list[dict[str, Any]] = field(default_factory=list)  # subgraph output slots


def node_id_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"bad node id {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def slot_index(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"bad slot index {value!r}")
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"bad slot index {value!r}")


def link_key(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return value if isinstance(value, (str, int)) else repr(value)


def type_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "*" if value in (None, "") else str(value)


def parse_links(raw: Any, label: str, warnings: list[str]) -> dict[Any, Link]:
    """Links as 6-tuples or objects; malformed entries and conflicting duplicate ids are reported."""
    links: dict[Any, Link] = {}
    for entry in raw if isinstance(raw, list) else []:
        try:
            if isinstance(entry, (list, tuple)) and len(entry) >= 5:
                link = Link(link_key(entry[0]), node_id_text(entry[1]), slot_index(entry[2]),
                             node_id_text(entry[3]), slot_index(entry[4]),
                             type_text(entry[5] if len(entry) > 5 else None))
            elif isinstance(entry, dict):
                link = Link(link_key(entry["id"]), node_id_text(entry["origin_id"]),
                             slot_index(entry["origin_slot"]), node_id_text(entry["target_id"]),
                             slot_index(entry["target_slot"]), type_text(entry.get("type")))
            else:
                raise ValueError("not a link")
        except (KeyError, ValueError, TypeError):
            warnings.append(f"{label}: ignored malformed link {reprlib.repr(entry)}")
            continue
        existing = links.get(link.id)
        if existing is not None and existing != link:
            warnings.append(f"{label}: link id {link.id} appears twice with different ends; kept the first")
            continue
        links[link.id] = link
    return links


def build_graph(raw: dict[str, Any], label: str, warnings: list[str]) -> Graph:
    nodes: dict[str, dict[str, Any]] = {}
    for node in list_at(raw, "nodes"):
        if not isinstance(node, dict):
            warnings.append(f"{label}: ignored a node entry that is not an object")
            continue
        try:
            node_id = node_id_text(node.get("id"))
        except ValueError:
            warnings.append(f"{label}: ignored a node without an id (type {node.get('type')!r})")
            continue
        if node_id in nodes:
            warnings.append(f"{label}: node id {node_id} appears twice; kept the first")
            continue
        nodes[node_id] = node
    ordered = sorted(nodes.items(), key=lambda item: order_key(item[1]))
    return Graph(label, dict(ordered), parse_links(raw.get("links"), label, warnings),
                  _boundary_slots(raw, "inputs"), _boundary_slots(raw, "outputs"))


def _boundary_slots(raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A subgraph's input or output slots, with a text ``name`` and ``type`` each."""
    return [dict(slot, name=slot.get("name") if isinstance(slot.get("name"), str) else "",
                 type=type_text(slot.get("type")))
            for slot in list_at(raw, key) if isinstance(slot, dict)]


def order_key(node: dict[str, Any]) -> float:
    order = node.get("order")
    return float(order) if isinstance(order, (int, float)) and not isinstance(order, bool) else float("inf")


def node_mode(node: dict[str, Any]) -> int:
    mode = node.get("mode", 0)
    try:
        return int(mode)
    except (TypeError, ValueError):
        return 0


def node_inputs(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [slot if isinstance(slot, dict) else {} for slot in list_at(node, "inputs")]


def node_outputs(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [slot if isinstance(slot, dict) else {} for slot in list_at(node, "outputs")]


def widget_name(slot: dict[str, Any]) -> str | None:
    widget = slot.get("widget")
    if isinstance(widget, dict) and isinstance(widget.get("name"), str):
        return widget["name"]
    return None


def bypass_input_index(node: dict[str, Any], slot: int, wanted_type: str) -> int:
    """Which input a bypassed node hands on for output ``slot`` when a ``wanted_type`` input asks."""
    inputs = node_inputs(node)
    outputs = node_outputs(node)
    if wanted_type in ("*", ""):
        return slot if 0 <= slot < len(inputs) else (0 if inputs else -1)
    output_type = type_text(outputs[slot].get("type")) if 0 <= slot < len(outputs) else wanted_type
    if 0 <= slot < len(inputs):
        same = type_text(inputs[slot].get("type"))
        if types_compatible(output_type, same) and types_compatible(same, wanted_type):
            return slot
    for index, candidate in enumerate(inputs):
        if type_text(candidate.get("type")) == wanted_type:
            return index
    for index, candidate in enumerate(inputs):
        kind = type_text(candidate.get("type"))
        if types_compatible(kind, output_type) and types_compatible(kind, wanted_type):
            return index
    return -1


def output_link(graph: Graph, slot: int) -> Link | None:
    if 0 <= slot < len(graph.outputs):
        for link_id in list_at(graph.outputs[slot], "linkIds"):
            link = graph.links.get(link_key(link_id))
            if link is not None and link.target_id == SUBGRAPH_OUTPUT_NODE:
                return link
    for link in graph.links.values():
        if link.target_id == SUBGRAPH_OUTPUT_NODE and link.target_slot == slot:
            return link
    return None


def proxy_widgets(instance: dict[str, Any]) -> list[tuple[str, str]]:
    properties = instance.get("properties") if isinstance(instance.get("properties"), dict) else {}
    raw = properties.get("proxyWidgets")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    entries = []
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, (list, tuple)) and len(entry) >= 2 and isinstance(entry[1], str):
            entries.append((str(entry[0]), entry[1]))
    return entries


def node_properties(node: dict[str, Any]) -> dict[str, Any]:
    return node["properties"] if isinstance(node.get("properties"), dict) else {}

