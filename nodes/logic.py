"""ComfyUI's utility logic nodes: the If/Else switch, CustomCombo, the math expression, the
resolution selector and PreviewAny.

``ComfyMathExpression`` never calls ``eval``: the expression is parsed with :mod:`ast` and walked by
:func:`evaluate`, which knows numbers, the names ``a``..``z`` / ``values`` / ``True`` / ``False``,
arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y``, ``values[i]`` and calls of the
whitelisted functions in :data:`MATH_FUNCTIONS`. Anything else (attributes, strings, lambdas,
comprehensions, other names) is refused. ``**`` refuses operands above 4,000,000 (as ComfyUI's
simpleeval does) and ``pow()`` exponents above 4000, and integers may not grow past
:data:`MAX_INT_BITS` bits, so no expression can tie up the worker.

Loom runs both branches of the switch (it has no lazy inputs); the result is the same.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import string
from typing import Any

from loom.nodes.kernel.schema import (Autogrow, Boolean, Combo, Float, Int, Node, NodeOutput, Output, Schema, Socket,
                               String, autogrow_values, register)

# --------------------------------------------------------------------------------------------
# Switch and CustomCombo
# --------------------------------------------------------------------------------------------

MATCHTYPE = "COMFY_MATCHTYPE_V3"


class MatchTypeInput(Socket):
    """A socket that takes any type, listed as ComfyUI's match-type input of ``template_id``."""

    def __init__(self, name: str, template_id: str, **kwargs: Any) -> None:
        super().__init__(name, "*", **kwargs)
        self.template_id = template_id

    def info(self) -> list[Any]:
        return [MATCHTYPE, self.options() | {"template": {"template_id": self.template_id, "allowed_types": "*"}}]


def _with_matchtype_outputs(info: dict[str, Any]) -> dict[str, Any]:
    info["output"] = [MATCHTYPE if t == "*" else t for t in info["output"]]
    return info


@register
class ComfySwitchNode(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ComfySwitchNode", display_name="If/Else Switch", category="utilities/logic",
                      experimental=True,
                      inputs=[Boolean("switch", default=None),
                              MatchTypeInput("on_false", "switch", lazy=True, optional=True),
                              MatchTypeInput("on_true", "switch", lazy=True, optional=True)],
                      outputs=[Output("*", name="output")])

    @classmethod
    def object_info(cls) -> dict[str, Any]:
        return _with_matchtype_outputs(super().object_info())

    @classmethod
    def execute(cls, switch: bool, on_true: Any = None, on_false: Any = None) -> tuple:
        return (on_true if switch else on_false,)


class _IntSocket(Socket):
    def check_value(self, value: Any) -> int:
        return Int(self.name).check_value(value)


