"""Check a pytest JUnit XML report: every test of the named modules ran (none skipped, and some at all).

    python .ci/check_ran.py REPORT.xml tests/test_conformance.py [tests/other.py ...]

Exit 0 when each module has at least one test case in the report and none of them was skipped; else exit 1,
naming each skipped test with its reason, or the module of which no test ran. ``.ci/run`` uses it for the
conformance tests, which skip themselves where ``../shared/conformance`` is missing: in CI it is there, so
a skip there means they silently stopped checking anything.
"""
from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import PurePosixPath


def dotted(module_path: str) -> str:
    """``tests/test_conformance.py`` → ``tests.test_conformance`` (how JUnit XML names the module)."""
    path = PurePosixPath(module_path.replace("\\", "/"))
    return ".".join(path.with_suffix("").parts)


def not_run(report: str, module_paths: list[str]) -> list[str]:
    """One line per problem: a skipped test of one of the modules, or a module with no test in the report."""
    root = ElementTree.parse(report).getroot()
    modules = {dotted(path): path for path in module_paths}
    seen = dict.fromkeys(modules, 0)
    problems = []
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        # a module skipped at collection is reported with an empty classname and the module as its name
        owner = classname or name
        module = next((m for m in modules if owner == m or owner.startswith(m + ".")), None)
        if module is None:
            continue
        seen[module] += 1
        skipped = case.find("skipped")
        if skipped is not None:
            test = f"{modules[module]}::{name}" if classname else modules[module]
            reason = _reason(skipped)
            problems.append(f"{test} was skipped: {reason}")
    problems += [f"{modules[m]}: no test of it ran (not collected?)" for m, count in seen.items() if not count]
    return problems


def _reason(skipped: ElementTree.Element) -> str:
    """The skip's reason; a module skipped at collection has only ``(file, line, 'Skipped: why')`` as text."""
    message, text = skipped.get("message") or "", (skipped.text or "").strip()
    if message == "collection skipped" and text.startswith("("):
        try:
            where = ast.literal_eval(text)
            return str(where[-1]).removeprefix("Skipped: ")
        except (ValueError, SyntaxError, IndexError, TypeError):
            return text
    return message or text


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        problems = not_run(argv[0], argv[1:])
    except (OSError, ElementTree.ParseError) as error:
        print(f"cannot read the test report {argv[0]}: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
