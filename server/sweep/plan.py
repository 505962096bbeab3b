"""The plan of a sweep: its dimensions, and every run's prompt with the swept values applied and its outputs named.

- :func:`find_node` finds the node a ``--set`` names (id, title or class type); :func:`seed_targets` finds every
  sampler seed ``--seed`` sets (and the seed widget of a node feeding one).
- :class:`Dimension` is one ``--seed`` or ``--set`` and its values; :func:`build_dimensions` reads them from the
  command line. :func:`points` pairs them up (product, or ``--zip``); :func:`plan_runs` makes one :class:`Run`
  per workflow and point, values coerced and output prefixes renamed.
- :class:`Workflow` is one loaded workflow file; :class:`RunResult` is what a run did, for the report.
- :func:`rename_outputs` names saved files by the swept values (``txt2img_seed-3_cfg-6``), with
  :func:`safe_name` and :func:`tag`.
- :func:`id_order` sorts node ids as numbers (then the rest), the order nodes are listed in throughout.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from loom.server.sweep.values import (MAX_RUNS, Definitions, InputInfo, SweepError, coerce, parse_seeds,
                                      split_target, split_values)

SEED_INPUTS = ("seed", "noise_seed")


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
                              else node.get("class_type")) == ref), key=id_order)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(describe_node(prompt, n) for n in matches)
            raise SweepError(f"{ref!r} matches {len(matches)} nodes ({listed}); name one by its id or a "
                             "unique title")
    listed = ", ".join(describe_node(prompt, n) for n in sorted(prompt, key=id_order))
    raise SweepError(f"no node with id, title or type {ref!r}; the workflow has: {listed}")


def id_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def seed_targets(prompt: dict[str, Any], definitions: Definitions) -> list[tuple[str, InputInfo]]:
    """Every sampler seed: INT inputs named seed/noise_seed, and the seed widget of a node feeding one."""
    targets: list[tuple[str, InputInfo]] = []
    feeders: set[str] = set()
    for node_id in sorted(prompt, key=id_order):
        node = prompt[node_id]
        for info in definitions.inputs(node.get("class_type", "")):
            if info.name not in SEED_INPUTS or info.type != "INT":
                continue
            value = (node.get("inputs") or {}).get(info.name)
            if isinstance(value, list) and len(value) == 2:
                feeders.add(str(value[0]))
            else:
                targets.append((node_id, info))
    for node_id in sorted(feeders, key=id_order):  # e.g. a PrimitiveInt wired into KSampler.seed
        node = prompt.get(node_id)
        if node is None:
            continue
        for info in definitions.inputs(node.get("class_type", "")):
            value = (node.get("inputs") or {}).get(info.name)
            if info.is_seed_like and not (isinstance(value, list) and len(value) == 2):
                targets.append((node_id, info))
    return targets


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


def safe_name(text: str, limit: int = 48) -> str:
    """``text`` as a portable file-name part: letters, digits and ``.+-``, the rest ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("._")
    return cleaned[:limit].rstrip("._")


def tag(labels: dict[str, str]) -> str:
    return "_".join(f"{safe_name(key)}-{safe_name(value) or 'x'}" for key, value in labels.items())


def rename_outputs(prompt: dict[str, Any], stem: str, labels: dict[str, str]) -> None:
    """Point every ``filename_prefix`` at ``STEM_KEY-VALUE_...`` (in the prefix's own sub-folder)."""
    savers = sorted((nid for nid, node in prompt.items()
                     if isinstance((node.get("inputs") or {}).get("filename_prefix"), str)), key=id_order)
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
