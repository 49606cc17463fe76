"""The monitor's typed snapshot: what one sample found, judged, as frozen values.

The monitor builds one ``Snapshot`` per turn (perfd.monitor.verdicts computes its figures);
alerts, the cache's housekeeping, the metrics exporter, the recommender's live hardware and
systemd's status line read its fields. ``stats_reply`` is the only place that turns it into
the ``stats`` reply's wire dict (docs/protocol.md), so the internal data model and the wire
format can change apart:

    snapshot.host.memory.used_percent      ->  reply["host"]["memory"]["used_percent"]
    snapshot.gpus[0].trend.time_to_full_s  ->  reply["gpus"][0]["trend"]["time_to_full_s"]

Sizes are bytes, percentages 0-100, ``None`` means "not available", never zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from perfd.monitor.trends import Trend

if TYPE_CHECKING:
    from perfd.engines.record import EngineRecord

JsonValue = object  # what json.dumps takes: the reply's leaves are str, int, float, bool, None


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int
    available_bytes: int
    used_bytes: int
    used_percent: float
    verdict: str


@dataclass(frozen=True)
class Swap:
    total_bytes: int
    used_bytes: int
    used_percent: float


@dataclass(frozen=True)
class PsiFigures:
    """Memory stalls: over the last interval (``*_percent``) and the kernel's averages."""

    some_percent: float | None
    full_percent: float | None
    some_avg10: float
    some_avg60: float
    full_avg10: float
    full_avg60: float


@dataclass(frozen=True)
class CgroupLimit:
    """perfd's cgroup memory limit, present only when it is below the host's RAM."""

    path: str
    limit_bytes: int
    current_bytes: int | None
    used_percent: float | None


@dataclass(frozen=True)
class TopProcess:
    pid: int
    name: str
    rss_bytes: int
    unit: str | None


@dataclass(frozen=True)
class Host:
    memory: HostMemory
    swap: Swap
    psi: PsiFigures | None  # None: /proc/pressure absent
    cgroup: CgroupLimit | None
    cpu_percent: float
    load_avg: tuple[float, float, float]
    cpu_count: int
    top_processes: tuple[TopProcess, ...]
    top_processes_at: str | None  # RFC 3339 time of the last process scan


@dataclass(frozen=True)
class GpuMemory:
    total_bytes: int
    used_bytes: int
    free_bytes: int
    reserved_bytes: int
    used_percent: float  # (total - free) / total


@dataclass(frozen=True)
class GpuProcessUse:
    pid: int
    used_bytes: int | None
    name: str | None


@dataclass(frozen=True)
class MigSlice:
    index: int
    uuid: str | None
    total_bytes: int
    used_bytes: int


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    state: str
    error: str | None
    memory: GpuMemory
    utilization_percent: float | None
    memory_utilization_percent: float | None
    temperature_c: float | None
    power_watts: float | None
    power_limit_watts: float | None
    persistence_mode: bool | None
    compute_capability: str | None  # "9.0"
    processes: tuple[GpuProcessUse, ...]
    mig_enabled: bool
    mig: tuple[MigSlice, ...]
    verdict: str | None  # None for a GPU that cannot be read
    trend: Trend | None

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def device(self) -> str:
        """The cache's name for it: "cuda:N"."""
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class AlertCounts:
    firing: int
    critical: int


@dataclass(frozen=True)
class SelfUse:
    """perfd's own footprint."""

    rss_bytes: int
    cpu_percent: float | None  # None on the first sample


@dataclass(frozen=True)
class Snapshot:
    sampled_at: str  # RFC 3339
    sampled_at_unix: float
    interval_s: float
    host: Host
    gpu_state: str  # NVML's state for the GPUs as a whole, or "disabled"
    gpu_error: str | None
    driver_version: str | None
    gpus: tuple[Gpu, ...]
    host_trend: Trend
    perfd: SelfUse
    alerts: AlertCounts
    engines: tuple[EngineRecord, ...] = ()  # the watcher's latest records at this sample


