"""UI (litegraph) workflow → API prompt, computed the way the editor's ``graphToPrompt`` computes it.

The conversion runs in the backend so that a saved UI workflow runs headless. What it resolves:

* widget values by name (positional ``widgets_values`` through :mod:`server.workflow.widgets`);
* links, from each input's own ``link`` id looked up in ``links[]`` (tuples or objects; the redundant
  ``outputs[].links`` back-references are ignored, so stale or conflicting copies do no harm);
* frontend-only nodes: ``Reroute`` (followed), ``PrimitiveNode`` (its value goes into every widget it
  feeds), ``Note``/``MarkdownNote`` (dropped), KJNodes' ``SetNode``/``GetNode`` (joined by name);
* native reroutes (``extra.reroutes``, ``linkExtensions``, ``floatingLinks``) only carry geometry: every
  link still names its real endpoints;
* save nodes' ``filename_prefix`` gets the editor's ``%date:...%`` and ``%Node.widget%`` expansion;
* muted nodes (mode 2) are dropped and inputs fed by them removed; bypassed nodes (mode 4) hand the
  consumer their input of the matching type (same slot index, then exact type, then compatible type);
* subgraphs (``definitions.subgraphs``, nested, several instances) are flattened into colon-path ids
  ``"outer:inner"``; the boundary nodes -10/-20 are crossed, promoted widgets and ``proxyWidgets``
  give each instance its own values;
* legacy group nodes (``workflow>Name`` with ``extra.groupNodes``) are rewritten into subgraph
  definitions and flattened the same way (ids ``"outer:index"``).

Unknown node types are collected and reported together in one :class:`WorkflowError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loom.nodes.kernel.schema import NodeRegistry, Schema
from loom.server.workflow.graph import (MODE_BYPASS, MODE_MUTED, SUBGRAPH_INPUT_NODE, Graph, bypass_input_index,
                                   build_graph, link_key, list_at, node_inputs, node_mode, node_properties, output_link,
                                   proxy_widgets, type_text, widget_name)
from loom.server.workflow.widgets import (FILENAME_PREFIX_NODES, DynamicCombo, WidgetValues, apply_text_replacements,
                                         assign_widget_values, dynamic_combos)

MAX_SUBGRAPH_DEPTH = 64

# Frontend-only nodes: never sent to the backend. Pass-throughs hand on what feeds their input.
PASS_THROUGH_NODES = frozenset({"Reroute", "Reroute (rgthree)"})
PRIMITIVE_NODE = "PrimitiveNode"
PRIMITIVE_REPLACE_PROPERTY = "Run widget replace on values"
DOCUMENTATION_NODES = frozenset({"Note", "MarkdownNote", "Label (rgthree)", "Bookmark (rgthree)",
                                 "Fast Groups Bypasser (rgthree)", "Fast Groups Muter (rgthree)"})
# KJNodes' Set/Get pair: a GetNode hands on what feeds the SetNode saved under the same name
SET_NODE, GET_NODE = "SetNode", "GetNode"
VIRTUAL_NODES = PASS_THROUGH_NODES | DOCUMENTATION_NODES | {PRIMITIVE_NODE, SET_NODE, GET_NODE}
GROUP_NODE_PREFIXES = ("workflow>", "workflow/")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class WorkflowError(ValueError):
    """A workflow that cannot be converted or loaded; ``problems`` lists ``{node_id, class_type, message}``."""

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


@dataclass
class ConversionResult:
    """The API prompt ``{id: {"class_type", "inputs", "_meta": {"title"}}}`` and what was repaired on the way."""

    prompt: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def __iter__(self):  # allows ``prompt, warnings = ui_to_api(...)``
        return iter((self.prompt, self.warnings))


def is_group_node_type(type_name: Any) -> bool:
    return isinstance(type_name, str) and type_name[:9] in GROUP_NODE_PREFIXES


def wrap_value(value: Any) -> Any:
    """A list literal would read as a link: the API wraps it as ``{"__value__": [...]}``."""
    return {"__value__": value} if isinstance(value, list) else value


# --------------------------------------------------------------------------------------------
# Resolution results and scopes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Output:
    exec_id: str
    slot: int


@dataclass(frozen=True)
class _Value:
    value: Any


class _Step:
    """The next resolution step: call ``method(*args)``."""

    __slots__ = ("method", "args")

    def __init__(self, method: Any, *args: Any) -> None:
        self.method = method
        self.args = args


@dataclass
class _Scope:
    """A graph as seen through one chain of subgraph instances."""

    graph: Graph
    path: tuple[str, ...] = ()
    parent: "_Scope | None" = None
    instance: dict[str, Any] | None = None
    chain: tuple[str, ...] = ()  # definition ids of the enclosing instances (recursion guard)
    promoted: dict[int, Any] = field(default_factory=dict)  # subgraph input slot -> widget value
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # inner path -> {widget: value}

    def exec_id(self, node_id: str) -> str:
        return ":".join(self.path + (node_id,))

    def where(self, node_id: str) -> str:
        return f"node {self.exec_id(node_id)}"

    def instance_input(self, slot: int) -> dict[str, Any] | None:
        """The instance's input slot that stands for subgraph input ``slot`` (matched by name, then index)."""
        if self.instance is None or not 0 <= slot < len(self.graph.inputs):
            return None
        wanted = self.graph.inputs[slot]
        inputs = node_inputs(self.instance)
        for candidate in inputs:
            if candidate.get("name") == wanted.get("name") and candidate.get("type") == wanted.get("type"):
                return candidate
        for candidate in inputs:
            if candidate.get("name") == wanted.get("name"):
                return candidate
        names = [s.get("name") for s in self.graph.inputs]
        if 0 <= slot < len(inputs) and inputs[slot].get("name") not in names:
            return inputs[slot]
        return None


