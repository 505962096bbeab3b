"""Shared test set-up: offline hubs, fixed thread count, and a registry with the test node pack."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NODEPACK = REPO / "tests" / "nodepack"
SHARED = REPO.parent / "shared"


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
    from loom.nodes.schema import default_registry
    return default_registry([NODEPACK])


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    """A fresh base directory with models/, input/, output/, temp/ configured for the node library."""
    from loom.nodes import folders
    previous = folders.current()
    folders.configure(tmp_path)
    yield tmp_path
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)
