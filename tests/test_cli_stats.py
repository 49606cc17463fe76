"""`perfctl stats` and `perfctl alerts`: the real perfctl against a real perfd."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import perfctl
from tests.conftest import Perfd, StartPerfd, clean_env, command

FAST = '[monitor]\ninterval = "200ms"\ntrend_window = "5s"\n'
# Every host uses more than 0.1 % of its memory: host_memory fires at the first sample.
ALERTING = FAST + '[alerts.host_memory]\nwarn = 0.1\ncrit = 100\nfor = "0s"\n'
VERDICTS = {"healthy", "full_but_healthy", "pressure", "critical"}


@contextmanager
def watching(perfd: Perfd, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`perfctl stats --watch ARGS` with its stdout on a pipe (not a TTY); killed if left."""
    proc = subprocess.Popen(
        [*command("perfctl"), "stats", "--watch", *args],
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
        stdin=subprocess.DEVNULL,  # never the terminal pytest runs in: it would read its keys
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def read_lines(proc: subprocess.Popen[str], until: int, start: str = "") -> list[str]:
    """Read stdout until ``until`` lines starting with ``start`` have come (or EOF)."""
    assert proc.stdout is not None
    lines: list[str] = []
    while sum(1 for line in lines if line.startswith(start)) < until:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"perfctl ended early: {lines}")
        lines.append(line.rstrip("\n"))
    return lines


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C: the exit code and stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def test_client_stats_and_alerts(start_perfd: StartPerfd) -> None:
    """Client.stats() and Client.alerts() return the two commands' results."""
    perfd = start_perfd(FAST)
    with perfctl.Client(runtime_dir=perfd.runtime_dir) as client:
        assert client.stats()["interval_s"] == 0.2
        assert set(client.alerts()) == {"firing", "history"}


def test_stats_screen(start_perfd: StartPerfd) -> None:
    """`perfctl stats` exits 0 with the headline, the host memory line and perfd's own use."""
    perfd = start_perfd(FAST)
    out = perfd.ctl("stats")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("perfd stats · ")
    assert " · every 0.2s · " in lines[0]
    mem = next(line for line in lines if line.startswith("mem "))
    assert mem.startswith("mem    [")
    assert "%" in mem
    assert "iB" in mem
    assert any(verdict in mem.split() for verdict in VERDICTS)
    assert any(line.startswith(("psi ", "cpu ")) for line in lines)
    assert lines[-1].startswith("perfd  rss ")
    assert "\033[" not in out.stdout  # not a TTY: no colour


