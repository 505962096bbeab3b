"""Sweeps for ``loom run``: one workflow (or several) run once per combination of swept values.

    loom run wf.json --seed 1-8
    loom run wf.json --set KSampler.cfg=4,6,8 --set KSampler.sampler_name=euler,dpmpp_2m   # 6 runs
    loom run wf.json --seed 1-3 --set KSampler.cfg=4,6,8 --zip                             # 3 runs
    loom run a.json b.json --seed 1,2 --contact-sheet sheet.png
    loom run wf.json --seed 1-8 --server http://127.0.0.1:8188                               # on `loom serve`

A sweep is a list of *dimensions* (``--seed`` first, then each ``--set`` in the order given), each a list of
values; the runs are their product, or with ``--zip`` their pairing. Values are coerced to each input's type
from the node definitions (``/object_info``'s shape, read from the local registry or from the server), so a
bad value is refused before anything runs. In-process, every run goes through one
:class:`~loom.server.executor.Executor`, whose cache computes the nodes upstream of the swept inputs once.
Saved files are named by the swept values (``txt2img_seed-3_cfg-6_00001_.png``); a summary table closes the
run, and ``--contact-sheet`` puts every image in one labelled grid.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import math
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TextIO

from loom.server.progress_view import ProgressView

SEED_INPUTS = ("seed", "noise_seed")
IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")
DEFAULT_SERVER = "http://127.0.0.1:8188"
TOKEN_ENV = "LOOM_TOKEN"


class SweepError(Exception):
    """A problem with the sweep the user asked for (the CLI turns it into exit code 2)."""


# --------------------------------------------------------------------------------------------
# parsing the command line's values
# --------------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
MAX_RUNS = 100_000


def parse_seeds(text: str) -> list[int]:
    """``"7"``, ``"1-8"``, ``"1,5,9"`` or mixes like ``"1-3,10"``, in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if _INT.fullmatch(part):
            seeds.append(int(part))
            continue
        match = _RANGE.fullmatch(part)
        if not match:
            raise SweepError(f"--seed {text!r}: {part!r} is not a seed or a range like 1-8")
        first, last = int(match.group(1)), int(match.group(2))
        if last < first:
            raise SweepError(f"--seed {text!r}: the range {part} runs backwards")
        if last - first >= MAX_RUNS:
            raise SweepError(f"--seed {text!r}: the range {part} has more than {MAX_RUNS} seeds")
        seeds.extend(range(first, last + 1))
    return seeds


def is_single_seed(text: str | None) -> bool:
    return text is None or bool(_INT.fullmatch(text.strip()))


def split_target(item: str) -> tuple[str, str, str]:
    """``NODE.INPUT=VALUES`` → (node, input, values text); NODE may contain dots (a title)."""
    target, sep, value = item.partition("=")
    node_ref, dot, input_name = target.rpartition(".")
    if not sep or not dot or not node_ref or not input_name:
        raise SweepError(f"--set {item!r}: expected NODE.INPUT=VALUE")
    return node_ref.strip(), input_name.strip(), value


def may_sweep(value_text: str) -> bool:
    """Whether a ``--set`` value could hold several values (a comma, or a JSON list)."""
    return "," in value_text or value_text.lstrip().startswith("[")


def split_values(text: str, info: "InputInfo") -> list[Any]:
    """The values of one ``--set``: a JSON list, else comma-separated (``\\,`` is a comma in a value).

    STRING inputs are never split at commas (prompts have them): sweep texts with a JSON list. A combo value
    that is one of the options as a whole (a file name with a comma) is one value.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            if not parsed:
                raise SweepError("an empty list")
            return parsed
    if info.type == "STRING" or (info.type == "COMBO" and text in (info.choices or [])):
        return [text]
    parts = [part.replace("\x00", ",").strip() for part in text.replace("\\,", "\x00").split(",")]
    if any(part == "" for part in parts) and len(parts) > 1:
        raise SweepError("an empty value in the list")
    return parts


# --------------------------------------------------------------------------------------------
# node definitions (object_info's shape: the local registry's or the server's)
# --------------------------------------------------------------------------------------------

@dataclass
class InputInfo:
    name: str
    type: str  # INT FLOAT STRING BOOLEAN COMBO, or a socket type (MODEL, LATENT, ...)
    options: dict[str, Any]
    choices: list[str] | None = None

    @property
    def is_seed_like(self) -> bool:
        return self.type == "INT" and bool(self.options.get("control_after_generate"))


class Definitions:
    """Input types by node class, from ``/object_info`` JSON."""

    def __init__(self, object_info: dict[str, Any]) -> None:
        self.info = object_info

    def has(self, class_type: str) -> bool:
        return class_type in self.info

    def inputs(self, class_type: str) -> list[InputInfo]:
        entry = self.info.get(class_type) or {}
        found: list[InputInfo] = []
        for group in ("required", "optional"):
            for name, spec in ((entry.get("input") or {}).get(group) or {}).items():
                kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
                options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 else {}
                options = options if isinstance(options, dict) else {}
                if isinstance(kind, list):
                    found.append(InputInfo(name, "COMBO", options, [str(c) for c in kind]))
                elif kind == "COMBO":
                    found.append(InputInfo(name, "COMBO", options, [str(c) for c in options.get("options") or []]))
                else:
                    found.append(InputInfo(name, str(kind), options))
        return found

    def input(self, class_type: str, name: str) -> InputInfo | None:
        return next((i for i in self.inputs(class_type) if i.name == name), None)


def coerce(info: InputInfo, value: Any) -> Any:
    """``value`` as the input's type, or a :class:`SweepError` saying what is wrong."""
    kind = info.type
    shown = value if isinstance(value, str) else json.dumps(value)
    if kind == "INT":
        number: Any = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and _INT.fullmatch(value.strip()):
            number = int(value.strip())
        if number is None:
            raise SweepError(f"{shown!r} is not an integer")
        return _in_range(info, number)
    if kind == "FLOAT":
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise SweepError(f"{shown!r} is not a number") from None
        if not math.isfinite(number):
            raise SweepError(f"{shown!r} is not a finite number")
        return _in_range(info, number)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise SweepError(f"{shown!r} is not true or false")
    if kind == "COMBO":
        text = value if isinstance(value, str) else shown
        choices = info.choices or []
        if choices and text not in choices:
            listed = ", ".join(choices[:20]) + (", ..." if len(choices) > 20 else "")
            raise SweepError(f"{text!r} is not one of the options: {listed}")
        return text
    if kind == "STRING":
        if isinstance(value, (dict, list)) or value is None:
            raise SweepError(f"{shown} is not text")
        return value if isinstance(value, str) else shown
    raise SweepError(f"it takes a link ({kind}), not a value")


