"""Validation of an API-format prompt against the node registry, and the plan of what must run.

The whole prompt is checked at once and every problem is reported with the node id, its type and the
input at fault, in ComfyUI's shape (``error`` + ``node_errors``). Only nodes that feed an output node
are validated. Everything is iterative (networkx for the graph algorithms), so a 10,000-node chain
validates without touching the recursion limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx

from loom.nodes.kernel.schema import (Combo, InputSpec, InputValueError, Node, NodeRegistry, literal_kwargs,
                               types_compatible)
from loom.server.budget import ResourceBudget, available_memory


@dataclass
class ValidationResult:
    ok: bool
    error: dict[str, Any] | None = None
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # the nodes the valid outputs need, in topological order
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # literal inputs, coerced to their types
    required_models: list[str] = field(default_factory=list)  # model files the plan loads, "folder/name"

    def messages(self) -> list[str]:
        """One line per problem: ``node 3 (KSampler) input 'steps': ...``."""
        lines: list[str] = []
        if self.error and not self.node_errors:
            lines.append(f"{self.error['message']}: {self.error.get('details', '')}".rstrip(": "))
        for node_id, entry in self.node_errors.items():
            for error in entry["errors"]:
                where = f"node {node_id} ({entry['class_type']})"
                input_name = error.get("extra_info", {}).get("input_name")
                if input_name:
                    where += f" input '{input_name}'"
                detail = error.get("details") or ""
                lines.append(f"{where}: {error['message']}" + (f" - {detail}" if detail else ""))
        return lines


def error(kind: str, message: str, details: str = "", **extra_info: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def is_link(value: Any) -> bool:
    """A link is ``[source_id, slot]``; ``{"__value__": [...]}`` wraps a list constant instead."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool)


def literal_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def validate_prompt(prompt: Any, registry: NodeRegistry, partial_execution_targets: Iterable[str] | None = None,
                    budget: ResourceBudget | None = None) -> ValidationResult:
    """ComfyUI's validation of an API prompt; with ``budget``, also the server's resource limits."""
    shape_error = _check_shape(prompt)
    if shape_error:
        return ValidationResult(ok=False, error=shape_error)

    node_errors: dict[str, dict[str, Any]] = {}

    def add(node_id: str, err: dict[str, Any]) -> None:
        entry = node_errors.setdefault(node_id, {"errors": [], "dependent_outputs": [],
                                                 "class_type": prompt[node_id].get("class_type")})
        entry["errors"].append(err)

    unknown = [nid for nid, node in prompt.items() if node["class_type"] not in registry]
    for node_id in unknown:
        class_type = prompt[node_id]["class_type"]
        add(node_id, error("missing_node_type", f"Node type '{class_type}' does not exist",
                           f"node {node_id} has type '{class_type}', which is not installed",
                           node_id=node_id, class_type=class_type))
    if unknown:
        names = sorted({prompt[n]["class_type"] for n in unknown})
        return ValidationResult(ok=False, node_errors=node_errors, error=error(
            "invalid_prompt", f"Cannot execute because node type(s) {', '.join(repr(n) for n in names)} "
                              "do not exist.", "unknown node types: " + ", ".join(names)))

    outputs = [nid for nid, node in prompt.items() if registry.get(node["class_type"]).schema().output_node]
    if partial_execution_targets is not None:
        targets = {str(t) for t in partial_execution_targets}
        outputs = [nid for nid in outputs if nid in targets]
    if not outputs:
        return ValidationResult(ok=False, error=error(
            "prompt_no_outputs", "Prompt has no outputs",
            "the prompt needs at least one output node (e.g. SaveImage or PreviewImage)"))
    outputs.sort(key=_id_sort_key)

    graph, values = _check_nodes(prompt, registry, outputs, add)
    if budget is not None:
        free = available_memory()
        for node_id, literals in values.items():
            for input_name, message, details in budget.problems(literals, free):
                add(node_id, error("value_exceeds_budget", message, details, input_name=input_name,
                                   received_value=literals.get(input_name)))

    # one error per cycle, on its first node (everything on and after the cycle is invalid through it):
    # an error on every member naming every member would grow with the square of the cycle's length
    for members in _cycles(graph):
        add(members[0], error("dependency_cycle", "Dependency cycle detected",
                              f"node {members[0]} is part of a cycle of {len(members)} nodes: "
                              f"{first_few(members)}"))

    # a node is invalid when it or anything upstream has an error; only root causes carry errors
    failed = set(node_errors)
    invalid: set[str] = set()
    if failed:
        for node_id in failed:
            invalid.add(node_id)
            invalid.update(nx.descendants(graph, node_id) if node_id in graph else ())
    valid_outputs = [o for o in outputs if o not in invalid]
    for node_id in failed:
        downstream = nx.descendants(graph, node_id) | {node_id} if node_id in graph else {node_id}
        node_errors[node_id]["dependent_outputs"] = [o for o in outputs if o in downstream]

    if not valid_outputs:
        details = first_few(ValidationResult(False, node_errors=node_errors).messages(), separator="; ")
        return ValidationResult(ok=False, node_errors=node_errors, error=error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details))

    plan = graph
    if invalid:
        needed: set[str] = set(valid_outputs)
        for output in valid_outputs:
            needed |= nx.ancestors(graph, output)
        plan = graph.subgraph(needed).copy()
    order = list(nx.lexicographical_topological_sort(plan, key=_id_sort_key))
    plan_values = {nid: values.get(nid, {}) for nid in order}
    return ValidationResult(ok=True, node_errors=node_errors, outputs=valid_outputs, order=order,
                            values=plan_values, required_models=required_models(prompt, registry, plan_values))