@pytest.mark.smoke
def test_stats_json(start_perfd: StartPerfd) -> None:
    """`perfctl stats --json` is the result plus schema 1, with the documented keys."""
    perfd = start_perfd(FAST)
    out = perfd.ctl("stats", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["schema"] == 1
    assert data["interval_s"] == 0.2
    for key in ("sampled_at", "host", "gpu_state", "gpus", "trends", "perfd", "alerts"):
        assert key in data, key
    host = data["host"]
    assert 0 < host["memory"]["used_percent"] <= 100
    assert host["memory"]["verdict"] in VERDICTS
    assert host["memory"]["total_bytes"] > 0
    assert set(host) >= {"swap", "psi", "cgroup", "cpu_percent", "load_avg", "top_processes"}
    assert isinstance(host["psi"]["available"], bool)
    assert len(host["load_avg"]) == 3
    assert data["trends"]["host_memory"]["direction"] in {"increasing", "decreasing", "stable"}
    assert data["perfd"]["rss_bytes"] > 0
    assert isinstance(data["alerts"]["firing"], int)


def test_alerts_with_one_firing(start_perfd: StartPerfd) -> None:
    """A rule that fires at once shows up in `alerts --json`, the alerts table and stats."""
    perfd = start_perfd(ALERTING)
    out = perfd.ctl("alerts", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["schema"] == 1
    assert isinstance(data["firing"], list)
    assert isinstance(data["history"], list)
    ids = [alert["id"] for alert in data["firing"]]
    assert "host_memory/host" in ids
    human = perfd.ctl("alerts")
    assert human.returncode == 0, human.stderr
    assert human.stdout.split()[:5] == ["SEVERITY", "ID", "VALUE", "THRESHOLD", "SINCE"]
    row = next(line for line in human.stdout.splitlines() if "host_memory/host" in line)
    assert row.split()[0] == "warning"
    assert row.split()[3] == "0.1%"
    assert perfd.ctl("alerts", "--all").returncode == 0
    headline = perfd.ctl("stats").stdout.splitlines()[0]
    assert "firing" in headline
    assert "no alerts" not in headline


def test_alerts_none_firing(start_perfd: StartPerfd) -> None:
    """With nothing wrong enough to fire, `perfctl alerts` says so."""
    perfd = start_perfd(
        FAST
        + "[alerts]\n"
        + "".join(
            f"{rule} = {{ enabled = false }}\n"
            for rule in (
                "host_memory",
                "swap",
                "psi",
                "gpu_memory",
                "gpu_temperature",
                "exhaustion",
            )
        )
    )
    out = perfd.ctl("alerts")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "no alerts firing"


def test_watch_redraws_until_ctrl_c(start_perfd: StartPerfd) -> None:
    """`stats --watch 0.2` to a pipe prints screens a blank line apart; Ctrl-C exits 0."""
    perfd = start_perfd(FAST)
    with watching(perfd, "0.2") as proc:
        lines = read_lines(proc, until=2, start="perfd stats · ")
        second = max(i for i, line in enumerate(lines) if line.startswith("perfd stats · "))
        assert lines[second - 1] == ""
        assert "" not in lines[: second - 1]  # a screen has no blank line of its own
        assert any(line.startswith("mem    [") for line in lines[:second])
        code, err = interrupt(proc)
    assert code == 0, err
    assert "Traceback" not in err
    assert "\033[" not in "".join(lines)  # not a TTY: no clearing, no colour


def test_watch_json_lines(start_perfd: StartPerfd) -> None:
    """`stats --watch --json` prints one JSON object per line per refresh."""
    perfd = start_perfd(FAST)
    with watching(perfd, "0.2", "--json") as proc:
        lines = read_lines(proc, until=3)
        code, err = interrupt(proc)
    assert code == 0, err
    snapshots = [json.loads(line) for line in lines]
    assert all(snap["schema"] == 1 for snap in snapshots)
    assert all("used_percent" in snap["host"]["memory"] for snap in snapshots)


def test_watch_default_interval_then_daemon_stops(start_perfd: StartPerfd) -> None:
    """`--watch` alone refreshes every 2 s; when perfd goes away it reports it and exits 3."""
    perfd = start_perfd(FAST)
    with watching(perfd, "--timeout", "1") as proc:
        read_lines(proc, until=1, start="perfd stats · ")
        assert perfd.stop() == 0
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    assert "perfd is not running" in err or "not answering" in err
    assert "Traceback" not in err


def test_watch_interval_is_checked() -> None:
    """--watch takes more than 0 and at most 3600 seconds; anything else is a usage error."""
    for value in ("0", "-1", "3601", "soon"):
        out = subprocess.run(
            [*command("perfctl"), "stats", "--watch", value],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 2, (value, out.stderr)
        assert "--watch" in out.stderr


def test_watch_quits_on_q_and_restores_the_terminal(start_perfd: StartPerfd) -> None:
    """With stdin a terminal, `stats --watch` reads keys unechoed: q exits 0 at once, and the
    terminal's mode is what it was before."""
    import os
    import pty
    import termios

    perfd = start_perfd(FAST)
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [*command("perfctl"), "stats", "--watch", "60"],
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_lines(proc, until=1, start="perfd stats · ")  # the first screen is out
        assert " · redraw 60s" in lines[-1]
        os.write(master, b"q")
        _, err = proc.communicate(timeout=10)  # a 60 s redraw interval: only q ends it soon
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        after = termios.tcgetattr(slave)
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, err
    assert after == before


def test_watch_headline_shows_both_intervals(start_perfd: StartPerfd) -> None:
    """The watch screen's headline has perfd's sample interval and the redraw interval."""
    perfd = start_perfd(FAST)
    with watching(perfd, "0.5") as proc:
        (headline,) = read_lines(proc, until=1, start="perfd stats · ")[-1:]
        code, err = interrupt(proc)
    assert code == 0, err
    assert " · every 0.2s · redraw 0.5s · " in headline


def test_watch_json_prints_each_sample_once(start_perfd: StartPerfd) -> None:
    """Redrawing faster than perfd samples, `--watch --json` still prints no sample twice."""
    perfd = start_perfd('[monitor]\ninterval = "1s"\ntrend_window = "5s"\n')
    with watching(perfd, "0.1", "--json") as proc:
        lines = read_lines(proc, until=3)
        code, err = interrupt(proc)
    assert code == 0, err
    stamps = [json.loads(line)["sampled_at_unix"] for line in lines]
    assert len(set(stamps)) == len(stamps) == 3, stamps
