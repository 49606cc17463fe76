"""Terminal-safe output: perfctl.safe, and the real perfctl printing hostile names from a real
perfd (a process, a model, an error message, a config value) without one raw control."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfctl import __main__ as cli
from perfctl import watch as watching
from perfctl.format import alerts as fmt_alerts
from perfctl.format import base, safe
from perfctl.format import cache as fmt_cache
from perfctl.format import stats as fmt_stats
from tests.conftest import Perfd, StartPerfd, clean_env, command

ROOT = str(Path(__file__).resolve().parent.parent)
# Retitles the terminal (OSC ended by BEL), then clears it (CSI): 14 bytes, a whole comm.
OWNED = "\x1b]2;OWNED\x07\x1b[2J"
# OSC ended by ST, a C1 CSI, DEL, a bidi override and isolate, a line separator, NUL.
NASTY = "\x1b]8;;http://x/\x1b\\link\x9b2J\x7f\u202egnp.exe\u2066\u2028\x00end"
UNSAFE = {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))} | {"\u202e", "\u2066", "\u2028"}
ANSI = re.compile(r"\033\[[0-9;]*m")  # perfctl's own colours


def unsafe(text: str) -> set[str]:
    """The raw controls, bidi overrides and separators in ``text`` (newlines aside)."""
    return {c for c in text if c != "\n" and (c in UNSAFE or not c.isprintable())}


# -- the escaping itself --------------------------------------------------------------------


def test_escapes_are_visible_and_printable_text_is_kept() -> None:
    """Controls, DEL, C1 and bidi characters show as repr escapes; the rest is unchanged."""
    assert safe.text(OWNED) == "\\x1b]2;OWNED\\x07\\x1b[2J"
    assert safe.text("a\tb\nc\rd\x7f\x9b\u202e\U000e0001") == (
        "a\\tb\\nc\\rd\\x7f\\x9b\\u202e\\U000e0001"
    )
    for kept in ("python3 -m vllm --port 8000", "modèle·日本語 ✓", "C:\\path\\x1b", ""):
        assert safe.text(kept) == kept


@given(st.text())
def test_text_is_always_printable(value: str) -> None:
    """Whatever comes in, what comes out is printable: no control, no format character."""
    out = safe.text(value)
    assert out.isprintable()
    assert out == value or len(out) > len(value)


@given(st.text())
def test_printable_text_is_unchanged(value: str) -> None:
    """Text that is printable already comes out as it went in."""
    if value.isprintable():
        assert safe.text(value) == value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON, st.booleans())
def test_json_text_is_the_same_json_and_printable(value: object, pretty: bool) -> None:
    """json_text keeps the JSON value and leaves nothing non-printable but newlines."""
    raw = json.dumps(value, ensure_ascii=False, indent=2 if pretty else None)
    out = safe.json_text(raw)
    assert json.loads(out) == value
    assert all(line.isprintable() for line in out.split("\n"))


@given(JSON)
def test_tree_escapes_every_string_and_key(value: object) -> None:
    """safe.tree leaves no non-printable character in any string or dict key of a reply."""
    assert unsafe(json.dumps(safe.tree(value), ensure_ascii=False)) == set()


def test_infer_output_stays_faithful_json() -> None:
    """infer's human output escapes controls and bidi characters as JSON: it parses back."""
    outputs = {"text": NASTY, OWNED: [OWNED]}
    for pretty in (False, True):
        text = fmt_cache.format_infer({"outputs": outputs}, pretty=pretty)
        assert unsafe(text) == set()
        assert json.loads(text) == outputs


def test_every_human_screen_escapes_the_reply() -> None:
    """stats, ps and alerts drawn through perfctl's output boundary carry no raw control."""
    stats = {
        "host": {
            "memory": {"used_percent": 50.0, "used_bytes": 1, "total_bytes": 2},
            "top_processes": [{"pid": 1, "name": OWNED, "rss_bytes": 1, "unit": NASTY}],
            "cgroup": {"path": NASTY, "limit_bytes": 4, "current_bytes": 1},
        },
        "gpus": [{"index": 0, "name": NASTY, "state": "lost", "error": OWNED}],
        "providers": {NASTY: {"base_url": OWNED, "requests": 1}},
    }
    ps = {"models": [{"name": OWNED, "state": NASTY, "device": NASTY}], "configured": [NASTY]}
    alerts = {"firing": [{"id": OWNED, "severity": NASTY}], "history": [{"event": NASTY}]}
    style = base.Style(colour=True)
    for result, draw in (
        (stats, fmt_stats.format_stats),
        (ps, fmt_cache.format_ps),
        (alerts, fmt_alerts.format_alerts),
    ):
        text = cli._human(result, lambda r, draw=draw: draw(r, style))
        assert "\\x1b]2;OWNED\\x07" in text or "\\x1b]8" in text
        assert unsafe(ANSI.sub("", text)) == set()  # perfctl's colours are the only escapes


# -- the real perfctl against a real perfd --------------------------------------------------