def required_models(prompt: dict, registry: NodeRegistry, values: dict[str, dict[str, Any]]) -> list[str]:
    """The model files the nodes of ``values`` (node id -> literal inputs) name, as ``folder/name``, sorted:
    the literal value of every input that is a :class:`~loom.nodes.kernel.schema.Combo` of a model folder
    (``ckpt_name`` of ``checkpoints``, ``lora_name`` of ``loras``, ...). A name that arrives through a link
    (e.g. from a primitive node) is not known before the prompt runs and is not listed. The queue stores
    them with the prompt; :mod:`server.routing` sends the prompt to a lane that holds them."""
    found: set[str] = set()
    for node_id, literals in values.items():
        node_class = registry.get(prompt[node_id]["class_type"])
        if node_class is None or not literals:
            continue
        for spec in node_class.schema().inputs:
            if isinstance(spec, Combo) and spec.folder and isinstance(literals.get(spec.name), str):
                found.add(f"{spec.folder}/{literals[spec.name]}")
    return sorted(found)


def _id_sort_key(node_id: str) -> tuple:
    parts = str(node_id).replace(".", ":").split(":")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _check_shape(prompt: Any) -> dict[str, Any] | None:
    if not isinstance(prompt, dict):
        return error("invalid_prompt", "Invalid prompt", "the prompt must be a JSON object of nodes by id")
    if not prompt:
        return error("prompt_no_outputs", "Prompt has no outputs", "the prompt has no nodes")
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            return error("invalid_prompt", "Invalid prompt", f"node {node_id} is not an object")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            return error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                         f"node {node_id} has no class_type", node_id=node_id)
        if not isinstance(node.get("inputs", {}), dict):
            return error("invalid_prompt", "Invalid prompt", f"node {node_id}: inputs must be an object",
                         node_id=node_id)
    return None


