"""perfd.cache.errors: the cache's refusals keep their facts, say what they always said, and
map to the same wire codes in one table (perfd.handlers.errors)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from perfd.cache import errors
from perfd.errors import CommandError, PerfdError
from perfd.handlers import errors as wire
from perfd.handlers.errors import CODES, code_for

MiB = 1 << 20
CACHE = Path(errors.__file__).parent

# Each refusal, the message it has always had (the text of the cache's CommandErrors), and
# the wire code the reply carries.
CASES = [
    (
        errors.UnknownModel("nope", ("a", "b")),
        "unknown model 'nope'; known: a, b",
        "not_found",
    ),
    (errors.UnknownModel("nope", ()), "unknown model 'nope'; known: none", "not_found"),
    (
        errors.DefinedInConfig("e"),
        "'e' is defined in the config; load it by name",
        "invalid_args",
    ),
    (
        errors.LoaderUnavailable("rt", "npy", "unknown loader 'npy'"),
        "unknown loader 'npy'",
        "invalid_args",
    ),
    (
        errors.NoCapacity("huge", device="cpu", need=50 * MiB, budget=100 * MiB, fixed=60 * MiB),
        "'huge' needs 0.05 GiB on cpu, but only 0.04 GiB of the 0.10 GiB budget can be freed "
        "(0.06 GiB is pinned, in use or loading); raise [cache] budgets, unpin or evict models",
        "no_capacity",
    ),
    (
        errors.TooManyModels("c", count=3, limit=2),
        "'c' would be model 3 of max_models = 2, and every loaded model is pinned or in use",
        "no_capacity",
    ),
    (
        errors.LoadOverdue("a", 12.4),
        "an earlier load of 'a' ran past load_timeout and has been running 12s more; it is "
        "unloaded when it ends, then 'a' can load again: retry later",
        "busy",
    ),
    (errors.StillLoading("a", 601.0), "'a' is still loading", "timeout"),
    (
        errors.LoadTimeout("a", 0.5),
        "loading 'a' took longer than load_timeout (0.5s); it will be discarded when it finishes",
        "timeout",
    ),
    (
        errors.LoadFailed("a", "OSError", "no weights"),
        "loading 'a' failed: OSError: no weights",
        "load_failed",
    ),
    (errors.NotReady("a", "not loaded"), "'a' is not loaded", "not_found"),
    (errors.NotReady("a", "loading"), "'a' is loading", "not_found"),
    (errors.NotLoaded("a"), "'a' is not loaded; load it first", "not_found"),
    (
        errors.InUse("a", 2),
        "'a' is in use by 2 request(s); retry later",
        "busy",
    ),
    (errors.Pinned("p"), "'p' is pinned; unpin it first", "busy"),
]


@pytest.mark.parametrize(("exc", "message", "code"), CASES, ids=lambda v: type(v).__name__)
def test_message_and_wire_code_are_todays(exc: errors.CacheError, message: str, code: str) -> None:
    """Each refusal says exactly what the cache always said, with the same wire code."""
    assert str(exc) == exc.message == message
    assert code_for(exc) == code
    sent = wire.to_wire(exc)
    assert (sent.code, sent.message) == (code, message)
    assert isinstance(exc, PerfdError)
    assert not isinstance(exc, CommandError)  # the domain carries no wire code


def test_every_refusal_has_a_wire_code() -> None:
    """The table names every concrete CacheError class, and the cases above try each one."""
    classes = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.CacheError)
        and cls not in (errors.CacheError, errors.CapacityError)
    }
    assert {cls for cls in CODES if issubclass(cls, errors.CacheError)} == classes
    assert {type(exc) for exc, _, _ in CASES} == classes


def test_facts_are_attributes() -> None:
    """The numbers and names live on the exception, not only in its text."""
    full = errors.NoCapacity("m", device="cuda:0", need=5, budget=8, fixed=4)
    assert (full.model, full.device, full.need, full.budget, full.fixed, full.freeable) == (
        "m",
        "cuda:0",
        5,
        8,
        4,
        4,
    )
    assert isinstance(full, errors.CapacityError)
    assert isinstance(errors.TooManyModels("m", count=3, limit=2), errors.CapacityError)
    assert errors.InUse("m", 3).leases == 3
    assert errors.UnknownModel("m", ("x",)).known == ("x",)
    assert errors.LoadOverdue("m", 7.0).overdue_s == 7.0
    assert errors.StillLoading("m", 601.0).waited_s == 601.0
    assert errors.LoadTimeout("m", 0.5).timeout_s == 0.5
    failed = errors.LoadFailed("m", "OSError", "gone")
    assert (failed.error_type, failed.detail) == ("OSError", "gone")
    assert errors.NotLoaded("m").state == "not loaded"
    assert isinstance(errors.NotLoaded("m"), errors.NotReady)
    unavailable = errors.LoaderUnavailable("m", "npy", "no such loader")
    assert (unavailable.loader, unavailable.problem) == ("npy", "no such loader")


def test_bound_handlers_translate_only_domain_errors() -> None:
    """A handler bound by perfd.handlers.errors.run turns a CacheError into the CommandError
    the server sends and lets anything else through unchanged."""

    def refuses(_view: object, args: dict[str, int]) -> dict[str, int]:
        raise errors.Pinned("p")

    def fails(_view: object, args: dict[str, int]) -> dict[str, int]:
        raise ValueError("a bug")

    def answers(_view: object, args: dict[str, int]) -> dict[str, int]:
        return args

    with pytest.raises(CommandError) as caught:
        wire.run(refuses, None)({})
    assert (caught.value.code, caught.value.message) == ("busy", "'p' is pinned; unpin it first")
    with pytest.raises(ValueError, match="a bug"):
        wire.run(fails, None)({})
    assert wire.run(answers, None)({"x": 1}) == {"x": 1}


def test_a_subclass_takes_its_nearest_mapped_base() -> None:
    """A refusal class added later, below a mapped one, gets that one's code."""

    class Stuck(errors.InUse):
        pass

    assert code_for(Stuck("m", 1)) == "busy"


def test_the_cache_imports_no_wire_code() -> None:
    """No module of perfd/cache imports perfd.wire.protocol or CommandError: wire codes are
    the handlers' (perfd.handlers.errors)."""
    found = []
    for path in sorted(CACHE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                imported = {a.name for a in node.names}
                if module == "perfd.wire.protocol" or (
                    module == "perfd.wire" and "protocol" in imported
                ):
                    found.append(f"{path.name}: {module}")
                if "CommandError" in imported:
                    found.append(f"{path.name}: CommandError")
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: {a.name}" for a in node.names if "protocol" in a.name]
    assert found == []


def test_docs_list_every_refusal_with_its_code() -> None:
    """docs/cache.md's table of the cache's exceptions names each class with its wire code."""
    docs = (CACHE.parent.parent / "docs" / "cache.md").read_text()
    rows = {}
    for line in docs.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[3].startswith("`"):
            rows[cells[0].split("`")[1]] = cells[3].strip("`")
    cache_codes = {cls: code for cls, code in CODES.items() if issubclass(cls, errors.CacheError)}
    assert rows == {cls.__name__: code for cls, code in cache_codes.items()}
