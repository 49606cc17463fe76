"""Scripted probes for the monitor: plain values, set by the test before each sample."""

from __future__ import annotations

from dataclasses import replace

from perfd.monitor.snapshot import Snapshot
from perfd.probes.samples import GpuReading, GpuSample, HostSample, Psi

GiB = 1 << 30


def host_sample(
    t: float = 0.0,
    *,
    total: int = 64 * GiB,
    used_percent: float = 50.0,
    swap_total: int = 8 * GiB,
    swap_used: int = 0,
    psi: Psi | None = None,
    self_cpu: float = 0.0,
) -> HostSample:
    available = int(total * (1 - used_percent / 100))
    return HostSample(
        t=t,
        wall=1_800_000_000.0 + t,
        mem_total_bytes=total,
        mem_available_bytes=available,
        swap_total_bytes=swap_total,
        swap_used_bytes=swap_used,
        cpu_percent=12.5,
        load_avg=(0.5, 0.4, 0.3),
        cpu_count=16,
        psi=psi,
        cgroup=None,
        self_rss_bytes=30 << 20,
        self_cpu_seconds=self_cpu,
        processes=None,
    )


def gpu_sample(
    index: int = 0,
    *,
    total: int = 80 * GiB,
    used_percent: float = 10.0,
    temperature: float = 50.0,
    state: str = "ok",
) -> GpuSample:
    used = int(total * used_percent / 100)
    return GpuSample(
        index=index,
        uuid=f"GPU-{index:08d}",
        name="NVIDIA H100 80GB HBM3",
        mem_total_bytes=total,
        mem_used_bytes=used,
        mem_free_bytes=total - used,
        mem_reserved_bytes=0,
        utilization_percent=30.0,
        memory_utilization_percent=10.0,
        temperature_c=temperature,
        power_watts=200.0,
        power_limit_watts=700.0,
        persistence_mode=True,
        compute_capability=(9, 0),
        processes=(),
        mig_enabled=False,
        mig=(),
        state=state,
    )


class FakeHostProbe:
    """Returns ``self.next`` (with the requested processes flag honoured)."""

    def __init__(self, sample: HostSample) -> None:
        self.next = sample
        self.calls: list[bool] = []

    def sample(self, with_processes: bool) -> HostSample:
        self.calls.append(with_processes)
        return self.next if with_processes else replace(self.next, processes=None)


class FakeGpuProbe:
    def __init__(self, *gpus: GpuSample, state: str = "ok", error: str | None = None) -> None:
        self.gpus = list(gpus)
        self.state, self.error = state, error
        self.closed = False

    def sample(self) -> GpuReading:
        return GpuReading(0.0, self.state, self.error, "550.54", tuple(self.gpus))

    def close(self) -> None:
        self.closed = True


def make_snapshot(
    host: HostSample | None = None, *gpus: GpuSample, gpu_state: str = "ok"
) -> Snapshot:
    """A monitor snapshot of these samples, judged with the default alert rules (no trends
    yet, no alerts firing): what a reader of the monitor sees after one turn."""
    from perfd import config
    from perfd.monitor import trends, verdicts
    from perfd.monitor.snapshot import AlertCounts, SelfUse

    cfg = config.parse({}).alerts
    host = host or host_sample()
    flat = trends.classify([], 0, 1.0)
    return Snapshot(
        sampled_at="2027-01-15T08:00:00Z",
        sampled_at_unix=host.wall,
        interval_s=5.0,
        host=verdicts.host_figures(host, None, cfg, (), None),
        gpu_state=gpu_state,
        gpu_error=None,
        driver_version="550.54",
        gpus=tuple(verdicts.gpu_figures(g, None, cfg) for g in gpus),
        host_trend=flat,
        perfd=SelfUse(host.self_rss_bytes, None),
        alerts=AlertCounts(0, 0),
    )
