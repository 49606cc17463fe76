"""Bad config files: every key with a wrong type or range is a specific error at start and reload.

The cases come from the schema itself (``schema.leaves``), keys inside ``[models.NAME]`` and
``[providers.NAME]`` included, so a key added later is covered without editing this file. Each
leaf gets every TOML type it does not take, values of the right type that are still wrong, and
values just outside its range; each must be a ConfigError naming the file, the dotted key, the
bad value and what is allowed. Three layers: ``config.load`` for every (key, value) pair, a real
``perfd`` (and ``perfd --check-config``) for one value of every key, and a running perfd
reloading one bad file per key (through the client, perfctl and SIGHUP).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import signal
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from perfctl import Client, ConfigInvalid
from perfd import config, schema
from perfd.errors import ConfigError
from tests.conftest import StartPerfd, clean_env, command

ENTRY = "bad"  # the NAME of the [models.NAME], [providers.NAME] (or later) table under test
# What an entry of a map needs besides the key under test to be valid; maps not listed need
# nothing (test_map_entries_are_valid says when a new map needs a line here).
VALID_ENTRY: dict[str, dict[str, Any]] = {
    "models": {"loader": "python", "target": "json:loads"},
    "engines": {"kind": "sglang", "url": "http://127.0.0.1:30000"},
}

HUGE = 10**400  # tomllib reads it, though beyond TOML's 64 bits and every float
HUGE_TEXT = "9" * 400
# One value of each TOML type; a kind is offered every one whose type it does not take.
TOML_SAMPLES: tuple[Any, ...] = (
    7,
    2.5,
    True,
    "text",
    [1, 2],
    {"a": 1},
    dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.UTC),
    dt.datetime(1979, 5, 27, 7, 32),
    dt.date(1979, 5, 27),
    dt.time(7, 32),
)
TAKES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "choice": (str,),
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "size": (int, str),
    "duration": (int, float, str),
    "ttl": (int, float, str),
    "budget": (int, str),
    "table": (dict,),
    "names": (list,),
}
NAN, INF = math.nan, math.inf
# Values of a type the kind takes that are still wrong (ranges come from the schema).
WRONG_VALUES: dict[str, tuple[Any, ...]] = {
    "str": ("nul\0char",),
    "path": ("/tmp/nul\0char",),
    "choice": (),  # built from the choices: see wrong_values()
    "bool": ("true", 0, 1),
    "int": ("7", 7.0, HUGE, -HUGE),
    "float": (NAN, INF, -INF, "1.5", HUGE),
    "size": ("text", "1 parsec", "1.5.5", "-1", HUGE, HUGE_TEXT + "TiB"),
    "duration": ("soon", "5 fortnights", "-1s", NAN, INF, -INF, HUGE, HUGE_TEXT + "s"),
    "ttl": ("soon", "never", "-1s", -2, -0.5, NAN, INF, -INF, HUGE, HUGE_TEXT + "s"),
    "budget": ("0%", "101%", "-5%", "%", "nan%", "half%", "text", -5, 0, "0 bytes", HUGE),
    "table": (),
    "names": ([1, 2], [""], ["nul\0char"], [["nested"]], ["x" * 257], [True]),
}
UNKNOWN = "no_such_key"  # a key no table has
BOUNDED = ("int", "float", "size", "duration", "ttl")  # kinds that must declare a range


def wrong_values(meta: Mapping[str, Any]) -> list[Any]:
    """Every bad value for one leaf: wrong TOML types, wrong contents, just out of range."""
    kind = meta["kind"]
    values = [v for v in TOML_SAMPLES if type(v) not in TAKES[kind]]
    values += WRONG_VALUES[kind]
    if kind == "choice":
        first = meta["choices"][0]
        values += [v for v in ("text", first.upper(), f" {first}", "") if v not in meta["choices"]]
    return values + out_of_range(meta)


def out_of_range(meta: Mapping[str, Any]) -> list[Any]:
    """Values just below the minimum and just above the maximum, as numbers and with units."""
    kind, low, high = meta["kind"], meta["min"], meta["max"]
    values: list[Any] = []
    if kind in ("int", "size"):
        values += [] if low is None else [int(low) - 1]
        values += [] if high is None else [int(high) + 1]
        if kind == "size" and high is not None and high % 1024 == 0:
            values.append(f"{int(high) // 1024 + 1}KiB")
    elif kind in ("float", "duration", "ttl"):
        values += [] if low is None else [low - max(abs(low), 1) * 1e-6]
        values += [] if high is None else [high + max(abs(high), 1) * 1e-6]
        if kind in ("duration", "ttl") and high is not None:
            values.append(f"{round(high * 1000) + 1}ms")
    return values


def toml_value(value: Any) -> str:
    """``value`` written as TOML (inline for arrays and tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict), value
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad file: ``name = value`` in the table ``table``, beside what that table needs."""

    table: tuple[str, ...]
    name: str
    value: Any
    base: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """The dotted key the error must name: "models.bad.size_hint"."""
        return ".".join((*self.table, self.name))

    def text(self) -> str:
        return table_text(self.table, {**dict(self.base), self.name: self.value})

    def __str__(self) -> str:
        return f"{self.key} = {toml_value(self.value)[:60]}"


def table_text(table: tuple[str, ...], values: dict[str, Any]) -> str:
    """A TOML file holding ``values`` in ``table``."""
    lines = [f"[{'.'.join(map(toml_key, table))}]"] if table else []
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def table_of(dotted: str) -> tuple[tuple[str, ...], str, tuple[tuple[str, Any], ...]]:
    """A leaf's table (NAME made concrete), its own name, and what its map entry needs."""
    *parts, name = dotted.split(".")
    base: dict[str, Any] = {}
    if "NAME" in parts:
        base = VALID_ENTRY.get(".".join(parts[: parts.index("NAME")]), {})
    table = tuple(ENTRY if part == "NAME" else part for part in parts)
    return table, name, tuple(base.items())


