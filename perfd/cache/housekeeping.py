"""The cache's housekeeping thread: keep-alive expiry and pressure eviction.

It wakes every ``[cache] housekeeping`` interval, and at once when the monitor publishes a
verdict change, reads the monitor's latest snapshot for each device's use, and asks the cache
to unload expired models and, above the high watermark, cold ones.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from perfd import log

if TYPE_CHECKING:
    from perfd.cache.core import ModelCache
    from perfd.monitor.sampler import Monitor
    from perfd.monitor.snapshot import Snapshot
    from perfd.systemd import Heartbeat

_log = log.get("perfd.keeper")
_NEVER = object()


def used_percent(snapshot: Snapshot | None) -> dict[str, float]:
    """Each device's memory use from a snapshot: "cpu" and "cuda:N"."""
    if snapshot is None:
        return {}
    host = snapshot.host
    out = {"cpu": float(host.memory.used_percent)}
    cgroup = host.cgroup
    if cgroup is not None and cgroup.used_percent is not None:
        out["cpu"] = max(out["cpu"], float(cgroup.used_percent))
    for gpu in snapshot.gpus:
        if gpu.ok:
            out[gpu.device] = float(gpu.memory.used_percent)
    return out


def capacity(snapshot: Snapshot | None, device: str) -> int | None:
    """A device's size: RAM (or perfd's cgroup limit when lower), or a GPU's total."""
    if snapshot is None:
        return None
    if device == "cpu":
        cgroup = snapshot.host.cgroup
        total = int(snapshot.host.memory.total_bytes)
        return min(total, int(cgroup.limit_bytes)) if cgroup is not None else total
    for gpu in snapshot.gpus:
        if gpu.device == device and gpu.ok:
            return int(gpu.memory.total_bytes)
    return None


class Keeper:
    def __init__(self, cache: ModelCache, monitor: Monitor, heartbeat: Heartbeat | None) -> None:
        self._cache, self._monitor, self._heartbeat = cache, monitor, heartbeat
        self._stop = threading.Event()
        self._subscription = monitor.subscribe()
        self._acted_on: object = _NEVER  # the sample the last pressure eviction used
        self._thread = threading.Thread(target=self._run, name="perfd-keeper", daemon=True)

    def start(self, heartbeat: Heartbeat | None = None) -> None:
        """Start the thread; ``heartbeat`` (when given) replaces the one it was built with."""
        if heartbeat is not None:
            self._heartbeat = heartbeat
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._subscription.wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.warning("thread.still_alive", thread="perfd-keeper", action="exiting anyway")
        self._monitor.unsubscribe(self._subscription)

    def _turn(self) -> None:
        """Expire keep-alives; act on pressure once per monitor sample, never twice on one
        (the sample predates the last evictions, so it would evict again for nothing)."""
        snapshot = self._monitor.snapshot()
        stamp = snapshot.sampled_at_unix if snapshot is not None else None
        used = used_percent(snapshot) if stamp != self._acted_on else {}
        records = self._cache.housekeep(used)
        if any(r["reason"] == "pressure" for r in records):
            self._acted_on = stamp

    def _run(self) -> None:
        while not self._stop.is_set():
            self._subscription.get(timeout=self._cache.cfg.housekeeping)
            if self._stop.is_set():
                return
            try:
                self._turn()
            except Exception:  # a bug must not stop housekeeping for good
                _log.exception("cache.housekeeping_failed")
            if self._heartbeat is not None:
                self._heartbeat.beat()
