"""Benchmark 4: what an idle perfd costs, beside an idle bare pyzmq ROUTER process.

perfd runs as under systemd with a watchdog ($NOTIFY_SOCKET, WATCHDOG_USEC=30 s, so it sends
WATCHDOG=1 every 15 s); the notify socket is drained throughout. Over ``--idle-seconds`` it
reads, for perfd and for the echo server (``bench.echo``) side by side: CPU time of all
threads (/proc/PID/task/*/schedstat, ns), context switches of all threads (wake-ups) and
peak RSS (VmHWM).

``measure()`` is shared with benchmark 5 (``monitor_idle``), which runs several perfds with
different configs beside the same baseline in one window.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    Check,
    PerfdProcess,
    cpu_seconds,
    helper_env,
    print_table,
    short_tempdir,
    stop_process,
)

WATCHDOG_USEC = 30_000_000
CPU_TARGET_PCT = 0.1  # of one core: an idle daemon should not show up in top
SETTLE_SECONDS = 1.0  # let start-up work (the first log lines) finish before the window
BASELINE = "echo"  # the bare pyzmq ROUTER's key in Window.processes


@dataclass(frozen=True)
class Sample:
    cpu_s: float
    switches: int
    threads: int
    hwm_kib: int


def sample(pid: int) -> Sample:
    """CPU seconds, context switches, threads and peak RSS (KiB) of a process, from /proc."""
    cpu = cpu_seconds(pid)
    status = _status(Path(f"/proc/{pid}/status"))
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            task_status = _status(task / "status")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        switches += int(task_status["voluntary_ctxt_switches"])
        switches += int(task_status["nonvoluntary_ctxt_switches"])
    return Sample(cpu, switches, int(status["Threads"]), int(status["VmHWM"].split()[0]))


def _status(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


@dataclass
class Window:
    """One idle window: figures per process (``BASELINE`` and each perfd by name)."""

    seconds: float
    processes: dict[str, dict[str, float]]  # cpu_s, cpu_pct, wakeups_per_s, threads, MiB
    notes: dict[str, list[str]]  # each perfd's notify messages during the window


def measure(perfds: Mapping[str, str], idle_seconds: float) -> Window:
    """Run an idle bare ROUTER and one perfd per ``perfds`` entry (name: perfd.toml text),
    all side by side and idle for ``idle_seconds``, and read what each cost over the window.

    Every perfd runs under a fake systemd (NOTIFY_SOCKET, WATCHDOG_USEC), in its own temp dir;
    everything is stopped and reaped, and the temp dir removed, before this returns.
    """
    with short_tempdir() as tmp, contextlib.ExitStack() as stack:
        echo = subprocess.Popen(
            [PYTHON, "-m", "bench.echo", f"ipc://{tmp / 'echo.sock'}"],
            env=helper_env(),
            cwd=tmp,
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(stop_process, echo)
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != "ready":
            raise RuntimeError(f"echo server did not start (exit {echo.poll()})")
        running: dict[str, PerfdProcess] = {}
        for number, (name, config) in enumerate(perfds.items()):
            workdir = tmp / f"p{number}"
            workdir.mkdir()
            perfd = PerfdProcess(workdir, watchdog_usec=WATCHDOG_USEC, config=config)
            running[name] = stack.enter_context(perfd)  # started; stopped (and checked) on exit
        pids = {BASELINE: echo.pid, **{name: p.pid for name, p in running.items()}}
        notifies = {name: p.notify for name, p in running.items()}
        time.sleep(SETTLE_SECONDS)
        for notify in notifies.values():
            assert notify is not None
            notify.drain()
        before = {name: sample(pid) for name, pid in pids.items()}
        started = time.monotonic()
        notes: dict[str, list[str]] = {name: [] for name in running}
        while (left := idle_seconds - (time.monotonic() - started)) > 0:
            time.sleep(min(0.5, left))
            for name, notify in notifies.items():
                assert notify is not None
                notes[name] += notify.drain()
        window = time.monotonic() - started
        after = {name: sample(pid) for name, pid in pids.items()}

    processes: dict[str, dict[str, float]] = {}
    for name in pids:
        cpu = after[name].cpu_s - before[name].cpu_s
        processes[name] = {
            "cpu_s": cpu,
            "cpu_pct": 100 * cpu / window,
            "wakeups_per_s": (after[name].switches - before[name].switches) / window,
            "threads": after[name].threads,
            "peak_rss_mib": after[name].hwm_kib / 1024,
        }
    return Window(window, processes, notes)


def count(notes: list[str], field: str) -> int:
    """How many notify messages carry ``field`` (``WATCHDOG=1``, ``STATUS=``...)."""
    return sum(field in note for note in notes)


def run(idle_seconds: float) -> tuple[dict[str, Any], list[Check]]:
    window = measure({"perfd": ""}, idle_seconds)
    result, notes = window.processes, window.notes["perfd"]
    watchdogs = count(notes, "WATCHDOG=1")
    print_table(
        f"4. idle: {window.seconds:.1f} s window (perfd with WATCHDOG_USEC={WATCHDOG_USEC})",
        ["process", "CPU s", "% of a core", "wake-ups/s", "threads", "peak RSS MiB"],
        [
            (name, r["cpu_s"], r["cpu_pct"], r["wakeups_per_s"], r["threads"], r["peak_rss_mib"])
            for name, r in (("perfd", result["perfd"]), ("bare pyzmq ROUTER", result[BASELINE]))
        ],
    )
    print(
        f"perfd sent {watchdogs} WATCHDOG=1 ({len(notes)} notify messages) in the window. "
        f"target: perfd CPU <= {CPU_TARGET_PCT:g} % of one core"
    )
    ours, base = result["perfd"], result[BASELINE]
    checks = [
        Check(
            "4 idle",
            "CPU",
            "% of a core",
            ours["cpu_pct"],
            "bare ROUTER",
            base["cpu_pct"],
            on="value",
            limit=CPU_TARGET_PCT,
        ),
        Check(
            "4 idle", "peak RSS", "MiB", ours["peak_rss_mib"], "bare ROUTER", base["peak_rss_mib"]
        ),
    ]
    data = {
        "window_s": window.seconds,
        "watchdog_usec": WATCHDOG_USEC,
        "watchdog_messages": watchdogs,
        "notify_messages": notes,
        "perfd": ours,
        "echo": base,
    }
    return data, checks
