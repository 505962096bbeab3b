"""A test-only node pack: cheap nodes that pin the engine's behaviour without any model.

Loaded with ``registry.load_path("tests/nodepack")`` or ``loom serve --nodes tests/nodepack``.
"""
from __future__ import annotations

import hashlib
import time

from loom.nodes.kernel import folders
from loom.nodes.kernel.progress import ProgressBar
from loom.nodes.kernel.schema import (HIDDEN_UNIQUE_ID, SEED_MAX, Combo, Float, Int, Node, NodeOutput, Output, Schema,
                          Socket, String, register)


@register
class TestConstInt(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestConstInt", category="test", inputs=[Int("value", default=0, min=-1000000, max=1000000)],
                      outputs=[Output("INT", "value")])

    @classmethod
    def execute(cls, value: int) -> tuple:
        return (value,)


@register
class TestAdd(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestAdd", category="test",
                      inputs=[Int("a", default=0, min=-10**9, max=10**9), Int("b", default=0, min=-10**9, max=10**9)],
                      outputs=[Output("INT", "sum")])

    @classmethod
    def execute(cls, a: int, b: int) -> tuple:
        return (a + b,)


@register
class TestSeeded(Node):
    """An INT with control_after_generate, shaped like KSampler's seed/steps pair."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestSeeded", category="test",
                      inputs=[Int("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
                              Int("steps", default=4, min=1, max=100)],
                      outputs=[Output("INT", "value")])

    @classmethod
    def execute(cls, seed: int, steps: int) -> tuple:
        return (seed * 1000 + steps,)


@register
class TestControlCombo(Node):
    """A COMBO and an INT that both ask for control_after_generate (the combo also gets a filter box)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestControlCombo", category="test",
                      inputs=[Combo("choice", options_source=["a", "b", "c"], control_after_generate=True),
                              Int("amount", default=1, min=0, max=100, control_after_generate=True)],
                      outputs=[Output("STRING", "text")])

    @classmethod
    def execute(cls, choice: str, amount: int) -> tuple:
        return (choice * amount,)


@register
class TestStringConcat(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestStringConcat", category="test",
                      inputs=[String("a", default=""), String("b", default="", multiline=True),
                              String("separator", default="", optional=True)],
                      outputs=[Output("STRING", "text")])

    @classmethod
    def execute(cls, a: str, b: str, separator: str = "") -> tuple:
        return (f"{a}{separator}{b}",)


@register
class TestChoice(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestChoice", category="test",
                      inputs=[Combo("choice", options_source=["alpha", "beta", "gamma"], default="alpha")],
                      outputs=[Output("STRING", "choice")])

    @classmethod
    def execute(cls, choice: str) -> tuple:
        return (choice,)


@register
class TestSleep(Node):
    """Waits ``seconds`` in ``steps`` progress ticks (each tick is an interrupt point), then passes ``value`` on."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestSleep", category="test",
                      inputs=[Socket("value", "*"), Float("seconds", default=0.1, min=0.0, max=60.0, step=0.01),
                              Int("steps", default=10, min=1, max=1000)],
                      outputs=[Output("*", "value")])

    @classmethod
    def execute(cls, value, seconds: float, steps: int) -> tuple:
        bar = ProgressBar(steps)
        for _ in range(steps):
            time.sleep(seconds / steps)
            bar.update(1)
        return (value,)


@register
class TestRaise(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestRaise", category="test",
                      inputs=[Socket("value", "*"), String("message", default="boom")],
                      outputs=[Output("*", "value")])

    @classmethod
    def execute(cls, value, message: str) -> tuple:
        raise RuntimeError(message)


@register
class TestReadFile(Node):
    """Reads a text file from the input directory; its fingerprint is the file's content hash."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestReadFile", category="test", inputs=[String("filename", default="note.txt")],
                      outputs=[Output("STRING", "text")])

    @classmethod
    def fingerprint(cls, filename: str) -> str:
        path = folders.resolve_data("input", filename)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"

    @classmethod
    def validate_inputs(cls, filename: str) -> bool | str:
        try:
            path = folders.resolve_data("input", filename)
        except PermissionError as error:
            return str(error)
        return True if path.is_file() else f"file not found in input: {filename}"

    @classmethod
    def execute(cls, filename: str) -> tuple:
        return (folders.resolve_data("input", filename).read_text(),)


@register
class TestOutput(Node):
    """An output node: shows what it received as text in the UI dict."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestOutput", category="test", inputs=[Socket("value", "*")],
                      hidden=[HIDDEN_UNIQUE_ID], output_node=True)

    @classmethod
    def execute(cls, value, unique_id: str | None = None) -> NodeOutput:
        return NodeOutput(ui={"text": [str(value)]})


@register
class TestIntToString(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestIntToString", category="test", inputs=[Socket("value", "INT")],
                      outputs=[Output("STRING")])

    @classmethod
    def execute(cls, value: int) -> tuple:
        return (str(value),)


# -- faults of a worker process (tests/test_worker_process.py) ----------------------------------------------

def _in_worker_process() -> bool:
    import multiprocessing
    return multiprocessing.parent_process() is not None


@register
class TestHang(Node):
    """Sleeps ``seconds`` without ever checking interrupt or reporting progress (a hung node)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestHang", category="test",
                      inputs=[Socket("value", "*"), Float("seconds", default=3600.0, min=0.0, max=86400.0)],
                      outputs=[Output("*", "value")])

    @classmethod
    def execute(cls, value, seconds: float) -> tuple:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return (value,)


@register
class TestExit(Node):
    """Ends its worker process with ``os._exit(code)``; refuses to run anywhere but in a worker process."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestExit", category="test", inputs=[Socket("value", "*"), Int("code", default=1, min=0,
                                                                                        max=255)],
                      outputs=[Output("*", "value")])

    @classmethod
    def execute(cls, value, code: int) -> tuple:
        import os
        if not _in_worker_process():
            raise RuntimeError("TestExit only ends a worker process, not this one")
        os._exit(code)


@register
class TestHog(Node):
    """Allocates (and touches) memory in ``chunk_mb`` pieces up to ``max_mb``; refuses to run outside a worker
    process. Under an address-space limit it fails with MemoryError (or its process is killed)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestHog", category="test",
                      inputs=[Socket("value", "*"), Int("max_mb", default=2048, min=1, max=65536),
                              Int("chunk_mb", default=32, min=1, max=1024)],
                      outputs=[Output("*", "value")])

    @classmethod
    def execute(cls, value, max_mb: int, chunk_mb: int) -> tuple:
        if not _in_worker_process():
            raise RuntimeError("TestHog only fills a worker process's memory, not this one")
        held = []
        for _ in range(max_mb // chunk_mb):
            held.append(b"\x01" * (chunk_mb << 20))  # written, so the pages are really used
        return (len(held),)


@register
class TestPid(Node):
    """The id of the process the node runs in (not cached: it is not idempotent)."""

    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("TestPid", category="test", inputs=[Socket("value", "*")], outputs=[Output("INT", "pid")],
                      not_idempotent=True)

    @classmethod
    def execute(cls, value) -> tuple:
        import os
        return (os.getpid(),)