def leaf_cases() -> dict[str, list[Case]]:
    """Every leaf of the schema, by dotted key, with each of its bad values."""
    cases: dict[str, list[Case]] = {}
    for dotted, spec, _ in schema.leaves(config.Config()):
        if spec.metadata["kind"] not in TAKES:
            continue  # test_every_kind_has_cases says so
        table, name, base = table_of(dotted)
        values = wrong_values(spec.metadata)
        cases[".".join((*table, name))] = [Case(table, name, v, base) for v in values]
    return cases


def all_tables() -> dict[tuple[str, ...], tuple[tuple[str, Any], ...]]:
    """Every table (top level, sections, maps, map entries) and what it needs to be valid."""
    tables: dict[tuple[str, ...], tuple[tuple[str, Any], ...]] = {(): ()}
    for dotted, _, _ in schema.leaves(config.Config()):
        table, _, base = table_of(dotted)
        for depth in range(1, len(table) + 1):
            tables.setdefault(table[:depth], base if depth == len(table) else ())
    return tables


def table_cases() -> list[Case]:
    """Every table given a number instead, and every table given an unknown key."""
    cases = [Case(table[:-1], table[-1], 5) for table in TABLES if table]
    return cases + [Case(table, UNKNOWN, 1, base) for table, base in TABLES.items()]


CASES = leaf_cases()
TABLES = all_tables()
KEYS = sorted(CASES)


def one_case(key: str) -> Case:
    """The bad value the daemon layers use for ``key``: a different kind of mistake per key."""
    cases = CASES[key]
    return cases[KEYS.index(key) % len(cases)]


def same(a: Any, b: Any) -> bool:
    return schema.shown(a) == schema.shown(b)


def mismatches(error: ConfigError, case: Case, path: Path, *, leaf: bool = True) -> list[str]:
    """What is wrong with ``error`` as the error for ``case`` (nothing, when it is specific)."""
    text = str(error)
    said = text.partition(f"{path}: {case.key}: ")[2]  # what the error says about the key
    found = []
    if error.key != case.key or error.path != str(path) or not said:
        found.append(f"names file {error.path!r} and key {error.key!r}")
    if not same(error.value, case.value):
        found.append(f"keeps value {error.value!r}")
    if case.name != UNKNOWN and schema.shown(case.value) not in said:
        found.append("does not show the value")
    if leaf and (not error.allowed or f"allowed: {error.allowed}" not in text):
        found.append("does not say what is allowed")
    return [f"{case}: {problem}: {text[:300]}" for problem in found]


def load_failures(cases: list[Case], directory: Path, *, leaf: bool = True) -> list[str]:
    """``config.load`` each case's file; what did not fail with a specific ConfigError."""
    failures = []
    for index, case in enumerate(cases):
        path = directory / f"bad{index}.toml"
        path.write_text(case.text())
        try:
            config.load(path)
        except ConfigError as error:
            failures += mismatches(error, case, path, leaf=leaf)
        except Exception as error:  # a crash is a finding too
            failures.append(f"{case}: raised {type(error).__name__}: {error}")
        else:
            failures.append(f"{case}: accepted")
    return failures


# -- the cases themselves ------------------------------------------------------------------


def test_cases_are_the_toml_they_claim() -> None:
    """Each generated file parses to exactly the bad value meant, in the table meant."""
    for case in [c for cases in CASES.values() for c in cases] + table_cases():
        document: Any = tomllib.loads(case.text())
        for part in case.table:
            document = document[part]
        assert same(document[case.name], case.value), case


