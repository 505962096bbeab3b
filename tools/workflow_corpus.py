"""Measure how many shared ComfyUI workflows convert and validate in Loom, by model family.

    python tools/workflow_corpus.py FOLDER [FOLDER ...] [--family SD1.5 ...] [--details] [--json OUT]

Every ``*.json``, ``*.png`` and ``*.webp`` under the folders is read the way ``loom run`` reads it
(:func:`loom.server.workflow.load_workflow_file`); files that hold no workflow (input pictures, index
files) are left out of the count. Each workflow is then

1. **classified** by model family (rule below);
2. **converted** from its UI graph to an API prompt with :func:`loom.server.workflow.ui_to_api`, as
   ``loom run`` does. ``loom run`` falls back to the API prompt an image also embeds when the UI graph
   cannot be converted; this tool does not, so a converter gap is never hidden (a file with only an
   API prompt is validated as it is);
3. **given its files**: in a fresh models folder and input folder, an empty placeholder for every model
   name the prompt gives an input that lists a model folder (the folder is the one Loom's schema names
   for that input), and a 1×1 PNG for every name given to an image-upload input (``LoadImage`` opens the
   picture's header when it validates). Model files are never opened by validation (names only), so
   empty placeholders validate exactly as real files would; the runtime reads the headers when it loads;
4. **checked for values on the wrong input**: every literal widget value must be of its input's kind
   (an INT input gets an integer, a FLOAT a number, a BOOLEAN a boolean, a STRING text, a COMBO text;
   a model-folder COMBO a file name; an option list never gets a control_after_generate word or a model
   file name). Loom's validation would coerce some of these (``"20"`` to an INT), and placeholders would
   make any misplaced model name "exist", so this check runs first and is its own failure class.
   An image that embeds the prompt that ran in ComfyUI is also compared input by input with the
   converted prompt (``differs from the saved prompt``);
5. **validated** with :func:`loom.server.validation.validate_prompt`; like ``loom validate``, a workflow
   with any invalid output fails.

Family rule. The names of the diffusion models a workflow loads (``ckpt_name`` / ``unet_name`` of the
loader nodes), the other model file names, the text-encoder ``type`` widgets (``CLIPLoader``,
``DualCLIPLoader``, ...) and the node types are matched against :data:`MARKERS`, in order, first match
wins per name. Families Loom lacks (video, Wan, Hunyuan, LTXV, Qwen-Image, HiDream, Lumina, Chroma,
FLUX.2, Stable Cascade, audio, 3D, ...) are "out of scope"; one such marker anywhere puts the workflow
out of scope. Otherwise the workflow belongs to the highest in-scope family it names (FLUX.1 > SD3 >
SDXL > SD2.x > SD1.5: an SD3.5 workflow that also runs an SD2-based depth estimator is SD3); a
checkpoint with no marker at all (community SD1.5 checkpoints such as ``Anything-V3.0.ckpt``) counts as
SD1.5. A workflow that loads no model (API nodes, image utilities) is "no model".

Failure reasons are grouped: unknown node types split into custom node packs (a node whose saved
``properties.cnr_id`` is not ``comfy-core``, or a type that no core node of the corpus carries and whose
name has a pack suffix), nodes blocked here (:data:`BLOCKED`) and missing core nodes; then converter
errors, wrong-input values, saved-prompt differences and validation errors by message, node type and input.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

IN_SCOPE = ("SD1.5", "SD2.x", "SDXL", "SD3", "FLUX.1")  # lowest to highest

# (regex on a lower-cased model name, text-encoder type or node type, family); first match wins
MARKERS: tuple[tuple[str, str], ...] = (
    # families Loom lacks
    (r"flux[-_.]?2", "FLUX.2"),
    (r"chroma", "Chroma"),
    (r"hidream", "HiDream"),
    (r"qwen[-_]?image|qwen_2\.5_vl|firered", "Qwen-Image"),
    (r"lumina|z[-_]image|netayume", "Lumina/Z-Image"),
    (r"hunyuan|capybara", "Hunyuan"),
    (r"(?<![a-z])wan|vace|humo|chrono_?edit|infinitetalk|umt5", "Wan"),
    (r"ltx", "LTXV"),
    (r"mochi|cosmos|kandinsky|(?<![a-z])svd|minimax|fastvideo|cogvideo|seedvr", "video"),
    (r"stable_cascade", "Stable Cascade"),
    (r"aura_?flow", "AuraFlow"),
    (r"omnigen|ovis|pixeldit|pixart|newbie|(?<![a-z])anima[-_]|boogu|ernie|fibo\d|kolors|longcat|mage_flow|"
     r"joyai|ideogram", "other image"),
    (r"stable[-_]audio|ace[-_]?step|(?<![a-z])ace(?![a-z])|yue\d|music", "audio"),
    (r"hunyuan3d|zero123|trellis|triposplat|pixal3d|moge|sam_3d", "3D"),
    (r"sam3|birefnet|depth_anything|rt_detr|sdpose|film_net|(?<![a-z])raft", "utility model"),
    # families Loom has
    (r"sd3|stable[-_]diffusion[-_]3", "SD3"),
    (r"flux", "FLUX.1"),
    (r"sd_?xl|cosxl|(?<!t5x)xl(?=[_.v-]|$)|pony|illustrious", "SDXL"),
    (r"v2-[01]|sd2|sd21|768-v|512-inpainting|wd-1-5|wd-illusion|sd_turbo|unclip-h|lotus", "SD2.x"),
    (r"v1-[45]|sd15|sd1\.5|sd-v1|sd14", "SD1.5"),
)
CHECKPOINT_LOADERS = ("CheckpointLoaderSimple", "CheckpointLoader", "unCLIPCheckpointLoader",
                      "ImageOnlyCheckpointLoader")
TEXT_ENCODER_LOADERS = ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader")

BLOCKED = frozenset({"UpscaleModelLoader", "ImageUpscaleWithModel"})
"""Core nodes that need spandrel, which cannot be installed here (it needs torchvision)."""
PACK_SUFFIX = re.compile(r"\(rgthree\)|\|pysssss|//|🐍|KJ$|_Zho|Impact|WAS ", re.IGNORECASE)
MODEL_FILE = re.compile(r"\.(safetensors|sft|ckpt|pt|pth|bin|pt2|gguf|onnx|pkl)$", re.IGNORECASE)
FILE_NAME = re.compile(r"\.[A-Za-z0-9]{2,5}$")
CONTROL_WORDS = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})


# --------------------------------------------------------------------------------------------
# Reading the corpus
# --------------------------------------------------------------------------------------------

def workflow_files(folders: Iterable[Path]) -> Iterator[Path]:
    for folder in folders:
        paths = [folder] if folder.is_file() else sorted(folder.rglob("*"))
        for path in paths:
            if path.is_file() and path.suffix.lower() in (".json", ".png", ".webp"):
                yield path


def ui_nodes(ui: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every node object of a UI graph, subgraph definitions included."""
    if not isinstance(ui, dict):
        return []
    found = [n for n in ui.get("nodes") or [] if isinstance(n, dict)]
    definitions = ui.get("definitions") if isinstance(ui.get("definitions"), dict) else {}
    for definition in definitions.get("subgraphs") or []:
        found += ui_nodes(definition) if isinstance(definition, dict) else []
    return found