def _check_nodes(prompt: dict, registry: NodeRegistry, outputs: list[str], add) -> tuple[nx.DiGraph, dict]:
    """Walk upstream from the outputs, checking every input of every node reached."""
    graph = nx.DiGraph()
    values: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        graph.add_node(node_id)
        node = prompt[node_id]
        node_class = registry.get(node["class_type"])
        schema = node_class.schema()
        inputs = node.get("inputs") or {}
        literals: dict[str, Any] = {}
        for spec in schema.inputs:
            if spec.name not in inputs or inputs[spec.name] is None:
                if not spec.optional:
                    add(node_id, error("required_input_missing", "Required input is missing",
                                       f"{spec.name}", input_name=spec.name))
                continue
            value = inputs[spec.name]
            if isinstance(value, list) and not is_link(value):
                add(node_id, error("bad_linked_input", "Bad linked input, must be a length-2 list of "
                                   "[node_id, slot_index]", f"{spec.name}: {value!r}",
                                   input_name=spec.name, received_value=_short(value)))
                continue
            if is_link(value):
                source = _check_link(prompt, registry, node_id, spec, value, add)
                if source is not None:
                    graph.add_edge(source, node_id)
                    stack.append(source)
                continue
            try:
                literals[spec.name] = spec.check_value(literal_value(value))
            except InputValueError as problem:
                add(node_id, error(problem.code, problem.message, problem.details, input_name=spec.name,
                                   input_config=spec.info(), received_value=_short(value)))
        values[node_id] = literals
        _custom_validation(node_id, node_class, literals, inputs, add)
    return graph, values


def _check_link(prompt: dict, registry: NodeRegistry, node_id: str, spec: InputSpec, link: list,
                add) -> str | None:
    source_id, slot = str(link[0]), link[1]
    if source_id not in prompt:
        add(node_id, error("bad_linked_input", "Linked node does not exist",
                           f"{spec.name} is linked to node {source_id}, which is not in the prompt",
                           input_name=spec.name, received_value=_short(link)))
        return None
    source_schema = registry.get(prompt[source_id]["class_type"]).schema()
    if not 0 <= slot < len(source_schema.outputs):
        add(node_id, error("bad_linked_input", "Linked output slot does not exist",
                           f"{spec.name} is linked to output {slot} of node {source_id} "
                           f"({source_schema.name}), which has {len(source_schema.outputs)} outputs",
                           input_name=spec.name, received_value=_short(link)))
        return None
    output_type = source_schema.outputs[slot].type
    if not types_compatible(output_type, spec.type):
        add(node_id, error("return_type_mismatch", "Return type mismatch between linked nodes",
                           f"{spec.name}, received_type({output_type}) mismatch input_type({spec.type})",
                           input_name=spec.name, received_type=output_type, linked_node=[source_id, slot]))
        return None
    return source_id


def _custom_validation(node_id: str, node_class: type[Node], literals: dict, inputs: dict, add) -> None:
    if node_class.validate_inputs.__func__ is Node.validate_inputs.__func__:  # type: ignore[attr-defined]
        return
    kwargs = literal_kwargs(node_class.validate_inputs, literals)
    if kwargs is None:
        return  # it needs a value that only arrives through a link: checked when the node runs
    try:
        verdict = node_class.validate_inputs(**kwargs)
    except Exception as exc:  # a node's validator must not take the server down
        verdict = f"{type(exc).__name__}: {exc}"
    if verdict is not True:
        input_name = next(iter(kwargs), None) if len(kwargs) == 1 else None
        add(node_id, error("custom_validation_failed", "Failed to validate prompt for output",
                           str(verdict), **({"input_name": input_name} if input_name else {})))


def _cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The dependency cycles, each as its nodes in id order (linear time: strongly connected components)."""
    if nx.is_directed_acyclic_graph(graph):
        return []
    cycles = []
    for component in nx.strongly_connected_components(graph):
        node = next(iter(component))
        if len(component) > 1 or graph.has_edge(node, node):
            cycles.append(sorted(component, key=_id_sort_key))
    return sorted(cycles, key=lambda members: _id_sort_key(members[0]))


LISTED = 10
"""How many items an error message names before it gives only the count of the rest."""


def first_few(items: list[str], separator: str = ", ") -> str:
    """``items`` joined, or the first :data:`LISTED` of them and how many more: an error stays small
    however large the prompt that caused it."""
    if len(items) <= LISTED:
        return separator.join(items)
    return separator.join(items[:LISTED]) + f"{separator}... and {len(items) - LISTED} more"


def _short(value: Any, limit: int = 200) -> Any:
    text = repr(value)
    return value if len(text) <= limit else text[:limit] + "..."
