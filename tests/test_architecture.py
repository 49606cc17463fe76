"""The arrows of docs/architecture.md, checked statically: every import in the source,
function-level ones and ``importlib.import_module("...")`` strings included, read with ast.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


@dataclass(frozen=True)
class Import:
    """One import: the file and line it is on, and the module it names (absolute, dotted)."""

    path: Path
    line: int
    module: str
    top_level: bool  # at module level, outside ``if TYPE_CHECKING:`` (runs at import time)

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}: {self.module}"


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this repository."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _package_of(path: Path) -> str:
    """The package a file's relative imports start from (a package's __init__: itself)."""
    return ".".join(path.relative_to(ROOT).parts[:-1])


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, package: str | None = None) -> Iterator[Import]:
    """Every import in ``path``: ``import a.b``, ``from a import b`` (a.b when b is a module),
    relative ones resolved (from ``package``, by default the file's), and string arguments of
    importlib.import_module / __import__."""
    tree = ast.parse(path.read_text(), str(path))
    eager: set[int] = set()  # ids of the nodes run at import time

    def mark(body: list[ast.stmt]) -> None:
        for node in body:
            eager.add(id(node))
            if isinstance(node, ast.If) and not _type_checking(node.test):
                mark(node.body)
                mark(node.orelse)
            elif isinstance(node, ast.Try):
                mark(node.body)
                for handler in node.handlers:
                    mark(handler.body)
                mark(node.orelse)
                mark(node.finalbody)

    mark(tree.body)
    for node in ast.walk(tree):
        top = id(node) in eager
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, top)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                start = (package or _package_of(path)).split(".")
                start = start[: len(start) - (node.level - 1)]
                base = ".".join([*start, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(path, node.lineno, sub if _is_module(sub) else base, top)
        elif isinstance(node, ast.Call) and _dynamic_import(node.func):
            yield Import(path, node.lineno, _named(node.args[0] if node.args else None), top)


def _named(arg: ast.expr | None) -> str:
    """The module a dynamic import names: a string, or the package an f-string starts with
    (``f"perfd.recommend.{home}"``: perfd.recommend); otherwise a name no rule allows."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values:
        head = arg.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and "." in head.value:
            return head.value.rsplit(".", 1)[0]
    return "<a module named at run time>"


def _dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}


def imports_under(folder: str) -> list[Import]:
    return [imp for path in sorted((ROOT / folder).rglob("*.py")) for imp in imports_of(path)]


