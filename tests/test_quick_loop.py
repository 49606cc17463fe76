"""The quick loop (``pytest -m "not slow"``) still covers every module of perfd and perfctl.

The rule, checked statically (ast) over tests/: every module of perfd/ and perfctl/ is loaded
(imported, imported by a module it imports, or run as ``python -m PACKAGE`` for a
``__main__``) by a test module that has at least one quick test: a test not marked ``slow``,
in a module without ``pytestmark = pytest.mark.slow``, and starting no real perfd
(``start_perfd``, or a fixture of its module that takes it) unless marked ``smoke``, the rule
of tests/conftest.py. The imports of the test helpers such a module imports
(tests/conftest.py always, tests/fakenvml.py and the like) count too, since they run in the
same loop. Marking the last quick test of a module slow, or adding a module no quick test
loads, fails here: give that module a quick test.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def modules() -> set[str]:
    """Every module of perfd and perfctl, as dotted names (a package by its __init__)."""
    names = set()
    for package in ("perfd", "perfctl"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _is_slow(decorator: ast.expr) -> bool:
    return "mark.slow" in ast.unparse(decorator)


def _marked(node: ast.FunctionDef | ast.AsyncFunctionDef, mark: str) -> bool:
    return any(f"mark.{mark}" in ast.unparse(d) for d in node.decorator_list)


def _fixtures_starting_perfd(tree: ast.Module) -> set[str]:
    """``start_perfd`` and the fixtures of this module that take it, directly or not."""
    takes = {
        node.name: {a.arg for a in node.args.args}
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("test")
    }
    found = {"start_perfd"}
    while grown := {name for name, args in takes.items() if args & found} - found:
        found |= grown
    return found


def quick_tests(tree: ast.Module) -> list[str]:
    """The tests of a module that ``-m "not slow"`` runs: not marked slow, in a module not
    wholly slow, and starting no real perfd unless marked smoke (tests/conftest.py)."""
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and _is_slow(node.value)
        ):
            return []
    starting = _fixtures_starting_perfd(tree)
    quick = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.startswith("test") for t in node.targets
        ):  # test_x = SomeMachine.TestCase
            if not _is_slow(node.value):
                quick += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            perfd = bool({a.arg for a in node.args.args} & starting)
            if not _marked(node, "slow") and (not perfd or _marked(node, "smoke")):
                quick.append(node.name)
    return quick


def imported(tree: ast.Module) -> Iterator[str]:
    """Every name a module imports (function-level imports too), and for ``from a import b``
    both ``a`` and ``a.b`` (b may be a module); ``P.__main__`` for a ``["-m", "P"]`` argv."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.List | ast.Tuple):  # [sys.executable, "-m", "perfd"]
            words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            yield from (
                f"{package}.__main__"
                for flag, package in itertools.pairwise(words)
                if flag == "-m" and isinstance(package, str)
            )


def _loads(name: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that importing ``name`` runs: it and its packages."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known


def covered() -> dict[str, list[str]]:
    """Each module of perfd/perfctl the quick loop loads -> the test modules that load it:
    what they import, and what those modules import in turn (function-level imports too)."""
    known = modules()
    graph = {
        name: {
            m
            for target in imported(ast.parse(_source(name).read_text()))
            for m in _loads(target, known)
        }
        for name in known
    }
    trees = {path.stem: ast.parse(path.read_text()) for path in TESTS.glob("*.py")}
    seen: dict[str, list[str]] = {}

    def add(name: str, tree: ast.Module, done: set[str]) -> None:
        for target in imported(tree):
            todo = list(_loads(target, known))
            while todo:
                module = todo.pop()
                if name not in seen.setdefault(module, []):
                    seen[module].append(name)
                    todo += graph[module]
            helper = target.removeprefix("tests.")
            if target.startswith("tests.") and helper in trees and helper not in done:
                done.add(helper)
                add(name, trees[helper], done)

    for name, tree in trees.items():
        if name == "conftest" or (name.startswith("test_") and quick_tests(tree)):
            add(name, tree, {name})
    return seen


def _source(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_every_module_is_imported_by_a_quick_test() -> None:
    seen = covered()
    missing = sorted(m for m in modules() if m not in seen)
    assert not missing, f"no quick test imports {missing}: add one (see this module's docstring)"


def test_the_check_sees_slow_marks() -> None:
    """The check itself: a wholly slow module has no quick tests; a test marked slow, or one
    that starts a real perfd (through a fixture too) and is not marked smoke, is left out."""
    wholly = ast.parse("import pytest\npytestmark = pytest.mark.slow\ndef test_a(): pass\n")
    mixed = ast.parse(
        "import pytest\n@pytest.mark.slow\ndef test_a(): pass\n"
        "@pytest.mark.parametrize('x', [1])\ndef test_b(x): pass\n"
        "def started(start_perfd): pass\ndef test_c(started): pass\n"
        "def test_d(start_perfd): pass\n@pytest.mark.smoke\ndef test_e(start_perfd): pass\n"
        "test_f = pytest.mark.slow(Machine.TestCase)\ntest_g = Machine.TestCase\n"
    )
    assert quick_tests(wholly) == []
    assert sorted(quick_tests(mixed)) == ["test_b", "test_e", "test_g"]
    assert "perfd.server.gate" in set(imported(ast.parse("from perfd.server import gate")))
    assert "perfd.__main__" in set(imported(ast.parse("run([sys.executable, '-m', 'perfd'])")))


@pytest.mark.smoke
def test_smoke_tests_keep_a_real_perfd_in_the_quick_loop() -> None:
    """At least one quick test starts a real perfd and talks to it with perfctl."""
    smoke = [
        f"{path.stem}::{node.name}"
        for path in TESTS.glob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        and _marked(node, "smoke")
        and "start_perfd" in {a.arg for a in node.args.args}
    ]
    assert "test_daemon::test_ping_status_config_through_perfctl" in smoke
