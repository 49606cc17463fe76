"""The monitor driven by scripted probes and a fake clock: verdicts, trends, alerts, publish."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from perfd import config, log
from perfd.monitor import verdicts as assess
from perfd.monitor.sampler import Monitor
from perfd.monitor.snapshot import stats_reply
from perfd.probes.samples import ProcessInfo, Psi
from perfd.systemd import Liveness
from tests.fakeprobes import FakeGpuProbe, FakeHostProbe, GiB, gpu_sample, host_sample


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(
    text: str = "", *gpus: Any, host: Any = None
) -> tuple[Monitor, FakeHostProbe, FakeGpuProbe, Clock]:
    cfg = config.parse(__import__("tomllib").loads(text))
    clock = Clock()
    hp = FakeHostProbe(host or host_sample())
    gp = FakeGpuProbe(*gpus)
    monitor = Monitor(
        cfg.monitor,
        cfg.alerts,
        host_probe=hp,
        gpu_probe=gp,
        clock=clock,
        wall=lambda: 1.8e9 + clock.now,
    )
    return monitor, hp, gp, clock


def step(
    monitor: Monitor, hp: FakeHostProbe, clock: Clock, dt: float = 5.0, **host: Any
) -> dict[str, Any]:
    clock.now += dt
    hp.next = host_sample(clock.now, **host) if host else replace(hp.next, t=clock.now)
    return stats_reply(monitor.sample_once())


def status_of(monitor: Monitor) -> str:
    """The status line of the monitor's latest snapshot."""
    snapshot = monitor.snapshot()
    assert snapshot is not None
    return assess.status_line(snapshot)


def psi(some_us: int, full_us: int = 0, avg10: float = 0.0) -> Psi:
    return Psi(some_us, full_us, avg10, 0.0, 0.0, 0.0)


def test_snapshot_has_the_documented_shape() -> None:
    """stats carries host memory/swap/psi, gpus with memory and trend, trends, alerts, perfd."""
    monitor, hp, _, clock = make("", gpu_sample(0, used_percent=40))
    snap = step(monitor, hp, clock, used_percent=62.5)
    memory = snap["host"]["memory"]
    assert memory["used_percent"] == 62.5
    assert memory["used_bytes"] == memory["total_bytes"] - memory["available_bytes"]
    assert memory["verdict"] == "healthy"
    assert snap["gpu_state"] == "ok"
    gpu = snap["gpus"][0]
    assert set(gpu["memory"]) == {
        "total_bytes",
        "used_bytes",
        "free_bytes",
        "reserved_bytes",
        "used_percent",
    }
    assert gpu["verdict"] == "healthy"
    assert set(snap["trends"]["host_memory"]) >= {
        "direction",
        "rate_bytes_per_s",
        "r2",
        "time_to_full_s",
    }
    assert snap["alerts"] == {"firing": 0, "critical": 0}
    assert set(snap["perfd"]) == {"rss_bytes", "cpu_percent"}
    json.dumps(snap)  # plain data


@pytest.mark.parametrize(
    ("used", "some_us_per_5s", "verdict"),
    [
        (50, 0, "healthy"),
        (85, 0, "full_but_healthy"),
        (50, 1_000_000, "pressure"),  # 20% of the time stalled
        (85, 1_000_000, "pressure"),
        (97, 0, "critical"),
        (50, 2_500_000, "critical"),  # 50% stalled
    ],
)
def test_host_verdicts_combine_capacity_and_psi(
    used: float, some_us_per_5s: int, verdict: str
) -> None:
    """Verdicts from used percent and PSI stall over the interval (counter deltas)."""
    monitor, hp, _, clock = make()
    step(monitor, hp, clock, used_percent=used, psi=psi(0))
    snap = step(monitor, hp, clock, used_percent=used, psi=psi(some_us_per_5s))
    assert snap["host"]["psi"]["some_percent"] == pytest.approx(some_us_per_5s / 5e6 * 100)
    assert snap["host"]["memory"]["verdict"] == verdict


def test_without_psi_high_use_is_pressure() -> None:
    """No /proc/pressure: psi reported absent; high use cannot be called healthy."""
    monitor, hp, _, clock = make()
    snap = step(monitor, hp, clock, used_percent=85, psi=None)
    assert snap["host"]["psi"] == {"available": False}
    assert snap["host"]["memory"]["verdict"] == "pressure"


def test_gpu_verdict_is_capacity_only_and_unreadable_gpus_have_none() -> None:
    """GPU verdicts follow gpu_memory thresholds; a lost GPU has no verdict."""
    monitor, hp, gp, clock = make(
        "", gpu_sample(0, used_percent=95), gpu_sample(1, used_percent=99)
    )
    snap = step(monitor, hp, clock)
    assert [g["verdict"] for g in snap["gpus"]] == ["pressure", "critical"]
    gp.gpus[1] = replace(gp.gpus[1], state="lost", error="NVML_ERROR_GPU_IS_LOST")
    gp.state = "lost"
    snap = step(monitor, hp, clock)
    assert snap["gpu_state"] == "lost"
    assert snap["gpus"][1]["verdict"] is None
    assert "gpu1 LOST" in status_of(monitor)


