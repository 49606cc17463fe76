"""Benchmark 5: an idle perfd sampling every second (``[monitor] interval = "1s"``).

The same window as benchmark 4 (``bench.idle.measure``): perfd under a fake systemd
(NOTIFY_SOCKET drained every 0.5 s, WATCHDOG_USEC=30 s) beside an idle bare pyzmq ROUTER, plus
a second perfd with the default 5 s interval in the same window, so that the two intervals
and the baseline share the machine's noise. Each perfd has its own temp config file (the 1 s
one holds only that setting; the other is empty) and runtime directory. On a host without
NVIDIA's driver the GPU probe reports ``absent`` once and is never retried, so the figures are
those of the host probe, the trend/alert pass and the wake-ups.
"""

from __future__ import annotations

from typing import Any

from bench.common import Check, print_table
from bench.idle import BASELINE, WATCHDOG_USEC, count, measure

CPU_TARGET_PCT = 0.2  # of one core, at a 1 s interval
FAST = "perfd 1s"
DEFAULT = "perfd 5s"
CONFIGS = {FAST: '[monitor]\ninterval = "1s"\n', DEFAULT: ""}
INTERVALS = {FAST: 1.0, DEFAULT: 5.0}


def run(idle_seconds: float) -> tuple[dict[str, Any], list[Check]]:
    window = measure(CONFIGS, idle_seconds)
    procs = window.processes
    rows = []
    for name, label in (
        (FAST, 'perfd, interval = "1s"'),
        (DEFAULT, "perfd, interval = 5s (default)"),
        (BASELINE, "bare pyzmq ROUTER"),
    ):
        r = procs[name]
        interval = INTERVALS.get(name)
        # CPU per monitor turn: everything perfd did in the window, spread over its samples.
        per_turn = None if interval is None else 1000 * r["cpu_s"] * interval / window.seconds
        rows.append(
            (
                label,
                1000 * r["cpu_s"],
                f"{r['cpu_pct']:.3f}",
                per_turn,
                r["wakeups_per_s"],
                r["threads"],
                r["peak_rss_mib"],
            )
        )
    print_table(
        f"5. monitor_idle: {window.seconds:.1f} s window (WATCHDOG_USEC={WATCHDOG_USEC})",
        [
            "process",
            "CPU ms",
            "% of a core",
            "CPU ms per interval",
            "wake-ups/s",
            "threads",
            "peak RSS MiB",
        ],
        rows,
    )
    for name in (FAST, DEFAULT):
        notes = window.notes[name]
        print(
            f"{name}: {count(notes, 'WATCHDOG=1')} WATCHDOG=1, {count(notes, 'STATUS=')} STATUS= "
            f"({len(notes)} notify messages) in the window"
        )
    print(f'target: perfd with interval = "1s" < {CPU_TARGET_PCT:g} % of one core')

    fast, default, base = procs[FAST], procs[DEFAULT], procs[BASELINE]
    checks = [
        Check(
            "5 monitor_idle",
            "CPU, 1 s interval",
            "% of a core",
            fast["cpu_pct"],
            "bare ROUTER",
            base["cpu_pct"],
            on="value",
            op="<",
            limit=CPU_TARGET_PCT,
        ),
        Check(
            "5 monitor_idle",
            "CPU, 5 s interval",
            "% of a core",
            default["cpu_pct"],
            "bare ROUTER",
            base["cpu_pct"],
        ),
        Check(
            "5 monitor_idle",
            "wake-ups, 1 s interval",
            "/s",
            fast["wakeups_per_s"],
            "bare ROUTER",
            base["wakeups_per_s"],
        ),
        Check(
            "5 monitor_idle",
            "peak RSS, 1 s interval",
            "MiB",
            fast["peak_rss_mib"],
            "bare ROUTER",
            base["peak_rss_mib"],
        ),
    ]
    data = {
        "window_s": window.seconds,
        "watchdog_usec": WATCHDOG_USEC,
        "configs": CONFIGS,
        "notify_messages": window.notes,
        "perfd_1s": fast,
        "perfd_5s": default,
        "echo": base,
    }
    return data, checks