def node_strings(node: dict[str, Any]) -> list[str]:
    saved = node.get("widgets_values", node.get("inputs"))
    values = saved.values() if isinstance(saved, dict) else saved if isinstance(saved, list) else []
    return [v for v in values if isinstance(v, str)]


def core_types(loaded: list[Any]) -> set[str]:
    """Node types the corpus marks as ComfyUI core (``properties.cnr_id == "comfy-core"``)."""
    core: set[str] = set()
    for item in loaded:
        for node in ui_nodes(item.ui):
            properties = node.get("properties") if isinstance(node.get("properties"), dict) else {}
            if properties.get("cnr_id") == "comfy-core" and isinstance(node.get("type"), str):
                core.add(node["type"])
    return core


# --------------------------------------------------------------------------------------------
# Family
# --------------------------------------------------------------------------------------------

def marker_family(text: str) -> str | None:
    lowered = text.lower()
    for pattern, family in MARKERS:
        if re.search(pattern, lowered):
            return family
    return None


def classify(ui: dict[str, Any] | None, api: dict[str, Any] | None) -> str:
    """The workflow's model family (see the module docstring)."""
    nodes = ui_nodes(ui) if ui is not None else [
        {"type": n.get("class_type"), "widgets_values": n.get("inputs")} for n in (api or {}).values()
        if isinstance(n, dict)]
    families: set[str] = set()
    loads_model = False
    for node in nodes:
        type_name = node.get("type") if isinstance(node.get("type"), str) else ""
        strings = node_strings(node)
        models = [s for s in strings if MODEL_FILE.search(s)]
        if type_name in TEXT_ENCODER_LOADERS:  # the text encoders' ``type`` widget: "flux", "sd3", "wan", ...
            for value in strings:
                family = None if MODEL_FILE.search(value) else marker_family(value)
                if family is not None:
                    families.add(family)
        for name in models:
            loads_model = True
            family = marker_family(name.replace("\\", "/").rsplit("/", 1)[-1])
            if family is None and type_name in CHECKPOINT_LOADERS:
                family = "SD1.5"  # an unmarked community checkpoint
            if family is not None:
                families.add(family)
    out = sorted(f for f in families if f not in IN_SCOPE)
    if out:
        return out[0]
    inside = [f for f in IN_SCOPE if f in families]
    if inside:
        return inside[-1]
    return "unknown model" if loads_model else "no model"


