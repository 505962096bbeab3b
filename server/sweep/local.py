"""Running a sweep in this process: :func:`run_local` sends every run through one executor, whose cache
computes what the runs share once; :func:`output_files` and :func:`output_texts` read what a run's output
nodes wrote and showed.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable

from loom.server.sweep.plan import Run, RunResult, id_order
from loom.server.sweep.progress import SweepProgress


def output_files(outputs: dict[str, dict[str, Any]]) -> list[Path]:
    """The files an execution's output nodes wrote (images and latents), in node order."""
    from loom.nodes.kernel import folders

    files: list[Path] = []
    for _node_id, ui in sorted(outputs.items(), key=lambda item: id_order(item[0])):
        for image in (ui or {}).get("images", []):
            files.append(folders.current().data_dir(image.get("type", "output")) / image.get("subfolder", "")
                         / image["filename"])
        for latent in (ui or {}).get("latents", []):
            files.append(folders.output_dir() / latent.get("subfolder", "") / latent["filename"])
    return files


def output_texts(outputs: dict[str, dict[str, Any]]) -> list[str]:
    return [f"node {node_id}: {text}" for node_id, ui in sorted(outputs.items(), key=lambda item: id_order(item[0]))
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
