"""A clone without ``../shared``: the tests that read it skip with a reason, or fail where CI requires them.

Runs pytest in a subprocess with ``$LOOM_SHARED_DIR`` pointing at a folder that does not exist.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

READERS = ["tests/test_conformance.py",
           "tests/test_image_latent.py::test_conformance_input_loads_as_rgb",
           "tests/test_image_latent.py::test_saved_latent_has_the_layout_of_comfyui_references",
           "tests/test_lora.py::test_ldm_names_agree_with_diffusers_converter_on_full_size_sd15"]


def _pytest(missing: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "LOOM_REQUIRE_SHARED"}
    environment.update(LOOM_SHARED_DIR=str(missing), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *READERS],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)


def test_tests_reading_shared_skip_with_the_reason_when_it_is_missing(tmp_path):
    missing = tmp_path / "no-shared"
    run = _pytest(missing)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FileNotFoundError" not in run.stdout and "4 skipped" in run.stdout, run.stdout
    reason = str(missing / "conformance")
    skips = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == 4, run.stdout
    assert all(reason in line and "needs the shared conformance material" in line and "$LOOM_SHARED_DIR" in line
               for line in skips), skips


def test_a_missing_shared_folder_fails_when_it_is_required(tmp_path):
    missing = tmp_path / "no-shared"
    run = _pytest(missing, LOOM_REQUIRE_SHARED="1")
    assert run.returncode != 0
    assert "skipped" not in run.stdout.splitlines()[-1], run.stdout
    assert f"{missing / 'conformance'}" in run.stdout and "$LOOM_REQUIRE_SHARED is set" in run.stdout, run.stdout
