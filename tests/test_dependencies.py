"""Every third-party import is declared in pyproject.toml, so a fresh ``pip install`` can run it all.

The package's modules (the folders pyproject.toml maps onto ``loom.*``) may import only the stdlib,
``loom`` itself and the ``[project] dependencies``; the tests and the benchmarks may also import the
``test`` extra. Imports are read with :mod:`ast`, lazy ones inside functions included, and each top-level
name is mapped to the distribution that provides it in this environment.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LOCAL_DIRS = (REPO, REPO / "tests", REPO / "tests" / "browser", REPO / "bench")
"""Folders whose modules the tests and benchmarks import as top-level names (they put them on sys.path)."""


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    """The normalised distribution names of PEP 508 requirement strings (``"torch>=2.4"`` → ``torch``)."""
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"pyproject.toml: cannot read the requirement {requirement!r}"
        names.add(normalise(match.group(1)))
    return names


@lru_cache(maxsize=1)
def pyproject() -> dict:
    with PYPROJECT.open("rb") as handle:
        return tomllib.load(handle)


def declared(*extras: str) -> set[str]:
    """The distributions ``[project] dependencies`` declares, plus those of the named extras."""
    project = pyproject()["project"]
    names = requirement_names(project.get("dependencies", []))
    for extra in extras:
        names |= requirement_names(project.get("optional-dependencies", {}).get(extra, []))
    # a self-referencing extra (``loom[test]``) names this project, which is not a third-party import
    return names - {normalise(project["name"])}


def package_files() -> list[Path]:
    """The ``.py`` files of every package pyproject.toml installs (its ``package-dir`` folders)."""
    setuptools = pyproject()["tool"]["setuptools"]
    folders = {REPO / folder for folder in setuptools["package-dir"].values()}
    files = sorted({path for folder in folders for path in folder.rglob("*.py")
                    if "__pycache__" not in path.parts})
    assert files, "pyproject.toml's package-dir names no folder with Python modules"
    return files


def imported_names(path: Path, *, lazy: bool | None = None) -> dict[str, int]:
    """Top-level names of the absolute imports in ``path`` (anywhere in it), with the first line of each;
    with ``lazy`` True only those inside functions (run when called), False only the others (run on import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_function = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for inner in ast.walk(node) if inner is not node}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if lazy is not None and (id(node) in in_function) != lazy:
            continue
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top not in found or node.lineno < found[top]:
                found[top] = node.lineno
    return found


@lru_cache(maxsize=1)
def local_modules() -> frozenset[str]:
    """Module and package names that live in the repository's own folders (not distributions)."""
    names = set()
    for folder in LOCAL_DIRS:
        for entry in folder.iterdir():
            if entry.suffix == ".py":
                names.add(entry.stem)
            elif entry.is_dir() and not entry.name.startswith("."):
                names.add(entry.name)
    return frozenset(names)


def undeclared_imports(files: list[Path], allowed: set[str], allow_local: bool,
                       lazy: bool | None = None) -> list[str]:
    """One line per import in ``files`` that no allowed distribution provides: ``file:line: name (why)``."""
    providers = importlib.metadata.packages_distributions()
    problems = []
    for path in files:
        for name, line in sorted(imported_names(path, lazy=lazy).items()):
            if name in sys.stdlib_module_names or name in ("__future__", "loom"):
                continue
            if allow_local and name in local_modules():
                continue
            where = f"{_shown(path)}:{line}: import {name}"
            distributions = {normalise(d) for d in providers.get(name, [])}
            if not distributions:
                problems.append(f"{where} (no installed distribution provides it: "
                                "declare and install it, or import it as loom.*)")
            elif not distributions & allowed:
                problems.append(f"{where} (from {', '.join(sorted(distributions))}, "
                                "not declared in pyproject.toml)")
    return problems


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def user_extras() -> list[str]:
    """The extras a user installs for a feature (``loom[ray]``); ``test`` is the developers'."""
    return [name for name in pyproject()["project"].get("optional-dependencies", {}) if name != "test"]


def test_the_package_imports_only_declared_dependencies() -> None:
    """On import, a module needs only [project] dependencies; a feature's extra (``ray``) may be imported
    only inside functions, so that a base install can import every module and says what to install."""
    problems = undeclared_imports(package_files(), declared(), allow_local=False, lazy=False)
    problems += undeclared_imports(package_files(), declared(*user_extras()), allow_local=False, lazy=True)
    assert not problems, ("modules of the installed package import what [project] dependencies does not "
                          "declare:\n  " + "\n  ".join(problems))


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_tests_and_benchmarks_import_only_declared_dependencies(folder: str) -> None:
    files = sorted(path for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts)
    assert files, f"no Python files under {folder}/"
    problems = undeclared_imports(files, declared("test"), allow_local=True)
    assert not problems, (f"{folder}/ imports what neither [project] dependencies nor the test extra "
                          "declares:\n  " + "\n  ".join(problems))


def test_an_undeclared_import_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    """The check itself: a lazy import of an undeclared package is found and named."""
    module = tmp_path / "probe.py"
    module.write_text("import os\n\ndef later():\n    import pytest\n    from aiohttp import web\n"
                      "    import server.app\n", encoding="utf-8")
    assert undeclared_imports([module], declared(), allow_local=False) == [
        f"{module}:4: import pytest (from pytest, not declared in pyproject.toml)",
        f"{module}:6: import server (no installed distribution provides it: "
        "declare and install it, or import it as loom.*)",
    ]


def test_a_features_extra_may_be_imported_only_lazily(tmp_path: Path) -> None:
    """``import ray`` inside a function is fine for the package (the ``ray`` extra); at module level it is not."""
    module = tmp_path / "probe.py"
    module.write_text("import ray\n\ndef later():\n    import ray.util\n", encoding="utf-8")
    assert "ray" in user_extras()
    on_import = undeclared_imports([module], declared(), allow_local=False, lazy=False)
    assert on_import == [f"{module}:1: import ray (from ray, not declared in pyproject.toml)"]
    assert undeclared_imports([module], declared(*user_extras()), allow_local=False, lazy=True) == []


def test_every_python_package_folder_is_declared_for_the_wheel():
    """A folder with an __init__.py that pyproject's packages list misses is left out of a regular install
    (an editable install hides it), so the installed loom fails on import."""
    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {folder: package for package, folder in project["package-dir"].items()}
    found = set()
    for folder, package in roots.items():
        for init in (repo / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(repo / folder).parts
            found.add(".".join((package, *relative)))
    assert sorted(found - set(project["packages"])) == []
