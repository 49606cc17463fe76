"""The engines' alert rules (perfd.monitor.engine_alerts) through the alert machine: KV cache
usage, waiting requests, preemptions per minute, engine down; each fires after `for` and
resolves after `clear` samples, with the engine's name as the resource. And through a Monitor
that reads a watcher's records at each sample."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from perfd import config
from perfd.engines.record import EngineRecord, Reading, Target
from perfd.monitor import engine_alerts
from perfd.monitor.alerts import AlertMachine
from perfd.monitor.sampler import Monitor
from tests.fakeprobes import FakeHostProbe, gpu_sample, host_sample, make_snapshot

TARGET = Target("vllm-8000", "vllm", "http://127.0.0.1:8000")


def up(**fields: Any) -> EngineRecord:
    rate = fields.pop("preemptions_per_min", None)
    return EngineRecord(
        TARGET, "up", reading=Reading(**fields), preemptions_per_min=rate, read_at=1.0
    )


def down() -> EngineRecord:
    return EngineRecord(TARGET, "down", reason="/metrics: connection refused", read_at=1.0)


def alerts_cfg(**rules: dict[str, Any]) -> config.AlertsConfig:
    return config.parse({"alerts": rules}).alerts


def run(records: list[EngineRecord], cfg: config.AlertsConfig) -> list[tuple[float, str, str]]:
    """Feed one record per second; the (time, rule, transition) that came out."""
    machine = AlertMachine()
    out = []
    for t, record in enumerate(records):
        for obs in engine_alerts.observations([record], (), cfg):
            for tr in machine.observe(obs, float(t), float(t)):
                out.append((float(t), f"{tr.alert.rule}/{tr.alert.resource}", tr.kind))
    return out


def test_kv_cache_usage_fires_after_for_and_resolves_after_clear() -> None:
    """KV use 95% for `for` (2 s): a warning; 99%: escalated; back under warn for `clear` (2)
    samples: resolved. The ratio is read as a percent."""
    cfg = alerts_cfg(kv_cache_usage={"for": "2s", "clear": 2, "warn": 90, "crit": 98})
    ratios = [0.95, 0.95, 0.95, 0.99, 0.5, 0.5]
    got = run([up(kv_usage_ratio=r) for r in ratios], cfg)
    assert got == [
        (2.0, "kv_cache_usage/vllm-8000", "firing"),
        (3.0, "kv_cache_usage/vllm-8000", "escalated"),
        (5.0, "kv_cache_usage/vllm-8000", "resolved"),
    ]


def test_kv_usage_from_tokens_when_no_ratio() -> None:
    """An engine that reports tokens only (llama-server's slots) is judged by used/capacity."""
    cfg = alerts_cfg(kv_cache_usage={"for": "0s"})
    got = run([up(kv_used_tokens=950, kv_capacity_tokens=1000)], cfg)
    assert got == [(0.0, "kv_cache_usage/vllm-8000", "firing")]


def test_waiting_and_preemptions() -> None:
    """Requests waiting at or above warn, preemptions per minute at or above crit."""
    cfg = alerts_cfg(
        engine_waiting={"for": "0s", "warn": 5, "crit": 50},
        engine_preemptions={"for": "0s", "warn": 1, "crit": 10},
    )
    got = run([up(requests_waiting=7, preemptions_per_min=12.0)], cfg)
    assert sorted(got) == [
        (0.0, "engine_preemptions/vllm-8000", "firing"),
        (0.0, "engine_waiting/vllm-8000", "firing"),
    ]


def test_engine_down_fires_after_for_and_resolves_when_up() -> None:
    """down for `for` (1 s) fires critical; one up sample (clear = 1) resolves it; a down
    engine's last figures are not judged (no kv alert from a stale reading)."""
    cfg = alerts_cfg(engine_down={"for": "1s"}, kv_cache_usage={"for": "0s"})
    stale = dataclasses.replace(down(), reading=Reading(kv_usage_ratio=0.99))
    got = run([down(), stale, down(), up(kv_usage_ratio=0.1)], cfg)
    assert got == [
        (1.0, "engine_down/vllm-8000", "firing"),
        (3.0, "engine_down/vllm-8000", "resolved"),
    ]


def test_disabled_rules_observe_nothing() -> None:
    """enabled = false: no observation for that rule."""
    cfg = alerts_cfg(engine_down={"enabled": False})
    assert [o.rule for o in engine_alerts.observations([down()], (), cfg)] == []


def test_a_gpu_without_engines_on_it_is_not_oversubscribed() -> None:
    """An engine none of whose processes is on the GPU claims nothing there: no flag."""
    snapshot = make_snapshot(host_sample(), gpu_sample(0))
    obs = engine_alerts.observations([up()], snapshot.gpus, alerts_cfg())
    over = [o for o in obs if o.rule == "gpu_oversubscribed"]
    assert [(o.resource, o.level) for o in over] == [("gpu0", None)]


def test_the_monitor_reads_the_records_at_each_sample() -> None:
    """A Monitor given the watcher's records puts them in its snapshot and raises
    engine_down from them."""
    cfg = config.parse({"monitor": {"gpu": False}, "alerts": {"engine_down": {"for": "0s"}}})
    records = [down()]
    monitor = Monitor(
        cfg.monitor,
        cfg.alerts,
        host_probe=FakeHostProbe(host_sample()),
        engines=lambda: records,
    )
    snapshot = monitor.sample_once()
    assert snapshot.engines == (records[0],)
    assert [a.id for a in monitor.firing()] == ["engine_down/vllm-8000"]
    records[0] = up()
    monitor.sample_once()
    assert monitor.firing() == []


def test_two_vllms_at_0_9_on_one_gpu_raise_gpu_oversubscribed() -> None:
    """check_gpus' flag (the plan check's shape: its gpu index) fires the GPU's alert, with the
    flag's message; one of them alone fits, and the alert observes no flag."""
    from perfd.probes.samples import GpuProcess

    sample = dataclasses.replace(
        gpu_sample(0),
        processes=(GpuProcess(11, 30 << 30, "vllm"), GpuProcess(22, 30 << 30, "vllm")),
    )
    snapshot = make_snapshot(host_sample(), sample)
    settings = {"gpu_memory_utilization": 0.9}
    records = [
        dataclasses.replace(
            up(settings=settings), target=Target(name, "vllm", f"http://127.0.0.1:{port}", (pid,))
        )
        for name, port, pid in (("a", 8000, 11), ("b", 8001, 22))
    ]
    obs = engine_alerts.observations(records, snapshot.gpus, alerts_cfg())
    over = [o for o in obs if o.rule == "gpu_oversubscribed"]
    assert [(o.resource, o.level) for o in over] == [("gpu0", "warning")]
    assert str(over[0].labels["message"]).startswith("GPU 0: engines claim 144.0 GiB of 80.0 GiB")
    alone = engine_alerts.observations(records[:1], snapshot.gpus, alerts_cfg())
    assert [o.level for o in alone if o.rule == "gpu_oversubscribed"] == [None]


def test_the_claims_ratio_on_metrics_is_what_the_alert_judges() -> None:
    """/metrics' perfd_gpu_engine_claims_ratio (PerfdGpuOversubscribed's input) is the claims
    check_gpus adds up: two vLLMs at 0.9 on one GPU claim 1.8 of it; one alone 0.9."""
    from perfd.metrics.engines import claim_families
    from perfd.probes.samples import GpuProcess

    sample = dataclasses.replace(
        gpu_sample(0),
        processes=(GpuProcess(11, 30 << 30, "vllm"), GpuProcess(22, 30 << 30, "vllm")),
    )
    settings = {"gpu_memory_utilization": 0.9}
    records = tuple(
        dataclasses.replace(
            up(settings=settings), target=Target(name, "vllm", f"http://127.0.0.1:{port}", (pid,))
        )
        for name, port, pid in (("a", 8000, 11), ("b", 8001, 22))
    )
    for engines, expected in ((records, 1.8), (records[:1], 0.9)):
        snapshot = dataclasses.replace(make_snapshot(host_sample(), sample), engines=engines)
        (family,) = claim_families(snapshot)
        ((labels, value),) = [(s.labels, s.value) for s in family.samples]
        assert labels == {"gpu": "0"}
        assert value == pytest.approx(expected, rel=1e-6)
    assert list(claim_families(make_snapshot(host_sample(), sample))) == []  # no engines