def test_every_kind_has_cases() -> None:
    """Every kind of setting has its bad values here (a new kind needs a line in TAKES)."""
    assert set(schema.KINDS) <= set(TAKES) == set(WRONG_VALUES)
    assert len(CASES) == len(list(schema.leaves(config.Config())))


def test_map_entries_are_valid() -> None:
    """The entry each map's cases sit in is valid without the bad key (VALID_ENTRY is enough)."""
    for cases in CASES.values():
        if ENTRY in cases[0].table:
            config.parse(tomllib.loads(table_text(cases[0].table, dict(cases[0].base))))


def test_every_number_has_a_range() -> None:
    """Every numeric, size, duration and ttl key declares its range (so it can be checked)."""
    for key, spec, _ in schema.leaves(config.Config()):
        meta = spec.metadata
        if meta["kind"] in BOUNDED:
            assert meta["max"] is not None, f"{key} has no maximum"
            assert meta["kind"] == "ttl" or meta["min"] is not None, f"{key} has no minimum"


# -- layer 1: config.load, every (key, value) ----------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_every_bad_value_is_a_specific_error(tmp_path: Path, key: str) -> None:
    """Each wrong type, wrong content and out-of-range value of the key is a ConfigError
    naming the file, the key, the value and what is allowed (never accepted, never a crash)."""
    failures = load_failures(CASES[key], tmp_path)
    assert not failures, "\n".join(failures)


def test_ranges_are_stated(tmp_path: Path) -> None:
    """An out-of-range value's error gives the range: "from 1 to 256", "up to 365d"."""
    failures = []
    for dotted, spec, _ in schema.leaves(config.Config()):
        table, name, base = table_of(dotted)
        words = "up to " if spec.metadata["kind"] == "ttl" else " to "
        for value in out_of_range(spec.metadata):
            case = Case(table, name, value, base)
            path = tmp_path / "range.toml"
            path.write_text(case.text())
            with pytest.raises(ConfigError) as caught:
                config.load(path)
            if words not in (caught.value.allowed or ""):
                failures.append(f"{case}: {caught.value}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", table_cases(), ids=str)
def test_bad_tables_are_specific_errors(tmp_path: Path, case: Case) -> None:
    """A section, map or map entry given a number, or a table given an unknown key, is an
    error naming that exact key and value."""
    in_map = (*case.table, ENTRY) in TABLES  # [models] no_such_key = 1: an entry, not a table
    failures = load_failures([case], tmp_path, leaf=case.name == UNKNOWN and not in_map)
    assert not failures, "\n".join(failures)


def _threshold_rules() -> list[tuple[str, Any]]:
    """The alert rules with an internal largest threshold (``unit_max``), by dotted table."""
    found = []

    def walk(obj: Any, prefix: str) -> None:
        for spec in dataclasses.fields(obj):
            if spec.metadata.get("section"):
                child = getattr(obj, spec.name)
                if hasattr(child, "unit_max"):
                    found.append((prefix + spec.name, child))
                walk(child, f"{prefix}{spec.name}.")

    walk(config.Config(), "")
    return found


def test_thresholds_above_their_unit_name_the_key(tmp_path: Path) -> None:
    """warn or crit above a rule's own largest value (100 for percents) names that key."""
    failures = []
    for table, rule in _threshold_rules():
        for name in ("warn", "crit"):
            case = Case(tuple(table.split(".")), name, rule.unit_max + 1)
            failures += load_failures([case], tmp_path, leaf=False)
    assert not failures, "\n".join(failures)


# -- layer 2: a real perfd refuses to start ------------------------------------------------


def _only_start_failed(stdout: str, argv_for: Callable[[Path, Path], list[str]]) -> bool:
    """stdout holds nothing (--check-config) or, at start, only the JSON daemon.start_failed
    line every start failure logs."""
    lines = stdout.splitlines()
    if "--check-config" in argv_for(Path("f"), Path("r")):
        return not lines
    return len(lines) == 1 and json.loads(lines[0])["event"] == "daemon.start_failed"


def _run_all(argv_for: Callable[[Path, Path], list[str]], tmp_path: Path) -> list[str]:
    """Run perfd on one bad file per key, four at a time; what did not fail as it should."""

    def run(index: int, key: str) -> list[str]:
        case = one_case(key)
        path = tmp_path / f"bad{index}.toml"
        path.write_text(case.text())
        rundir = tmp_path / f"run{index}"
        out = subprocess.run(
            argv_for(path, rundir), capture_output=True, text=True, env=clean_env(), timeout=60
        )
        found = []
        if out.returncode != 1:
            found.append(f"exit {out.returncode}")
        for needed in (f"{path}: {case.key}: ", schema.shown(case.value), "allowed: "):
            if needed not in out.stderr:
                found.append(f"stderr lacks {needed[:60]!r}")
        if "Traceback" in out.stderr or not _only_start_failed(out.stdout, argv_for):
            found.append("printed more than the error")
        if rundir.exists():
            found.append("created its runtime directory")
        return [f"{case}: {problem}: {out.stderr[-300:]}" for problem in found]

    with ThreadPoolExecutor(4) as pool:
        results = pool.map(run, range(len(KEYS)), KEYS)
        return [failure for found in results for failure in found]