# --------------------------------------------------------------------------------------------
# One workflow
# --------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    path: str
    family: str
    validated: bool = False
    reasons: list[str] = field(default_factory=list)


def unknown_type_reason(type_name: str, ui: dict[str, Any] | None, core: set[str]) -> str:
    if type_name in BLOCKED:
        return f"node blocked (needs spandrel): {type_name}"
    packs = {str((n.get("properties") or {}).get("cnr_id") or (n.get("properties") or {}).get("aux_id") or "")
             for n in ui_nodes(ui) if n.get("type") == type_name and isinstance(n.get("properties"), dict)}
    packs.discard("")
    if packs and packs != {"comfy-core"}:
        return f"custom node pack ({', '.join(sorted(packs))}): {type_name}"
    if type_name not in core and not packs and PACK_SUFFIX.search(type_name):
        return f"custom node pack (unnamed): {type_name}"
    return f"missing core node: {type_name}"


def wrong_input(spec: Any, value: Any) -> str | None:
    """Why ``value`` cannot be meant for ``spec`` (a value of another kind), or None."""
    from loom.nodes.kernel.schema import Boolean, Combo, Float, Int, String

    if isinstance(value, dict) and set(value) == {"__value__"}:
        value = value["__value__"]
    kind = type(value).__name__
    if isinstance(spec, Int):
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer())
    elif isinstance(spec, Float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(spec, Boolean):
        ok = isinstance(value, bool)
    elif isinstance(spec, String):
        ok = isinstance(value, str)
    elif isinstance(spec, Combo):
        if not isinstance(value, str):
            return f"COMBO got a {kind}"
        if spec.folder is not None:
            return None if MODEL_FILE.search(value) else "model COMBO got a value that is not a file name"
        if spec.image_upload:
            return None if FILE_NAME.search(value.split(" [")[0]) else "file COMBO got a value that is not a file name"
        try:
            choices = spec.choices()
        except Exception:
            return None
        if value in choices:
            return None
        if value in CONTROL_WORDS:
            return "option COMBO got a control_after_generate word"
        if MODEL_FILE.search(value):
            return "option COMBO got a model file name"
        return None
    else:
        return None
    return None if ok else f"{spec.type} got a {kind}"


def prompt_differences(ours: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """Literal inputs on which the converted prompt and the prompt saved with an image disagree."""
    from loom.server.validation import is_link

    found = []
    for node_id, node in ours.items():
        other = saved.get(node_id)
        if not isinstance(other, dict) or other.get("class_type") != node["class_type"]:
            continue
        for name, value in node["inputs"].items():
            if name not in (other.get("inputs") or {}):
                continue
            theirs = other["inputs"][name]
            if is_link(value) or is_link(theirs) or name == "filename_prefix":
                continue
            same = value == theirs or (isinstance(value, (int, float)) and isinstance(theirs, (int, float))
                                       and not isinstance(value, bool) and math.isclose(value, theirs,
                                                                                       rel_tol=1e-6))
            if not same:
                found.append(f"differs from the saved prompt: {node['class_type']}.{name}")
    return found


def one_pixel_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()


def place_files(prompt: dict[str, Any], registry: Any, root: Path) -> None:
    """Placeholders for every model file and input picture the prompt names (see the docstring)."""
    from loom.nodes.kernel import folders
    from loom.nodes.image import split_annotation
    from loom.nodes.kernel.schema import Combo
    from loom.server.validation import is_link

    for node in prompt.values():
        node_class = registry.get(node["class_type"])
        if node_class is None:
            continue
        for spec in node_class.schema().inputs:
            value = node["inputs"].get(spec.name)
            if not isinstance(spec, Combo) or not isinstance(value, str) or is_link(value) or not value:
                continue
            if spec.folder is not None and MODEL_FILE.search(value):
                target = folders.current().model_paths(spec.folder)[0] / value
                content = b""
            elif spec.image_upload and FILE_NAME.search(value.split(" [")[0]):
                plain, kind = split_annotation(value)  # "x.png [output]" lives in the output folder
                target = folders.current().data_dir(kind) / plain
                content = one_pixel_png()
            else:
                continue
            if root in target.resolve().parents:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)


def measure(loaded: Any, registry: Any, core: set[str]) -> Outcome:
    from loom.nodes.kernel import folders
    from loom.server.validation import is_link, validate_prompt
    from loom.server.workflow import WorkflowError, ui_to_api

    outcome = Outcome(loaded.path, classify(loaded.ui, loaded.api))
    if loaded.ui is not None:
        try:
            prompt = ui_to_api(loaded.ui, registry).prompt
        except WorkflowError as problem:
            for item in problem.problems or [{"message": problem.message}]:
                message = str(item.get("message", ""))
                type_name = item.get("class_type")
                if message.startswith("unknown node type") and isinstance(type_name, str):
                    outcome.reasons.append(unknown_type_reason(type_name, loaded.ui, core))
                else:
                    outcome.reasons.append(f"conversion error: {_generic(message)}")
            outcome.reasons = list(dict.fromkeys(outcome.reasons))
            return outcome
    else:
        prompt = json.loads(json.dumps(loaded.api))
        unknown = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in registry})
        if unknown:
            outcome.reasons += [unknown_type_reason(t, None, core) for t in unknown]
            return outcome

    for node in prompt.values():
        schema = registry.get(node["class_type"]).schema()
        for spec in schema.inputs:
            value = node["inputs"].get(spec.name)
            if value is None or is_link(value):
                continue
            why = wrong_input(spec, value)
            if why:
                outcome.reasons.append(f"value on the wrong input: {node['class_type']}.{spec.name} ({why})")
    if loaded.ui is not None and loaded.api is not None:
        outcome.reasons += prompt_differences(prompt, loaded.api)

    with tempfile.TemporaryDirectory(prefix="loom-corpus-") as scratch:
        root = Path(scratch).resolve()
        folders.configure(root, root / "models")
        place_files(prompt, registry, root)
        result = validate_prompt(prompt, registry)
    if not result.ok or result.node_errors:
        for node_id, entry in result.node_errors.items():
            for err in entry["errors"]:
                name = err.get("extra_info", {}).get("input_name")
                where = entry["class_type"] + (f".{name}" if name else "")
                outcome.reasons.append(f"invalid: {err['message']} ({where})")
        if not result.node_errors and result.error:
            outcome.reasons.append(f"invalid: {result.error['message']}")
    outcome.reasons = list(dict.fromkeys(outcome.reasons))
    outcome.validated = not outcome.reasons
    return outcome


