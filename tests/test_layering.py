"""The import rule between Loom's rooms (docs/layout.md), read from the source with :mod:`ast`.

* ``loom.nodes.kernel`` (schema, progress, folders, config, services) imports nothing of Loom but itself.
* ``loom.server`` imports of ``loom.nodes`` only the kernel, and names no other part of it by string either
  (``importlib.import_module("loom.nodes.x")``, ``sys.modules.get(...)``).
* ``loom.nodes.runtime`` imports neither ``loom.server`` nor the node library (``loom.nodes.<module>``).
* The node library imports no ``loom.server``, and no private (``_name``) helper of another library module.

Every import counts: top-level, inside functions, under ``if TYPE_CHECKING``, relative ones resolved.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"server": "loom.server", "nodes": "loom.nodes"}
"""The package folders of the checkout and the ``loom`` package each installs as (pyproject.toml)."""

@dataclass(frozen=True)
class Import:
    """An import in ``module`` at ``path:line`` (or, ``by_string``, a string constant naming a module):
    ``target`` is the module it names, ``names`` what a ``from`` import takes of it."""

    module: str
    path: Path
    line: int
    target: str
    names: tuple[str, ...] = ()
    by_string: bool = False


def module_names(roots: dict[Path, str]) -> dict[Path, str]:
    """Every ``.py`` file under the roots with its dotted module name (``nodes/kernel/schema.py`` →
    ``loom.nodes.kernel.schema``, a package's ``__init__.py`` → the package)."""
    found = {}
    for folder, package in roots.items():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[path] = ".".join([package, *parts])
    return found


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a relative ``from`` import in ``module`` names."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


_MODULE_STRING = re.compile(r"loom(\.[A-Za-z_][A-Za-z0-9_]*)+")


def imports(path: Path, module: str, known: set[str]) -> list[Import]:
    """Every Loom module ``path`` imports (or, as a whole string constant, names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, path, node.lineno, alias.name) for alias in node.names
                      if alias.name.split(".")[0] == "loom"]
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                    else node.module or "")
            if base.split(".")[0] != "loom":
                continue
            plain = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:  # ``from loom.nodes.runtime import model_cache``
                    found.append(Import(module, path, node.lineno, submodule))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(module, path, node.lineno, base, tuple(plain)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _MODULE_STRING.fullmatch(node.value):
            found.append(Import(module, path, node.lineno, node.value, by_string=True))
    return found


def room(module: str) -> str:
    """``kernel``, ``runtime``, ``library`` (a node module, or ``loom.nodes`` itself), ``server`` or ``other``."""
    parts = module.split(".")
    if parts[:2] == ["loom", "server"]:
        return "server"
    if parts[:2] == ["loom", "nodes"]:
        if parts[2:3] == ["kernel"]:
            return "kernel"
        if parts[2:3] == ["runtime"]:
            return "runtime"
        return "library"
    return "other"


def _library_module(module: str) -> str:
    """The top module of the node library that ``module`` is or belongs to (``loom.nodes.<name>``)."""
    return ".".join(module.split(".")[:3])


def broken_rule(found: Import) -> str | None:
    """Why ``found`` breaks the layering rule, or None when it keeps it."""
    source, target = room(found.module), room(found.target)
    if found.by_string:
        # a string naming a module is checked only where it reaches around the rule: the server's
        if source == "server" and target in ("runtime", "library"):
            return "the server names only the kernel of loom.nodes, by string as well as by import"
        return None
    if source == "kernel" and target != "kernel":
        return "the kernel imports nothing of loom but the kernel"
    if source == "server" and target in ("runtime", "library"):
        return "the server imports only the kernel of loom.nodes (register a service in loom.nodes.kernel.services)"
    if source == "runtime" and target in ("server", "library"):
        return "the model runtime imports neither loom.server nor the node library"
    if source == "library":
        if target == "server":
            return "the node library never imports loom.server"
        if target == "library" and _library_module(found.target) != _library_module(found.module):
            private = [name for name in found.names if name.startswith("_")]
            if private:
                return (f"a node module takes no private helper ({', '.join(private)}) of another; "
                        "make what is shared public where it belongs")
    return None


def violations(roots: dict[Path, str]) -> list[str]:
    """``path:line: module imports target: rule`` for every import under ``roots`` that breaks the rule."""
    modules = module_names(roots)
    known = set(modules.values())
    found = []
    for path, module in modules.items():
        for each in imports(path, module, known):
            rule = broken_rule(each)
            if rule:
                how = "names the module" if each.by_string else "imports"
                taken = f" ({', '.join(each.names)})" if each.names else ""
                found.append((each.path, each.line, f"{each.path}:{each.line}: {module} {how} {each.target}{taken}: {rule}"))
    return [message for _, _, message in sorted(found)]


# -------------------------------------------------------------------------------------------------


def test_the_checkout_keeps_the_layering_rule() -> None:
    found = violations({REPO / folder: package for folder, package in ROOTS.items()})
    assert not found, "imports across the layering rule (docs/layout.md):\n" + "\n".join(found)



def _write(root: Path, files: dict[str, str]) -> dict[Path, str]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return {root / "server": "loom.server", root / "nodes": "loom.nodes"}


def test_the_checker_reports_each_kind_of_violation_with_module_and_line(tmp_path: Path) -> None:
    roots = _write(tmp_path, {
        "server/__init__.py": "",
        "server/app.py": ("import sys\n"
                          "from loom.nodes.kernel import schema\n"
                          "def free():\n"
                          "    from loom.nodes.runtime import model_cache\n"
                          "    return sys.modules.get('loom.nodes.runtime.model_cache')\n"),
        "server/routes/__init__.py": "",
        "server/routes/meta.py": "from ... import nodes\nfrom ...nodes import loaders\n",
        "nodes/__init__.py": "",
        "nodes/kernel/__init__.py": "",
        "nodes/kernel/schema.py": "from . import folders\nfrom loom.nodes.runtime import devices\n",
        "nodes/kernel/folders.py": "'''loom.nodes.runtime: prose, not a module name'''\nBUILTIN = ('loom.nodes.loaders',)\n",
        "nodes/runtime/__init__.py": "",
        "nodes/runtime/devices.py": "from loom.nodes.kernel import folders\n",
        "nodes/runtime/model_cache.py": ("from loom.nodes.kernel import services\n"
                                         "if True:\n"
                                         "    from .. import loaders\n"
                                         "def f():\n"
                                         "    import loom.server.app\n"),
        "nodes/loaders.py": "def _resolve(): ...\ndef resolve(): ...\n",
        "nodes/lora.py": ("from loom.nodes.loaders import resolve\n"
                          "from loom.nodes.loaders import _resolve, resolve as r\n"
                          "from .lora import _mine\n"
                          "from loom.nodes.runtime.devices import _private_runtime_helper\n"
                          "def run():\n"
                          "    from loom.server import app\n"),
    })
    found = violations(roots)
    expected = [
        ("server/app.py:4:", "loom.server.app imports loom.nodes.runtime.model_cache", "only the kernel"),
        ("server/app.py:5:", "loom.server.app names the module loom.nodes.runtime.model_cache", "by string"),
        ("server/routes/meta.py:1:", "loom.server.routes.meta imports loom.nodes:", "only the kernel"),
        ("server/routes/meta.py:2:", "loom.server.routes.meta imports loom.nodes.loaders", "only the kernel"),
        ("nodes/kernel/schema.py:2:", "loom.nodes.kernel.schema imports loom.nodes.runtime.devices", "kernel"),
        ("nodes/runtime/model_cache.py:3:", "loom.nodes.runtime.model_cache imports loom.nodes.loaders", "runtime"),
        ("nodes/runtime/model_cache.py:5:", "loom.nodes.runtime.model_cache imports loom.server.app", "runtime"),
        ("nodes/lora.py:2:", "loom.nodes.lora imports loom.nodes.loaders (_resolve, resolve)", "_resolve"),
        ("nodes/lora.py:6:", "loom.nodes.lora imports loom.server.app", "never imports loom.server"),
    ]
    assert len(found) == len(expected), "\n".join(found)
    for line, (where, what, why) in zip(found, sorted(expected)):
        assert line.startswith(str(tmp_path / where)) and what in line and why in line, (line, where, what)


def test_the_checker_passes_a_tree_that_keeps_the_rule(tmp_path: Path) -> None:
    roots = _write(tmp_path, {
        "server/__init__.py": "from loom.nodes.kernel import services\nfrom loom.nodes import kernel\n",
        "nodes/__init__.py": "",
        "nodes/kernel/__init__.py": "",
        "nodes/kernel/services.py": "from .schema import Node\nNAMES = ('loom.nodes.loaders',)\n",
        "nodes/kernel/schema.py": "class Node: ...\n",
        "nodes/runtime/__init__.py": "from loom.nodes.kernel.services import Node\n",
        "nodes/runtime/resample.py": "from . import _helpers\nfrom ._helpers import _private\n",
        "nodes/runtime/_helpers.py": "",
        "nodes/image.py": ("from loom.nodes.runtime.resample import common_upscale\n"
                           "from loom.nodes.loaders import resolve\nfrom . import loaders\n"),
        "nodes/loaders.py": "",
    })
    assert violations(roots) == []
