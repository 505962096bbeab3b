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

The package, one concern a module:

- here: :func:`wanted` (whether ``loom run``'s arguments ask for a sweep) and :func:`cmd_sweep` (the command:
  plan the runs, validate them, run them in-process, report);
- :mod:`~loom.server.sweep.values`: parsing ``--seed`` and ``--set`` values, node definitions, coercion;
- :mod:`~loom.server.sweep.plan`: finding nodes and seeds, dimensions, runs and their points, output names;
- :mod:`~loom.server.sweep.progress`: the progress bars or lines;
- :mod:`~loom.server.sweep.local`: running in this process, through one executor;
- :mod:`~loom.server.sweep.remote`: running on a ``loom serve`` (``--server``);
- :mod:`~loom.server.sweep.report`: the summary table, ``--summary-json`` and the contact sheet.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from loom.server.sweep.local import run_local
from loom.server.sweep.plan import RunResult, Workflow, build_dimensions, plan_runs
from loom.server.sweep.progress import SweepProgress
from loom.server.sweep.remote import sweep_remote
from loom.server.sweep.report import finish
from loom.server.sweep.values import Definitions, SweepError, is_single_seed, may_sweep

__all__ = ["SweepError", "cmd_sweep", "wanted"]


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
            return sweep_remote(args, print_invalid)
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
    from loom.server.validation import validate_prompt

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
        finish(args, results, dims, len(workflows) > 1, partial=True)
        raise
    progress.close()
    code = finish(args, results, dims, len(workflows) > 1)
    return code if code != EXIT_OK else (EXIT_FAILED if any(r.status != "success" for r in results) else EXIT_OK)


def _invalid(validation: Any) -> bool:
    return not validation.ok or bool(validation.node_errors)
