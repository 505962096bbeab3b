"""Legacy group nodes (``workflow>Name`` / ``workflow/Name``) rewritten as subgraph definitions.

Before subgraphs, the editor could merge nodes into a "group node" whose definition sits in
``extra.groupNodes[Name]``: ``nodes`` (each with its position ``index``), internal ``links``
``[origin_index, origin_slot, target_index, target_slot, original_origin_id, type]`` and ``external``
``[[index, output_slot, type]]`` (outputs also exposed outside). The instance node shows, in inner-node
order, every input not fed internally, every output not consumed internally (or listed as external),
and every inner widget; its ``widgets_values`` are the inner nodes' values one after another.

:func:`group_node_graph` turns one instance into a schema-1 style graph with boundary nodes -10/-20,
so the converter flattens it like a subgraph (inner ids ``"outer:index"``, as the editor numbers them).
"""
from __future__ import annotations

import copy
from typing import Any

from loom.nodes.kernel.schema import NodeRegistry
from loom.server.workflow.graph import list_at, node_inputs, node_outputs, slot_index, widget_name


def group_node_graph(definition: dict[str, Any], instance: dict[str, Any], registry: NodeRegistry) -> dict[str, Any]:
    """A graph dict (nodes, object links, inputs, outputs) equivalent to one group-node instance."""
    raw_nodes = definition.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ValueError("its definition has no nodes")
    nodes: list[dict[str, Any]] = []
    for position, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            raise ValueError(f"inner node {position} is not an object")
        node = copy.deepcopy(raw)
        node["id"] = int(raw.get("index", position))
        node["inputs"] = [dict(slot, link=None) for slot in node_inputs(raw)]
        nodes.append(node)
    by_index = {node["id"]: node for node in nodes}
    links: list[dict[str, Any]] = []

    def add_link(origin: int, origin_slot: int, target: int, target_slot: int, kind: Any) -> int:
        link_id = len(links) + 1
        links.append({"id": link_id, "origin_id": origin, "origin_slot": origin_slot,
                      "target_id": target, "target_slot": target_slot, "type": kind})
        return link_id

    fed: set[tuple[int, int]] = set()
    consumed: set[tuple[int, int]] = set()
    for entry in list_at(definition, "links"):
        if not isinstance(entry, (list, tuple)) or len(entry) < 4:
            continue
        if entry[0] is None or entry[2] is None:
            # a link from (or to) a node outside the group: the editor skips it (``getLinks``), so the inner
            # input it feeds stays free and is one of the instance's inputs
            continue
        origin, origin_slot, target, target_slot = (slot_index(v) for v in entry[:4])
        if origin not in by_index or target not in by_index:
            raise ValueError(f"internal link {list(entry)} names an inner node that does not exist")
        if origin_slot < 0 or target_slot < 0:
            raise ValueError(f"internal link {list(entry)} has a negative slot")
        inputs = by_index[target]["inputs"]
        while len(inputs) <= target_slot:
            inputs.append({"name": f"input_{len(inputs)}", "type": "*", "link": None})
        inputs[target_slot]["link"] = add_link(origin, origin_slot, target, target_slot,
                                               entry[5] if len(entry) > 5 else "*")
        fed.add((target, target_slot))
        consumed.add((origin, origin_slot))
    external = set()
    for entry in list_at(definition, "external"):
        if isinstance(entry, (list, tuple)) and len(entry) >= 2:
            try:
                external.add((slot_index(entry[0]), slot_index(entry[1])))
            except ValueError:
                # e.g. a node object where the index belongs: the editor keys it as "[object Object]", which
                # matches no inner node, so the entry exposes nothing
                continue

    _split_widget_values(nodes, instance)
    _name_reroute_inputs(nodes, links, by_index)
    graph_inputs = _bind_inputs(nodes, instance, fed, add_link, registry)
    graph_outputs = []
    exposed = [(node["id"], slot, output) for node in nodes for slot, output in enumerate(node_outputs(node))
               if (node["id"], slot) not in consumed or (node["id"], slot) in external]
    for position, (origin, slot, output) in enumerate(exposed):
        link_id = add_link(origin, slot, -20, position, output.get("type"))
        graph_outputs.append({"name": output.get("name"), "type": output.get("type"), "linkIds": [link_id]})
    return {"nodes": nodes, "links": links, "inputs": graph_inputs, "outputs": graph_outputs}