@pytest.mark.slow
def test_perfd_refuses_to_start_on_every_bad_key(tmp_path: Path) -> None:
    """`perfd --config FILE` with any one bad key exits 1 naming file, key, value and what is
    allowed, before it creates its runtime directory or binds a socket."""
    failures = _run_all(
        lambda path, rundir: [
            *command("perfd"),
            "--config",
            str(path),
            "--runtime-dir",
            str(rundir),
        ],
        tmp_path,
    )
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_check_config_rejects_every_bad_key(tmp_path: Path) -> None:
    """`perfd --check-config FILE` with any one bad key exits 1 with the same specific error."""
    failures = _run_all(lambda path, _: [*command("perfd"), "--check-config", str(path)], tmp_path)
    assert not failures, "\n".join(failures)


# -- layer 3: a running perfd keeps its config -----------------------------------------------

# A running perfd's config, with values a bad reload must not touch.
OLD_CONFIG = """\
[server]
workers = 3
command_timeout = "30s"
[cache]
max_models = 7
[alerts]
history = 50
"""


def names(text: str, case: Case) -> bool:
    """Whether a reply or log text names the case's key, its value and what is allowed."""
    said = text.partition(f": {case.key}: ")[2]
    return schema.shown(case.value) in said and "allowed: " in said


def as_logged(value: Any) -> Any:
    """``value`` as it reads back from perfd's JSON log (strict JSON: NaN and infinities are
    written as "nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.loads(json.dumps(value, default=str))


def test_reload_rejects_every_bad_key(start_perfd: StartPerfd) -> None:
    """A reload of a file with any one bad key answers config_invalid naming the key (client
    API and perfctl), and perfd goes on serving with its old config."""
    perfd = start_perfd(OLD_CONFIG)
    entries = [".".join(table) + "." for table in TABLES if table and table[-1] == ENTRY]
    by_cli = {KEYS[0]} | {next(k for k in KEYS if k.startswith(e)) for e in entries}
    failures = []
    with Client(perfd.admin_socket, timeout=10) as client:
        before = client.config()["config"]
        assert before["server"]["workers"] == 3
        for key in KEYS:
            case = one_case(key)
            perfd.config_path.write_text(case.text())
            if key in by_cli:
                out = perfd.ctl("reload")
                if out.returncode != 1 or not names(out.stderr, case):
                    failures.append(f"{case}: perfctl reload gave {out.returncode}: {out.stderr}")
            else:
                try:
                    reply = client.reload()
                except ConfigInvalid as exc:
                    if not names(exc.message, case):
                        failures.append(f"{case}: reply {exc.message}")
                else:
                    failures.append(f"{case}: reloaded {reply}")
            # READY=1 again after the failed reload; reading it also keeps the notify queue
            # from filling up, which would block perfd (as a stalled systemd would)
            perfd.notify.wait_for("READY=1")
            assert client.ping()
            if client.config()["config"] != before:
                failures.append(f"{case}: the config changed")
    assert not failures, "\n".join(failures)
    shown = json.loads(perfd.ctl("config", "--json").stdout)["config"]
    assert shown == before


def test_sighup_rejects_every_bad_key(start_perfd: StartPerfd) -> None:
    """SIGHUP with a file with any one bad key logs config.invalid once, naming the key and
    value, and keeps the old config."""
    perfd = start_perfd(OLD_CONFIG)
    failures = []
    with Client(perfd.admin_socket, timeout=10) as client:
        before = client.config()["config"]
        for count, key in enumerate(KEYS, 1):
            case = one_case(key)
            perfd.config_path.write_text(case.text())
            perfd.proc.send_signal(signal.SIGHUP)
            perfd.notify.wait_for("READY=1")
            invalid = [e for e in perfd.logs() if e["event"] == "config.invalid"]
            if len(invalid) != count:
                failures.append(f"{case}: {len(invalid)} config.invalid lines after {count}")
            last = invalid[-1]
            if (
                (last["level"], last["key"], last["path"]) != ("error", key, str(perfd.config_path))
                or not same(last["value"], as_logged(case.value))
                or not names(last["error"], case)
            ):
                failures.append(f"{case}: logged {last}")
            if client.config()["config"] != before:
                failures.append(f"{case}: the config changed")
    assert not failures, "\n".join(failures)
    assert perfd.ctl("ping").returncode == 0