# --------------------------------------------------------------------------------------------
# The converter
# --------------------------------------------------------------------------------------------

class Converter:
    """Flattens one UI workflow into an API prompt."""

    def __init__(self, workflow: dict[str, Any], registry: NodeRegistry, now: datetime | None = None) -> None:
        self.workflow = workflow
        self.registry = registry
        self.now = now or datetime.now()
        self.warnings: list[str] = []
        self.problems: list[dict[str, Any]] = []
        self.prompt: dict[str, dict[str, Any]] = {}
        self.definitions: dict[str, dict[str, Any]] = {}
        self._graphs: dict[str, Graph] = {}
        self._scopes: dict[tuple[str, ...], _Scope] = {}
        self._combos: dict[str, dict[str, DynamicCombo]] = {}
        self._collect_definitions(workflow)
        extra = workflow.get("extra") if isinstance(workflow.get("extra"), dict) else {}
        groups = extra.get("groupNodes")
        self.group_nodes: dict[str, Any] = groups if isinstance(groups, dict) else {}

    # ---- entry point -----------------------------------------------------------------------

    def convert(self) -> ConversionResult:
        try:
            root = build_graph(self.workflow, "workflow", self.warnings)
            self._emit_graph(_Scope(root))
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as error:
            if isinstance(error, WorkflowError):
                raise
            # a shape no rule above foresaw: still an answer about the file, not a traceback
            raise WorkflowError(f"malformed workflow ({type(error).__name__}: {error})") from error
        if self.problems:
            unique = list({(p["node_id"], p["message"]): p for p in self.problems}.values())
            raise WorkflowError(_problems_message(unique), unique)
        self._drop_links_to_missing_nodes()
        return ConversionResult(self.prompt, self.warnings)

    def _collect_definitions(self, container: dict[str, Any], depth: int = 0) -> None:
        definitions = container.get("definitions")
        if depth > MAX_SUBGRAPH_DEPTH or not isinstance(definitions, dict):
            return
        for definition in list_at(definitions, "subgraphs"):
            if isinstance(definition, dict) and isinstance(definition.get("id"), str):
                self.definitions.setdefault(definition["id"], definition)
                self._collect_definitions(definition, depth + 1)

    # ---- emitting nodes ----------------------------------------------------------------------

    def _emit_graph(self, scope: _Scope) -> None:
        for node_id, node in scope.graph.nodes.items():
            if node_mode(node) in (MODE_MUTED, MODE_BYPASS):
                continue
            type_name = node.get("type")
            if not isinstance(type_name, str):
                self._problem(scope, node_id, repr(type_name), "node has no type")
            elif self._is_container(type_name):
                inner = self._instance_scope(scope, node_id, node)
                if inner is not None:
                    self._emit_graph(inner)
            elif type_name in VIRTUAL_NODES:
                continue
            else:
                node_class = self.registry.get(type_name)
                if node_class is None:
                    self._unknown_type(scope, node_id, type_name)
                else:
                    self._emit_node(scope, node_id, node, node_class.schema())

    def _assign_widgets(self, schema: Schema, node: dict[str, Any]) -> WidgetValues:
        return assign_widget_values(schema, node.get("widgets_values"), node.get("widgets_values_named"),
                                    self._dynamic_combos(schema))

    def _dynamic_combos(self, schema: Schema) -> dict[str, DynamicCombo]:
        """The node's ``COMFY_DYNAMICCOMBO_V3`` inputs, from its ``/object_info`` (read only for a schema with
        a combo whose name prefixes another input's, ``resize_type`` / ``resize_type.width``: listing every
        node's object_info would list model folders for nothing)."""
        if schema.name not in self._combos:
            combos: dict[str, DynamicCombo] = {}
            names = {spec.name for spec in schema.inputs}
            if any("." in name and name.rsplit(".", 1)[0] in names for name in names):
                node_class = self.registry.get(schema.name)
                try:
                    combos = dynamic_combos(node_class.object_info()) if node_class is not None else {}
                except Exception as error:  # a node's own object_info failing: read it as a plain combo
                    self.warnings.append(f"{schema.name}: its object_info failed ({error}); dynamic inputs "
                                         f"read as plain widgets")
            self._combos[schema.name] = combos
        return self._combos[schema.name]

    def _emit_node(self, scope: _Scope, node_id: str, node: dict[str, Any], schema: Schema) -> None:
        assigned = self._assign_widgets(schema, node)
        values = assigned.values
        for name, value in scope.overrides.get(node_id, {}).items():
            if name in values:
                values[name] = value
        if assigned.defaulted and node.get("widgets_values") is not None:
            self.warnings.append(f"{scope.where(node_id)} ({schema.name}): no saved value for "
                                 f"{', '.join(assigned.defaulted)}; used the default")
        if schema.name in FILENAME_PREFIX_NODES and isinstance(values.get("filename_prefix"), str):
            values["filename_prefix"] = apply_text_replacements(values["filename_prefix"], self._widget_value,
                                                                self.now)
        inputs: dict[str, Any] = {name: wrap_value(value) for name, value in values.items()}
        for slot in node_inputs(node):
            if slot.get("link") is None:
                continue
            name = widget_name(slot) or slot.get("name")
            if not isinstance(name, str):
                continue
            if schema.input(name) is None and isinstance(slot.get("name"), str) and schema.input(slot["name"]):
                name = slot["name"]
            if name in assigned.inactive:
                continue  # an input of a dynamic-combo option that is not chosen: the editor removes it
            resolved = self._resolve(scope, slot["link"], type_text(slot.get("type")),
                                     f"input {name!r} of {scope.where(node_id)}")
            if isinstance(resolved, _Output):
                inputs[name] = [resolved.exec_id, resolved.slot]
            elif isinstance(resolved, _Value):
                inputs[name] = wrap_value(resolved.value)
        title = node.get("title") if isinstance(node.get("title"), str) else (schema.display_name or schema.name)
        self.prompt[scope.exec_id(node_id)] = {"inputs": inputs, "class_type": schema.name,
                                               "_meta": {"title": title}}

    def _drop_links_to_missing_nodes(self) -> None:
        for node_id, entry in self.prompt.items():
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in self.prompt:
                    del entry["inputs"][name]

    # ---- link resolution ---------------------------------------------------------------------
    # Each step returns a final answer (_Output, _Value or None) or the next _Step: a loop instead of
    # recursion, so long chains of reroutes or bypassed nodes never meet the recursion limit.

    def _resolve(self, scope: _Scope, link_id: Any, wanted_type: str, consumer: str) -> "_Output | _Value | None":
        step: Any = self._resolve_link(scope, link_id, wanted_type, set(), consumer)
        while isinstance(step, _Step):
            step = step.method(*step.args)
        return step

    def _resolve_link(self, scope: _Scope, link_id: Any, wanted_type: str, visited: set, consumer: str):
        link = scope.graph.links.get(link_key(link_id))
        if link is None:
            self.warnings.append(f"{scope.graph.label}: {consumer} refers to link {link_id}, which is not "
                                 f"in the links list; left unconnected")
            return None
        if link.origin_id == SUBGRAPH_INPUT_NODE and scope.instance is not None:
            return _Step(self._resolve_subgraph_input, scope, link.origin_slot, wanted_type, visited, consumer)
        origin = scope.graph.nodes.get(link.origin_id)
        if origin is None:
            self.warnings.append(f"{scope.graph.label}: link {link.id} into {consumer} comes from node "
                                 f"{link.origin_id}, which does not exist; dropped")
            return None
        return _Step(self._resolve_output, scope, link.origin_id, origin, link.origin_slot, wanted_type, visited,
                     consumer)

    def _resolve_output(self, scope: _Scope, node_id: str, node: dict[str, Any], slot: int, wanted_type: str,
                        visited: set, consumer: str):
        guard = (scope.path, scope.graph.label, node_id, "out", slot)
        if guard in visited:
            raise WorkflowError(f"{scope.where(node_id)}: links loop through reroutes or bypassed nodes",
                                [{"node_id": scope.exec_id(node_id), "class_type": node.get("type"),
                                  "message": "links loop through reroutes or bypassed nodes"}])
        visited.add(guard)
        type_name = node.get("type") if isinstance(node.get("type"), str) else None
        # Frontend-only nodes act whatever their mode: a muted primitive still pushes its value (the editor
        # applies primitives before it looks at modes), a muted reroute still passes its link on.
        if type_name in PASS_THROUGH_NODES:
            inputs = node_inputs(node)
            if 0 <= slot < len(inputs) and inputs[slot].get("link") is not None:
                return _Step(self._resolve_link, scope, inputs[slot]["link"], wanted_type, visited, consumer)
            return None
        if type_name == PRIMITIVE_NODE:
            saved = node.get("widgets_values")
            if not (isinstance(saved, list) and saved and saved[0] is not None):
                return None
            if node_properties(node).get(PRIMITIVE_REPLACE_PROPERTY) and isinstance(saved[0], str):
                return _Value(apply_text_replacements(saved[0], self._widget_value, self.now))
            return _Value(saved[0])
        if type_name == GET_NODE:
            return self._resolve_get_node(scope, node_id, node, wanted_type, visited, consumer)
        if type_name in DOCUMENTATION_NODES or type_name == SET_NODE:
            return None
        mode = node_mode(node)
        if mode == MODE_MUTED:
            # a link to a node that is not sent: the input is removed when links to missing nodes are pruned
            return _Output(scope.exec_id(node_id), slot)
        if mode == MODE_BYPASS:
            inputs = node_inputs(node)
            index = bypass_input_index(node, slot, wanted_type)
            if index < 0:
                self.warnings.append(f"{consumer}: bypassed {scope.where(node_id)} has no input of type "
                                     f"{wanted_type}; left unconnected")
                return None
            chosen = inputs[index]
            if chosen.get("link") is None:
                return None
            return _Step(self._resolve_link, scope, chosen["link"], type_text(chosen.get("type")), visited, consumer)
        if type_name is not None and self._is_container(type_name):
            return _Step(self._resolve_subgraph_output, scope, node_id, node, slot, wanted_type, visited, consumer)
        return _Output(scope.exec_id(node_id), slot)

    def _resolve_get_node(self, scope: _Scope, node_id: str, node: dict[str, Any], wanted_type: str,
                          visited: set, consumer: str):
        saved = node.get("widgets_values")
        name = saved[0] if isinstance(saved, list) and saved else None
        for candidate in scope.graph.nodes.values():
            if candidate.get("type") != SET_NODE or node_mode(candidate) == MODE_MUTED:
                continue
            values = candidate.get("widgets_values")
            if isinstance(values, list) and values and values[0] == name:
                inputs = node_inputs(candidate)
                if inputs and inputs[0].get("link") is not None:
                    return _Step(self._resolve_link, scope, inputs[0]["link"], wanted_type, visited, consumer)
                return None
        self.warnings.append(f"{consumer}: {scope.where(node_id)} (GetNode) reads {name!r}, which no SetNode sets; "
                             f"left unconnected")
        return None

    def _resolve_subgraph_output(self, scope: _Scope, node_id: str, node: dict[str, Any], slot: int,
                                 wanted_type: str, visited: set, consumer: str):
        inner = self._instance_scope(scope, node_id, node)
        if inner is None:
            return None
        link = output_link(inner.graph, slot)
        if link is None:
            self.warnings.append(f"{consumer}: output {slot} of subgraph {scope.where(node_id)} is not connected "
                                 f"inside; left unconnected")
            return None
        if link.origin_id == SUBGRAPH_INPUT_NODE:
            return _Step(self._resolve_subgraph_input, inner, link.origin_slot, wanted_type, visited, consumer)
        origin = inner.graph.nodes.get(link.origin_id)
        if origin is None:
            self.warnings.append(f"{inner.graph.label}: output {slot} comes from node {link.origin_id}, "
                                 f"which does not exist; dropped")
            return None
        return _Step(self._resolve_output, inner, link.origin_id, origin, link.origin_slot, wanted_type, visited,
                     consumer)

    def _resolve_subgraph_input(self, scope: _Scope, slot: int, wanted_type: str, visited: set, consumer: str,
                                fallback: Any = None):
        """What feeds subgraph input ``slot``: the instance's link, else its promoted widget value.

        ``fallback`` is the value a nested instance holds for a widget it promotes further out: used when
        no outer level sets one (the editor's promoted widget starts as a copy of the inner value).
        """
        assert scope.parent is not None
        guard = (scope.path, scope.graph.label, SUBGRAPH_INPUT_NODE, "in", slot)
        if guard in visited:
            raise WorkflowError(f"subgraph {':'.join(scope.path)}: input {slot} loops back into itself")
        visited.add(guard)
        own = scope.promoted.get(slot, fallback)
        outer = scope.instance_input(slot)
        if outer is not None and outer.get("link") is not None:
            parent = scope.parent
            link = parent.graph.links.get(link_key(outer["link"]))
            if link is not None and link.origin_id == SUBGRAPH_INPUT_NODE and parent.instance is not None:
                return _Step(self._resolve_subgraph_input, parent, link.origin_slot, wanted_type, visited, consumer,
                             own)
            return _Step(self._resolve_link, parent, outer["link"], type_text(outer.get("type") or wanted_type),
                         visited, consumer)
        return None if own is None else _Value(own)

    # ---- subgraph instances -----------------------------------------------------------------

    def _is_container(self, type_name: str) -> bool:
        return type_name in self.definitions or is_group_node_type(type_name)

    def _instance_scope(self, parent: _Scope, node_id: str, node: dict[str, Any]) -> _Scope | None:
        path = parent.path + (node_id,)
        if path in self._scopes:
            return self._scopes[path]
        type_name = node["type"]
        if type_name in parent.chain:
            raise WorkflowError(f"subgraph {type_name} contains an instance of itself ({parent.where(node_id)})",
                                [{"node_id": parent.exec_id(node_id), "class_type": type_name,
                                  "message": "subgraph contains an instance of itself"}])
        if len(path) > MAX_SUBGRAPH_DEPTH:
            raise WorkflowError(f"subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH} levels at {parent.where(node_id)}")
        if type_name in self.definitions:
            graph = self._definition_graph(type_name)
        else:
            graph = self._group_node_graph(parent, node_id, node)
            if graph is None:
                return None
        scope = _Scope(graph, path, parent, node, parent.chain + (type_name,))
        scope.overrides = {key[len(node_id) + 1:]: values for key, values in parent.overrides.items()
                           if key.startswith(node_id + ":")}
        if type_name in self.definitions:
            self._apply_promoted_widgets(scope, node, parent.overrides.get(node_id, {}))
        self._scopes[path] = scope
        return scope

    def _definition_graph(self, definition_id: str) -> Graph:
        if definition_id not in self._graphs:
            definition = self.definitions[definition_id]
            label = f"subgraph {definition.get('name') or definition_id!r}"
            self._graphs[definition_id] = build_graph(definition, label, self.warnings)
        return self._graphs[definition_id]

    def _apply_promoted_widgets(self, scope: _Scope, instance: dict[str, Any], from_parent: dict[str, Any]) -> None:
        """Give this instance its own values for the widgets promoted onto the instance node.

        The editor's rule (ComfyUI_frontend ``SubgraphNode``): an instance input is a promoted widget when
        its subgraph input feeds an inner widget (``_resolveInputWidget``), whether or not the saved instance
        input carries a ``widget`` mark or is listed at all (the instance's inputs are rebuilt from the
        subgraph's); positional ``widgets_values`` are one per promoted input, in subgraph-input order, with
        an extra control_after_generate entry after a seed-like input only when the list is longer than the
        promoted inputs (``_applyPromotedWidgetValues``). A legacy
        ``properties.proxyWidgets`` list pairs the values with its entries by index instead
        (``flushProxyWidgetMigration``), and ``widgets_values_named`` (keyed by subgraph input name) wins
        by name over both.
        """
        graph = scope.graph
        by_input_name: dict[Any, int] = {}
        for index, slot in enumerate(graph.inputs):
            by_input_name.setdefault(slot.get("name"), index)
        promoted = [index for index in range(len(graph.inputs)) if self._feeds_widget(scope, index)]
        promoted_set = set(promoted)
        saved = instance.get("widgets_values")
        if isinstance(saved, dict):
            for name, value in saved.items():
                if name in by_input_name and value is not None:
                    scope.promoted[by_input_name[name]] = value
        elif isinstance(saved, list) and saved:
            proxies = proxy_widgets(instance)
            if proxies:
                self._apply_proxy_values(scope, proxies, saved, by_input_name, promoted_set)
            else:
                targets = self._positional_targets(scope, promoted, len(saved))
                control_slots = len(saved) > len(targets)
                position = 0
                for index in targets:
                    if position >= len(saved):
                        break
                    if saved[position] is not None:
                        scope.promoted[index] = saved[position]
                    position += 1
                    if control_slots and self._promoted_has_control(scope, index):
                        position += 1
        named = instance.get("widgets_values_named")
        if isinstance(named, dict):
            for name, value in named.items():
                index = by_input_name.get(name) if isinstance(name, str) else None
                if index in promoted_set and value is not None:
                    scope.promoted[index] = value
        for name, value in from_parent.items():  # the parent promoted one of this instance's widgets
            if name in by_input_name:
                scope.promoted[by_input_name[name]] = value

    def _positional_targets(self, scope: _Scope, promoted: list[int], count: int) -> list[int]:
        """The promoted inputs a positional list of ``count`` values is for.

        The editor writes one value per promoted input (plus, in older files, a control_after_generate
        entry after a seed-like one). A list that fits only the inputs the instance marks as widgets
        (``widget: {name}``) was written that way (older or hand-made files): it is read onto those.
        """
        def fits(slots: list[int]) -> bool:
            controls = sum(1 for index in slots if self._promoted_has_control(scope, index))
            return count in (len(slots), len(slots) + controls)

        if fits(promoted):
            return promoted
        marked = [index for index in promoted if widget_name(scope.instance_input(index) or {})]
        return marked if marked and fits(marked) else promoted

    def _apply_proxy_values(self, scope: _Scope, proxies: list[tuple[str, str]], saved: list[Any],
                            by_input_name: dict[Any, int], promoted: set[int]) -> None:
        """``widgets_values[i]`` belongs to ``proxyWidgets[i]``: ``["-1", input]`` names a subgraph input,
        ``[inner_id, widget]`` an inner widget (through the subgraph input that feeds it, else directly)."""
        for (inner_id, name), value in zip(proxies, saved):
            name = _strip_legacy_proxy_prefix(name)
            if value is None or name.startswith("$$") or name == "control_after_generate":
                continue  # a hole, a preview pseudo-widget, or a frontend-only control
            if inner_id == "-1":
                index = by_input_name.get(name)
                if index in promoted:
                    scope.promoted[index] = value
                continue
            index = self._input_feeding(scope, inner_id, name)
            if index is not None:
                scope.promoted[index] = value
            else:
                scope.overrides.setdefault(inner_id, {})[name] = value

    def _inner_targets(self, graph: Graph, input_slot: int):
        """(node id, node, input slot dict) triples inside ``graph`` fed by subgraph input ``input_slot``."""
        for link in graph.links.values():
            if link.origin_id != SUBGRAPH_INPUT_NODE or link.origin_slot != input_slot:
                continue
            node = graph.nodes.get(link.target_id)
            if node is None:
                continue
            inputs = node_inputs(node)
            target = next((s for s in inputs if link_key(s.get("link")) == link.id), None)
            if target is None and 0 <= link.target_slot < len(inputs):
                target = inputs[link.target_slot]
            if target is not None:
                yield link.target_id, node, target

    def _feeds_widget(self, scope: _Scope, input_slot: int) -> bool:
        return self._graph_input_feeds_widget(scope.graph, input_slot, scope.chain)

    def _graph_input_feeds_widget(self, graph: Graph, input_slot: int, chain: tuple[str, ...]) -> bool:
        """Whether subgraph input ``input_slot`` reaches an inner widget: a widget input of an inner node, or
        (nested promotion) an input of an inner instance that itself reaches one."""
        for _node_id, node, target in self._inner_targets(graph, input_slot):
            type_name = node.get("type") if isinstance(node.get("type"), str) else None
            if type_name in self.definitions:
                if type_name not in chain and len(chain) < MAX_SUBGRAPH_DEPTH:  # a loop is reported elsewhere
                    nested = self._definition_graph(type_name)
                    names = [slot.get("name") for slot in nested.inputs]
                    if target.get("name") in names and self._graph_input_feeds_widget(
                            nested, names.index(target.get("name")), chain + (type_name,)):
                        return True
                continue
            if widget_name(target):
                return True
            node_class = self.registry.get(type_name) if type_name else None
            spec = node_class.schema().input(str(target.get("name"))) if node_class else None
            if spec is not None and spec.has_widget:
                return True
        return False

    def _input_feeding(self, scope: _Scope, inner_id: str, widget: str) -> int | None:
        """The subgraph input that feeds widget ``widget`` of inner node ``inner_id``, if one does."""
        for index in range(len(scope.graph.inputs)):
            for node_id, _node, target in self._inner_targets(scope.graph, index):
                if node_id == inner_id and (widget_name(target) or target.get("name")) == widget:
                    return index
        return None

    def _promoted_has_control(self, scope: _Scope, input_slot: int | None) -> bool:
        if input_slot is None:
            return False
        for _node_id, node, target in self._inner_targets(scope.graph, input_slot):
            node_class = self.registry.get(node.get("type")) if isinstance(node.get("type"), str) else None
            spec = node_class.schema().input(widget_name(target) or str(target.get("name"))) if node_class else None
            if spec is not None and spec.has_control_after_generate:
                return True
        return False

    # ---- legacy group nodes ------------------------------------------------------------------

    def _group_node_graph(self, parent: _Scope, node_id: str, node: dict[str, Any]) -> Graph | None:
        from loom.server.workflow.groupnodes import group_node_graph

        type_name = node["type"]
        name = type_name.split(">", 1)[1] if ">" in type_name else type_name.split("/", 1)[1]
        definition = self.group_nodes.get(name)
        if not isinstance(definition, dict):
            self._problem(parent, node_id, type_name,
                          f"legacy group node {name!r} has no definition in extra.groupNodes; "
                          f"ungroup it in the editor and save again")
            return None
        try:
            raw = group_node_graph(definition, node, self.registry)
        except (ValueError, TypeError, KeyError) as error:
            self._problem(parent, node_id, type_name, f"legacy group node {name!r} cannot be expanded: {error}")
            return None
        return build_graph(raw, f"group node {name!r}", self.warnings)

    # ---- %Node.widget% lookups for file-name replacements -------------------------------------

    def _widget_value(self, node_name: str, widget: str) -> Any:
        """The saved value of ``widget`` on the first node whose S&R name (else title) is ``node_name``."""
        nodes = [n for n in self._all_nodes() if node_properties(n).get("Node name for S&R") == node_name]
        nodes = nodes or [n for n in self._all_nodes() if self._title(n) == node_name]
        type_name = nodes[0].get("type") if nodes else None
        node_class = self.registry.get(type_name) if isinstance(type_name, str) else None
        if node_class is None:
            raise LookupError(node_name)
        values = self._assign_widgets(node_class.schema(), nodes[0]).values
        if widget not in values:
            raise LookupError(widget)
        return values[widget]

    def _all_nodes(self) -> list[dict[str, Any]]:
        graphs = [self.workflow, *self.definitions.values()]
        return [n for graph in graphs for n in list_at(graph, "nodes") if isinstance(n, dict)]

    def _title(self, node: dict[str, Any]) -> str | None:
        if isinstance(node.get("title"), str):
            return node["title"]
        node_class = self.registry.get(node.get("type")) if isinstance(node.get("type"), str) else None
        return (node_class.schema().display_name or node_class.schema().name) if node_class else node.get("type")

    # ---- problems ----------------------------------------------------------------------------

    def _problem(self, scope: _Scope, node_id: str, class_type: str, message: str) -> None:
        self.problems.append({"node_id": scope.exec_id(node_id), "class_type": class_type, "message": message})

    def _unknown_type(self, scope: _Scope, node_id: str, type_name: str) -> None:
        message = f"unknown node type {type_name!r}"
        stripped = type_name.strip()
        if stripped != type_name and stripped in self.registry:
            message += f" (did you mean {stripped!r}? the saved name has extra spaces)"
        elif _UUID.fullmatch(type_name):
            message += " (a subgraph instance whose definition is missing from definitions.subgraphs)"
        else:
            message += " (is its node pack installed?)"
        self._problem(scope, node_id, type_name, message)


_LEGACY_PROXY_PREFIX = re.compile(r"^\s*(\d+)\s*:\s*(.+)$")


def _strip_legacy_proxy_prefix(name: str) -> str:
    """``"12: seed"`` (a nested promotion saved by older editors) -> ``"seed"``, as the editor's migration reads it."""
    while True:
        match = _LEGACY_PROXY_PREFIX.match(name)
        if match is None:
            return name
        name = match.group(2)


def _problems_message(problems: list[dict[str, Any]]) -> str:
    lines = [f"node {p['node_id']} ({p['class_type']}): {p['message']}" for p in problems]
    return "the workflow cannot be converted:\n  " + "\n  ".join(lines)
