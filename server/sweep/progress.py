"""How a sweep shows its progress: :class:`SweepProgress`, two bars on a terminal, plain lines elsewhere."""
from __future__ import annotations

import time
from typing import Any, TextIO

from loom.server.progress_view import ProgressView
from loom.server.sweep.plan import Run, RunResult


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
