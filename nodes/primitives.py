"""ComfyUI's backend primitive nodes: a constant of each widget type."""
from __future__ import annotations

import sys

from loom.nodes.kernel.schema import Boolean, Float, Int, Node, Output, Schema, String, register


@register
class PrimitiveInt(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveInt", display_name="Int", category="utilities/primitive",
                      inputs=[Int("value", default=0, min=-sys.maxsize, max=sys.maxsize,
                                      control_after_generate="fixed")],
                      outputs=[Output("INT")])

    @classmethod
    def execute(cls, value: int) -> tuple:
        return (value,)


@register
class PrimitiveFloat(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveFloat", display_name="Float", category="utilities/primitive",
                      inputs=[Float("value", default=0.0, min=-sys.maxsize, max=sys.maxsize, step=0.1)],
                      outputs=[Output("FLOAT")])

    @classmethod
    def execute(cls, value: float) -> tuple:
        return (value,)


@register
class PrimitiveString(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveString", display_name="String", category="utilities/primitive",
                      inputs=[String("value", default="")], outputs=[Output("STRING")])

    @classmethod
    def execute(cls, value: str) -> tuple:
        return (value,)


@register
class PrimitiveStringMultiline(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveStringMultiline", display_name="String (Multiline)", category="utilities/primitive",
                      inputs=[String("value", default="", multiline=True)], outputs=[Output("STRING")])

    @classmethod
    def execute(cls, value: str) -> tuple:
        return (value,)


@register
class PrimitiveBoolean(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveBoolean", display_name="Boolean", category="utilities/primitive",
                      inputs=[Boolean("value", default=False)], outputs=[Output("BOOLEAN")])

    @classmethod
    def execute(cls, value: bool) -> tuple:
        return (value,)
