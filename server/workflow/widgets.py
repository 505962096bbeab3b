"""Widget values of a saved UI node, mapped to input names the way the editor lays widgets out.

A UI workflow stores a node's widget values positionally (``widgets_values``). The editor creates one
widget per widget-capable input, required inputs first and optional ones after, and inserts companion
widgets whose values are saved but never sent to the backend:

* a ``control_after_generate`` combo right after an input that asks for one (``fixed``, ``increment``,
  ``decrement``, ``randomize``; older files store a boolean ``true``), and for a COMBO input also a
  ``control_filter_list`` text box after it;
* in older files an upload button after the last widget of the group holding an ``image_upload`` combo
  (``LoadImage`` saves ``["example.png", "image"]``).

Companions that a file may or may not carry are matched by count and by the look of the value, so a
file written by an older or newer editor maps onto the same names. Values can also come as a dict
(``widgets_values`` of some custom nodes, or the newer ``widgets_values_named``), which wins by name.

Two V3 shapes follow ComfyUI_frontend as well:

* a ``COMFY_DYNAMICCOMBO_V3`` combo (``ResizeImageMaskNode``'s ``resize_type``) is followed by the widgets
  of its chosen option only, required then optional in declared order, each with its own companions
  (``dynamicWidgets.ts``: ``updateWidgets`` splices the option's new widgets in right after the combo);
  the next top-level widget comes after them. Only the chosen option's inputs (``resize_type.<key>``)
  are sent; the others do not exist on the node;
* an ``IMAGECOMPARE`` widget is neither saved in ``widgets_values`` nor restored from it
  (``useImageCompareWidget.ts`` sets ``widget.serialize = false``) but is sent in the prompt
  (``options.serialize`` stays true) with the value it was created with, ``['', '']``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from loom.nodes.kernel.schema import CONTROL_AFTER_GENERATE_VALUES, Boolean, Combo, Float, InputSpec, Int, Schema, String

CONTROL_VALUES = frozenset(CONTROL_AFTER_GENERATE_VALUES) | {"increment-wrap"}

# The editor gives these INT inputs a control widget even when the definition does not ask for one.
LEGACY_SEED_NAMES = ("seed", "noise_seed")

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"

# Widgets that the editor leaves out of widgets_values (``widget.serialize = false``) but sends in the
# prompt, by input type, with the value a fresh one holds (ComfyUI_frontend useImageCompareWidget.ts).
UNSAVED_WIDGETS: dict[str, tuple[Any, ...]] = {"IMAGECOMPARE": ("", "")}


def unsaved_widget_value(spec: InputSpec) -> Any:
    """The value graphToPrompt sends for a widget that is never saved (a fresh list each time)."""
    return list(UNSAVED_WIDGETS[spec.type])


@dataclass(frozen=True)
class DynamicCombo:
    """A ``COMFY_DYNAMICCOMBO_V3`` input: each option key with the prompt names of the inputs it brings
    (``"<combo>.<input>"``, required then optional, as ``/object_info`` declares them)."""

    name: str
    options: dict[str, tuple[str, ...]]


def dynamic_combos(info: Any) -> dict[str, DynamicCombo]:
    """The dynamic combos of a node's ``/object_info`` entry by prompt name, nested ones included."""
    combos: dict[str, DynamicCombo] = {}
    inputs = info.get("input") if isinstance(info, dict) else None
    _collect_dynamic_combos(inputs, "", combos, 0)
    return combos


def _collect_dynamic_combos(inputs: Any, prefix: str, combos: dict[str, DynamicCombo], depth: int) -> None:
    if not isinstance(inputs, dict) or depth > 16:
        return
    for group in ("required", "optional"):
        entries = inputs.get(group)
        if not isinstance(entries, dict):
            continue
        for key, entry in entries.items():
            if not (isinstance(entry, (list, tuple)) and len(entry) >= 2 and entry[0] == DYNAMIC_COMBO
                    and isinstance(entry[1], dict)):
                continue
            name = prefix + str(key)
            options: dict[str, tuple[str, ...]] = {}
            for option in entry[1].get("options") or []:
                if not isinstance(option, dict) or not isinstance(option.get("key"), str):
                    continue
                option_inputs = option.get("inputs") if isinstance(option.get("inputs"), dict) else {}
                names = [f"{name}.{inner}" for part in ("required", "optional")
                         if isinstance(option_inputs.get(part), dict) for inner in option_inputs[part]]
                options.setdefault(option["key"], tuple(names))
                _collect_dynamic_combos(option_inputs, name + ".", combos, depth + 1)
            combos[name] = DynamicCombo(name, options)


