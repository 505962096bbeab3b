"""ComfyUI's text nodes (its ``nodes_string`` and ``nodes_text``): concatenate, replace, length, regex
extract and replace, a key from JSON, and SaveText.

Regex patterns run on Python's ``re`` with ComfyUI's flags; a broken pattern gives ``""`` from
RegexExtract (as ComfyUI) and a clear error from RegexReplace (ComfyUI raises too).
"""
from __future__ import annotations

import json
import re
from loom.nodes.kernel import folders
from loom.nodes.output_files import save_target
from loom.nodes.kernel.schema import Boolean, Combo, Int, Node, NodeOutput, Output, Schema, String, register

CATEGORY = "text"


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


@register
class StringConcatenate(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("StringConcatenate", display_name="Concatenate Text", category=CATEGORY,
                      inputs=[String("string_a", default=None, multiline=True),
                              String("string_b", default=None, multiline=True),
                              String("delimiter", default="")],
                      outputs=[Output("STRING")])

    @classmethod
    def execute(cls, string_a: str, string_b: str, delimiter: str) -> tuple:
        return (delimiter.join((string_a, string_b)),)


@register
class StringReplace(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("StringReplace", display_name="Replace Text", category=CATEGORY,
                      inputs=[String("string", default=None, multiline=True),
                              String("find", default=None, multiline=True),
                              String("replace", default=None, multiline=True)],
                      outputs=[Output("STRING")])

    @classmethod
    def execute(cls, string: str, find: str, replace: str) -> tuple:
        return (string.replace(find, replace),)


@register
class StringLength(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("StringLength", display_name="Text Length", category=CATEGORY,
                      inputs=[String("string", default=None, multiline=True)],
                      outputs=[Output("INT", name="length")])

    @classmethod
    def execute(cls, string: str) -> tuple:
        return (len(string),)


@register
class RegexExtract(Node):
    MODES = ("First Match", "All Matches", "First Group", "All Groups")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("RegexExtract", display_name="Extract Text", category=CATEGORY,
                      inputs=[String("string", default=None, multiline=True),
                              String("regex_pattern", default=None, multiline=True),
                              Combo("mode", options_source=cls.MODES),
                              Boolean("case_insensitive", default=True, advanced=True),
                              Boolean("multiline", default=False, advanced=True),
                              Boolean("dotall", default=False, advanced=True),
                              Int("group_index", default=1, min=0, max=100, advanced=True)],
                      outputs=[Output("STRING")])

    @classmethod
    def execute(cls, string: str, regex_pattern: str, mode: str, case_insensitive: bool, multiline: bool,
                dotall: bool, group_index: int) -> tuple:
        flags = _flags(case_insensitive, multiline, dotall)

        def group_of(match: re.Match) -> str | None:
            if match.groups() and len(match.groups()) >= group_index:
                return match.group(group_index)
            return None

        try:
            if mode == "First Match":
                match = re.search(regex_pattern, string, flags)
                return (match.group(0) if match else "",)
            if mode == "All Matches":
                found = re.findall(regex_pattern, string, flags)
                return ("\n".join(m[0] if isinstance(m, tuple) else m for m in found),)
            if mode == "First Group":
                match = re.search(regex_pattern, string, flags)
                if match and len(match.groups()) >= group_index and match.group(group_index) is not None:
                    return (match.group(group_index),)
                return ("",)
            if mode == "All Groups":
                groups = [group_of(m) for m in re.finditer(regex_pattern, string, flags)]
                return ("\n".join(g for g in groups if g is not None),)
        except re.error:
            return ("",)
        return ("",)


@register
class RegexReplace(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "RegexReplace", display_name="Replace Text (Regex)", category=CATEGORY,
            description="Find and replace text using regex patterns.",
            inputs=[String("string", default=None, multiline=True),
                    String("regex_pattern", default=None, multiline=True),
                    String("replace", default=None, multiline=True),
                    Boolean("case_insensitive", default=True, optional=True, advanced=True),
                    Boolean("multiline", default=False, optional=True, advanced=True),
                    Boolean("dotall", default=False, optional=True, advanced=True,
                            tooltip="When enabled, the dot (.) character will match any character including "
                                    "newline characters. When disabled, dots won't match newlines."),
                    Int("count", default=0, min=0, max=100, optional=True, advanced=True,
                        tooltip="Maximum number of replacements to make. Set to 0 to replace all occurrences "
                                "(default). Set to 1 to replace only the first match, 2 for the first two "
                                "matches, etc.")],
            outputs=[Output("STRING")])

    @classmethod
    def execute(cls, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False, count: int = 0) -> tuple:
        try:
            return (re.sub(regex_pattern, replace, string, count=count,
                           flags=_flags(case_insensitive, multiline, dotall)),)
        except re.error as error:
            raise ValueError(f"RegexReplace: input 'regex_pattern' or 'replace': {error}") from None


@register
class JsonExtractString(Node):
    """The value of ``key`` in the first ``{...}`` of the text that parses as JSON (so JSON inside a
    Markdown code block works); ``""`` when there is none or the key is missing or null."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("JsonExtractString", display_name="Extract Text from JSON", category=CATEGORY,
                      description="Extract a key's value from the first valid JSON object in the text, "
                                  "including Markdown code blocks.",
                      inputs=[String("json_string", default=None, multiline=True), String("key", default=None)],
                      outputs=[Output("STRING")])

    @classmethod
    def execute(cls, json_string: str, key: str) -> tuple:
        decoder = json.JSONDecoder()
        for match in re.finditer(r"\{", json_string):
            try:
                data, _ = decoder.raw_decode(json_string, match.start())
            except json.JSONDecodeError:
                continue
            value = data.get(key)
            return ("" if value is None else str(value),)
        return ("",)


@register
class SaveText(Node):
    """Write the text to ``{prefix}_{counter:05}.{format}`` in the output folder; JSON that parses is
    pretty-printed (indent 2, non-ASCII kept), anything else is written as it is."""

    FORMATS = ("txt", "csv", "md", "json")

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("SaveText", display_name="Save Text", category=CATEGORY, output_node=True,
                      description="Save text content to a file in the output directory.",
                      inputs=[String("text", default=None, force_input=True),
                              String("filename_prefix", default="ComfyUI"),
                              Combo("format", options_source=cls.FORMATS, default="txt")],
                      outputs=[Output("STRING", name="text")])

    @classmethod
    def execute(cls, text: str, filename_prefix: str, format: str) -> NodeOutput:
        target = save_target(filename_prefix, "output")
        content = text
        if format == "json":
            try:
                content = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            except json.JSONDecodeError:
                pass
        data = content.encode("utf-8")
        counter = target.counter
        while not folders.write_new(target.folder / f"{target.filename}_{counter:05}.{format}", data):
            counter += 1
        name = f"{target.filename}_{counter:05}.{format}"
        return NodeOutput(text, ui={"text": (text,),
                                    "files": [{"filename": name, "subfolder": target.subfolder,
                                               "type": "output"}]})
