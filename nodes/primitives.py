"""ComfyUI's backend primitive nodes: a constant of each widget type."""
from __future__ import annotations

from loom.nodes.schema import SEED_MAX, Boolean, Float, Int, Node, Output, Schema, String, register


@register
class PrimitiveInt(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveInt", display_name="Int", category="utils/primitive",
                      inputs=[Int("value", default=0, min=-SEED_MAX, max=SEED_MAX, control_after_generate=True)],
                      outputs=[Output("INT")])

    @classmethod
    def execute(cls, value: int) -> tuple:
        return (value,)


@register
class PrimitiveFloat(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveFloat", display_name="Float", category="utils/primitive",
                      inputs=[Float("value", default=0.0, min=-1e300, max=1e300)],
                      outputs=[Output("FLOAT")])

    @classmethod
    def execute(cls, value: float) -> tuple:
        return (value,)


@register
class PrimitiveString(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveString", display_name="String", category="utils/primitive",
                      inputs=[String("value", default="")], outputs=[Output("STRING")])

    @classmethod
    def execute(cls, value: str) -> tuple:
        return (value,)


@register
class PrimitiveStringMultiline(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveStringMultiline", display_name="String (Multiline)", category="utils/primitive",
                      inputs=[String("value", default="", multiline=True)], outputs=[Output("STRING")])

    @classmethod
    def execute(cls, value: str) -> tuple:
        return (value,)


@register
class PrimitiveBoolean(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PrimitiveBoolean", display_name="Boolean", category="utils/primitive",
                      inputs=[Boolean("value", default=False)], outputs=[Output("BOOLEAN")])

    @classmethod
    def execute(cls, value: bool) -> tuple:
        return (value,)
