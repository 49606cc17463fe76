"""From samples to judgements: figures, verdicts, alert observations and the status line.

Pure functions of values (samples, trends, config); the monitor thread calls them.

Verdicts, per resource:

- ``healthy``: below the warn threshold and no stall;
- ``full_but_healthy``: at or above warn, but nothing stalls on memory (PSI) - memory used
  well, as an inference server should;
- ``pressure``: tasks stall on memory (PSI ``some`` at or above the psi rule's warn), or high
  use where PSI cannot tell (no /proc/pressure; GPUs, judged by capacity only);
- ``critical``: at or above crit, or stalls at or above the psi rule's crit.
"""

from __future__ import annotations

from typing import Final

from perfd.config import AlertsConfig, ExhaustionRule, ThresholdRule
from perfd.monitor import alerts, engine_alerts
from perfd.monitor.alerts import Observation, Policy
from perfd.monitor.snapshot import (
    CgroupLimit,
    Gpu,
    GpuMemory,
    GpuProcessUse,
    Host,
    HostMemory,
    MigSlice,
    PsiFigures,
    Snapshot,
    Swap,
    TopProcess,
)
from perfd.monitor.trends import STABLE, Trend
from perfd.probes.samples import GpuReading, GpuSample, HostSample

HEALTHY: Final = "healthy"
FULL_BUT_HEALTHY: Final = "full_but_healthy"
PRESSURE: Final = "pressure"
CRITICAL: Final = "critical"
VERDICTS: Final = (HEALTHY, FULL_BUT_HEALTHY, PRESSURE, CRITICAL)


def percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole > 0 else 0.0


def psi_percent(prev: HostSample | None, cur: HostSample) -> tuple[float | None, float | None]:
    """Stall percentages over the interval from the ``total=`` counters (avg10 lags badly)."""
    if cur.psi is None:
        return None, None
    if prev is None or prev.psi is None or cur.t <= prev.t:
        return cur.psi.some_avg10, cur.psi.full_avg10  # first sample: the kernel's average
    elapsed_us = (cur.t - prev.t) * 1e6
    some = max(0, cur.psi.some_total_us - prev.psi.some_total_us) / elapsed_us * 100
    full = max(0, cur.psi.full_total_us - prev.psi.full_total_us) / elapsed_us * 100
    return round(min(some, 100.0), 3), round(min(full, 100.0), 3)


def host_verdict(
    used_percent: float,
    some: float | None,
    full: float | None,
    memory: ThresholdRule,
    psi: ThresholdRule,
) -> str:
    stall = max(some or 0.0, full or 0.0)
    if used_percent >= memory.crit or stall >= psi.crit:
        return CRITICAL
    if some is not None and some >= psi.warn:
        return PRESSURE
    if used_percent >= memory.warn:
        return PRESSURE if some is None else FULL_BUT_HEALTHY
    return HEALTHY


def gpu_verdict(used_percent: float, state: str, rule: ThresholdRule) -> str | None:
    """Capacity only; None for a GPU that cannot be read."""
    if state != "ok":
        return None
    if used_percent >= rule.crit:
        return CRITICAL
    if used_percent >= rule.warn:
        return PRESSURE
    return HEALTHY


def host_figures(
    cur: HostSample,
    prev: HostSample | None,
    cfg: AlertsConfig,
    processes: tuple[TopProcess, ...],
    processes_at: str | None,
) -> Host:
    used = cur.mem_total_bytes - cur.mem_available_bytes
    used_percent = percent(used, cur.mem_total_bytes)
    some, full = psi_percent(prev, cur)
    psi = None
    if cur.psi is not None:
        psi = PsiFigures(
            some_percent=some,
            full_percent=full,
            some_avg10=cur.psi.some_avg10,
            some_avg60=cur.psi.some_avg60,
            full_avg10=cur.psi.full_avg10,
            full_avg60=cur.psi.full_avg60,
        )
    cgroup = None
    if cur.cgroup is not None and cur.cgroup.memory_max_bytes is not None:
        limit = cur.cgroup.memory_max_bytes
        if limit < cur.mem_total_bytes:
            current = cur.cgroup.memory_current_bytes
            cgroup = CgroupLimit(
                path=cur.cgroup.path,
                limit_bytes=limit,
                current_bytes=current,
                used_percent=None if current is None else percent(current, limit),
            )
    return Host(
        memory=HostMemory(
            total_bytes=cur.mem_total_bytes,
            available_bytes=cur.mem_available_bytes,
            used_bytes=used,
            used_percent=used_percent,
            verdict=host_verdict(used_percent, some, full, cfg.host_memory, cfg.psi),
        ),
        swap=Swap(
            total_bytes=cur.swap_total_bytes,
            used_bytes=cur.swap_used_bytes,
            used_percent=percent(cur.swap_used_bytes, cur.swap_total_bytes),
        ),
        psi=psi,
        cgroup=cgroup,
        cpu_percent=cur.cpu_percent,
        load_avg=cur.load_avg,
        cpu_count=cur.cpu_count,
        top_processes=processes,
        top_processes_at=processes_at,
    )


def gpu_unavailable(gpu: GpuSample) -> int:
    """Bytes that cannot be allocated: total - free, the same whether NVML answered with
    memory info v2 (whose `used` leaves out driver-reserved memory) or v1 (whose `used`
    includes it)."""
    return gpu.mem_total_bytes - gpu.mem_free_bytes


