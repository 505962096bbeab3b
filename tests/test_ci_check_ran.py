"""``.ci/check_ran.py``: CI fails when the conformance tests were skipped (or not collected) instead of run.

The reports come from real pytest runs of a small throw-away test folder, so the check follows the JUnit XML
that this pytest writes.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "check_ran.py"

SUITE = {
    "test_ran.py": "def test_one():\n    pass\n\ndef test_two():\n    pass\n",
    "test_skips_one.py": "import pytest\n\ndef test_fine():\n    pass\n\n"
                         "def test_later():\n    pytest.skip('../shared/conformance is missing')\n",
    "test_module_skip.py": "import pytest\npytest.skip('no shared data', allow_module_level=True)\n\n"
                           "def test_never():\n    pass\n",
    "test_marked.py": "import pytest\npytestmark = pytest.mark.skipif(True, reason='marker says no')\n\n"
                      "class TestGroup:\n    def test_inside(self):\n        pass\n",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JUnit XML of a pytest run over SUITE (in ``<tmp>/tests/``)."""
    root = tmp_path_factory.mktemp("suite")
    (root / "tests").mkdir()
    for name, text in SUITE.items():
        (root / "tests" / name).write_text(text)
    xml = root / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    "--rootdir", str(root), "tests"], cwd=root, capture_output=True, text=True, timeout=120)
    assert xml.is_file()
    return xml


def check(report: Path, *modules: str) -> tuple[int, str]:
    result = subprocess.run([sys.executable, str(SCRIPT), str(report), *modules], capture_output=True, text=True,
                            timeout=60)
    return result.returncode, result.stderr


def test_modules_whose_tests_all_ran_pass(report: Path) -> None:
    assert check(report, "tests/test_ran.py") == (0, "")


def test_a_skipped_test_fails_the_check_with_its_name_and_reason(report: Path) -> None:
    code, message = check(report, "tests/test_ran.py", "tests/test_skips_one.py")
    assert code == 1
    assert message.strip() == "tests/test_skips_one.py::test_later was skipped: ../shared/conformance is missing"


def test_a_module_skipped_at_collection_fails_the_check(report: Path) -> None:
    code, message = check(report, "tests/test_module_skip.py")
    assert code == 1 and message.strip() == "tests/test_module_skip.py was skipped: no shared data"


def test_skip_markers_on_classes_fail_the_check(report: Path) -> None:
    code, message = check(report, "tests/test_marked.py")
    assert code == 1
    assert "tests/test_marked.py::test_inside was skipped: marker says no" in message


def test_a_module_with_no_test_in_the_report_fails_the_check(report: Path) -> None:
    code, message = check(report, "tests/test_ran.py", "tests/test_gone.py")
    assert code == 1 and message.strip() == "tests/test_gone.py: no test of it ran (not collected?)"


def test_an_unreadable_report_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites>")
    code, message = check(bad, "tests/test_ran.py")
    assert code == 1 and "cannot read the test report" in message
    code, message = check(tmp_path / "missing.xml", "tests/test_ran.py")
    assert code == 1 and "cannot read the test report" in message