def _option_input_names(combos: dict[str, DynamicCombo]) -> set[str]:
    return {name for combo in combos.values() for names in combo.options.values() for name in names}


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of ``widgets_values``: a widget's value, or one of its companions."""

    kind: str  # "value" | "control" | "filter" | "upload"
    spec: InputSpec
    always_saved: bool  # False: some files carry it, some do not


_LAYOUTS: dict[int, tuple[Schema, list[WidgetSlot]]] = {}


def widget_slots(schema: Schema) -> list[WidgetSlot]:
    """The ``widgets_values`` layout of a node: each widget followed by its companions."""
    cached = _LAYOUTS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    slots = _layout(schema)
    _LAYOUTS[id(schema)] = (schema, slots)
    return slots


def _layout(schema: Schema, combos: dict[str, DynamicCombo] | None = None,
            chosen: dict[str, Any] | None = None) -> list[WidgetSlot]:
    """Each widget with its companions; a dynamic combo followed by the widgets of option ``chosen[name]``."""
    combos = combos or {}
    chosen = chosen or {}
    option_inputs = _option_input_names(combos)
    slots: list[WidgetSlot] = []
    for group in (schema.required_inputs, schema.optional_inputs):
        upload_owner: InputSpec | None = None
        for spec in group:
            if not spec.has_widget or spec.type in UNSAVED_WIDGETS or spec.name in option_inputs:
                continue
            slots.extend(_spec_slots(spec))
            if spec.name in combos:
                slots.extend(_option_slots(schema, combos, spec.name, chosen, 0))
            if isinstance(spec, Combo) and spec.image_upload:
                upload_owner = spec
        if upload_owner is not None:
            slots.append(WidgetSlot("upload", upload_owner, False))
    return slots


def _spec_slots(spec: InputSpec) -> list[WidgetSlot]:
    slots = [WidgetSlot("value", spec, True)]
    if spec.has_control_after_generate:
        slots.append(WidgetSlot("control", spec, True))
        if isinstance(spec, Combo):
            slots.append(WidgetSlot("filter", spec, False))
    elif isinstance(spec, Int) and spec.name in LEGACY_SEED_NAMES:
        slots.append(WidgetSlot("control", spec, False))
    return slots


def _option_slots(schema: Schema, combos: dict[str, DynamicCombo], name: str, chosen: dict[str, Any],
                  depth: int) -> list[WidgetSlot]:
    """The widgets of the chosen option of combo ``name`` (sockets such as ``match`` have none)."""
    key = chosen.get(name)
    names = combos[name].options.get(key, ()) if isinstance(key, str) else ()
    slots: list[WidgetSlot] = []
    for input_name in names:
        spec = schema.input(input_name)
        if spec is None or not spec.has_widget or spec.type in UNSAVED_WIDGETS:
            continue
        slots.extend(_spec_slots(spec))
        if input_name in combos and depth < 16:
            slots.extend(_option_slots(schema, combos, input_name, chosen, depth + 1))
    return slots


def looks_like_control(value: Any) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)


def _plausible_companion(slot: WidgetSlot, value: Any) -> bool:
    if slot.kind == "control":
        return looks_like_control(value)
    # the filter box holds text; the upload button holds "image"/"video"/... or nothing
    return value is None or isinstance(value, str)


def widget_default(spec: InputSpec) -> Any:
    """The value a freshly created widget holds (what the editor sends when nothing was saved)."""
    default = getattr(spec, "default", None)
    if default is not None:
        return default
    if isinstance(spec, Combo):
        try:
            choices = spec.choices()
        except Exception:  # a folder that cannot be listed: no better default than empty
            choices = []
        return choices[0] if choices else ""
    if isinstance(spec, (Int, Float)):
        zero: int | float = 0 if isinstance(spec, Int) else 0.0
        if spec.min is not None and zero < spec.min:
            return spec.min
        if spec.max is not None and zero > spec.max:
            return spec.max
        return zero
    if isinstance(spec, Boolean):
        return False
    if isinstance(spec, String):
        return ""
    return None


@dataclass
class WidgetValues:
    """Values by input name, plus the names that had no saved value (their defaults were used).

    ``inactive`` names the inputs of dynamic-combo options that are not chosen: the node does not have
    them, so nothing is sent for them (not even a link)."""

    values: dict[str, Any]
    defaulted: list[str]
    inactive: frozenset[str] = frozenset()