def test_trend_and_time_to_full_for_host_and_gpu() -> None:
    """Steady growth gives increasing trends with a time to full on host and GPU."""
    monitor, hp, gp, clock = make("", gpu_sample(0))
    for i in range(20):
        gp.gpus[0] = gpu_sample(0, used_percent=10 + 2 * i)
        snap = step(monitor, hp, clock, used_percent=40 + i)
    host_trend = snap["trends"]["host_memory"]
    assert host_trend["direction"] == "increasing"
    assert host_trend["rate_bytes_per_s"] == pytest.approx(0.01 * 64 * GiB / 5, rel=1e-3)
    assert host_trend["time_to_full_s"] == pytest.approx(41 * 5, rel=0.02)
    assert snap["gpus"][0]["trend"]["direction"] == "increasing"
    line = status_of(monitor)
    assert line.startswith("mem 59% ok ↑ ")
    assert "to full" in line


def test_alert_fires_logs_and_resolves() -> None:
    """host_memory: firing logged at warning, escalated at critical, resolved at info."""
    out = io.StringIO()
    log.configure("debug", stream=out)
    monitor, hp, _, clock = make("[alerts.host_memory]\nfor = 0\nclear = 2\n")
    for used in (50, 85, 97, 50, 50):
        step(monitor, hp, clock, used_percent=used)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    alerts = [(e["event"], e["level"]) for e in events if e.get("rule") == "host_memory"]
    assert alerts == [
        ("alert.firing", "warning"),
        ("alert.escalated", "critical"),
        ("alert.resolved", "info"),
    ]
    history = [h for h in monitor.alerts()["history"] if h["rule"] == "host_memory"]
    assert [h["event"] for h in history] == ["alert.resolved", "alert.escalated", "alert.firing"]
    assert history[-1]["id"] == "host_memory/host"
    assert [a["id"] for a in monitor.alerts()["firing"]] == ["exhaustion/host"]  # 50->97% in 10s


def test_for_duration_holds_back_firing() -> None:
    """With for = 30s and 5 s samples, the alert fires on the sample 30 s after the first."""
    monitor, hp, _, clock = make('[alerts.host_memory]\nfor = "30s"\n')
    fired_at = []
    for i in range(10):
        snap = step(monitor, hp, clock, used_percent=85)
        if snap["alerts"]["firing"] and not fired_at:
            fired_at.append(i)
    assert fired_at == [6]


def test_gpu_and_exhaustion_alerts() -> None:
    """GPU memory and temperature alerts per GPU; exhaustion when low and filling fast."""
    monitor, hp, _, clock = make(
        "[alerts.gpu_memory]\nfor = 0\n[alerts.gpu_temperature]\nfor = 0\n"
        "[alerts.host_memory]\nenabled = false\n",
        gpu_sample(0, used_percent=96, temperature=91),
    )
    for i in range(10):
        snap = step(monitor, hp, clock, used_percent=70 + 1.5 * i)
    firing = {a["id"]: a["severity"] for a in monitor.alerts()["firing"]}
    assert firing["gpu_memory/gpu0"] == "warning"
    assert firing["gpu_temperature/gpu0"] == "critical"
    assert firing["exhaustion/host"] == "critical"  # ~4.6 s... of headroom left at 1.5%/5s
    assert snap["alerts"]["firing"] == 3


def test_alert_log_file_survives_rotation(tmp_path: Path) -> None:
    """Each transition is one JSON line in the alert log, which is reopened after logrotate."""
    path = tmp_path / "alerts.jsonl"
    monitor, hp, _, clock = make(
        f'[alerts]\nlog_file = "{path}"\n[alerts.host_memory]\nfor = 0\nclear = 1\n'
    )
    step(monitor, hp, clock, used_percent=85)
    path.rename(tmp_path / "alerts.jsonl.1")
    step(monitor, hp, clock, used_percent=50)
    assert json.loads((tmp_path / "alerts.jsonl.1").read_text())["event"] == "alert.firing"
    assert json.loads(path.read_text())["event"] == "alert.resolved"
    monitor.stop()


def test_subscribers_get_verdict_changes_and_never_block() -> None:
    """Verdict changes reach subscribers; a full queue drops the oldest, the monitor goes on."""
    monitor, hp, _, clock = make()
    sub = monitor.subscribe(maxsize=2)
    step(monitor, hp, clock, used_percent=50)
    step(monitor, hp, clock, used_percent=50)
    step(monitor, hp, clock, used_percent=97)
    step(monitor, hp, clock, used_percent=50)
    first = sub.get(0)
    assert first is not None
    assert (first.resource, first.verdict) == ("host", "critical")
    second = sub.get(0)
    assert second is not None
    assert (second.verdict, second.previous) == ("healthy", "critical")
    assert sub.dropped == 1  # the initial "healthy" was pushed out
    assert sub.get(0) is None


