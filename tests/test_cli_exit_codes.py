"""Every exit code of every command, against the table in docs/protocol.md: the real perfctl
against a real perfd, one run per documented cell, and no cell left untested."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import perfctl.__main__ as cli
from tests.conftest import Perfd, StartPerfd, clean_env, command
from tests.test_access import NOBODY, run_as

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()
MODELS = """
[models.echo]
target = "tests.models.toy:make_echo"
[models.upper]
target = "tests.models.toy:make_upper"
pin = true
"""
READ_ONLY = ("ping", "status", "config", "stats", "alerts", "ps", "providers")
CACHE = ("load", "pin", "unpin", "evict", "infer")


def documented() -> dict[tuple[str, int], str]:
    """(command, exit code) -> what gives it, from the per-command table ("—": never)."""
    table = PROTOCOL.split("Each command's codes", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    cells: dict[tuple[str, int], str] = {}
    for row in rows:
        names, *codes = [cell.strip() for cell in row.strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", names):
            for code, text in enumerate(codes):
                if text != "—":
                    cells[name, code] = text
    return cells


@dataclass
class Case:
    """One perfctl run: its arguments, and where it is run."""

    argv: list[str]
    where: str = "perfd"  # "perfd", "none" (no perfd running), "denied" (an unusable socket)
    before: Callable[[Perfd], None] | None = field(default=None, repr=False)
    after: Callable[[Perfd], None] | None = field(default=None, repr=False)


def cases(tmp: Path) -> dict[tuple[str, int], Case]:
    """The run that gives each documented cell; in the order they run."""
    table: dict[tuple[str, int], Case] = {}
    for name in READ_ONLY:
        table[name, 0] = Case([name])
    table["reload", 0] = Case(["reload"])
    for name, argv in (
        ("load", ["load", "echo"]),
        ("pin", ["pin", "echo"]),
        ("unpin", ["unpin", "echo"]),
        ("infer", ["infer", "echo", "--input", "1"]),
        ("evict", ["evict", "echo"]),
    ):
        table[name, 0] = Case(argv)
        table[name, 1] = Case([*argv[:1], "nope", *argv[2:]])
    table["reload", 1] = Case(["reload"], before=_break_config, after=_mend_config)
    table["engines", 0] = Case(["engines"])
    table["engines", 1] = Case(["engines", "nope"])
    table["recommend", 0] = Case(["recommend", "llama-3.1-70b", "--gpu", "RTX 4090"])
    table["recommend", 1] = Case(["recommend", "llama-3.1-8b", "--gpu", "NOSUCHGPU"])
    table["recommend --offline", 0] = Case(
        ["recommend", "--offline", "--gpu", "H100", "qwen2.5-7b"]
    )
    table["recommend --offline", 1] = Case(
        ["recommend", "--offline", "--gpu", "NOSUCHGPU", "llama-3.1-8b"]
    )
    table["recommend --offline", 2] = Case(["recommend", "--offline", "llama-3.1-8b"])
    table["keygen", 0] = Case(["keygen", str(tmp / "client")])
    table["keygen", 2] = Case(["keygen"])
    for name in (*READ_ONLY, "engines", "reload", *CACHE, "recommend"):
        table[name, 2] = Case([name, "--no-such-option"])
        table[name, 3] = Case(_valid(name), where="none")
        table[name, 4] = Case(_valid(name), where="denied")
    table["infer", 2] = Case(["infer", "echo"])  # no --input: usage, not a call with null
    return table


def _valid(name: str) -> list[str]:
    """A well-formed command line for ``name``."""
    if name == "recommend":
        return ["recommend", "llama-3.1-8b", "--gpu", "H100"]
    if name == "infer":
        return ["infer", "echo", "--input", "1"]
    if name == "evict":
        return ["evict", "--all"]
    return [name, "echo"] if name in CACHE else [name]


def _break_config(perfd: Perfd) -> None:
    perfd.config_path.write_text(MODELS + '[log]\nlevel = "verbose"\n')


def _mend_config(perfd: Perfd) -> None:
    perfd.config_path.write_text(MODELS)


@contextmanager
def unusable_socket(perfd: Perfd) -> Iterator[None]:
    """perfd.sock that this run of perfctl may not open: root runs perfctl as nobody (not in
    the socket's group); another user takes the mode away from its own socket meanwhile."""
    if os.geteuid() == 0:
        yield
        return
    perfd.admin_socket.chmod(0)
    try:
        yield
    finally:
        perfd.admin_socket.chmod(0o660)


def run(case: Case, perfd: Perfd, nowhere: Path) -> tuple[int, str]:
    """Run perfctl for ``case``: its exit code and stderr."""
    if case.where == "denied":
        argv = ["--socket", str(perfd.admin_socket), *case.argv]
        with unusable_socket(perfd):
            if os.geteuid() == 0:
                code, _, err = run_as(NOBODY, argv, perfd.runtime_dir)
                return code, err
            out = perfd.ctl(*argv)
        return out.returncode, out.stderr
    if case.where == "none":
        done = subprocess.run(
            [*command("perfctl"), *case.argv],
            env=clean_env(PERFD_RUNTIME_DIR=str(nowhere)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.returncode, done.stderr
    if case.before is not None:
        case.before(perfd)
    try:
        out = perfd.ctl(*case.argv)
    finally:
        if case.after is not None:
            case.after(perfd)
    return out.returncode, out.stderr


def test_the_table_has_the_documented_codes() -> None:
    """The per-command table uses only the codes of the exit-code table, which perfctl's
    constants and `perfctl --help` name."""
    codes = re.findall(r"^\| (\d) \| ", PROTOCOL.split("### Exit codes", 1)[1], re.M)
    assert [int(c) for c in codes] == [
        cli.EXIT_OK,
        cli.EXIT_ERROR,
        cli.EXIT_USAGE,
        cli.EXIT_NOT_RUNNING,
        cli.EXIT_DENIED,
    ]
    assert {code for _, code in documented()} == {0, 1, 2, 3, 4}


def test_every_documented_exit_code_of_every_command(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """Each cell of docs/protocol.md's per-command table is one real run with that exit code,
    and every command perfctl has is in the table."""
    table = cases(tmp_path)
    cells = documented()
    assert set(table) == set(cells), set(table) ^ set(cells)
    from perfctl.args import HELP

    assert {name.split()[0] for name, _ in cells} == set(HELP)
    perfd = start_perfd(MODELS, env={"PYTHONPATH": str(ROOT)})
    nowhere = tmp_path / "no-perfd-here"
    nowhere.mkdir()
    wrong = []
    for (name, expected), case in table.items():
        code, err = run(case, perfd, nowhere)
        if code != expected:
            wrong.append(
                f"{name} -> {code}, documented {expected} ({cells[name, expected]}): "
                f"perfctl {' '.join(case.argv)} ({case.where}): {err.strip()[-300:]}"
            )
    assert not wrong, "\n".join(wrong)