def _generic(message: str) -> str:
    return re.sub(r"node [\w:]+", "node N", message)[:160]


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

def reason_group(reason: str) -> str:
    return reason.split(":", 1)[0]


def report(outcomes: list[Outcome], details: bool) -> str:
    by_family: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_family[outcome.family].append(outcome)
    lines = ["| family | workflows | validated | failing only on nodes counted apart |", "|---|---:|---:|---:|"]
    order = list(reversed(IN_SCOPE)) + sorted(f for f in by_family if f not in IN_SCOPE)
    total = [0, 0, 0]
    for family in order:
        items = by_family.get(family)
        if not items:
            continue
        ok = sum(o.validated for o in items)
        apart = sum(1 for o in items if not o.validated and all(_counted_apart(r) for r in o.reasons))
        lines.append(f"| {family} | {len(items)} | {ok} | {apart} |")
        if family in IN_SCOPE:
            total = [total[0] + len(items), total[1] + ok, total[2] + apart]
    if total[0]:
        lines.append(f"| **in scope** | **{total[0]}** | **{total[1]}** ({100 * total[1] / total[0]:.0f} %) "
                     f"| {total[2]} |")
    in_scope = [o for o in outcomes if o.family in IN_SCOPE and not o.validated]
    counts = Counter(r for o in in_scope for r in o.reasons)
    if counts:
        lines += ["", "Failure reasons of the in-scope workflows (workflows affected):", ""]
        for group in sorted({reason_group(r) for r in counts}):
            lines.append(f"* {group}")
            for reason, count in counts.most_common():
                if reason_group(reason) == group:
                    lines.append(f"  * {count} × {reason.split(':', 1)[1].strip()}")
    if details:
        lines += ["", "Per workflow:", ""]
        for outcome in sorted(outcomes, key=lambda o: (o.family not in IN_SCOPE, o.family, o.path)):
            if outcome.family in IN_SCOPE:
                state = "ok" if outcome.validated else "; ".join(outcome.reasons)
                lines.append(f"* [{outcome.family}] {outcome.path}: {state}")
    return "\n".join(lines)


def _counted_apart(reason: str) -> bool:
    return reason.startswith(("node blocked", "custom node pack"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--details", action="store_true", help="list every in-scope workflow and its reasons")
    parser.add_argument("--json", type=Path, help="write every outcome as JSON here")
    args = parser.parse_args(argv)

    from loom.nodes.kernel.schema import default_registry
    from loom.server.workflow import WorkflowError, load_workflow_file

    registry = default_registry()
    loaded = []
    for path in workflow_files(args.folders):
        try:
            loaded.append(load_workflow_file(path))
        except WorkflowError:
            continue  # a picture without a workflow, an index file: not part of the corpus
    core = core_types(loaded)
    outcomes = []
    for item in loaded:
        outcome = measure(item, registry, core)
        if not args.family or outcome.family in args.family:
            outcomes.append(outcome)
    print(report(outcomes, args.details))
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
