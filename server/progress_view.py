"""The command line's view of a running prompt: one line per node, a step bar for samplers."""
from __future__ import annotations

import time
from typing import Any, TextIO


class ProgressView:
    def __init__(self, prompt: dict[str, Any], order: list[str], stream: TextIO, enabled: bool = True) -> None:
        self.prompt = prompt
        self.total = len(order)
        self.stream = stream
        self.enabled = enabled
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.done = 0
        self.bar_open = False
        self.started: float | None = None

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event == "execution_cached" and data.get("nodes"):
            self.done += len(data["nodes"])
            self.line(f"cached: {len(data['nodes'])} node(s)")
        elif event == "executing" and data.get("node") is not None:
            self.finish_bar()
            self.done += 1
            node_id = data["node"]
            node = self.prompt.get(node_id, {})
            title = node.get("_meta", {}).get("title") or node.get("class_type")
            self.started = time.perf_counter()
            self.line(f"[{min(self.done, self.total)}/{self.total}] {title} (node {node_id})")
        elif event == "progress":
            self.bar(int(data["value"]), int(data["max"]))

    def bar(self, value: int, total: int) -> None:
        width = 30
        filled = int(width * value / max(total, 1))
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        rate = f" {elapsed / max(value, 1):.2f}s/step" if value else ""
        text = f"    [{'#' * filled}{'.' * (width - filled)}] {value}/{total}{rate}"
        if self.interactive:
            self.stream.write("\r" + text)
            self.stream.flush()
            self.bar_open = value < total
            if value >= total:
                self.stream.write("\n")
        elif value >= total:
            self.line(text)

    def finish_bar(self) -> None:
        if self.bar_open:
            self.stream.write("\n")
            self.bar_open = False

    def line(self, text: str) -> None:
        self.finish_bar()
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.finish_bar()