def _in_range(info: InputInfo, number: Any) -> Any:
    low, high = info.options.get("min"), info.options.get("max")
    if low is not None and number < low:
        raise SweepError(f"{number} is below the minimum {low}")
    if high is not None and number > high:
        raise SweepError(f"{number} is above the maximum {high}")
    return number


# --------------------------------------------------------------------------------------------
# finding nodes and inputs in a prompt
# --------------------------------------------------------------------------------------------

def describe_node(prompt: dict[str, Any], node_id: str) -> str:
    node = prompt[node_id]
    title = (node.get("_meta") or {}).get("title")
    kind = node.get("class_type")
    return f"{node_id} {kind}" + (f" {title!r}" if title and title != kind else "")


def find_node(prompt: dict[str, Any], ref: str) -> str:
    """The node ``ref`` names: an id, a unique title, or a unique class type (in that order)."""
    if ref in prompt:
        return ref
    for field_name in ("title", "class_type"):
        matches = sorted((nid for nid, node in prompt.items()
                          if ((node.get("_meta") or {}).get("title") if field_name == "title"
                              else node.get("class_type")) == ref), key=_id_order)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(describe_node(prompt, n) for n in matches)
            raise SweepError(f"{ref!r} matches {len(matches)} nodes ({listed}); name one by its id or a "
                             "unique title")
    listed = ", ".join(describe_node(prompt, n) for n in sorted(prompt, key=_id_order))
    raise SweepError(f"no node with id, title or type {ref!r}; the workflow has: {listed}")


def _id_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def seed_targets(prompt: dict[str, Any], definitions: Definitions) -> list[tuple[str, InputInfo]]:
    """Every sampler seed: INT inputs named seed/noise_seed, and the seed widget of a node feeding one."""
    targets: list[tuple[str, InputInfo]] = []
    feeders: set[str] = set()
    for node_id in sorted(prompt, key=_id_order):
        node = prompt[node_id]
        for info in definitions.inputs(node.get("class_type", "")):
            if info.name not in SEED_INPUTS or info.type != "INT":
                continue
            value = (node.get("inputs") or {}).get(info.name)
            if isinstance(value, list) and len(value) == 2:
                feeders.add(str(value[0]))
            else:
                targets.append((node_id, info))
    for node_id in sorted(feeders, key=_id_order):  # e.g. a PrimitiveInt wired into KSampler.seed
        node = prompt.get(node_id)
        if node is None:
            continue
        for info in definitions.inputs(node.get("class_type", "")):
            value = (node.get("inputs") or {}).get(info.name)
            if info.is_seed_like and not (isinstance(value, list) and len(value) == 2):
                targets.append((node_id, info))
    return targets


# --------------------------------------------------------------------------------------------
# dimensions, points, runs
# --------------------------------------------------------------------------------------------

@dataclass
class Dimension:
    """One swept (or, with one value, simply set) input: ``--seed`` or one ``--set``."""

    source: str  # the option as typed, for messages
    key: str  # its name in labels and file names: "seed", "cfg", "KSampler.cfg"
    values: list[Any]  # raw values (text, or what a JSON list held)
    node_ref: str | None = None  # None: the seed dimension
    input_name: str = ""

    @property
    def labels(self) -> list[str]:
        return [v if isinstance(v, str) else json.dumps(v) for v in self.values]

    @property
    def swept(self) -> bool:
        return len(self.values) > 1


@dataclass
class Workflow:
    path: Path
    prompt: dict[str, Any]
    ui: dict[str, Any] | None

    @property
    def name(self) -> str:
        return safe_name(self.path.stem) or "workflow"


@dataclass
class Run:
    index: int  # 1-based
    workflow: Workflow
    labels: dict[str, str]  # swept dimension key -> value as typed
    prompt: dict[str, Any]

    def describe(self) -> str:
        values = " ".join(f"{k}={v}" for k, v in self.labels.items())
        return f"{self.workflow.path.name}" + (f" {values}" if values else "")


@dataclass
class RunResult:
    run: Run
    status: str = "success"  # success | error | interrupted | skipped
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    error: str = ""
    prompt_id: str = ""
    texts: list[str] = field(default_factory=list)  # what text outputs showed ("node 4: ...")