def within(module: str, *prefixes: str) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def stdlib(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in STDLIB


def offending(folder: str, bad: Callable[[Import], bool]) -> str:
    found = [str(imp) for imp in imports_under(folder) if bad(imp)]
    return "\n  ".join(found)


# --- the arrows --------------------------------------------------------------------------------


def perfctl_may_import(module: str) -> bool:
    """pyzmq, the standard library, perfctl itself, perfd.wire, the pure recommender (for
    ``recommend --offline``) and the perfd package root (``__version__``; it imports nothing)."""
    return (
        stdlib(module)
        or within(module, "zmq", "perfctl", "perfd.wire", "perfd.recommend")
        or module == "perfd"
    )


def test_perfctl_imports_only_zmq_stdlib_wire_and_the_recommender() -> None:
    """perfctl never imports a part of the daemon, nor anything heavy, at any level."""
    bad = offending("perfctl", lambda imp: not perfctl_may_import(imp.module))
    assert not bad, (
        "perfctl may import only pyzmq, the standard library, perfd.wire and perfd.recommend "
        f"(docs/architecture.md); these imports break that:\n  {bad}"
    )


def test_perfd_package_root_imports_nothing_at_import_time() -> None:
    """``import perfd`` (which perfctl does for __version__ and perfd.wire) loads nothing more."""
    eager = [str(imp) for imp in imports_of(ROOT / "perfd" / "__init__.py") if imp.top_level]
    bad = [line for line in eager if not stdlib(line.rsplit(": ", 1)[1])]
    assert not bad, f"perfd/__init__.py must stay cheap for perfctl; it imports:\n  {bad}"


def test_the_recommender_perfctl_imports_stays_pure() -> None:
    """perfd.recommend (imported by perfctl for --offline) imports only the standard library,
    itself and perfd.wire, so perfctl's closure holds no part of the daemon."""
    bad = offending(
        "perfd/recommend",
        lambda imp: not (stdlib(imp.module) or within(imp.module, "perfd.recommend", "perfd.wire")),
    )
    assert not bad, (
        "perfd/recommend must be pure (standard library, perfd.recommend, perfd.wire): "
        f"perfctl imports it. Offending imports:\n  {bad}"
    )


def wire_may_import(imp: Import) -> bool:
    """The standard library, pyzmq, perfd.wire.*; numpy only inside a function (arrays are
    decoded lazily: perfctl imports perfd.wire.arrays at start, numpy only for a reply's arrays)."""
    lazy_numpy = within(imp.module, "numpy") and not imp.top_level
    return stdlib(imp.module) or within(imp.module, "zmq", "perfd.wire") or lazy_numpy


def test_wire_imports_no_part() -> None:
    """perfd/wire imports only the standard library, pyzmq, perfd.wire itself (numpy lazily)."""
    bad = offending("perfd/wire", lambda imp: not wire_may_import(imp))
    assert not bad, (
        "perfd/wire is shared by perfd and perfctl and may import only the standard library, "
        f"pyzmq, perfd.wire.* and (inside a function) numpy; these imports break that:\n  {bad}"
    )


def test_probes_import_no_part() -> None:
    """perfd/probes return values: they import perfd.log and perfd.probes.*, no other part."""
    bad = offending(
        "perfd/probes",
        lambda imp: (
            within(imp.module, "perfd") and not within(imp.module, "perfd.log", "perfd.probes")
        ),
    )
    assert not bad, (
        "perfd/probes may import only perfd.log and perfd.probes.* of perfd "
        f"(docs/architecture.md); these imports break that:\n  {bad}"
    )


SOCKET_MODULES = ("zmq", "perfd.server", "perfd.wire.protocol")


def test_cache_and_monitor_know_no_socket() -> None:
    """perfd/cache and perfd/monitor import neither zmq, perfd.server nor the wire envelope."""
    bad = "\n  ".join(
        filter(
            None,
            (
                offending(folder, lambda imp: within(imp.module, *SOCKET_MODULES))
                for folder in ("perfd/cache", "perfd/monitor")
            ),
        )
    )
    assert not bad, (
        f"perfd/cache and perfd/monitor must know no socket ({', '.join(SOCKET_MODULES)}); "
        f"domain errors are mapped to wire codes in perfd/handlers. Offending imports:\n  {bad}"
    )


def test_the_cache_reads_the_monitor_only_through_what_it_is_given() -> None:
    """perfd/cache imports no part of perfd/monitor, housekeeping's snapshot types aside: the
    memory it has comes in as a capacity function and a meter (perfd/parts.py wires them),
    timestamps from perfd.wire.values."""
    bad = offending(
        "perfd/cache",
        lambda imp: (
            within(imp.module, "perfd.monitor")
            and (imp.path.name != "housekeeping.py" or imp.top_level)
        ),
    )
    assert not bad, (
        "perfd/cache may not import perfd.monitor (docs/architecture.md, Arrows); these do:"
        f"\n  {bad}"
    )


FOUNDATION = (
    "perfd.errors",
    "perfd.log",
    "perfd.config",
    "perfd.settings",
    "perfd.schema",
    "perfd.redaction",
    "perfd.files",
    "perfd.systemd",
)
# The parts below the loaders (docs/architecture.md, Arrows): the net (the openai loader's
# provider), the pure recommender (its header readers give the estimates), the wire's values.
LOADERS_MAY_IMPORT = ("perfd.loaders", "perfd.net", "perfd.recommend", "perfd.wire", *FOUNDATION)


def assert_imports_only(folder: str, allowed: tuple[str, ...]) -> None:
    """Every import of perfd in ``folder`` is of one of ``allowed`` (or of perfd itself)."""
    bad = offending(
        folder,
        lambda imp: (
            within(imp.module, "perfd")
            and imp.module != "perfd"
            and not within(imp.module, *allowed)
        ),
    )
    assert not bad, (
        f"{folder} may import only {', '.join(allowed)} of perfd "
        f"(docs/architecture.md, Arrows); these imports break that:\n  {bad}"
    )


def test_loaders_import_only_the_parts_below_them() -> None:
    """perfd/loaders import, of perfd, only themselves, perfd.net, perfd.recommend (the
    header readers), perfd.wire and the foundation modules: never the cache that calls them."""
    assert_imports_only("perfd/loaders", LOADERS_MAY_IMPORT)


# The parts below the engines (docs/architecture.md, Arrows): the probes' values (the process
# table discovery matches, the GPU processes owners attribute), the recommender (the plan
# check), the net, the wire and the foundation modules.
ENGINES_MAY_IMPORT = (
    "perfd.engines",
    "perfd.probes.samples",
    "perfd.recommend",
    "perfd.net",
    "perfd.wire",
    *FOUNDATION,
)


def test_engines_import_only_the_parts_below_them() -> None:
    """perfd/engines import, of perfd, only themselves, the probes' values, the recommender,
    the net, the wire and the foundation modules: never a probe's library, the monitor or
    the handlers that read them."""
    assert_imports_only("perfd/engines", ENGINES_MAY_IMPORT)


def test_recommender_takes_hardware_as_values() -> None:
    """perfd/recommend imports neither the probes nor the monitor: hardware comes in as values."""
    bad = offending(
        "perfd/recommend", lambda imp: within(imp.module, "perfd.probes", "perfd.monitor")
    )
    assert not bad, (
        "perfd/recommend takes hardware as values and may not import perfd.probes or "
        f"perfd.monitor; these imports break that:\n  {bad}"
    )


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` (module -> modules it imports at import time), or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in done and (found := visit(nxt)):
                return found
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (found := visit(node)):
            return found
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles() -> None:
    """No module of perfd or perfctl imports, at import time, one that imports it back."""
    graph: dict[str, set[str]] = {}
    for folder in ("perfctl", "perfd"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            graph[_module_name(path)] = {
                imp.module
                for imp in imports_of(path)
                if imp.top_level and within(imp.module, "perfctl", "perfd")
            }
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    """_cycle reports a -> b -> a, and None for a tree."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_checker_sees_function_level_and_dynamic_imports(tmp_path: Path) -> None:
    """The reader finds imports inside functions, relative ones and import_module strings."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib\n"
        "def f():\n"
        "    import perfd.cache\n"
        "    from . import client\n"
        "    importlib.import_module('perfd.server')\n"
        "    __import__('numpy')\n"
        "    importlib.import_module(f'perfd.monitor.{x}')\n"
        "    importlib.import_module(name)\n"
    )
    found = {(imp.module, imp.top_level) for imp in imports_of(probe, package="perfctl")}
    assert found == {
        ("importlib", True),
        ("perfd.cache", False),
        ("perfctl.client", False),
        ("perfd.server", False),
        ("numpy", False),
        ("perfd.monitor", False),
        ("<a module named at run time>", False),
    }
    assert not perfctl_may_import("perfd.cache")
    assert not perfctl_may_import("numpy")
    assert perfctl_may_import("perfd.wire.arrays")


MAX_LINES = 450  # docs/architecture.md, "Habits": modules of 50-400 lines, 450 at most


def test_no_module_is_over_450_lines() -> None:
    """Every module of perfd and perfctl fits on a few screens (docs/architecture.md)."""
    long = {
        str(path.relative_to(ROOT)): lines
        for package in ("perfd", "perfctl")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines: split them by concern"