@pytest.fixture
def owned_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process named OWNED (its comm, set by prctl) with escapes in its argv, holding
    200 MiB so that it is among the largest processes."""
    script = (
        "import ctypes, sys\n"
        "ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)\n"  # PR_SET_NAME
        "ballast = b'x' * (200 << 20)\n"
        "print('named', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, OWNED, NASTY.replace("\x00", "")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"named\n"
    assert Path(f"/proc/{proc.pid}/comm").read_bytes() == OWNED.encode() + b"\n"
    yield proc
    proc.kill()
    proc.communicate(timeout=10)


PROCESSES = '[monitor]\ninterval = "200ms"\nprocesses_interval = "200ms"\ntop_processes = 100\n'


def listed(perfd: Perfd, pid: int) -> dict[str, object]:
    """The stats entry of process ``pid``, once a scan has seen it (10 s at most)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = perfd.ctl("stats", "--json")
        assert out.returncode == 0, out.stderr
        for proc in json.loads(out.stdout)["host"]["top_processes"]:
            if proc["pid"] == pid:
                return dict(proc)
        time.sleep(0.2)
    raise AssertionError(f"process {pid} never listed")


def test_stats_escapes_a_hostile_process_name(
    start_perfd: StartPerfd, owned_process: subprocess.Popen[bytes]
) -> None:
    """A process named ``\\e]2;OWNED\\a\\e[2J``: `perfctl stats` shows it escaped, with no ESC
    or BEL byte in its output (plain and --watch); --json keeps the name exactly."""
    perfd = start_perfd(PROCESSES)
    assert listed(perfd, owned_process.pid)["name"] == OWNED  # --json: faithful
    out = ctl(perfd, "stats")
    assert out.returncode == 0, out.stderr
    assert unsafe(out.stdout.decode()) == set()
    assert b"\\x1b]2;OWNED\\x07" in out.stdout
    assert unsafe(perfd.ctl("stats", "--json").stdout) == set()  # escaped as \u001b
    watch = subprocess.Popen(
        [*command("perfctl"), "stats", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
    )
    try:
        assert watch.stdout is not None
        screens = b"".join(watch.stdout.readline() for _ in range(60))
    finally:
        watch.kill()
        watch.communicate(timeout=10)
    assert b"\\x1b]2;OWNED" in screens
    assert unsafe(screens.decode()) == set()


def test_watch_on_a_terminal_redraws_with_only_perfctls_own_escapes(
    start_perfd: StartPerfd, owned_process: subprocess.Popen[bytes]
) -> None:
    """`perfctl stats --watch` on a real terminal (a pty): its screens hold perfctl's own clear
    and colour sequences and nothing else; the hostile name is shown escaped."""
    import pty
    import select

    perfd = start_perfd(PROCESSES)
    listed(perfd, owned_process.pid)
    master, slave = pty.openpty()
    watch = subprocess.Popen(
        [*command("perfctl"), "stats", "--watch", "0.2"],
        stdout=slave,
        stderr=subprocess.PIPE,
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir), TERM="xterm"),
    )
    os.close(slave)
    screens = bytearray()
    try:
        deadline = time.monotonic() + 20
        while screens.count(watching.CLEAR.encode()) < 3 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                screens.extend(os.read(master, 1 << 16))
    finally:
        watch.kill()
        watch.communicate(timeout=10)
        os.close(master)
    text = screens.decode()
    assert text.count(watching.CLEAR) >= 3
    assert "\\x1b]2;OWNED\\x07\\x1b[2J" in text
    assert "\033[" in text  # a terminal: colour on
    assert unsafe(ANSI.sub("", text.replace(watching.CLEAR, "")).replace("\r", "")) == set()


def ctl(perfd: Perfd, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The real perfctl, its output as bytes: what the terminal would receive."""
    env = clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir))
    return subprocess.run([*command("perfctl"), *args], capture_output=True, timeout=60, env=env)


MODELS = f"""
[monitor]
interval = "200ms"
[models.broken]
target = "tests.models.toy:make_failing"
options = {{ message = {json.dumps(NASTY)} }}
[models.{json.dumps(OWNED)}]
target = "tests.models.toy:make_echo"
options = {{ note = {json.dumps(OWNED)} }}
"""


def test_model_names_errors_and_config_values_are_escaped(start_perfd: StartPerfd) -> None:
    """A model named OWNED (`ps`, `load`), a loader error quoting escapes (stderr) and a config
    value with escapes (`config`) reach the terminal escaped, and --json keeps them exactly."""
    perfd = start_perfd(MODELS, env={"PYTHONPATH": ROOT})
    checks = [("load", OWNED), ("ps",), ("config",), ("load", "broken")]
    for args in checks:
        out = ctl(perfd, *args)
        assert unsafe((out.stdout + out.stderr).decode()) == set(), (args, out)
    ps = perfd.ctl("ps").stdout
    assert ps.splitlines()[1].startswith("\\x1b]2;OWNED\\x07\\x1b[2J  ready")
    failed = perfd.ctl("load", "broken")
    assert failed.returncode == 1
    assert "\\x9b2J\\x7f\\u202egnp.exe" in failed.stderr
    names = [m["name"] for m in json.loads(perfd.ctl("ps", "--json").stdout)["models"]]
    assert names == [OWNED]
    error = json.loads(perfd.ctl("load", "broken", "--json").stdout)["error"]["message"]
    assert NASTY in error
