"""perfctl's command line before any daemon: help texts, the connection options, "did you
mean", and usage errors for `infer`'s input; the real perfctl executable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from perfctl.args import CONNECTION, HELP
from tests.conftest import clean_env, command

CONNECTION_OPTIONS = ("--socket", "--host", "--key", "--server-key", "--timeout")


def perfctl(*args: str, runtime_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env(PERFD_RUNTIME_DIR=str(runtime_dir)) if runtime_dir else clean_env()
    return subprocess.run(
        [*command("perfctl"), *args], env=env, capture_output=True, text=True, timeout=20
    )


def test_no_arguments_lists_every_command() -> None:
    """`perfctl` alone is a usage error (exit 2) that lists each command with what it does."""
    out = perfctl()
    assert out.returncode == 2
    listed = out.stderr.split("commands:", 1)[1]
    for name, text in HELP.items():
        line = next(line for line in listed.splitlines() if line.split()[:1] == [name])
        assert text.split()[0] in line, (name, line)


@pytest.mark.parametrize("name", sorted(HELP))
def test_each_commands_help_starts_with_what_it_does(name: str) -> None:
    """`perfctl NAME --help` opens with its description, before the usage line."""
    out = perfctl(name, "--help")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert not first.startswith("usage:"), first
    if name == "recommend":
        assert first.startswith("How much context and how many concurrent sequences")
    else:
        assert first.lower().startswith(HELP[name][:30].lower()), (first, HELP[name])


def test_connection_options_are_grouped_and_absent_where_unused() -> None:
    """The options that reach perfd are one group; keygen, which never does, has none; the
    recommend help says when they are not used."""
    status = perfctl("status", "--help").stdout
    group = status.split(CONNECTION + ":", 1)[1]
    for option in CONNECTION_OPTIONS:
        assert f"  {option} " in group, option
        assert option not in status.split(CONNECTION + ":", 1)[0].split("options:", 1)[1]
    keygen = perfctl("keygen", "--help").stdout
    assert CONNECTION not in keygen
    for option in CONNECTION_OPTIONS:
        assert option not in keygen, option
    recommend = perfctl("recommend", "--help").stdout
    after = recommend.split(CONNECTION + ":", 1)[1].lstrip()
    assert after.startswith("not used with --offline, --list-models or --list-gpus")
    assert perfctl("keygen", "k", "--socket", "/x").returncode == 2


@pytest.mark.parametrize(
    ("args", "meant"),
    [(["stauts"], "stats"), (["relaod"], "reload"), (["recommend", "--engine", "vlm"], "vllm")],
)
def test_a_near_miss_gets_did_you_mean(args: list[str], meant: str) -> None:
    """A mistyped command or choice: exit 2, naming the closest one."""
    out = perfctl(*args)
    assert out.returncode == 2
    assert f"; did you mean '{meant}'?" in out.stderr


def test_a_far_miss_lists_the_choices() -> None:
    """Nothing close: argparse's own list of choices, no guess."""
    out = perfctl("zzzzzz")
    assert out.returncode == 2
    assert "did you mean" not in out.stderr
    assert "(choose from" in out.stderr


def test_infer_without_input_is_a_usage_error(tmp_path: Path) -> None:
    """`perfctl infer NAME` without --input exits 2 before contacting perfd (no null call)."""
    out = perfctl("infer", "echo", runtime_dir=tmp_path)
    assert out.returncode == 2
    assert "the following arguments are required: --input" in out.stderr


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("hello", "a JSON string needs its quotes: --input '\"hello\"'"),
        ("hello world", "a JSON string needs its quotes: --input '\"hello world\"'"),
        ("{nope", None),
        ("[1,", None),
    ],
)
def test_infer_input_that_is_not_json(tmp_path: Path, text: str, hint: str | None) -> None:
    """A bare word is told to quote itself; broken JSON only says where it breaks."""
    out = perfctl("infer", "echo", "--input", text, runtime_dir=tmp_path)
    assert out.returncode == 2
    assert "argument --input: not valid JSON" in out.stderr
    if hint is None:
        assert "needs its quotes" not in out.stderr
    else:
        assert hint in out.stderr


def test_infer_input_file_with_a_bare_word(tmp_path: Path) -> None:
    """@FILE holding a bare word: the quoted form, without the --input flag."""
    path = tmp_path / "in.txt"
    path.write_text("hello\n")
    out = perfctl("infer", "echo", "--input", f"@{path}", runtime_dir=tmp_path)
    assert out.returncode == 2
    assert f"not valid JSON in {path}: " in out.stderr
    assert 'a JSON string needs its quotes: "hello"' in out.stderr