def build_dimensions(seed_text: str | None, set_items: list[str], first: Workflow,
                     definitions: Definitions) -> list[Dimension]:
    """The dimensions of the command line; each ``--set`` is split by its input's type in ``first``."""
    dims: list[Dimension] = []
    if seed_text is not None:
        dims.append(Dimension(f"--seed {seed_text}", "seed", parse_seeds(seed_text)))
    for item in set_items:
        node_ref, input_name, text = split_target(item)
        info = _resolve(first, node_ref, input_name, definitions, item)[1]
        try:
            values = split_values(text, info)
        except SweepError as problem:
            raise SweepError(f"--set {item!r}: {problem}") from None
        dims.append(Dimension(f"--set {item}", input_name, values, node_ref, input_name))
    keys = [d.key for d in dims]
    for dim in dims:
        if dim.node_ref is not None and keys.count(dim.key) > 1:
            dim.key = f"{dim.node_ref}.{dim.input_name}"
    return dims


def _resolve(workflow: Workflow, node_ref: str, input_name: str, definitions: Definitions,
             item: str) -> tuple[str, InputInfo]:
    prompt = workflow.prompt
    try:
        node_id = find_node(prompt, node_ref)
    except SweepError as problem:
        raise SweepError(f"--set {item!r}: {workflow.path.name}: {problem}") from None
    class_type = prompt[node_id].get("class_type", "?")
    if not definitions.has(class_type):
        raise SweepError(f"--set {item!r}: node {node_id} ({class_type}) is not a known node type")
    info = definitions.input(class_type, input_name)
    if info is None:
        names = ", ".join(i.name for i in definitions.inputs(class_type)) or "(none)"
        raise SweepError(f"--set {item!r}: node {node_id} ({class_type}) has no input {input_name!r}; "
                         f"its inputs are: {names}")
    return node_id, info


def points(dims: list[Dimension], zipped: bool) -> list[tuple[int, ...]]:
    """Index tuples into each dimension's values: the product, or with ``zipped`` the pairing."""
    if not dims:
        return [()]
    if zipped:
        lengths = {len(d.values) for d in dims if d.swept}
        if len(lengths) > 1:
            listed = ", ".join(f"{d.key} has {len(d.values)}" for d in dims if d.swept)
            raise SweepError(f"--zip pairs lists of one length, but {listed} values")
        count = lengths.pop() if lengths else 1
        return [tuple(i if d.swept else 0 for d in dims) for i in range(count)]
    total = math.prod(len(d.values) for d in dims)
    if total > MAX_RUNS:
        raise SweepError(f"the sweep has {total} runs; at most {MAX_RUNS}")
    return list(itertools.product(*(range(len(d.values)) for d in dims)))


def plan_runs(workflows: list[Workflow], dims: list[Dimension], zipped: bool,
              definitions: Definitions) -> list[Run]:
    """Every run's prompt: values coerced and applied, output prefixes named by the swept values."""
    combos = points(dims, zipped)
    runs: list[Run] = []
    for workflow in workflows:
        # resolve and coerce once per workflow: errors before anything runs
        targets: list[list[tuple[str, str]]] = []
        coerced: list[list[list[Any]]] = []  # per dim, per value, per target
        for dim in dims:
            if dim.node_ref is None:
                found = seed_targets(workflow.prompt, definitions)
                if not found:
                    raise SweepError(f"--seed: {workflow.path.name} has no seed input (an INT input named "
                                     "seed or noise_seed)")
            else:
                found = [_resolve(workflow, dim.node_ref, dim.input_name, definitions, dim.source[6:])]
            targets.append([(node_id, info.name) for node_id, info in found])
            per_value = []
            for raw in dim.values:
                row = []
                for node_id, info in found:
                    try:
                        row.append(coerce(info, raw))
                    except SweepError as problem:
                        node = workflow.prompt[node_id]
                        raise SweepError(f"{dim.source}: node {node_id} ({node.get('class_type')}) input "
                                         f"{info.name!r}: {problem}") from None
                per_value.append(row)
            coerced.append(per_value)
        for combo in combos:
            prompt = copy.deepcopy(workflow.prompt)
            for d, value_index in enumerate(combo):
                for (node_id, input_name), value in zip(targets[d], coerced[d][value_index]):
                    prompt[node_id].setdefault("inputs", {})[input_name] = value
            labels = {dim.key: dim.labels[value_index] for dim, value_index in zip(dims, combo) if dim.swept}
            rename_outputs(prompt, workflow.name, labels)
            runs.append(Run(len(runs) + 1, workflow, labels, prompt))
    return runs


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------

