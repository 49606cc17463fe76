"""The typed snapshot and its one view on the wire: the `stats` reply, the status line, the
alerts, the metrics and the live hardware are what they were when the monitor's data model
was the reply dict itself (tests/data/stats_replies.json, recorded from that code)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from perfd.cache import housekeeping as keeper
from perfd.handlers.recommend import hardware_from_snapshot
from perfd.metrics.exporter import MetricsServer, Sources
from perfd.monitor import snapshot as snap
from perfd.monitor import verdicts
from perfd.monitor.sampler import Monitor
from perfd.recommend import hardware_from_stats
from tests.snapshot_scenarios import scenarios

GOLDEN: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "stats_replies.json").read_text()
)


def _metrics(monitor: Monitor) -> list[str]:
    text = MetricsServer("127.0.0.1:0", Sources(monitor)).exposition().decode()
    skip = ("process_", "# HELP process_", "# TYPE process_")
    # Series added since the recording: each GPU process's owner and the engines' claims
    # (tests/test_handlers_engines.py, tests/test_engine_alerts.py), the cache's tensor bytes,
    # charged bytes and runtime overhead (tests/test_metrics.py).
    added = (
        "perfd_gpu_process_memory_used_bytes",
        "perfd_gpu_memory_unaccounted_bytes",
        "perfd_gpu_engine_claims_ratio",
        "perfd_cache_model_tensor_bytes",
        "perfd_cache_model_bytes",
        "perfd_cache_runtime_overhead_bytes",
    )
    skip += (*added, *(f"# {w} {name}" for name in added for w in ("HELP", "TYPE")))
    return [
        line
        for line in text.splitlines()
        if not line.startswith(skip) and "sample_seconds" not in line
    ]


@dataclasses.dataclass(frozen=True)
class Turn:
    """One sample and what the monitor's readers made of it right then."""

    snapshot: snap.Snapshot
    alerts: str
    metrics: list[str]


def _take(monitor: Monitor) -> Turn:
    snapshot = monitor.sample_once()
    return Turn(snapshot, json.dumps(monitor.alerts()), _metrics(monitor))


TURNS = [(name, turn) for name, turn, _ in scenarios(_take)]


def test_every_recorded_turn_is_replayed() -> None:
    """The scenarios replay exactly the recorded turns (none lost, none new)."""
    assert [name for name, _ in TURNS] == list(GOLDEN)


@pytest.mark.parametrize("index", range(len(GOLDEN)))
def test_stats_reply_is_byte_for_byte_the_recorded_one(index: int) -> None:
    """json.dumps of stats_reply(snapshot) equals the old code's reply, byte for byte."""
    name, turn = TURNS[index]
    snapshot = turn.snapshot
    assert isinstance(snapshot, snap.Snapshot)
    assert json.dumps(snap.stats_reply(snapshot)) == GOLDEN[name]["stats"]


@pytest.mark.parametrize("index", range(len(GOLDEN)))
def test_consumers_read_the_snapshot_as_they_read_the_reply(index: int) -> None:
    """Status line, alerts (from the observations), metrics, housekeeping's device figures
    and the live hardware, computed from the typed snapshot, are the recorded ones."""
    name, turn = TURNS[index]
    snapshot, golden = turn.snapshot, GOLDEN[name]
    assert verdicts.status_line(snapshot) == golden["status_line"]
    assert turn.alerts == golden["alerts"]
    assert turn.metrics == golden["metrics"]
    assert keeper.used_percent(snapshot) == golden["used_percent"]
    devices = ("cpu", "cuda:0", "cuda:1", "cuda:2")
    assert {d: keeper.capacity(snapshot, d) for d in devices} == golden["capacity"]
    assert hardware_from_snapshot(snapshot).as_dict() == golden["hardware"]
    # perfctl's side reads the same machine from the reply that crossed the wire
    reply = json.loads(json.dumps(snap.stats_reply(snapshot)))
    assert hardware_from_stats(reply).as_dict() == golden["hardware"]


def test_the_scenarios_cover_what_the_reply_can_hold() -> None:
    """The recorded turns hold GPUs with MIG and processes, a lost GPU, None figures, PSI and
    none, a cgroup, top processes, firing alerts, growing and falling trends, GPUs disabled."""
    snapshots = [turn.snapshot for _, turn in TURNS]
    gpus = [g for s in snapshots for g in s.gpus]
    assert any(g.mig_enabled and g.mig for g in gpus)
    assert any(g.processes for g in gpus)
    assert any(not g.ok for g in gpus)
    assert any(g.temperature_c is None and g.compute_capability is None for g in gpus)
    assert any(g.trend is not None and g.trend.time_to_full_s is not None for g in gpus)
    assert any(s.host.psi is None for s in snapshots)
    assert any(s.host.psi is not None for s in snapshots)
    assert any(s.host.cgroup is not None for s in snapshots)
    assert any(s.host.top_processes for s in snapshots)
    assert any(s.alerts.critical for s in snapshots)
    assert {s.host_trend.direction for s in snapshots} >= {"increasing", "decreasing", "stable"}
    assert {s.gpu_state for s in snapshots} >= {"ok", "lost", "driver_not_loaded", "disabled"}
    assert any(s.perfd.cpu_percent is None for s in snapshots)


def test_snapshot_is_frozen() -> None:
    """A snapshot is a value: readers on other threads cannot change it."""
    snapshot = TURNS[0][1].snapshot
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.host.memory.used_percent = 1.0  # type: ignore[misc]