@register
class CustomCombo(Node):
    """A combo whose options the editor defines: any ``choice`` is accepted. ``index`` (the chosen
    option's position) is read when the prompt carries it; otherwise INDEX is 0, as in ComfyUI."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("CustomCombo", display_name="Custom Combo", category="utilities", experimental=True,
                      inputs=[Combo("choice", options_source=(), validate_membership=False),
                              _IntSocket("index", "INT", optional=True)],
                      outputs=[Output("STRING", name="STRING"), Output("INT", name="INDEX")])

    @classmethod
    def object_info(cls) -> dict[str, Any]:
        info = super().object_info()
        info["input"].pop("optional", None)  # "index" is not in ComfyUI's schema (it accepts all inputs)
        info["input_order"].pop("optional", None)
        return info

    @classmethod
    def execute(cls, choice: str, index: int = 0) -> tuple:
        return (choice, index)


# --------------------------------------------------------------------------------------------
# Math expression
# --------------------------------------------------------------------------------------------

MAX_POWER = 4_000_000  # simpleeval's bound on both operands of **
MAX_EXPONENT = 4000  # ComfyUI's bound on pow()'s exponent
MAX_INT_BITS = 1_000_000  # no intermediate integer beyond this (a 300,000-digit number)
MAX_NODES = 10_000


class ExpressionError(ValueError):
    pass


def _variadic_sum(*args: Any) -> Any:
    if len(args) == 1 and hasattr(args[0], "__iter__"):
        return sum(args[0])
    return sum(args)


def _safe_pow(base: Any, exponent: Any) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"Exponent {exponent} exceeds maximum allowed ({MAX_EXPONENT})")
    return _power(base, exponent)


MATH_FUNCTIONS: dict[str, Any] = {
    "sum": _variadic_sum, "min": min, "max": max, "abs": abs, "round": round, "pow": _safe_pow,
    "sqrt": math.sqrt, "ceil": math.ceil, "floor": math.floor, "log": math.log, "log2": math.log2,
    "log10": math.log10, "sin": math.sin, "cos": math.cos, "tan": math.tan, "int": int, "float": float,
}


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"an intermediate integer has more than {MAX_INT_BITS} bits")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if abs(base) > MAX_POWER or abs(exponent) > MAX_POWER:
        raise ExpressionError(f"Sorry! I don't want to evaluate {base} ** {exponent}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise ExpressionError(f"{base} ** {exponent} has more than {MAX_INT_BITS} bits")
    return base ** exponent


def _multiply(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise ExpressionError(f"a product has more than {MAX_INT_BITS} bits")
    return a * b


def _shift(a: Any, b: Any) -> Any:
    if abs(b) > 10_000:
        raise ExpressionError(f"Sorry! I don't want to evaluate {a} << {b}")
    return a << b


BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _multiply, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _power, ast.LShift: _shift,
          ast.RShift: operator.rshift, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
          ast.BitXor: operator.xor}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}


def evaluate(expression: str, names: dict[str, Any]) -> Any:
    """Evaluate ``expression`` over ``names`` with the whitelist above; :class:`ExpressionError` if refused."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ExpressionError(f"cannot parse the expression: {error}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ExpressionError(f"the expression has more than {MAX_NODES} parts")
    scope = {"True": True, "False": False} | names
    try:
        return _eval(tree.body, scope)
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply") from None
    except (ZeroDivisionError, OverflowError, TypeError, ValueError, IndexError) as error:
        if isinstance(error, ExpressionError):
            raise
        raise ExpressionError(f"{type(error).__name__}: {error}") from None


def _eval(node: ast.AST, scope: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, complex):
            return node.value
        raise ExpressionError(f"only numbers are allowed, not {node.value!r}")
    if isinstance(node, ast.Name):
        if node.id not in scope:
            raise ExpressionError(f"unknown name {node.id!r}")
        return scope[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        return _bounded(BINARY[type(node.op)](_eval(node.left, scope), _eval(node.right, scope)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_eval(node.operand, scope))
    if isinstance(node, ast.BoolOp):
        value = _eval(node.values[0], scope)
        for item in node.values[1:]:
            if isinstance(node.op, ast.And) and not value or isinstance(node.op, ast.Or) and value:
                return value
            value = _eval(item, scope)
        return value
    if isinstance(node, ast.Compare) and all(type(op) in COMPARE for op in node.ops):
        left = _eval(node.left, scope)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, scope)
            if not COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, scope) if _eval(node.test, scope) else _eval(node.orelse, scope)
    if isinstance(node, ast.Subscript):
        container, index = _eval(node.value, scope), _eval(node.slice, scope)
        if not isinstance(container, list) or not isinstance(index, int):
            raise ExpressionError("only values[i] may be indexed, by an integer")
        return container[index]
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in MATH_FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else ast.dump(node.func)[:40]
            raise ExpressionError(f"function {shown!r} is not allowed; use one of {', '.join(MATH_FUNCTIONS)}")
        if any(isinstance(a, ast.Starred) for a in node.args) or node.keywords:
            raise ExpressionError("only plain positional arguments are allowed")
        return _bounded(MATH_FUNCTIONS[node.func.id](*[_eval(a, scope) for a in node.args]))
    raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")


VALUE_NAMES = tuple(string.ascii_lowercase)
VALUE_TYPE = "FLOAT,INT,BOOLEAN"