def gpu_figures(gpu: GpuSample, trend: Trend | None, cfg: AlertsConfig) -> Gpu:
    used_percent = percent(gpu_unavailable(gpu), gpu.mem_total_bytes)
    return Gpu(
        index=gpu.index,
        uuid=gpu.uuid,
        name=gpu.name,
        state=gpu.state,
        error=gpu.error,
        memory=GpuMemory(
            total_bytes=gpu.mem_total_bytes,
            used_bytes=gpu.mem_used_bytes,
            free_bytes=gpu.mem_free_bytes,
            reserved_bytes=gpu.mem_reserved_bytes,
            used_percent=used_percent,
        ),
        utilization_percent=gpu.utilization_percent,
        memory_utilization_percent=gpu.memory_utilization_percent,
        temperature_c=gpu.temperature_c,
        power_watts=gpu.power_watts,
        power_limit_watts=gpu.power_limit_watts,
        persistence_mode=gpu.persistence_mode,
        compute_capability=(
            None if gpu.compute_capability is None else ".".join(map(str, gpu.compute_capability))
        ),
        processes=tuple(GpuProcessUse(p.pid, p.used_bytes, p.name) for p in gpu.processes),
        mig_enabled=gpu.mig_enabled,
        mig=tuple(MigSlice(m.index, m.uuid, m.mem_total_bytes, m.mem_used_bytes) for m in gpu.mig),
        verdict=gpu_verdict(used_percent, gpu.state, cfg.gpu_memory),
        trend=trend,
    )


def gpu_fields(reading: GpuReading | None) -> tuple[str, str | None, str | None]:
    """(gpu_state, gpu_error, driver_version) of a reading; "disabled" without one."""
    if reading is None:
        return "disabled", None, None
    return reading.state, reading.error, reading.driver_version


def time_to_full(trend: Trend | None) -> float | None:
    """A trend's time to full as the reply shows it (0.1 s), which alerts judge."""
    if trend is None or trend.time_to_full_s is None:
        return None
    return round(trend.time_to_full_s, 1)


def _policy(rule: ThresholdRule | ExhaustionRule) -> Policy:
    return Policy(rule.for_, rule.clear, rule.repeat)


def observations(snapshot: Snapshot, cfg: AlertsConfig) -> list[Observation]:
    """One observation per enabled rule and resource in a snapshot."""
    out: list[Observation] = []

    def above(
        rule: str,
        spec: ThresholdRule,
        resource: str,
        value: float | None,
        unit: str,
        **labels: object,
    ) -> None:
        if spec.enabled:
            level, threshold = alerts.level_above(value, spec.warn, spec.crit)
            out.append(
                Observation(rule, resource, level, value, threshold, unit, _policy(spec), labels)
            )

    def exhaustion(
        resource: str, free_percent: float, trend: Trend | None, **labels: object
    ) -> None:
        spec = cfg.exhaustion
        if not spec.enabled:
            return
        ttf = time_to_full(trend)
        value = ttf if free_percent < spec.free_below else None
        level, threshold = alerts.level_below(value, spec.warn, spec.crit)
        out.append(
            Observation(
                "exhaustion",
                resource,
                level,
                ttf,
                threshold,
                "s",
                _policy(spec),
                {"free_percent": free_percent, **labels},
            )
        )

    host = snapshot.host
    memory = host.memory
    above("host_memory", cfg.host_memory, "host", memory.used_percent, "%")
    above("swap", cfg.swap, "host", host.swap.used_percent, "%")  # no swap: 0 %
    if host.psi is not None:
        above("psi", cfg.psi, "host", host.psi.some_percent, "%")
    exhaustion("host", round(100 - memory.used_percent, 2), snapshot.host_trend)
    for gpu in snapshot.gpus:
        if not gpu.ok:
            continue
        resource = f"gpu{gpu.index}"
        labels = {"uuid": gpu.uuid}
        above("gpu_memory", cfg.gpu_memory, resource, gpu.memory.used_percent, "%", **labels)
        above("gpu_temperature", cfg.gpu_temperature, resource, gpu.temperature_c, "C", **labels)
        free = round(100 - gpu.memory.used_percent, 2)
        exhaustion(resource, free, gpu.trend, **labels)
    out.extend(engine_alerts.observations(snapshot.engines, snapshot.gpus, cfg))
    return out


_SHORT: Final = {HEALTHY: "ok", FULL_BUT_HEALTHY: "full", PRESSURE: "pressure", CRITICAL: "CRIT"}
_ARROW: Final = {"increasing": "↑", "decreasing": "↓", "stable": "→"}


def _until(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _with_trend(text: str, trend: Trend | None) -> str:
    if trend is None or trend.direction == STABLE:
        return text
    text += " " + _ARROW[trend.direction]
    ttf = time_to_full(trend)
    if ttf is not None:
        text += f" {_until(ttf)} to full"
    return text


def status_line(snapshot: Snapshot) -> str:
    """systemd's STATUS=: `mem 62% ok · psi 0.0% · gpu0 71% ↑ 42m to full · 2 alerts`."""
    memory = snapshot.host.memory
    parts = [
        _with_trend(f"mem {memory.used_percent:.0f}% {_SHORT[memory.verdict]}", snapshot.host_trend)
    ]
    psi = snapshot.host.psi
    if psi is not None:
        parts.append(f"psi {psi.some_percent or 0:.1f}%")
    for gpu in snapshot.gpus:
        if not gpu.ok:
            parts.append(f"gpu{gpu.index} {gpu.state.upper()}")
            continue
        text = f"gpu{gpu.index} {gpu.memory.used_percent:.0f}%"
        parts.append(_with_trend(text, gpu.trend))
    if not snapshot.gpus and snapshot.gpu_state not in ("ok", "disabled", "absent"):
        parts.append(f"gpu {snapshot.gpu_state}")
    firing = snapshot.alerts.firing
    parts.append(f"{firing} alert{'s' if firing != 1 else ''}")
    return " · ".join(parts)