def test_processes_scanned_every_processes_interval() -> None:
    """The costly process scan runs on the first sample, then every processes_interval."""
    monitor, hp, _, clock = make('[monitor]\nprocesses_interval = "12s"\n')
    hp.next = replace(hp.next, processes=(ProcessInfo(7, "vllm", 5 * GiB, "vllm.service"),))
    for _ in range(6):
        snap = step(monitor, hp, clock)
    assert hp.calls == [True, False, False, True, False, False]  # 5 s samples, 12 s scans
    assert snap["host"]["top_processes"] == [
        {"pid": 7, "name": "vllm", "rss_bytes": 5 * GiB, "unit": "vllm.service"}
    ]


def test_perfd_cpu_percent_from_cpu_time_deltas() -> None:
    """perfd's own CPU percent is its CPU seconds over the sample interval."""
    monitor, hp, _, clock = make()
    step(monitor, hp, clock, self_cpu=1.0)
    snap = step(monitor, hp, clock, self_cpu=1.05)
    assert snap["perfd"]["cpu_percent"] == pytest.approx(1.0)


def test_thread_samples_beats_and_stops_at_once() -> None:
    """The thread takes a first sample, beats its heartbeat, and stop() returns promptly."""
    cfg = config.parse({"monitor": {"interval": "1h", "trend_window": "1h"}})
    liveness = Liveness()
    beat = liveness.register("monitor")
    before = beat.last
    monitor = Monitor(
        cfg.monitor,
        cfg.alerts,
        host_probe=FakeHostProbe(host_sample()),
        gpu_probe=FakeGpuProbe(),
        heartbeat=beat,
    )
    monitor.start()
    assert monitor.first_sample.wait(5)
    began = time.monotonic()
    monitor.stop(5)
    assert time.monotonic() - began < 2
    assert beat.last >= before
    assert monitor.snapshot() is not None


def test_reconfigure_applies_new_thresholds() -> None:
    """A reload's new thresholds apply from the next sample."""
    monitor, hp, _, clock = make()
    assert step(monitor, hp, clock, used_percent=70)["host"]["memory"]["verdict"] == "healthy"
    cfg = config.parse({"alerts": {"host_memory": {"warn": 60, "crit": 65}}})
    monitor.reconfigure(cfg.monitor, cfg.alerts)
    assert step(monitor, hp, clock, used_percent=70)["host"]["memory"]["verdict"] == "critical"


def test_status_line_format() -> None:
    """STATUS= reads like `mem 62% ok · psi 0.0% · gpu0 71% · 0 alerts`."""
    monitor, hp, _, clock = make("", gpu_sample(0, used_percent=71))
    step(monitor, hp, clock, used_percent=62, psi=psi(0))
    step(monitor, hp, clock, used_percent=62, psi=psi(0))
    assert status_of(monitor) == "mem 62% ok · psi 0.0% · gpu0 71% · 0 alerts"


def test_unreadable_gpu_keeps_its_alerts() -> None:
    """A GPU that cannot be read (lost, NVML timeout) is unknown, not recovered: its alert
    stays firing, and resolves only from real readings."""
    monitor, hp, gp, clock = make(
        "[alerts.gpu_memory]\nfor = 0\nclear = 2\n", gpu_sample(0, used_percent=99.5)
    )
    step(monitor, hp, clock)
    assert [a["id"] for a in monitor.alerts()["firing"]] == ["gpu_memory/gpu0"]
    gp.gpus[0] = replace(gp.gpus[0], state="lost", error="NVML_ERROR_GPU_IS_LOST")
    for _ in range(5):
        step(monitor, hp, clock)
    assert [a["id"] for a in monitor.alerts()["firing"]] == ["gpu_memory/gpu0"]
    gp.gpus[0] = gpu_sample(0, used_percent=10)
    step(monitor, hp, clock)
    step(monitor, hp, clock)
    assert monitor.alerts()["firing"] == []
    assert monitor.alerts()["history"][0]["event"] == "alert.resolved"


def test_swap_alert_resolves_when_swap_goes_away() -> None:
    """swapoff: swap reads 0 % used, so its alert resolves through the usual hysteresis."""
    monitor, hp, _, clock = make("[alerts.swap]\nfor = 0\nclear = 1\n")
    step(monitor, hp, clock, swap_used=6 * GiB)
    assert [a["id"] for a in monitor.alerts()["firing"]] == ["swap/host"]
    step(monitor, hp, clock, swap_total=0, swap_used=0)
    assert monitor.alerts()["firing"] == []


def test_disabling_a_rule_on_reload_resolves_its_alerts() -> None:
    """A rule disabled by a reload resolves its firing alerts."""
    monitor, hp, _, clock = make("[alerts.host_memory]\nfor = 0\n")
    step(monitor, hp, clock, used_percent=85)
    assert monitor.alerts()["firing"]
    cfg = config.parse({"alerts": {"host_memory": {"enabled": False}}})
    monitor.reconfigure(cfg.monitor, cfg.alerts)
    step(monitor, hp, clock, used_percent=85)
    assert monitor.alerts()["firing"] == []