def assign_widget_values(schema: Schema, widgets_values: Any, named: Any = None,
                         combos: dict[str, DynamicCombo] | None = None) -> WidgetValues:
    """Map a node's saved widget values (a list, a dict, or nothing) to its widget input names.

    ``combos`` (from :func:`dynamic_combos` of the node's ``/object_info``) makes the layout follow each
    dynamic combo's chosen option; the choice is read from the values themselves, so the layout is
    rebuilt until it agrees with the values read through it (a combo comes before its options' widgets).
    """
    combos = {name: combo for name, combo in (combos or {}).items() if schema.input(name) is not None}
    by_name: dict[str, Any] = {}
    if isinstance(widgets_values, dict):
        by_name.update(widgets_values)
    if isinstance(named, dict):
        by_name.update(named)
    chosen = {name: widget_default(schema.input(name)) for name in combos}  # type: ignore[arg-type]
    for _ in range(len(combos) + 2):
        slots = _layout(schema, combos, chosen) if combos else widget_slots(schema)
        values: dict[str, Any] = {}
        if isinstance(widgets_values, list):
            values.update(_assign_positional(slots, widgets_values))
        widget_specs = [slot.spec for slot in slots if slot.kind == "value"]
        for spec in widget_specs:
            if spec.name in by_name and by_name[spec.name] is not None:
                values[spec.name] = by_name[spec.name]
        now_chosen = {name: values[name] if values.get(name) is not None else chosen[name] for name in combos}
        if now_chosen == chosen:
            break
        chosen = now_chosen
    defaulted = []
    for spec in widget_specs:
        if values.get(spec.name) is None:
            values[spec.name] = widget_default(spec)
            defaulted.append(spec.name)
    for spec in schema.inputs:
        if spec.type in UNSAVED_WIDGETS and spec.has_widget:
            values[spec.name] = unsaved_widget_value(spec)
    active = {spec.name for spec in widget_specs}
    for combo in combos.values():
        key = values.get(combo.name)
        if combo.name in active and isinstance(key, str):
            active.update(combo.options.get(key, ()))
    inactive = frozenset(_option_input_names(combos) - active)
    return WidgetValues(values, defaulted, inactive)


def _assign_positional(slots: list[WidgetSlot], saved: list[Any]) -> dict[str, Any]:
    always = sum(1 for slot in slots if slot.always_saved)
    spare = len(saved) - always  # how many optional companions this list has room for
    values: dict[str, Any] = {}
    position = 0
    for slot in slots:
        if position >= len(saved):
            break
        value = saved[position]
        if slot.kind == "value":
            if value is not None:
                values[slot.spec.name] = value
            position += 1
        elif slot.always_saved:
            # a control entry every modern file has; a truncated list may still lack it
            if _plausible_companion(slot, value):
                position += 1
        elif spare > 0 and _plausible_companion(slot, value):
            position += 1
            spare -= 1
    return values


# --------------------------------------------------------------------------------------------
# Text replacements in output file names
# --------------------------------------------------------------------------------------------

# Nodes whose ``filename_prefix`` the editor expands before queueing (``%date:yyyy-MM-dd%``,
# ``%NodeName.widget%``); the backend savers only know %year%, %width%, ... themselves.
FILENAME_PREFIX_NODES = frozenset({
    "SaveImage", "SaveImageAdvanced", "SaveSVGNode", "SaveVideo", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio",
    "SaveAudioMP3", "SaveAudioOpus", "SaveAudioAdvanced", "SaveGLB", "SaveAnimatedPNG", "CLIPSave", "VAESave",
    "ModelSave", "LoraSave", "SaveLatent",
})
_REPLACEMENT = re.compile(r"%([^%]+)%")
_DATE_TOKEN = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")
_UNSAFE_IN_FILENAME = re.compile(r'[/?<>\\:*|"\x00-\x1f\x7f]')


def format_date(pattern: str, when: datetime) -> str:
    """The editor's date format: ``yyyy``, ``yy``, ``MM``, ``dd``, ``hh``, ``mm``, ``ss`` (one letter: no padding)."""
    parts = {"d": when.day, "M": when.month, "h": when.hour, "m": when.minute, "s": when.second}

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token == "yy":
            return str(when.year)[2:]
        if token == "yyyy":
            return str(when.year)
        if token[0] in parts:
            return str(parts[token[0]]).rjust(len(token), "0")
        return token

    return _DATE_TOKEN.sub(replace, pattern)


def apply_text_replacements(text: str, widget_lookup: Callable[[str, str], Any], when: datetime) -> str:
    """Expand ``%date:FORMAT%`` and ``%Node.widget%`` (node by its S&R name, then by title) like the editor.

    ``widget_lookup(node, widget)`` returns the widget's value or raises ``LookupError``. Patterns that
    match nothing stay as written (the backend expands %width%, %year%, ...).
    """
    def replace(match: re.Match) -> str:
        body = match.group(1)
        split = body.split(".")
        if len(split) != 2:
            if split[0].startswith("date:"):
                return format_date(split[0][5:], when)
            return match.group(0)
        try:
            value = widget_lookup(split[0], split[1])
        except LookupError:
            return match.group(0)
        return _UNSAFE_IN_FILENAME.sub("_", "" if value is None else _js_text(value))

    return _REPLACEMENT.sub(replace, text)


def _js_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