@register
class ComfyMathExpression(Node):
    """Evaluate ``expression`` over the connected values ``a``, ``b``, ... (ComfyUI's autogrow input
    ``values``: prompt inputs ``values.a``, ``values.b``, ...); ``values`` is the list of them."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ComfyMathExpression", display_name="Math Expression", category="utilities",
                      inputs=[String("expression", default="a + b", multiline=True),
                              Autogrow("values", template=Socket("value", VALUE_TYPE, optional=True),
                                       names=VALUE_NAMES, min=1)],
                      outputs=[Output("FLOAT", name="FLOAT"), Output("INT", name="INT"),
                               Output("BOOLEAN", name="BOOL")])

    @classmethod
    def execute(cls, expression: str, **inputs: Any) -> tuple:
        if not expression.strip():
            raise ValueError("ComfyMathExpression: Expression cannot be empty.")
        values = {name: value for name, value in autogrow_values("values", inputs).items() if value is not None}
        try:
            result = evaluate(expression, values | {"values": list(values.values())})
        except ExpressionError as error:
            raise ValueError(f"ComfyMathExpression: '{expression}': {error}") from None
        if not isinstance(result, (int, float)):
            raise ValueError(f"ComfyMathExpression: Math Expression '{expression}' must evaluate to a numeric "
                             f"result, got {type(result).__name__}: {result!r}")
        try:
            as_float = float(result)
        except OverflowError:
            raise ValueError(f"ComfyMathExpression: Math Expression '{expression}' produced a result too large "
                             "to represent as a float") from None
        if not math.isfinite(as_float):
            raise ValueError(f"ComfyMathExpression: Math Expression '{expression}' produced a non-finite "
                             f"result: {result}")
        return (as_float, int(result), bool(result))


# --------------------------------------------------------------------------------------------
# Resolution selector and PreviewAny
# --------------------------------------------------------------------------------------------

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1), "3:2 (Photo)": (3, 2), "4:3 (Standard)": (4, 3), "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9), "2:3 (Portrait Photo)": (2, 3), "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}


@register
class ResolutionSelector(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "ResolutionSelector", display_name="Resolution Selector", category="utilities",
            description="Calculate width and height from aspect ratio and megapixel target. Useful for setting "
                        "up Empty Latent Image dimensions.",
            inputs=[Combo("aspect_ratio", options_source=tuple(ASPECT_RATIOS), default="1:1 (Square)",
                          tooltip="The aspect ratio for the output dimensions."),
                    Float("megapixels", default=1.0, min=0.1, max=16.0, step=0.1,
                          tooltip="Target total megapixels. 1.0 MP \u2248 1024\u00d71024 for square."),
                    Int("multiple", default=8, min=8, max=128, step=4, advanced=True,
                        tooltip="Nearest multiple of the result to set the selected resolution to."),
                    Int("minimum", default=256, min=32, max=4096, step=32, advanced=True,
                        tooltip="Set minimum resolution for any side to be used")],
            outputs=[Output("INT", name="width", tooltip="Calculated width in pixels (multiple of 8)."),
                     Output("INT", name="height", tooltip="Calculated height in pixels (multiple of 8).")])

    @classmethod
    def execute(cls, aspect_ratio: str, megapixels: float, multiple: int = 8, minimum: int = 256) -> tuple:
        w_ratio, h_ratio = ASPECT_RATIOS[aspect_ratio]
        scale = math.sqrt(megapixels * 1024 * 1024 / (w_ratio * h_ratio))
        width = round(w_ratio * scale / multiple) * multiple
        height = round(h_ratio * scale / multiple) * multiple
        if width < minimum or height < minimum:
            # the smallest k with both sides at least `minimum` and multiples of `multiple`
            step_w = multiple // math.gcd(w_ratio, multiple)
            step_h = multiple // math.gcd(h_ratio, multiple)
            k_step = step_w * step_h // math.gcd(step_w, step_h)
            k = math.ceil(math.ceil(max(minimum / w_ratio, minimum / h_ratio)) / k_step) * k_step
            width, height = w_ratio * k, h_ratio * k
        return (width, height)


@register
class PreviewAny(Node):
    """Show any value as text: strings as they are, numbers and booleans with ``str``, anything else
    as indented JSON when it serialises, else ``str``."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("PreviewAny", display_name="Preview as Text", category="utilities", output_node=True,
                      inputs=[Socket("source", "*")], outputs=[])

    @classmethod
    def execute(cls, source: Any = None) -> NodeOutput:
        if isinstance(source, str):
            value = source
        elif isinstance(source, (int, float, bool)):
            value = str(source)
        elif source is None:
            value = "None"
        else:
            try:
                value = json.dumps(source, indent=4)
            except Exception:
                try:
                    value = str(source)
                except Exception:
                    value = "source exists, but could not be serialized."
        return NodeOutput(ui={"text": (value,)})
