"""Browser tests: the system Chromium driven by Playwright against a real ``loom serve``.

One server (a subprocess on an ephemeral loopback port, temp base dir, the test node pack and, when the
checkpoint fixtures are available, a tiny SD1 checkpoint) and one browser serve the whole session; each
test gets a fresh browser context, so localStorage starts empty.
"""
from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

VIEWPORT = {"width": 1400, "height": 820}
EDITOR_PATH = "/?test-hook"
"""The editor's address for tests: the query flag makes web/app.js install the test hook (`window.loom`)."""


def _write_tiny_checkpoint(folder: Path) -> str | None:
    """A tiny random-weight SD1 checkpoint from the shared fixtures; None when they are not available."""
    try:
        import fixtures_checkpoints as checkpoints
    except ImportError:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return checkpoints.write_browser_test_checkpoint(folder)


@pytest.fixture(scope="session")
def loom_server(tmp_path_factory):
    """``loom serve`` in a subprocess; yields an object with ``url``, ``base_dir`` and ``checkpoint``."""
    from fixtures_server import ServerProcess

    base_dir = tmp_path_factory.mktemp("loom-browser")
    checkpoint = _write_tiny_checkpoint(base_dir / "models" / "checkpoints")
    server = ServerProcess(base_dir)
    server.base_dir = base_dir
    server.checkpoint = checkpoint
    yield server
    if server.proc.poll() is None:
        server.terminate()


class EditorPage:
    """A page with the editor loaded, plus the mouse/keyboard/file gestures the tests use."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        self.mouse = page.mouse
        self.keyboard = page.keyboard

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def frame(self) -> None:
        self.page.evaluate("loom.nextFrame()")

    def point(self, expression: str, *args: Any) -> tuple[float, float]:
        x, y = self.page.evaluate(f"(args) => loom.{expression}(...args)", list(args))
        return float(x), float(y)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8,
             modifiers: tuple[str, ...] = ()) -> None:
        for key in modifiers:
            self.keyboard.down(key)
        self.mouse.move(*start)
        self.mouse.down()
        self.mouse.move(*end, steps=steps)
        self.mouse.up()
        for key in modifiers:
            self.keyboard.up(key)
        self.frame()

    def click(self, at: tuple[float, float]) -> None:
        self.mouse.click(*at)
        self.frame()

    def add_node_by_search(self, query: str, at: tuple[float, float], pick_type: str) -> int:
        """Double-click the canvas at ``at``, type ``query``, click the result of ``pick_type``; the new id."""
        before = {n["id"] for n in self.js("loom.nodes()")}
        self.mouse.dblclick(*at)
        self.page.wait_for_selector(".search-box input")
        self.keyboard.type(query)
        self.page.click(f'.search-results li[data-type="{pick_type}"]')
        self.frame()
        added = [n for n in self.js("loom.nodes()") if n["id"] not in before]
        assert len(added) == 1 and added[0]["type"] == pick_type, added
        return added[0]["id"]

    def connect(self, origin: int, output: str | int, target: int, input_: str | int) -> None:
        self.drag(self.point("slotPoint", origin, "output", output), self.point("slotPoint", target, "input", input_))

    def type_into_widget(self, node: int, widget: str, text: str) -> None:
        """Click the middle of a number/text widget, replace its text, press Enter."""
        self.click(self.point("widgetPoint", node, widget))
        self.page.wait_for_selector(".overlay-input")
        self.keyboard.press("Control+a")
        self.keyboard.type(text)
        self.keyboard.press("Enter")
        self.frame()

    def choose_combo(self, node: int, widget: str, filter_text: str, label: str) -> None:
        self.click(self.point("widgetPoint", node, widget))
        self.page.wait_for_selector(".context-menu .menu-filter")
        self.keyboard.type(filter_text)
        self.page.click(f'.context-menu .menu-item[data-label="{label}"]')
        self.frame()

    def drop_file(self, name: str, data: bytes, mime: str, at: tuple[float, float] | None = None) -> None:
        """Drop a file on the canvas the way a file manager does (a DataTransfer with a File)."""
        x, y = at or (700, 400)
        self.page.evaluate(
            """({name, data, mime, x, y}) => {
                const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], name, {type: mime}));
                const canvas = document.getElementById('graph');
                for (const type of ['dragenter', 'dragover', 'drop']) {
                    canvas.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, clientX: x, clientY: y,
                                                               bubbles: true, cancelable: true}));
                }
            }""",
            {"name": name, "data": base64.b64encode(data).decode(), "mime": mime, "x": x, "y": y})

    def reload(self) -> None:
        self.page.reload()
        self.page.wait_for_function("window.loom && window.loom.ready")
        self.frame()

    def workflow(self) -> dict:
        return json.loads(json.dumps(self.js("loom.serialize()")))


NOT_FIRST_VISIT = "try { localStorage.setItem('loom.templates.seen', '1'); } catch (e) {}"
"""An init script: the editor does not greet these pages with the Templates dialog of a first visit."""


@pytest.fixture
def editor(browser, loom_server):
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(NOT_FIRST_VISIT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(loom_server.url + EDITOR_PATH)
    page.wait_for_function("window.loom && window.loom.ready", timeout=20000)
    page.evaluate("loom.nextFrame()")
    yield EditorPage(page, loom_server.url)
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """docs/<name> when LOOM_SCREENSHOTS=1 (to refresh the committed pictures), else a temp file: a test run
    must not rewrite files of the checkout."""
    return REPO / "docs" / name if os.environ.get("LOOM_SCREENSHOTS") == "1" else tmp_path / name

