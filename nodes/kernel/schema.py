"""The typed, declarative node schema and the node registry.

A node is a class deriving from :class:`Node` whose ``define_schema()`` returns a :class:`Schema`.
The one schema produces the ``/object_info`` entry (ComfyUI's exact shape), the validation rules
(``server/validation.py`` reads them through :meth:`InputSpec.check_value`) and the call
(``execute(**inputs)``).  The server sees nodes only through :class:`NodeRegistry`.

    @register
    class Add(Node):
        @classmethod
        def define_schema(cls) -> Schema:
            return Schema("Add", category="math",
                          inputs=[Int("a"), Int("b", default=1)],
                          outputs=[Output("INT")])

        @classmethod
        def execute(cls, a: int, b: int) -> tuple:
            return (a + b,)
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

from loom.nodes.kernel.sockets import SocketType, socket_type

MAX_RESOLUTION = 16384
SEED_MAX = 0xFFFFFFFFFFFFFFFF

CONTROL_AFTER_GENERATE_VALUES = ("fixed", "increment", "decrement", "randomize")


class InputValueError(ValueError):
    """A literal input value broke a rule of its schema; ``code`` is ComfyUI's error type."""

    def __init__(self, code: str, message: str, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

@dataclass
class InputSpec:
    """One named input. Subclasses add the widget options of their type."""

    name: str
    type: str = "*"
    optional: bool = False
    tooltip: str | None = None
    force_input: bool = False
    lazy: bool = False
    advanced: bool = False

    widget_type: ClassVar[bool] = False  # True for INT/FLOAT/STRING/BOOLEAN/COMBO (a widget in the editor)

    def options(self) -> dict[str, Any]:
        """The options dict of the ``/object_info`` entry."""
        opts: dict[str, Any] = {}
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        if self.force_input:
            opts["forceInput"] = True
        if self.lazy:
            opts["lazy"] = True
        if self.advanced:
            opts["advanced"] = True
        return opts

    def info(self) -> list[Any]:
        """``[TYPE, {options}]`` as ``/object_info`` lists it."""
        return [self.type, self.options()]

    @property
    def has_widget(self) -> bool:
        return self.widget_type and not self.force_input

    @property
    def has_control_after_generate(self) -> bool:
        return False

    def check_value(self, value: Any) -> Any:
        """Return the value coerced to this input's type, or raise :class:`InputValueError`."""
        return value

    def expand(self) -> list["InputSpec"]:
        """The concrete inputs a prompt names for this one (itself; a dynamic input gives several)."""
        return [self]


def _number_options(spec: "Int | Float") -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if spec.default is not None:
        opts["default"] = spec.default
    if spec.min is not None:
        opts["min"] = spec.min
    if spec.max is not None:
        opts["max"] = spec.max
    if spec.step is not None:
        opts["step"] = spec.step
    return opts


def _check_range(spec: "Int | Float", value: float) -> None:
    if spec.min is not None and value < spec.min:
        raise InputValueError("value_smaller_than_min", "Value smaller than min",
                              f"{spec.name}: {value} is below the minimum {spec.min}")
    if spec.max is not None and value > spec.max:
        raise InputValueError("value_bigger_than_max", "Value bigger than max",
                              f"{spec.name}: {value} is above the maximum {spec.max}")


@dataclass
class Int(InputSpec):
    type: str = "INT"
    default: int | None = 0
    min: int | None = None
    max: int | None = None
    step: int | None = None
    # True (shown as True, the frontend's default "randomize") or a mode name such as "fixed",
    # shown as given: V3's control_after_generate=io.ControlAfterGenerate.fixed reads "fixed".
    control_after_generate: bool | str = False
    display: str | None = None  # "number" | "slider"

    widget_type: ClassVar[bool] = True

    def options(self) -> dict[str, Any]:
        opts = _number_options(self)
        if self.control_after_generate:
            opts["control_after_generate"] = self.control_after_generate
        if self.display:
            opts["display"] = self.display
        return opts | super().options()

    @property
    def has_control_after_generate(self) -> bool:
        return bool(self.control_after_generate)

    def check_value(self, value: Any) -> int:
        if isinstance(value, bool) or value is None:
            raise InputValueError("invalid_input_type", "Failed to convert an input value to a INT value",
                                  f"{self.name}: {value!r} is not an integer")
        try:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                number = int(value)
            else:
                number = int(str(value).strip()) if isinstance(value, str) else int(value)
        except (TypeError, ValueError, OverflowError):
            raise InputValueError("invalid_input_type", "Failed to convert an input value to a INT value",
                                  f"{self.name}: {value!r} is not an integer") from None
        _check_range(self, number)
        return number


@dataclass
class Float(InputSpec):
    type: str = "FLOAT"
    default: float | None = 0.0
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | bool | None = None
    display: str | None = None

    widget_type: ClassVar[bool] = True

    def options(self) -> dict[str, Any]:
        opts = _number_options(self)
        if self.round is not None:
            opts["round"] = self.round
        if self.display:
            opts["display"] = self.display
        return opts | super().options()

    def check_value(self, value: Any) -> float:
        if isinstance(value, bool) or value is None:
            raise InputValueError("invalid_input_type", "Failed to convert an input value to a FLOAT value",
                                  f"{self.name}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputValueError("invalid_input_type", "Failed to convert an input value to a FLOAT value",
                                  f"{self.name}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise InputValueError("invalid_input_type", "Failed to convert an input value to a FLOAT value",
                                  f"{self.name}: {value!r} is not a finite number")
        _check_range(self, number)
        return number


@dataclass
class String(InputSpec):
    type: str = "STRING"
    default: str | None = ""
    multiline: bool = False
    placeholder: str | None = None
    dynamic_prompts: bool = False
    max_length: int = 1_000_000

    widget_type: ClassVar[bool] = True

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.default is not None:
            opts["default"] = self.default
        if self.multiline:
            opts["multiline"] = True
        if self.placeholder:
            opts["placeholder"] = self.placeholder
        if self.dynamic_prompts:
            opts["dynamicPrompts"] = True
        return opts | super().options()

    def check_value(self, value: Any) -> str:
        if isinstance(value, (dict, list)) or value is None:
            raise InputValueError("invalid_input_type", "Failed to convert an input value to a STRING value",
                                  f"{self.name}: expected text, got {type(value).__name__}")
        text = value if isinstance(value, str) else str(value)
        if len(text) > self.max_length:
            raise InputValueError("value_bigger_than_max", "Value bigger than max",
                                  f"{self.name}: text of {len(text)} characters is longer than {self.max_length}")
        return text


@dataclass
class Boolean(InputSpec):
    type: str = "BOOLEAN"
    default: bool | None = False
    label_on: str | None = None
    label_off: str | None = None

    widget_type: ClassVar[bool] = True

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.default is not None:
            opts["default"] = self.default
        if self.label_on:
            opts["label_on"] = self.label_on
        if self.label_off:
            opts["label_off"] = self.label_off
        return opts | super().options()

    def check_value(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise InputValueError("invalid_input_type", "Failed to convert an input value to a BOOLEAN value",
                              f"{self.name}: {value!r} is not true or false")


@dataclass
class Combo(InputSpec):
    """A choice among options: a fixed list, a callable, or the files of a model folder.

    ``folder`` names a model folder (``checkpoints``, ``loras``, ...); its files are listed each time
    the options are read, so a file dropped into the folder appears without a restart.
    """

    type: str = "COMBO"
    options_source: Sequence[str] | Callable[[], Sequence[str]] = ()
    folder: str | None = None
    default: str | None = None
    control_after_generate: bool = False
    image_upload: bool = False
    validate_membership: bool = True

    widget_type: ClassVar[bool] = True

    def choices(self) -> list[str]:
        if self.folder is not None:
            from loom.nodes.kernel import folders
            return folders.list_files(self.folder)
        source = self.options_source
        return list(source() if callable(source) else source)

    def info(self) -> list[Any]:
        # The legacy list form: every ComfyUI frontend and client understands it.
        return [self.choices(), self.options()]

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.default is not None:
            opts["default"] = self.default
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.image_upload:
            opts["image_upload"] = True
        return opts | super().options()

    @property
    def has_control_after_generate(self) -> bool:
        return self.control_after_generate

    def check_value(self, value: Any) -> str:
        if not isinstance(value, str):
            raise InputValueError("value_not_in_list", "Value not in list",
                                  f"{self.name}: {value!r} is not one of the options")
        if self.validate_membership:
            choices = self.choices()
            if value not in choices:
                shown = choices if len(choices) <= 20 else choices[:20] + ["..."]
                raise InputValueError("value_not_in_list", "Value not in list",
                                      f"{self.name}: '{value}' not in {shown}")
        return value


@dataclass
class Socket(InputSpec):
    """An input that takes a link (MODEL, LATENT, IMAGE, ...); ``type`` is a type name or a
    :class:`~loom.nodes.kernel.sockets.SocketType`. The executor checks every value it receives
    (:meth:`check_linked`) before the node runs."""

    type: str | SocketType = "*"
    takes_none: bool = False
    """A required input that also takes ``None`` (LoraLoader's ``clip``: a checkpoint without a text encoder
    gives one); an optional input always does."""

    def __post_init__(self) -> None:
        if isinstance(self.type, SocketType):
            self.type = self.type.name

    def check_linked(self, value: Any) -> str | None:
        """What is wrong with a value this input received (``None``: nothing)."""
        kind = socket_type(str(self.type))
        if kind is None or (value is None and (self.optional or self.takes_none)):
            return None
        return kind.check(value)

    def check_value(self, value: Any) -> Any:
        """A literal in place of a link: only what a link could bring (nothing, for the model types)."""
        problem = self.check_linked(value)
        if problem is not None:
            raise InputValueError("invalid_input_type", f"Failed to convert an input value to a {self.type} value",
                                  f"{self.name} {problem}; a {self.type} input takes a link")
        return value


AUTOGROW_MAX_NAMES = 100


@dataclass
class Autogrow(InputSpec):
    """ComfyUI's ``COMFY_AUTOGROW_V3`` dynamic input: a row of copies of ``template`` that grows as
    the editor links more.

    ``/object_info`` lists the one declared input (``["COMFY_AUTOGROW_V3", {"template": {"input":
    {...}, "prefix"|"names": ..., "min": ..., "max": ...}}]``); a prompt names each copy
    ``"{name}.{slot}"`` (``"images.image0"``, ``"images.image1"``, ...), slots ``prefix0..prefix{max-1}``
    or the given ``names``. The first ``min`` copies are required (when the template is). Validation
    and execution see the copies (:meth:`expand`); :func:`autogrow_values` gathers them back.
    """

    type: str = "COMFY_AUTOGROW_V3"
    template: InputSpec | None = None
    prefix: str | None = None
    names: Sequence[str] | None = None
    min: int = 1
    max: int = 10

    def slots(self) -> list[str]:
        if self.names is not None:
            return list(self.names)[:AUTOGROW_MAX_NAMES]
        return [f"{self.prefix}{i}" for i in range(min(self.max, AUTOGROW_MAX_NAMES))]

    def _template(self) -> InputSpec:
        if self.template is None:
            raise ValueError(f"autogrow input {self.name!r} has no template")
        template = replace(self.template)
        if template.widget_type:
            template.force_input = True  # copies of a widget input are sockets, as in ComfyUI
        return template

    def options(self) -> dict[str, Any]:
        template = self._template()
        listing: dict[str, Any] = {"required": {}}
        listing.setdefault("optional" if template.optional else "required", {})[template.name] = template.info()
        shape: dict[str, Any] = {"input": listing}
        if self.names is not None:
            shape |= {"names": self.slots(), "min": self.min}
        else:
            shape |= {"prefix": self.prefix, "min": self.min, "max": self.max}
        return {"template": shape} | super().options()

    def expand(self) -> list[InputSpec]:
        template = self._template()
        return [replace(template, name=f"{self.name}.{slot}",
                        optional=template.optional or index >= self.min)
                for index, slot in enumerate(self.slots())]


def autogrow_values(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """``{slot: value}`` of the copies of autogrow input ``name`` among ``execute``'s keyword inputs."""
    head = name + "."
    return {key[len(head):]: value for key, value in inputs.items() if key.startswith(head)}


@dataclass
class Hidden:
    """A hidden input filled by the executor: ``PROMPT``, ``EXTRA_PNGINFO`` or ``UNIQUE_ID``."""

    name: str
    type: str


HIDDEN_PROMPT = Hidden("prompt", "PROMPT")
HIDDEN_EXTRA_PNGINFO = Hidden("extra_pnginfo", "EXTRA_PNGINFO")
HIDDEN_UNIQUE_ID = Hidden("unique_id", "UNIQUE_ID")


@dataclass
class Output:
    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


@dataclass
class Schema:
    name: str
    display_name: str | None = None
    category: str = "loom"
    inputs: list[InputSpec] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    output_node: bool = False
    input_is_list: bool = False
    not_idempotent: bool = False
    deprecated: bool = False
    experimental: bool = False

    declared_inputs: list[InputSpec] = field(default_factory=list, init=False, repr=False)
    """The inputs as declared (what ``/object_info`` lists); ``inputs`` holds them expanded."""

    def __post_init__(self) -> None:
        self.declared_inputs = list(self.inputs)
        self.inputs = [concrete for spec in self.declared_inputs for concrete in spec.expand()]
        names = [spec.name for spec in self.inputs] + [h.name for h in self.hidden]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"node {self.name}: duplicate input names {sorted(duplicates)}")

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def required_inputs(self) -> list[InputSpec]:
        return [s for s in self.inputs if not s.optional]

    @property
    def optional_inputs(self) -> list[InputSpec]:
        return [s for s in self.inputs if s.optional]

    def widget_inputs(self) -> list[InputSpec]:
        """Inputs that the editor draws as widgets, in ``widgets_values`` order (required, then optional)."""
        return [s for s in self.required_inputs + self.optional_inputs if s.has_widget]


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------

@dataclass
class NodeOutput:
    """What ``execute`` may return instead of a plain tuple: values plus a ``ui`` dict for the editor."""

    values: tuple = ()
    ui: dict[str, Any] | None = None

    def __init__(self, *values: Any, ui: dict[str, Any] | None = None) -> None:
        self.values = tuple(values)
        self.ui = ui


class _AlwaysRerun:
    """The type of :data:`ALWAYS_RERUN` (one instance; it pickles to itself)."""

    _instance: "_AlwaysRerun | None" = None

    def __new__(cls) -> "_AlwaysRerun":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> str:
        return "ALWAYS_RERUN"

    def __repr__(self) -> str:
        return "ALWAYS_RERUN"


ALWAYS_RERUN = _AlwaysRerun()
"""A fingerprint that matches nothing, not even itself: the node is never served from the cache."""


class Node:
    """Base class of every node. Nodes hold no instance state: everything is a classmethod."""

    python_module: ClassVar[str] = "nodes"
    _schema: ClassVar[Schema | None] = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def schema(cls) -> Schema:
        if cls.__dict__.get("_schema") is None:
            cls._schema = cls.define_schema()
        assert cls._schema is not None
        return cls._schema

    @classmethod
    def execute(cls, **inputs: Any) -> tuple | NodeOutput:
        raise NotImplementedError

    @classmethod
    def linked_float(cls, name: str, value: Any) -> float:
        """The value of the FLOAT input ``name`` held to the range its schema declares, or a ValueError
        naming the node and the input. Validation checks a widget's value only; a value that comes over a
        link reaches ``execute`` unchecked (as in ComfyUI), so a node whose maths needs the range calls this."""
        schema = cls.schema()
        spec = schema.input(name)
        if not isinstance(spec, Float):
            raise TypeError(f"{schema.name} has no FLOAT input {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"{schema.name}: input '{name}' must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{schema.name}: input '{name}' must be a finite number, got {value!r}")
        low = -math.inf if spec.min is None else spec.min
        high = math.inf if spec.max is None else spec.max
        if not low <= value <= high:
            raise ValueError(f"{schema.name}: input '{name}' must be between {low} and {high}, got {value}")
        return float(value)

    @classmethod
    def fingerprint(cls, **inputs: Any) -> Any:
        """Extra cache-key material computed before the run from the node's literal inputs.

        Nodes that read files return e.g. the file's content hash, so a changed file re-runs them.
        Return :data:`ALWAYS_RERUN` to run on every prompt (``float("nan")``, ComfyUI's ``IS_CHANGED``
        convention, does the same). ``None`` (the default) adds nothing.
        """
        return None

    @classmethod
    def validate_inputs(cls, **inputs: Any) -> bool | str:
        """Extra validation of literal inputs: ``True`` or an error message."""
        return True

    @classmethod
    def has_fingerprint(cls) -> bool:
        return cls.fingerprint.__func__ is not Node.fingerprint.__func__  # type: ignore[attr-defined]

    @classmethod
    def object_info(cls) -> dict[str, Any]:
        schema = cls.schema()
        required = {s.name: s.info() for s in schema.declared_inputs if not s.optional}
        optional = {s.name: s.info() for s in schema.declared_inputs if s.optional}
        hidden = {h.name: h.type for h in schema.hidden}
        inputs: dict[str, Any] = {"required": required}
        order: dict[str, list[str]] = {"required": list(required)}
        if optional:
            inputs["optional"] = optional
            order["optional"] = list(optional)
        if hidden:
            inputs["hidden"] = hidden
            order["hidden"] = list(hidden)
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": order,
            "output": [o.type for o in schema.outputs],
            "output_is_list": [o.is_list for o in schema.outputs],
            "output_name": [o.display_name for o in schema.outputs],
            "name": schema.name,
            "display_name": schema.display_name or schema.name,
            "description": schema.description,
            "python_module": cls.python_module,
            "category": schema.category,
            "output_node": schema.output_node,
        }
        tooltips = [o.tooltip or "" for o in schema.outputs]
        if any(tooltips):
            info["output_tooltips"] = tooltips
        if schema.deprecated:
            info["deprecated"] = True
        if schema.experimental:
            info["experimental"] = True
        return info


def literal_kwargs(method: Callable[..., Any], literals: dict[str, Any]) -> dict[str, Any] | None:
    """The literal inputs a node classmethod (``fingerprint``, ``validate_inputs``) takes by name.

    ``None`` when the method needs an input that has no literal value (it arrives through a link).
    """
    names, required, takes_any = _parameters(getattr(method, "__func__", method))
    if not required <= literals.keys():
        return None
    return {k: v for k, v in literals.items() if takes_any or k in names}


@functools.lru_cache(maxsize=None)
def _parameters(function: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str], bool]:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # drop cls
    named = [p for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return (frozenset(p.name for p in named), frozenset(p.name for p in named if p.default is p.empty),
            any(p.kind is p.VAR_KEYWORD for p in parameters))


def types_compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule (``validate_node_input``, not strict): equal, ``*`` on either side, or comma-separated
    unions that share a member. Letter case counts, and a COMBO input takes a COMBO output, not a STRING.
    The editor applies the same rule (web/graph/types.js); tests/fixtures/type_compat.json holds both to it."""
    if output_type == input_type or output_type == "*" or input_type == "*":
        return True
    outs = {t.strip() for t in str(output_type).split(",")}
    ins = {t.strip() for t in str(input_type).split(",")}
    return bool(outs & ins)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

BUILTIN_NODE_MODULES: tuple[str, ...] = (
    "loom.nodes.primitives",
)
"""The node modules that ship with Loom, imported by :func:`default_registry`."""

OPTIONAL_BUILTIN_NODE_MODULES: tuple[str, ...] = (
    "loom.nodes.loaders",
    "loom.nodes.conditioning",
    "loom.nodes.latent",
    "loom.nodes.sampling",
    "loom.nodes.image",
    "loom.nodes.image_save_advanced",
    "loom.nodes.websocket_image",
    "loom.nodes.vae",
    "loom.nodes.lora",
    "loom.nodes.controlnet",
    "loom.nodes.controlnet_diff",
    "loom.nodes.controlnet_union",
    "loom.nodes.mask",
    "loom.nodes.compositing",
    "loom.nodes.resize_image_mask",
    "loom.nodes.image_transform",
    "loom.nodes.image_filters",
    "loom.nodes.image_batch",
    "loom.nodes.image_animated",
    "loom.nodes.image_compare",
    "loom.nodes.latent_ops",
    "loom.nodes.strings",
    "loom.nodes.logic",
    "loom.nodes.model_patches",
    "loom.nodes.model_patches_guidance",
    "loom.nodes.model_merging",
    "loom.nodes.checkpoint_save",
    "loom.nodes.image_conditioning",
    "loom.nodes.differential_diffusion",
    "loom.nodes.clip_vision",
    "loom.nodes.model_sampling",
    "loom.nodes.sd3",
    "loom.nodes.custom_sampling",
    "loom.nodes.loaders_split",
    "loom.nodes.skip_layer_guidance",
    "loom.nodes.hypernetwork",
    "loom.nodes.reference_latents",
)
"""Built-in modules that exist once their part of the library has landed; missing ones are skipped."""


class NodeRegistry:
    """Node classes by their ComfyUI class name."""

    def __init__(self) -> None:
        self._nodes: dict[str, type[Node]] = {}
        self._lock = threading.Lock()

    def add(self, node_class: type[Node], module: str | None = None) -> type[Node]:
        schema = node_class.schema()
        if module:
            node_class.python_module = module
        with self._lock:
            existing = self._nodes.get(schema.name)
            if existing is not None and existing.__module__ != node_class.__module__:
                raise ValueError(f"node type {schema.name!r} is already registered by {existing.python_module}")
            self._nodes[schema.name] = node_class
        return node_class

    def get(self, name: str) -> type[Node] | None:
        return self._nodes.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def names(self) -> list[str]:
        return sorted(self._nodes)

    def items(self) -> Iterable[tuple[str, type[Node]]]:
        return sorted(self._nodes.items())

    def object_info(self, name: str | None = None) -> dict[str, Any]:
        if name is not None:
            node = self._nodes.get(name)
            return {name: node.object_info()} if node else {}
        return {n: c.object_info() for n, c in self.items()}

    def load_module(self, module_name: str) -> int:
        """Import a module and register the nodes it declared with :func:`register`; returns the count."""
        module = importlib.import_module(module_name)
        return self._adopt(module_name, module)

    def load_path(self, path: str | Path) -> int:
        """Load a node pack from a ``.py`` file or a package folder (like ComfyUI's custom_nodes)."""
        path = Path(path).resolve()
        init = path / "__init__.py" if path.is_dir() else path
        if not init.is_file():
            raise FileNotFoundError(f"node pack {path} has no {init.name}")
        module_name = f"loom_nodepack_{path.stem}"
        spec = importlib.util.spec_from_file_location(
            module_name, init, submodule_search_locations=[str(path)] if path.is_dir() else None)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return self._adopt(module_name, module)

    def _adopt(self, module_name: str, module: Any) -> int:
        prefix = module.__name__
        declared = [cls for cls in getattr(module, "NODES", ())]
        declared += [cls for cls in _PENDING
                     if (cls.__module__ == prefix or cls.__module__.startswith(prefix + "."))
                     and cls not in declared]
        latest: dict[str, type[Node]] = {}
        for node_class in declared:  # a re-loaded file declares its classes again: the newest wins
            latest[node_class.schema().name] = node_class
        for node_class in latest.values():
            self.add(node_class, module=getattr(module, "PYTHON_MODULE", None) or module_name)
        return len(latest)


_PENDING: list[type[Node]] = []


def register(node_class: type[Node]) -> type[Node]:
    """Class decorator: declare a node so that the registry loading its module picks it up."""
    node_class.schema()  # fail early on a malformed schema
    _PENDING.append(node_class)
    return node_class


_default: NodeRegistry | None = None
_default_lock = threading.Lock()


def default_registry(extra_packs: Sequence[str | Path] = ()) -> NodeRegistry:
    """The process-wide registry: Loom's built-in nodes plus the given node packs."""
    global _default
    with _default_lock:
        if _default is None:
            registry = NodeRegistry()
            for module in BUILTIN_NODE_MODULES:
                registry.load_module(module)
            for module in OPTIONAL_BUILTIN_NODE_MODULES:
                if importlib.util.find_spec(module) is not None:
                    registry.load_module(module)
            _default = registry
        for pack in extra_packs:
            _default.load_path(pack)
        return _default


def reset_default_registry() -> None:
    global _default
    with _default_lock:
        _default = None