# -- the one view on the wire -----------------------------------------------------------------


def stats_reply(snapshot: Snapshot) -> dict[str, JsonValue]:
    """The ``stats`` reply's monitor part (the handler adds ``cache`` and ``providers``)."""
    return {
        "sampled_at": snapshot.sampled_at,
        "sampled_at_unix": snapshot.sampled_at_unix,
        "interval_s": snapshot.interval_s,
        "host": _host(snapshot.host),
        "gpu_state": snapshot.gpu_state,
        "gpu_error": snapshot.gpu_error,
        "driver_version": snapshot.driver_version,
        "gpus": [_gpu(gpu) for gpu in snapshot.gpus],
        "trends": {"host_memory": snapshot.host_trend.as_dict()},
        "perfd": {"rss_bytes": snapshot.perfd.rss_bytes, "cpu_percent": snapshot.perfd.cpu_percent},
        "alerts": {"firing": snapshot.alerts.firing, "critical": snapshot.alerts.critical},
    }


def _host(host: Host) -> dict[str, JsonValue]:
    memory, swap, psi, cgroup = host.memory, host.swap, host.psi, host.cgroup
    psi_part: dict[str, JsonValue] = {"available": psi is not None}
    if psi is not None:
        psi_part.update(
            some_percent=psi.some_percent,
            full_percent=psi.full_percent,
            some_avg10=psi.some_avg10,
            some_avg60=psi.some_avg60,
            full_avg10=psi.full_avg10,
            full_avg60=psi.full_avg60,
        )
    return {
        "memory": {
            "total_bytes": memory.total_bytes,
            "available_bytes": memory.available_bytes,
            "used_bytes": memory.used_bytes,
            "used_percent": memory.used_percent,
            "verdict": memory.verdict,
        },
        "swap": {
            "total_bytes": swap.total_bytes,
            "used_bytes": swap.used_bytes,
            "used_percent": swap.used_percent,
        },
        "psi": psi_part,
        "cgroup": None
        if cgroup is None
        else {
            "path": cgroup.path,
            "limit_bytes": cgroup.limit_bytes,
            "current_bytes": cgroup.current_bytes,
            "used_percent": cgroup.used_percent,
        },
        "cpu_percent": host.cpu_percent,
        "load_avg": list(host.load_avg),
        "cpu_count": host.cpu_count,
        "top_processes": [
            {"pid": p.pid, "name": p.name, "rss_bytes": p.rss_bytes, "unit": p.unit}
            for p in host.top_processes
        ],
        "top_processes_at": host.top_processes_at,
    }


def _gpu(gpu: Gpu) -> dict[str, JsonValue]:
    memory = gpu.memory
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "state": gpu.state,
        "error": gpu.error,
        "memory": {
            "total_bytes": memory.total_bytes,
            "used_bytes": memory.used_bytes,
            "free_bytes": memory.free_bytes,
            "reserved_bytes": memory.reserved_bytes,
            "used_percent": memory.used_percent,
        },
        "utilization_percent": gpu.utilization_percent,
        "memory_utilization_percent": gpu.memory_utilization_percent,
        "temperature_c": gpu.temperature_c,
        "power_watts": gpu.power_watts,
        "power_limit_watts": gpu.power_limit_watts,
        "persistence_mode": gpu.persistence_mode,
        "compute_capability": gpu.compute_capability,
        "processes": [
            {"pid": p.pid, "used_bytes": p.used_bytes, "name": p.name} for p in gpu.processes
        ],
        "mig": {
            "enabled": gpu.mig_enabled,
            "instances": [
                {
                    "index": m.index,
                    "uuid": m.uuid,
                    "total_bytes": m.total_bytes,
                    "used_bytes": m.used_bytes,
                }
                for m in gpu.mig
            ],
        },
        "verdict": gpu.verdict,
        "trend": None if gpu.trend is None else gpu.trend.as_dict(),
    }