def safe_name(text: str, limit: int = 48) -> str:
    """``text`` as a portable file-name part: letters, digits and ``.+-``, the rest ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("._")
    return cleaned[:limit].rstrip("._")


def tag(labels: dict[str, str]) -> str:
    return "_".join(f"{safe_name(key)}-{safe_name(value) or 'x'}" for key, value in labels.items())


def rename_outputs(prompt: dict[str, Any], stem: str, labels: dict[str, str]) -> None:
    """Point every ``filename_prefix`` at ``STEM_KEY-VALUE_...`` (in the prefix's own sub-folder)."""
    savers = sorted((nid for nid, node in prompt.items()
                     if isinstance((node.get("inputs") or {}).get("filename_prefix"), str)), key=_id_order)
    if not savers:
        return
    base = stem + (f"_{tag(labels)}" if labels else "")
    bases = [PurePosixPath(prompt[n]["inputs"]["filename_prefix"].replace("\\", "/")).name for n in savers]
    distinct = len(set(bases)) == len(bases)
    for node_id, original_base in zip(savers, bases):
        original = prompt[node_id]["inputs"]["filename_prefix"].replace("\\", "/")
        folder = original.rpartition("/")[0] if "/" in original else ""
        name = base
        if len(savers) > 1:
            name += "_" + (safe_name(original_base) if distinct and safe_name(original_base) else f"node{node_id}")
        prompt[node_id]["inputs"]["filename_prefix"] = f"{folder}/{name}" if folder else name


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------

class SweepProgress:
    """One bar for the sweep and one for the current run on a terminal; plain lines otherwise.

    Off a terminal each run opens with ``[sweep 3/8] wf.json seed=3 cfg=6`` followed by ``loom run``'s own
    per-node lines (:class:`ProgressView`), and closes with its time.
    """

    WIDTH = 24

    def __init__(self, total: int, stream: TextIO, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.finished = 0
        self.current: Run | None = None
        self.view: ProgressView | None = None
        self.nodes_total = 0
        self.nodes_done = 0
        self.node_title = ""
        self.steps: tuple[int, int] | None = None
        self.drawn = False
        self.started = time.perf_counter()

    def start_run(self, run: Run, order: list[str]) -> None:
        if not self.enabled:
            return
        self.current = run
        self.nodes_total, self.nodes_done, self.node_title, self.steps = len(order), 0, "", None
        if self.interactive:
            self.draw()
        else:
            self.write(f"[sweep {run.index}/{self.total}] {run.describe()}")
            self.view = ProgressView(run.prompt, order, stream=self.stream)

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.interactive:
            if self.view is not None:
                self.view.on_event(event, data)
            return
        if event == "execution_cached" and data.get("nodes"):
            self.nodes_done += len(data["nodes"])
        elif event == "executing" and data.get("node") is not None:
            self.nodes_done += 1
            node = (self.current.prompt if self.current else {}).get(data["node"], {})
            self.node_title = (node.get("_meta") or {}).get("title") or node.get("class_type") or str(data["node"])
            self.steps = None
        elif event == "progress":
            self.steps = (int(data.get("value", 0)), int(data.get("max", 0)))
        else:
            return
        self.draw()

    def end_run(self, result: RunResult) -> None:
        if not self.enabled:
            return
        self.finished += 1
        if self.interactive:
            self.draw()
            return
        if self.view is not None:
            self.view.close()
            self.view = None
        outcome = "done" if result.status == "success" else result.status
        self.write(f"    {outcome} in {result.seconds:.2f}s" + (f": {result.error}" if result.error else ""))

    def close(self) -> None:
        if self.enabled and self.interactive and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    @classmethod
    def bar(cls, value: int, total: int) -> str:
        filled = int(cls.WIDTH * min(value, total) / max(total, 1))
        return f"[{'#' * filled}{'.' * (cls.WIDTH - filled)}] {value}/{total}"

    def draw(self) -> None:
        elapsed = time.perf_counter() - self.started
        what = self.current.describe() if self.current else ""
        sweep_line = f"sweep {self.bar(self.finished, self.total)}  {elapsed:.0f}s  {what}"
        run_line = f"run   {self.bar(min(self.nodes_done, self.nodes_total), self.nodes_total)}  {self.node_title}"
        if self.steps:
            run_line += f" step {self.steps[0]}/{self.steps[1]}"
        prefix = "\r\x1b[1A\x1b[2K" if self.drawn else ""
        self.stream.write(f"{prefix}{sweep_line}\n\x1b[2K{run_line}")
        self.stream.flush()
        self.drawn = True

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# running: in this process
# --------------------------------------------------------------------------------------------

def output_files(outputs: dict[str, dict[str, Any]]) -> list[Path]:
    """The files an execution's output nodes wrote (images and latents), in node order."""
    from loom.nodes import folders

    files: list[Path] = []
    for _node_id, ui in sorted(outputs.items(), key=lambda item: _id_order(item[0])):
        for image in (ui or {}).get("images", []):
            files.append(folders.current().data_dir(image.get("type", "output")) / image.get("subfolder", "")
                         / image["filename"])
        for latent in (ui or {}).get("latents", []):
            files.append(folders.output_dir() / latent.get("subfolder", "") / latent["filename"])
    return files


def output_texts(outputs: dict[str, dict[str, Any]]) -> list[str]:
    return [f"node {node_id}: {text}" for node_id, ui in sorted(outputs.items(), key=lambda item: _id_order(item[0]))
            for text in (ui or {}).get("text", [])]


def run_local(runs: list[Run], registry: Any, validations: dict[int, Any], progress: SweepProgress,
              on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every run through one executor: its cache computes what the runs share once."""
    from loom.server.executor import Executor

    executor = Executor(registry)
    results: list[RunResult] = []
    for run in runs:
        validation = validations[run.index]
        extra = {"extra_pnginfo": {"workflow": run.workflow.ui}} if run.workflow.ui else {}
        progress.start_run(run, validation.order)
        prompt_id = uuid.uuid4().hex
        try:
            outcome = executor.execute(run.prompt, prompt_id, extra_data=extra, on_event=progress.on_event,
                                       validation=validation)
        except KeyboardInterrupt:
            executor.interrupt()
            raise
        result = RunResult(run, outcome.status, outcome.duration, output_files(outcome.outputs),
                           list(outcome.executed), list(outcome.cached), prompt_id=prompt_id,
                           texts=output_texts(outcome.outputs))
        if outcome.status == "error":
            error = outcome.error or {}
            result.error = (f"node {error.get('node_id')} ({error.get('node_type')}): "
                            f"{error.get('exception_message')}")
        progress.end_run(result)
        results.append(result)
        if on_result:
            on_result(result)
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
    return results


# --------------------------------------------------------------------------------------------
# running: queued on a `loom serve`
# --------------------------------------------------------------------------------------------

class ServerError(Exception):
    """The server refused or failed (exit code 1), or refused a prompt (``invalid`` set: exit code 2)."""

    def __init__(self, message: str, invalid: list[str] | None = None) -> None:
        super().__init__(message)
        self.invalid = invalid


def server_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _json(response: Any) -> Any:
    try:
        return await response.json(content_type=None)
    except (ValueError, Exception):
        return None


def _error_text(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('message', 'error')}" + (f": {error['details']}" if error.get("details") else "")
    return f"HTTP {status}"


async def fetch_definitions(session: Any, base: str) -> Definitions:
    async with session.get(f"{base}/object_info") as response:
        body = await _json(response)
        if response.status != 200 or not isinstance(body, dict):
            hint = f" (set ${TOKEN_ENV} to the server's token)" if response.status in (401, 403) else ""
            raise ServerError(f"GET {base}/object_info: {_error_text(body, response.status)}{hint}")
        return Definitions(body)


async def convert_on_server(session: Any, base: str, ui: dict[str, Any], path: Path) -> dict[str, Any]:
    async with session.post(f"{base}/workflow/convert", json=ui) as response:
        body = await _json(response)
    if response.status == 200 and isinstance(body, dict) and isinstance(body.get("prompt"), dict):
        return body["prompt"]
    problems = body.get("problems") if isinstance(body, dict) else None
    lines = [f"{path}: the workflow cannot be converted"]
    for item in problems or []:
        lines.append(f"node {item.get('node_id')} ({item.get('class_type')}): {item.get('message')}"
                     if isinstance(item, dict) and item.get("node_id") is not None else str(item.get("message", item)))
    if not problems:
        lines[0] += f": {_error_text(body, response.status)}"
    raise ServerError(lines[0], invalid=lines)


def _safe_relative(subfolder: str, filename: str) -> Path | None:
    parts = [p for p in PurePosixPath(subfolder.replace("\\", "/")).parts + PurePosixPath(filename).parts]
    if not parts or any(p in ("..", "") or p.startswith("/") for p in parts) or "/" in filename.replace("\\", "/"):
        return None
    return Path(*parts)


def _prompt_errors(body: Any, status: int, run: Run) -> list[str]:
    lines = [f"{run.describe()}: the server refused the prompt: {_error_text(body, status)}"]
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    for node_id, entry in (node_errors or {}).items():
        for error in (entry or {}).get("errors", []):
            where = (error.get("extra_info") or {}).get("input_name")
            lines.append(f"node {node_id} ({entry.get('class_type')})" + (f" input {where!r}" if where else "")
                         + f": {error.get('message')}" + (f": {error['details']}" if error.get("details") else ""))
    return lines


async def run_remote(base: str, token: str | None, runs: list[Run], progress: SweepProgress, output_dir: Path,
                     on_result: Callable[[RunResult], None] | None = None, timeout: float = 3600.0,
                     session: Any = None) -> list[RunResult]:
    """Queue every run on ``base`` (POST /prompt), follow them on /ws, read /history, fetch files by /view."""
    import aiohttp

    own = session is None
    session = session or aiohttp.ClientSession(headers=server_headers(token))
    client_id = uuid.uuid4().hex
    queued: dict[str, Run] = {}
    events: dict[str, list[tuple[str, dict]]] = {}
    try:
        ws = None
        try:
            ws = await session.ws_connect(f"{base}/ws?clientId={client_id}", heartbeat=30)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ws = None  # follow the runs through /history alone
        order: list[str] = []
        try:
            for run in runs:
                extra = {"extra_pnginfo": {"workflow": run.workflow.ui}} if run.workflow.ui else {}
                body = {"prompt": run.prompt, "client_id": client_id, "extra_data": extra}
                async with session.post(f"{base}/prompt", json=body) as response:
                    answer = await _json(response)
                if response.status in (401, 403):
                    raise ServerError(f"POST {base}/prompt: {_error_text(answer, response.status)} (set "
                                      f"${TOKEN_ENV} to the server's token)")
                if response.status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
                    raise ServerError("the server refused a prompt",
                                      invalid=_prompt_errors(answer, response.status, run))
                if answer.get("node_errors"):
                    order.append(answer["prompt_id"])
                    raise ServerError("the server would skip outputs",
                                      invalid=_prompt_errors(answer, response.status, run)
                                      + [f"nothing was run: {run.describe()} cannot make all its outputs"])
                order.append(answer["prompt_id"])
                queued[answer["prompt_id"]] = run
        except BaseException:
            await cancel_remote(session, base, order)
            raise
        results: list[RunResult] = []
        pending = list(order)
        started: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        try:
            while pending:
                current = pending[0]
                if current not in started:
                    started[current] = time.perf_counter()
                    run = queued[current]
                    progress.start_run(run, list(run.prompt))
                    for event, data in events.pop(current, []):
                        progress.on_event(event, data)
                finished = await _follow(session, base, ws, current, events, progress, deadline)
                if finished is None:  # the socket went away: poll from here on
                    ws = None
                    continue
                entry = await _history_entry(session, base, current, deadline)
                result = await _collect(session, base, queued[current], current, entry, output_dir,
                                        started[current], finished)
                progress.end_run(result)
                results.append(result)
                if on_result:
                    on_result(result)
                pending.pop(0)
        except BaseException:
            await cancel_remote(session, base, pending, interrupt=True)
            raise
        return results
    finally:
        if own:
            await session.close()


async def _follow(session: Any, base: str, ws: Any, prompt_id: str, events: dict[str, list[tuple[str, dict]]],
                  progress: SweepProgress, deadline: float) -> dict[str, list[str]] | None:
    """WebSocket messages until ``prompt_id`` ends: ``{"executed": [...], "cached": [...]}``; None if the
    socket closed (or there is none: then the history is polled)."""
    import aiohttp

    seen: dict[str, list[str]] = {"executed": [], "cached": []}
    if ws is None:
        await _history_entry(session, base, prompt_id, deadline)
        return seen
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerError(f"prompt {prompt_id} did not finish in time")
        try:
            message = await ws.receive(timeout=min(remaining, 5.0))
        except asyncio.TimeoutError:
            # a quiet stretch (a long node, or a message missed): look at the history
            if await _history_entry(session, base, prompt_id, deadline, wait=False) is not None:
                return seen
            continue
        if message.type == aiohttp.WSMsgType.BINARY:
            continue  # latent previews
        if message.type != aiohttp.WSMsgType.TEXT:
            return None
        try:
            data = json.loads(message.data)
        except ValueError:
            continue
        kind, payload = data.get("type"), data.get("data") or {}
        owner = payload.get("prompt_id")
        if owner is not None and owner != prompt_id:
            events.setdefault(owner, []).append((kind, payload))  # a later run of ours, already going
            continue
        if owner is None and kind != "progress":
            continue
        progress.on_event(kind, payload)
        if kind == "execution_cached":
            seen["cached"] = [str(n) for n in payload.get("nodes") or []]
        elif kind == "executing" and payload.get("node") is not None:
            seen["executed"].append(str(payload["node"]))
        elif kind == "executing" and payload.get("node") is None:
            return seen
        elif kind in ("execution_error", "execution_interrupted"):
            return seen


async def _history_entry(session: Any, base: str, prompt_id: str, deadline: float,
                         wait: bool = True) -> dict[str, Any] | None:
    while True:
        async with session.get(f"{base}/history/{prompt_id}") as response:
            body = await _json(response)
            if response.status != 200:
                raise ServerError(f"GET {base}/history/{prompt_id}: {_error_text(body, response.status)}")
        if isinstance(body, dict) and prompt_id in body:
            return body[prompt_id]
        if not wait:
            return None
        if time.monotonic() > deadline:
            raise ServerError(f"prompt {prompt_id} did not finish in time")
        await asyncio.sleep(0.2)


async def _collect(session: Any, base: str, run: Run, prompt_id: str, entry: dict[str, Any], output_dir: Path,
                   started: float, seen: dict[str, list[str]]) -> RunResult:
    status = entry.get("status") or {}
    state = status.get("state") or ("success" if status.get("completed") else "error")
    result = RunResult(run, "success" if state == "success" else state, prompt_id=prompt_id)
    timing = entry.get("timing") or {}
    if isinstance(timing.get("started_at"), (int, float)) and isinstance(timing.get("finished_at"), (int, float)):
        result.seconds = max(0.0, timing["finished_at"] - timing["started_at"])
    else:
        result.seconds = time.perf_counter() - started
    cached = seen.get("cached") or []
    for kind, data in status.get("messages") or []:
        if kind == "execution_cached" and not cached:
            cached = [str(n) for n in data.get("nodes") or []]
        if kind == "execution_error":
            result.error = f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}"
    result.cached, result.executed = cached, seen.get("executed") or []
    if result.status not in ("success", "interrupted") and not result.error:
        error = status.get("error") or {}
        result.error = str(error.get("exception_message") or error.get("message") or "the run failed")
    result.texts = output_texts(entry.get("outputs") or {})
    for _node_id, ui in sorted((entry.get("outputs") or {}).items(), key=lambda item: _id_order(item[0])):
        for image in (ui or {}).get("images", []):
            relative = _safe_relative(image.get("subfolder", ""), image.get("filename", ""))
            if relative is None:
                continue
            params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                      "type": image.get("type", "output")}
            async with session.get(f"{base}/view", params=params) as response:
                if response.status != 200:
                    raise ServerError(f"GET {base}/view {image['filename']}: HTTP {response.status}")
                data = await response.read()
            target = output_dir / relative if params["type"] == "output" else output_dir / params["type"] / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            result.files.append(target)
    return result


async def cancel_remote(session: Any, base: str, prompt_ids: list[str], interrupt: bool = False) -> None:
    """Take our queued runs off the server's queue (and stop the running one)."""
    if not prompt_ids:
        return
    try:
        async with session.post(f"{base}/queue", json={"delete": list(prompt_ids)}):
            pass
        if interrupt:
            async with session.post(f"{base}/interrupt", json={"prompt_id": prompt_ids[0]}):
                pass
    except Exception:  # the server is gone: nothing to cancel
        pass


# --------------------------------------------------------------------------------------------
# the summary table and the contact sheet
# --------------------------------------------------------------------------------------------

def summary_lines(results: list[RunResult], dims: list[Dimension], several_workflows: bool,
                  cwd: Path | None = None) -> list[str]:
    keys = [d.key for d in dims if d.swept]
    header = ["#"] + (["workflow"] if several_workflows else []) + keys + ["seconds", "ran", "cached", "files"]
    rows = []
    for result in results:
        files = ", ".join(_shown(f, cwd) for f in result.files) or "; ".join(result.texts) or "-"
        if result.status != "success":
            files = f"{result.status}: {result.error}" if result.error else result.status
        rows.append([str(result.run.index)] + ([result.run.workflow.path.name] if several_workflows else [])
                    + [result.run.labels.get(k, "") for k in keys]
                    + [f"{result.seconds:.2f}", str(len(result.executed)), str(len(result.cached)), files])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    images = sum(len(r.files) for r in results)
    failed = sum(r.status != "success" for r in results)
    total = sum(r.seconds for r in results)
    lines.append(f"{len(results)} run(s), {images} file(s), {total:.2f}s" + (f", {failed} failed" if failed else ""))
    return lines


def _shown(path: Path, cwd: Path | None) -> str:
    cwd = cwd or Path.cwd()
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path)


def summary_json(results: list[RunResult]) -> list[dict[str, Any]]:
    return [{"index": r.run.index, "workflow": str(r.run.workflow.path), "values": r.run.labels,
             "status": r.status, "error": r.error or None, "seconds": round(r.seconds, 4),
             "files": [str(f) for f in r.files], "texts": r.texts, "executed": r.executed, "cached": r.cached,
             "prompt_id": r.prompt_id} for r in results]


@dataclass
class SheetLayout:
    """Where the contact sheet puts things: ``table`` (rows × columns of two swept values) or ``grid``."""

    mode: str
    size: tuple[int, int]
    cell: tuple[int, int]
    origin: tuple[int, int]  # top-left of the first image cell
    columns: int
    rows: int
    strip: int  # the label strip under each grid cell (0 in a table)


def _font(size: int = 14):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    from PIL import Image, ImageDraw
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def contact_sheet(results: list[RunResult], dims: list[Dimension], several_workflows: bool,
                  zipped: bool) -> tuple[Any, SheetLayout]:
    """One image of every saved picture, labelled by its swept values.

    Two swept dimensions (product, one picture per run): a table with the first dimension's values down the
    left and the second's across the top. Anything else: a grid, each cell labelled underneath, as many
    columns as cells up to 8 (then about a square).
    """
    from PIL import Image, ImageDraw

    swept = [d for d in dims if d.swept]
    axes: list[tuple[str, list[str]]] = []
    if several_workflows:
        names = list(dict.fromkeys(r.run.workflow.path.name for r in results))
        axes.append(("workflow", names))
    axes += [(d.key, d.labels) for d in swept]
    cells: list[tuple[RunResult, Path, Any]] = []
    for result in results:
        for path in result.files:
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                with Image.open(path) as picture:
                    cells.append((result, path, picture.convert("RGB")))
    if not cells:
        raise SweepError("--contact-sheet: the runs saved no images")
    font = _font()
    pad = 4
    line_h = max(_text_size(font, "Ag=0")[1], 8) + pad
    image_w = max(c[2].width for c in cells)
    image_h = max(c[2].height for c in cells)
    one_each = all(sum(1 for c in cells if c[0] is r) <= 1 for r in results)
    background, ink = (255, 255, 255), (0, 0, 0)

    def value_of(result: RunResult, key: str) -> str:
        return result.run.workflow.path.name if key == "workflow" else result.run.labels.get(key, "")

    if len(axes) == 2 and not zipped and one_each:
        (row_key, row_values), (col_key, col_values) = axes
        col_labels = [f"{col_key}={v}" for v in col_values]
        row_labels = [f"{row_key}={v}" for v in row_values]
        cell_w = max([image_w] + [_text_size(font, t)[0] + 2 * pad for t in col_labels])
        left = max(_text_size(font, t)[0] for t in row_labels) + 2 * pad
        top = line_h + pad
        size = (left + cell_w * len(col_values), top + image_h * len(row_values))
        sheet = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(sheet)
        for c, text in enumerate(col_labels):
            draw.text((left + c * cell_w + pad, pad), text, fill=ink, font=font)
        for r, text in enumerate(row_labels):
            draw.text((pad, top + r * image_h + (image_h - line_h) // 2), text, fill=ink, font=font)
        for result, _path, picture in cells:
            r = row_values.index(value_of(result, row_key))
            c = col_values.index(value_of(result, col_key))
            sheet.paste(picture, (left + c * cell_w + (cell_w - picture.width) // 2, top + r * image_h))
        return sheet, SheetLayout("table", size, (cell_w, image_h), (left, top), len(col_values),
                                  len(row_values), 0)

    count = len(cells)
    columns = count if count <= 8 else math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    labels = []
    for index, (result, _path, _picture) in enumerate(cells):
        lines = [f"{key}={value_of(result, key)}" for key, _ in axes] or [f"#{result.run.index}"]
        if not one_each:
            same = [c for c in cells if c[0] is result]
            if len(same) > 1:
                lines.append(f"image {same.index(cells[index]) + 1}/{len(same)}")
        labels.append(lines)
    strip = max(len(lines) for lines in labels) * line_h + pad
    cell_w = max([image_w] + [_text_size(font, t)[0] + 2 * pad for lines in labels for t in lines])
    size = (columns * cell_w, rows * (image_h + strip))
    sheet = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(sheet)
    for index, ((_result, _path, picture), lines) in enumerate(zip(cells, labels)):
        x, y = (index % columns) * cell_w, (index // columns) * (image_h + strip)
        sheet.paste(picture, (x + (cell_w - picture.width) // 2, y))
        for n, text in enumerate(lines):
            draw.text((x + pad, y + image_h + pad // 2 + n * line_h), text, fill=ink, font=font)
    return sheet, SheetLayout("grid", size, (cell_w, image_h + strip), (0, 0), columns, rows, strip)


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------

def wanted(args: argparse.Namespace) -> bool:
    """Whether ``loom run``'s arguments ask for more than one plain run (else ``loom run`` is unchanged)."""
    return (len(args.workflow) > 1 or args.zip or args.jobs or args.server is not None
            or args.contact_sheet is not None or args.summary_json is not None
            or not is_single_seed(args.seed)
            or any("=" in item and may_sweep(item.partition("=")[2]) for item in args.overrides))


def cmd_sweep(args: argparse.Namespace, load_local: Callable[[Path, Any], tuple[dict, dict | None]],
              configure: Callable[..., Any], run_single: Callable[[argparse.Namespace], int],
              print_invalid: Callable[[list[str]], int]) -> int:
    """``loom run`` with sweep options. The CLI passes in its loader, set-up and plain run."""
    from loom.server.cli import EXIT_FAILED, EXIT_OK, InvalidWorkflow

    remote = args.jobs or args.server is not None
    try:
        if remote:
            return _sweep_remote(args, print_invalid)
        registry = configure(args, output_dir=args.output_dir)
        workflows = []
        for path in args.workflow:
            prompt, ui = load_local(path, registry)
            workflows.append(Workflow(path, prompt, ui))
        definitions = Definitions(registry.object_info())
        dims = build_dimensions(args.seed, args.overrides, workflows[0], definitions)
        plain = (len(workflows) == 1 and not any(d.swept for d in dims) and not args.zip
                 and args.contact_sheet is None and args.summary_json is None)
        if plain:  # e.g. --set CLIPTextEncode.text=a, b: one value after all
            return run_single(args)
        runs = plan_runs(workflows, dims, args.zip, definitions)
    except InvalidWorkflow as invalid:
        return print_invalid(invalid.lines)
    except SweepError as problem:
        return print_invalid([str(problem)])

    from loom.server.cli import skipped_output_lines
    from loom.server.graph import validate_prompt

    validations = {}
    for run in runs:
        validation = validate_prompt(run.prompt, registry)
        if not validation.ok or validation.node_errors:
            bad = sum(1 for r in runs if r.index >= run.index and _invalid(validate_prompt(r.prompt, registry)))
            lines = validation.messages() if not validation.ok else skipped_output_lines(run.prompt, validation)
            return print_invalid([f"{run.describe()}: {line}" for line in lines]
                                 + [f"nothing was run: {bad} of {len(runs)} runs are invalid"])
        validations[run.index] = validation

    progress = SweepProgress(len(runs), sys.stderr, enabled=not args.quiet)
    results: list[RunResult] = []
    try:
        run_local(runs, registry, validations, progress, on_result=results.append)
    except KeyboardInterrupt:
        progress.close()
        _finish(args, results, dims, len(workflows) > 1, partial=True)
        raise
    progress.close()
    code = _finish(args, results, dims, len(workflows) > 1)
    return code if code != EXIT_OK else (EXIT_FAILED if any(r.status != "success" for r in results) else EXIT_OK)


def _invalid(validation: Any) -> bool:
    return not validation.ok or bool(validation.node_errors)


def _finish(args: argparse.Namespace, results: list[RunResult], dims: list[Dimension], several: bool,
            partial: bool = False) -> int:
    from loom.server.cli import EXIT_FAILED, EXIT_OK

    for line in summary_lines(results, dims, several):
        print(line)
    if partial:
        print("(interrupted: the runs above finished)")
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary_json(results), indent=2) + "\n")
    if args.contact_sheet is not None and results:
        try:
            sheet, _layout = contact_sheet(results, dims, several, args.zip)
        except SweepError as problem:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_FAILED
        args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet} ({sheet.width}x{sheet.height})")
    return EXIT_OK


def _sweep_remote(args: argparse.Namespace, print_invalid: Callable[[list[str]], int]) -> int:
    import os

    import aiohttp

    from loom.nodes import folders
    from loom.server import workflow as workflow_module
    from loom.server.cli import EXIT_FAILED, EXIT_OK, InvalidWorkflow

    base = (args.server or DEFAULT_SERVER).rstrip("/")
    if not re.match(r"https?://", base):
        raise SweepError(f"--server {base!r}: expected an http:// or https:// address")
    token = os.environ.get(TOKEN_ENV) or None
    folders.configure(args.base_dir, args.models_dir,
                      data_dirs={"output": args.output_dir} if args.output_dir else None)
    output_dir = folders.output_dir()
    loaded = []
    for path in args.workflow:
        if not path.is_file():
            raise SweepError(f"{path}: no such file")
        try:
            loaded.append((path, workflow_module.load_workflow_file(path)))
        except workflow_module.WorkflowError as problem:
            message = str(problem)
            raise InvalidWorkflow([message if message.startswith(f"{path}:") else f"{path}: {message}"]) from None

    state: dict[str, Any] = {"results": [], "dims": [], "several": len(loaded) > 1}

    async def main() -> int:
        async with aiohttp.ClientSession(headers=server_headers(token)) as session:
            try:
                definitions = await fetch_definitions(session, base)
            except aiohttp.ClientError as problem:
                raise ServerError(f"cannot reach the server at {base}: {problem}") from None
            workflows = []
            for path, item in loaded:
                prompt = item.api if item.api is not None else await convert_on_server(session, base, item.ui, path)
                workflows.append(Workflow(path, prompt, item.ui))
            dims = build_dimensions(args.seed, args.overrides, workflows[0], definitions)
            state["dims"] = dims
            runs = plan_runs(workflows, dims, args.zip, definitions)
            progress = SweepProgress(len(runs), sys.stderr, enabled=not args.quiet)
            state["progress"] = progress
            await run_remote(base, token, runs, progress, output_dir, on_result=state["results"].append,
                             session=session)
            progress.close()
            return EXIT_OK

    try:
        code = asyncio.run(main())
    except ServerError as problem:
        if "progress" in state:
            state["progress"].close()
        if problem.invalid:
            return print_invalid(problem.invalid)
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except aiohttp.ClientError as problem:
        print(f"error: the server at {base}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if "progress" in state:
            state["progress"].close()
        _finish(args, state["results"], state["dims"], state["several"], partial=True)
        raise
    results = state["results"]
    code = _finish(args, results, state["dims"], state["several"]) or code
    return code if code != EXIT_OK else (EXIT_FAILED if any(r.status != "success" for r in results) else EXIT_OK)