def _split_widget_values(nodes: list[dict[str, Any]], instance: dict[str, Any]) -> None:
    """Hand each inner node its part of the instance's concatenated ``widgets_values``."""
    saved = instance.get("widgets_values")
    if not isinstance(saved, list):
        return
    lengths = [len(node["widgets_values"]) if isinstance(node.get("widgets_values"), list) else 0
               for node in nodes]
    if sum(lengths) != len(saved):
        raise ValueError(f"the instance saves {len(saved)} widget values but its inner nodes hold "
                         f"{sum(lengths)}; ungroup it in the editor and save again")
    position = 0
    for node, length in zip(nodes, lengths):
        if length:
            node["widgets_values"] = list(saved[position:position + length])
        position += length


def _name_reroute_inputs(nodes: list[dict[str, Any]], links: list[dict[str, Any]], by_index) -> None:
    """A Reroute fed from outside the group shows on the instance as an input named after its type.

    The editor types it by the first input its output feeds inside the group (else by its output), and
    names the instance input after that type (``GroupNodeConfig.getNodeDef``); the saved Reroute's own input
    is unnamed and typed ``*``, so it is given that name and type here for the binding below.
    """
    for node in nodes:
        if node.get("type") != "Reroute" or not node["inputs"] or node["inputs"][0].get("link") is not None:
            continue
        kind = None
        for link in links:
            if link["origin_id"] == node["id"] and link["origin_slot"] == 0:
                consumer = by_index[link["target_id"]]["inputs"]
                if link["target_slot"] < len(consumer):
                    kind = consumer[link["target_slot"]].get("type")
                break
        outputs = node_outputs(node)
        if kind in (None, "*") and outputs:
            kind = outputs[0].get("type")
        if isinstance(kind, str) and kind not in ("", "*"):
            node["inputs"][0] = dict(node["inputs"][0], name=kind, type=kind)


def _bind_inputs(nodes, instance, fed, add_link, registry: NodeRegistry) -> list[dict[str, Any]]:
    """Connect each instance input to the inner input it stands for, through boundary node -10."""
    free_sockets = [(node, slot_number) for node in nodes for slot_number, slot in enumerate(node["inputs"])
                    if (node["id"], slot_number) not in fed and not widget_name(slot)]
    used: set[tuple[int, int]] = set()
    graph_inputs: list[dict[str, Any]] = []
    for position, outer in enumerate(node_inputs(instance)):
        name = str(outer.get("name", ""))
        graph_inputs.append({"name": outer.get("name"), "type": outer.get("type")})
        wanted_widget = widget_name(outer)
        if wanted_widget:
            target = _widget_target(nodes, wanted_widget, used, registry)
        else:
            target = _socket_target(free_sockets, name, outer.get("type"), used)
        if target is None:
            raise ValueError(f"its input {name!r} matches no inner input")
        node, slot_number = target
        used.add((node["id"], slot_number))
        node["inputs"][slot_number]["link"] = add_link(-10, position, node["id"], slot_number, outer.get("type"))
    return graph_inputs


def _socket_target(free_sockets, name: str, kind: Any, used):
    candidates = [(node, n) for node, n in free_sockets if (node["id"], n) not in used]
    for node, slot_number in candidates:
        inner_name = str(node["inputs"][slot_number].get("name"))
        if name == inner_name or name.endswith(" " + inner_name):
            return node, slot_number
    for node, slot_number in candidates:
        if node["inputs"][slot_number].get("type") == kind:
            return node, slot_number
    return None


def _widget_target(nodes, wanted: str, used, registry: NodeRegistry):
    for node in nodes:
        node_class = registry.get(node.get("type")) if isinstance(node.get("type"), str) else None
        if node_class is None:
            continue
        for spec in node_class.schema().inputs:
            if not spec.has_widget or not (wanted == spec.name or wanted.endswith(" " + spec.name)):
                continue
            inputs = node["inputs"]
            for slot_number, slot in enumerate(inputs):
                if widget_name(slot) == spec.name and (node["id"], slot_number) not in used:
                    return node, slot_number
            inputs.append({"name": spec.name, "type": spec.type, "widget": {"name": spec.name}, "link": None})
            return node, len(inputs) - 1
    return None
