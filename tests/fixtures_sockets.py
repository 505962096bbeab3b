"""Test support: run one node through the executor with Python values on its sockets.

:func:`run_node` builds an API prompt in which every socket input of the node is linked from a
``EmitValue`` node that outputs the given Python value (so the executor's socket checks see it as a linked
value, as a real upstream node's output), every other input is a literal, and each output goes to a
``KeepValue`` output node. A failed run raises :class:`ExecutionFailed` carrying the execution error.
"""
from __future__ import annotations

import itertools
from typing import Any

from loom.nodes.kernel.schema import Node, NodeRegistry, Output, Schema, Socket, String, default_registry
from loom.server.executor import Executor

_VALUES: dict[str, Any] = {}
_RESULTS: dict[str, Any] = {}
_KEYS = itertools.count()


class EmitValue(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("EmitValue", category="test", inputs=[String("key")], outputs=[Output("*")])

    @classmethod
    def execute(cls, key: str) -> tuple:
        return (_VALUES[key],)


class KeepValue(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("KeepValue", category="test", output_node=True,
                      inputs=[String("key"), Socket("value", "*")], outputs=[])

    @classmethod
    def execute(cls, key: str, value: Any) -> tuple:
        _RESULTS[key] = value
        return ()


class ExecutionFailed(ValueError):
    """The run's ``execution_error`` (or validation error), its message as the exception's."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("exception_message") or error.get("message") or str(error))
        self.error = error


def registry_with(node_class: type[Node]) -> NodeRegistry:
    registry = NodeRegistry()
    for helper in (EmitValue, KeepValue, node_class):
        registry.add(helper)
    return registry


def run_node(class_type: str, **inputs: Any) -> tuple:
    """The outputs of one run of ``class_type`` with ``inputs`` (socket inputs linked, others literal)."""
    node_class = default_registry().get(class_type)
    assert node_class is not None, class_type
    schema = node_class.schema()
    prompt: dict[str, Any] = {"node": {"class_type": class_type, "inputs": {}}}
    for name, value in inputs.items():
        spec = schema.input(name)
        assert spec is not None, f"{class_type} has no input {name!r}"
        if isinstance(spec, Socket):
            key = f"value{next(_KEYS)}"
            _VALUES[key] = value
            prompt[f"emit_{name}"] = {"class_type": "EmitValue", "inputs": {"key": key}}
            prompt["node"]["inputs"][name] = [f"emit_{name}", 0]
        else:
            prompt["node"]["inputs"][name] = value
    sinks = []
    for slot in range(len(schema.outputs)):
        key = f"result{next(_KEYS)}"
        sinks.append(key)
        prompt[f"sink{slot}"] = {"class_type": "KeepValue", "inputs": {"key": key, "value": ["node", slot]}}
    result = Executor(registry_with(node_class)).execute(prompt, f"run-{class_type}")
    try:
        if not result.ok:
            raise ExecutionFailed(result.error or {})
        return tuple(_RESULTS.pop(key) for key in sinks)
    finally:
        _VALUES.clear()
