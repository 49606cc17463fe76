"""Plain values the probes return and the monitor consumes. No I/O, no third-party imports.

Sizes are bytes, times are seconds (``t`` is time.monotonic(), ``wall`` is time.time()),
percentages are 0-100. ``None`` means "not available on this host", never "zero".
"""

from __future__ import annotations

from dataclasses import dataclass

GPU_OK = "ok"
GPU_ABSENT = "absent"  # no NVML library (no NVIDIA driver installed)
GPU_DRIVER_NOT_LOADED = "driver_not_loaded"
GPU_LOST = "lost"  # a GPU fell off the bus
GPU_ERROR = "error"  # any other NVML error, or a call that timed out
GPU_STATES = (GPU_OK, GPU_ABSENT, GPU_DRIVER_NOT_LOADED, GPU_LOST, GPU_ERROR)


@dataclass(frozen=True)
class Psi:
    """/proc/pressure/memory: cumulative stall counters (microseconds) and kernel averages."""

    some_total_us: int
    full_total_us: int
    some_avg10: float
    some_avg60: float
    full_avg10: float
    full_avg60: float


@dataclass(frozen=True)
class Cgroup:
    """perfd's own cgroup v2 memory limit; ``memory_max_bytes`` is None when unlimited."""

    path: str
    memory_max_bytes: int | None
    memory_current_bytes: int | None


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    rss_bytes: int
    unit: str | None  # systemd unit from /proc/PID/cgroup, e.g. "vllm.service"


@dataclass(frozen=True)
class HostSample:
    t: float
    wall: float
    mem_total_bytes: int
    mem_available_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    cpu_percent: float
    load_avg: tuple[float, float, float]
    cpu_count: int
    psi: Psi | None  # None: /proc/pressure absent (old kernel, container)
    cgroup: Cgroup | None  # None: not cgroup v2, or no memory controller
    self_rss_bytes: int
    self_cpu_seconds: float  # perfd's cumulative user + system CPU time
    processes: tuple[ProcessInfo, ...] | None  # top N by RSS; None when not sampled this time


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None
    name: str | None


@dataclass(frozen=True)
class MigInstance:
    index: int
    uuid: str | None
    mem_total_bytes: int
    mem_used_bytes: int


@dataclass(frozen=True)
class GpuSample:
    index: int
    uuid: str
    name: str
    mem_total_bytes: int
    mem_used_bytes: int  # as nvidia-smi shows it (v2: without reserved; v1: with it)
    mem_free_bytes: int
    mem_reserved_bytes: int  # 0 when only nvmlMemory_v1 is available
    utilization_percent: float | None
    memory_utilization_percent: float | None
    temperature_c: float | None
    power_watts: float | None
    power_limit_watts: float | None
    persistence_mode: bool | None
    compute_capability: tuple[int, int] | None
    processes: tuple[GpuProcess, ...]
    mig_enabled: bool
    mig: tuple[MigInstance, ...]
    state: str = GPU_OK  # ok, or lost / error for this GPU alone
    error: str | None = None  # NVML error name, e.g. "NVML_ERROR_GPU_IS_LOST"


@dataclass(frozen=True)
class GpuReading:
    """One pass over every GPU. ``state`` is the worst of the whole reading."""

    t: float
    state: str
    error: str | None
    driver_version: str | None
    gpus: tuple[GpuSample, ...]


# --- the process table (perfd.probes.processes) -------------------------------------------------


@dataclass(frozen=True)
class Listen:
    """One listening TCP socket: the address it binds ("0.0.0.0", "::", "127.0.0.1"...)."""

    host: str
    port: int


@dataclass(frozen=True)
class ProcessEntry:
    """One process of the table discovery matches over.

    ``ports``: its listening TCP sockets; None when unknown (not read for this process, or
    perfd may not read its file descriptors: another user's process without privileges),
    never an empty guess. ``cgroup``: the cgroup v2 path, else the v1 ``name=systemd`` one.
    """

    pid: int
    ppid: int
    name: str  # the kernel's comm (15 characters at most)
    cmdline: tuple[str, ...]  # argv; empty for a kernel thread or an unreadable process
    start_ticks: int  # start time since boot, in clock ticks: with pid, one process for sure
    cgroup: str | None = None
    unit: str | None = None
    ports: tuple[Listen, ...] | None = None
