"""The cache's housekeeping thread, driven by a fake monitor."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from perfd.cache import housekeeping as keeper
from perfd.monitor.sampler import Subscription, VerdictChange
from perfd.monitor.snapshot import CgroupLimit, Snapshot
from perfd.systemd import Liveness
from tests.fakeprobes import gpu_sample, host_sample, make_snapshot
from tests.test_cache import FakeLoader, make_cache


class FakeMonitor:
    """Hands out a subscription and a snapshot the test controls."""

    def __init__(self, used_percent: float) -> None:
        self.used_percent = used_percent
        self.sampled_at = 1.0
        self.subscriptions: list[Subscription] = []

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self.subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.remove(sub)

    def snapshot(self) -> Snapshot:
        host = host_sample(total=1 << 30, used_percent=self.used_percent)
        return replace(make_snapshot(host, gpu_sample(0)), sampled_at_unix=self.sampled_at)


def test_pressure_verdict_wakes_the_keeper_and_evicts_cold_models() -> None:
    """A verdict change wakes the keeper at once; it evicts cold models down to the low mark."""
    loader = FakeLoader()
    evicted = threading.Event()
    unload = loader.unload

    def on_unload(model: Any) -> None:
        unload(model)
        evicted.set()

    loader.unload = on_unload  # type: ignore[method-assign]
    cache, _, clock = make_cache(
        {"a": 20, "b": 20},
        budget="1GiB",
        loader=loader,
        housekeeping="1h",
        high_watermark=90,
        low_watermark=85,
    )
    for name in ("a", "b"):
        clock.now += 1
        with cache.lease(name):
            pass
    monitor = FakeMonitor(used_percent=50.0)
    beat = Liveness().register("keeper")
    worker = keeper.Keeper(cache, monitor, beat)  # type: ignore[arg-type]
    worker.start()
    try:
        monitor.used_percent = 95.0
        monitor.subscriptions[0].put(VerdictChange("host", "critical", "healthy", 95.0, 0.0))
        assert evicted.wait(10)
    finally:
        worker.stop()
    assert loader.unloads[0] == "a"  # the colder one first
    assert cache.stats()["evictions"]["pressure"] >= 1
    assert monitor.subscriptions == []  # stop() unsubscribed


def test_device_figures_from_a_snapshot() -> None:
    """Devices' use and capacity come from the monitor's snapshot; a cgroup limit counts."""
    snap = FakeMonitor(70.0).snapshot()
    assert keeper.used_percent(snap) == {"cpu": 70.0, "cuda:0": 10.0}
    assert keeper.capacity(snap, "cpu") == 1 << 30
    assert keeper.capacity(snap, "cuda:0") == 80 << 30
    assert keeper.capacity(snap, "cuda:1") is None
    snap = replace(snap, host=replace(snap.host, cgroup=CgroupLimit("/", 1 << 29, None, 96.0)))
    assert keeper.capacity(snap, "cpu") == 1 << 29
    assert keeper.used_percent(snap)["cpu"] == 96.0
    assert keeper.used_percent(None) == {}


def test_pressure_acts_once_per_sample() -> None:
    """Evictions made on one monitor sample are not repeated on the same, now stale, sample."""
    cache, _, clock = make_cache(
        {"a": 20, "b": 20, "c": 20},
        budget="1GiB",
        housekeeping="1h",
        high_watermark=90,
        low_watermark=89.5,  # one 20 MiB model is 1.95 % of 1 GiB: 91 -> 89.05
    )
    for name in ("a", "b", "c"):
        clock.now += 1
        with cache.lease(name):
            pass
    monitor = FakeMonitor(used_percent=91.0)
    worker = keeper.Keeper(cache, monitor, None)  # type: ignore[arg-type]
    worker._turn()
    worker._turn()  # the same sample: no second round
    assert [r["model"] for r in cache.stats()["recent_evictions"]] == ["a"]
    monitor.sampled_at = 2.0  # a new sample, still above the high mark
    worker._turn()
    assert [r["model"] for r in cache.stats()["recent_evictions"]] == ["b", "a"]
