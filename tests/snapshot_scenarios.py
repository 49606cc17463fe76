"""Scripted monitor runs for the `stats` reply's golden test: GPUs (MIG, processes, a lost
one, None figures), PSI, a cgroup limit, top processes, firing alerts and growing trends."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from perfd import config
from perfd.monitor.sampler import Monitor
from perfd.probes.samples import Cgroup, GpuProcess, MigInstance, ProcessInfo, Psi
from tests.fakeprobes import FakeGpuProbe, FakeHostProbe, GiB, gpu_sample, host_sample

Turn = tuple[str, Monitor]  # (scenario/step name, the monitor right after that sample)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _monitor(text: str, hp: FakeHostProbe, gp: FakeGpuProbe | None, clock: _Clock) -> Monitor:
    cfg = config.parse(tomllib.loads(text))
    return Monitor(
        cfg.monitor,
        cfg.alerts,
        host_probe=hp,
        gpu_probe=gp,
        clock=clock,
        wall=lambda: 1.8e9 + clock.now + 0.25,
    )


def _rich_gpu(index: int, used_percent: float) -> Any:
    return replace(
        gpu_sample(index, used_percent=used_percent),
        processes=(GpuProcess(4242, 3 * GiB, "python3"), GpuProcess(4343, None, None)),
        mig_enabled=True,
        mig=(MigInstance(1, "MIG-1", 20 * GiB, 1 * GiB), MigInstance(2, None, 40 * GiB, 0)),
        mem_reserved_bytes=512 << 20,
    )


def _blank_gpu(index: int) -> Any:
    return replace(
        gpu_sample(index, used_percent=33.3),
        utilization_percent=None,
        memory_utilization_percent=None,
        temperature_c=None,
        power_watts=None,
        power_limit_watts=None,
        persistence_mode=None,
        compute_capability=None,
    )


def scenarios(sample: Callable[[Monitor], Any]) -> Iterator[tuple[str, Any, Monitor]]:
    """Yield (name, what ``sample(monitor)`` returned, monitor) for every scripted turn."""
    # 1. GPUs with MIG, processes, None figures; PSI; cgroup; top processes; alerts; trends.
    clock = _Clock()
    processes = (
        ProcessInfo(1, "init", 10 << 20, None),
        ProcessInfo(77, "vllm", 9 * GiB, "vllm.service"),
    )
    cgroup = Cgroup("/system.slice/perfd.service", 48 * GiB, 30 * GiB)
    hp = FakeHostProbe(replace(host_sample(clock.now), processes=processes, cgroup=cgroup))
    gp = FakeGpuProbe(_rich_gpu(0, 10.0), _blank_gpu(1))
    monitor = _monitor(
        "[monitor]\ntop_processes = 2\n[alerts.host_memory]\nfor = 0\nclear = 2\n"
        "[alerts.gpu_memory]\nfor = 0\n[alerts.gpu_temperature]\nfor = 0\n"
        "[alerts.psi]\nfor = 0\n",
        hp,
        gp,
        clock,
    )
    some = 0
    for i in range(8):
        clock.now += 5.0
        some += 400_000 * i
        host = host_sample(
            clock.now,
            used_percent=50 + 6 * i,
            swap_used=i * GiB,
            psi=Psi(some, some // 3, 1.5 * i, 0.75, 0.25, 0.125),
            self_cpu=0.05 * i,
        )
        hp.next = replace(host, processes=processes, cgroup=cgroup)
        gp.gpus[0] = _rich_gpu(0, 10.0 + 11 * i)
        if i == 4:
            gp.gpus.append(replace(gpu_sample(2), state="lost", error="NVML_ERROR_GPU_IS_LOST"))
            gp.state, gp.error = "lost", "NVML_ERROR_GPU_IS_LOST"
        yield f"rich/{i}", sample(monitor), monitor
    # 2. Falling memory, no PSI, no swap, GPUs lost as a whole.
    clock = _Clock()
    hp = FakeHostProbe(host_sample(clock.now, swap_total=0))
    gp = FakeGpuProbe(gpu_sample(0, used_percent=97, temperature=95))
    monitor = _monitor("[alerts.gpu_memory]\nfor = 0\n", hp, gp, clock)
    for i in range(6):
        clock.now += 2.5
        hp.next = host_sample(clock.now, used_percent=90 - 7 * i, swap_total=0)
        if i == 3:
            gp.gpus.clear()
            gp.state, gp.error = "driver_not_loaded", "NVML_ERROR_DRIVER_NOT_LOADED"
        yield f"falling/{i}", sample(monitor), monitor
    # 3. GPUs disabled, cgroup without current figure, PSI on the first sample only.
    clock = _Clock()
    cgroup = Cgroup("/user.slice", 16 * GiB, None)
    hp = FakeHostProbe(
        replace(host_sample(clock.now, psi=Psi(0, 0, 0.5, 0.25, 0.0, 0.0)), cgroup=cgroup)
    )
    monitor = _monitor("[monitor]\ngpu = false\n", hp, None, clock)
    for i in range(3):
        clock.now += 1.0
        hp.next = replace(hp.next, t=clock.now)
        yield f"disabled/{i}", sample(monitor), monitor
