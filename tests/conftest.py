"""Shared test set-up: offline hubs, fixed thread count, and a registry with the test node pack."""
from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

from pathlib import Path

import pytest

# the fixture modules: their fixtures are available to every test without importing them
pytest_plugins = ["tests.fixtures_checkpoints", "tests.fixtures_sampling", "tests.fixtures_flux"]

REPO = Path(__file__).resolve().parents[1]
NODEPACK = REPO / "tests" / "nodepack"
# the project's shared read-only folder (ComfyUI's conformance cases and references), next to the checkout;
# LOOM_SHARED_DIR points elsewhere. A clone without it skips the tests that read it, unless LOOM_REQUIRE_SHARED
# is set (CI sets it, so they cannot pass by skipping there)
SHARED = Path(os.environ.get("LOOM_SHARED_DIR") or REPO.parent / "shared")
CONFORMANCE = SHARED / "conformance"


def require_shared(path: Path) -> Path:
    """``path`` (a file or folder under :data:`SHARED`) if it exists; else skip the test or module.

    Fails instead of skipping when ``$LOOM_REQUIRE_SHARED`` is set to anything but "" or "0".
    """
    if path.exists():
        return path
    message = (f"{path} is missing: this test needs the shared conformance material "
               f"(../shared next to the checkout, or $LOOM_SHARED_DIR)")
    if os.environ.get("LOOM_REQUIRE_SHARED", "") not in ("", "0"):
        pytest.fail(message + ", and $LOOM_REQUIRE_SHARED is set", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    # bit-identical results need the same thread count on every run
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def registry():
    """The default registry (built-in nodes) plus the test node pack."""
    from loom.nodes.kernel.schema import default_registry
    return default_registry([NODEPACK])


@pytest.fixture
def conformance_dir() -> Path:
    """``shared/conformance``, or a skip (see :func:`require_shared`)."""
    return require_shared(CONFORMANCE)


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    """A fresh base directory with models/, input/, output/, temp/ configured for the node library."""
    from loom.nodes.kernel import folders
    previous = folders.current()
    folders.configure(tmp_path)
    yield tmp_path
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """The system Chromium through Playwright's sync API, one for the session.

    While it is open, Playwright's event loop counts as running in the main thread: a test that calls
    ``asyncio.run`` (directly or through code under test) must do it in another thread
    (``tests.fixtures_server.run_async``, ``in_thread``).
    """
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("the system Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()

