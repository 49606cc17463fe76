"""The probes: host figures match /proc; NVML failures become states, logged once; no hangs."""

from __future__ import annotations

import ctypes
import inspect
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pynvml
import pytest

from perfd import log
from perfd.probes import nvml as probes_module
from perfd.probes.host import HostProbe, parse_psi, parse_unit
from perfd.probes.nvml import GpuProbe
from perfd.probes.samples import (
    GPU_ABSENT,
    GPU_DRIVER_NOT_LOADED,
    GPU_ERROR,
    GPU_LOST,
    GPU_OK,
    Cgroup,
    GpuReading,
    Psi,
)
from tests.fakenvml import API, FakeGpu, FakeNvml, GiB

MiB = 1024**2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        parts = value.split()
        fields[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


def events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


# --- host ----------------------------------------------------------------------------------


def test_memory_matches_proc_meminfo() -> None:
    """Total RAM is MemTotal exactly; available is MemAvailable, read around the sample."""
    probe = HostProbe()
    before = meminfo()
    sample = probe.sample(with_processes=False)
    after = meminfo()
    assert sample.mem_total_bytes == before["MemTotal"]
    low = min(before["MemAvailable"], after["MemAvailable"]) - 8 * MiB
    high = max(before["MemAvailable"], after["MemAvailable"]) + 8 * MiB
    assert low <= sample.mem_available_bytes <= high
    assert sample.swap_total_bytes == before["SwapTotal"]
    assert sample.cpu_count == os.cpu_count()
    assert len(sample.load_avg) == 3
    assert 0.0 <= sample.cpu_percent <= 100.0
    assert sample.processes is None


def test_own_rss_and_cpu_time() -> None:
    """perfd's own RSS and cumulative CPU seconds come from its own process."""
    sample = HostProbe().sample(with_processes=False)
    me = psutil.Process()
    assert abs(sample.self_rss_bytes - me.memory_info().rss) < 64 * MiB
    times = me.cpu_times()
    assert 0 < sample.self_cpu_seconds <= times.user + times.system


def test_clocks_are_injected() -> None:
    """t and wall come from the clocks the probe was given."""
    sample = HostProbe(clock=lambda: 12.5, wall=lambda: 1.7e9).sample(with_processes=False)
    assert (sample.t, sample.wall) == (12.5, 1.7e9)


def test_psi_from_fixture_tree(tmp_path: Path) -> None:
    """some/full totals and averages are parsed from {proc}/pressure/memory."""
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text(
        "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\n"
        "full avg10=0.50 avg60=0.25 avg300=0.05 total=6789\n"
    )
    psi = HostProbe(proc=str(tmp_path)).sample(with_processes=False).psi
    assert psi == Psi(
        some_total_us=123456,
        full_total_us=6789,
        some_avg10=1.5,
        some_avg60=0.75,
        full_avg10=0.5,
        full_avg60=0.25,
    )


def test_missing_psi_is_none(tmp_path: Path) -> None:
    """No /proc/pressure (old kernel, container): psi is None, not an error."""
    assert HostProbe(proc=str(tmp_path)).sample(with_processes=False).psi is None


@pytest.mark.parametrize("text", ["", "garbage\n", "some avg10=x avg60=0 total=1\n"])
def test_malformed_psi_is_none(text: str) -> None:
    """A PSI file that does not parse gives None rather than an exception."""
    assert parse_psi(text) is None


def test_real_psi() -> None:
    """This machine's /proc/pressure/memory parses, its counters no lower than just before."""
    try:
        text = Path("/proc/pressure/memory").read_text()
    except OSError:
        pytest.skip("no /proc/pressure/memory on this kernel")
    before = parse_psi(text)
    assert before is not None
    psi = HostProbe().sample(with_processes=False).psi
    assert psi is not None
    assert psi.some_total_us >= before.some_total_us
    assert psi.full_total_us >= before.full_total_us


def _cgroup_tree(tmp_path: Path, cgroup_line: str, files: dict[str, str]) -> HostProbe:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line)
    unit = root / "system.slice" / "perfd.service"
    unit.mkdir(parents=True)
    for name, text in files.items():
        (unit / name).write_text(text)
    return HostProbe(proc=str(proc), cgroup_root=str(root))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"memory.max": "max\n", "memory.current": "4096\n"},
            Cgroup("/system.slice/perfd.service", None, 4096),
        ),
        (
            {"memory.max": "1073741824\n", "memory.current": "52428800\n"},
            Cgroup("/system.slice/perfd.service", 1073741824, 52428800),
        ),
        ({"memory.max": "536870912\n"}, Cgroup("/system.slice/perfd.service", 536870912, None)),
        ({}, None),
    ],
)
def test_cgroup_v2_limit(tmp_path: Path, files: dict[str, str], expected: Cgroup | None) -> None:
    """memory.max "max" is None, a number is bytes; without memory.max there is no Cgroup."""
    probe = _cgroup_tree(tmp_path, "0::/system.slice/perfd.service\n", files)
    assert probe.sample(with_processes=False).cgroup == expected


def test_cgroup_v1_only_is_none(tmp_path: Path) -> None:
    """A cgroup v1 host (no ``0::`` line) reports no cgroup."""
    probe = _cgroup_tree(
        tmp_path, "4:memory:/system.slice/perfd.service\n", {"memory.max": "1024\n"}
    )
    assert probe.sample(with_processes=False).cgroup is None


def test_top_processes_sorted_and_bounded() -> None:
    """At most top_n processes, biggest RSS first."""
    processes = HostProbe(top_n=3).sample(with_processes=True).processes
    assert processes is not None
    assert 1 <= len(processes) <= 3
    sizes = [p.rss_bytes for p in processes]
    assert sizes == sorted(sizes, reverse=True)


def test_top_processes_include_this_one(tmp_path: Path) -> None:
    """With room for every process, this test process is listed with its name and unit."""
    me = os.getpid()
    (tmp_path / str(me)).mkdir()
    (tmp_path / str(me) / "cgroup").write_text("0::/system.slice/vllm.service\n")
    processes = HostProbe(proc=str(tmp_path), top_n=100_000).sample(True).processes
    assert processes is not None
    (mine,) = [p for p in processes if p.pid == me]
    assert mine.name == psutil.Process().name()
    assert mine.unit == "vllm.service"
    assert mine.rss_bytes > 0
    # Every other process has no cgroup file in the fixture tree: unit unknown.
    assert {p.unit for p in processes if p.pid != me} <= {None}


def test_top_processes_survive_a_zombie() -> None:
    """A child that exited but was not reaped (a zombie) does not break the process list."""
    child = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        processes = HostProbe(top_n=100_000).sample(with_processes=True).processes
        assert processes is not None
        assert os.getpid() in {p.pid for p in processes}
    finally:
        child.wait()


@pytest.mark.parametrize(
    ("text", "unit"),
    [
        ("0::/system.slice/vllm.service\n", "vllm.service"),
        ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope\n", "foo.scope"),
        ("0::/system.slice/docker-0123abcd.scope\n", "docker-0123abcd.scope"),
        ("0::/system.slice/triton.service/workers\n", "triton.service"),
        ("12:memory:/x\n1:name=systemd:/system.slice/old.service\n0::/\n", "old.service"),
        ("0::/\n", None),
        ("0::/user.slice/user-1000.slice\n", None),
        ("", None),
        ("nonsense", None),
    ],
)
def test_unit_from_cgroup(text: str, unit: str | None) -> None:
    """The unit is the last .service/.scope of the cgroup path (v2, else v1 name=systemd)."""
    assert parse_unit(text) == unit


# --- GPU: the fake itself ------------------------------------------------------------------


def test_fake_matches_pynvml_signatures() -> None:
    """Every FakeNvml function exists in pynvml with the same parameters."""
    for name in API:
        real = inspect.signature(getattr(pynvml, name))
        fake = inspect.signature(getattr(FakeNvml(), name))
        assert list(fake.parameters) == list(real.parameters), name


def test_fake_raises_pynvml_exception_classes() -> None:
    """The fake raises pynvml's own NVMLError subclasses."""
    nvml = FakeNvml(2)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    nvml.lose(1)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByIndex(1)
    old = FakeNvml(v2_supported=False)
    old.nvmlInit()
    handle = old.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        old.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    assert nvml.NVMLError is pynvml.NVMLError
    assert nvml.NVML_ERROR_GPU_IS_LOST == pynvml.NVML_ERROR_GPU_IS_LOST


# --- GPU: the probe ------------------------------------------------------------------------


@pytest.fixture
def make_probe() -> Iterator[Callable[..., GpuProbe]]:
    """GpuProbes that are closed after the test, so that no thread outlives it."""
    probes: list[GpuProbe] = []

    def make(nvml: Any, **kwargs: Any) -> GpuProbe:
        probe = GpuProbe(nvml, **kwargs)
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.wait_idle(10)
        probe.close()


def test_healthy_gpus(make_probe: Callable[..., GpuProbe]) -> None:
    """Two healthy GPUs: state ok and every figure as NVML gave it (memory v2 with reserved)."""
    me = os.getpid()
    nvml = FakeNvml(
        [
            FakeGpu(used=10 * GiB, compute_processes=[(me, 9 * GiB), (2**22 + 1, None)]),
            FakeGpu(name="NVIDIA A100-SXM4-40GB", total=40 * GiB, reserved=0, temperature=71),
        ]
    )
    reading = make_probe(nvml).sample()
    assert (reading.state, reading.error, reading.driver_version) == (GPU_OK, None, "550.54.15")
    first, second = reading.gpus
    assert first.index == 0
    assert first.uuid == nvml.gpus[0].uuid
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.mem_total_bytes == 80 * GiB
    assert first.mem_used_bytes == 10 * GiB
    assert first.mem_reserved_bytes == 512 * MiB
    assert first.mem_free_bytes == 80 * GiB - 10 * GiB - 512 * MiB
    assert first.utilization_percent == 30.0
    assert first.memory_utilization_percent == 10.0
    assert first.temperature_c == 45.0
    assert first.power_watts == 120.0
    assert first.power_limit_watts == 700.0
    assert first.persistence_mode is True
    assert first.compute_capability == (9, 0)
    assert [(p.pid, p.used_bytes) for p in first.processes] == [(me, 9 * GiB), (2**22 + 1, None)]
    assert first.processes[0].name == psutil.Process().name()
    assert (first.mig_enabled, first.mig, first.state, first.error) == (False, (), GPU_OK, None)
    assert (second.name, second.mem_total_bytes, second.temperature_c) == (
        "NVIDIA A100-SXM4-40GB",
        40 * GiB,
        71.0,
    )


def test_bytes_strings_are_decoded(make_probe: Callable[..., GpuProbe]) -> None:
    """Older pynvml returns bytes for names, UUIDs and the driver version: they become str."""
    reading = make_probe(FakeNvml(1, strings_as_bytes=True)).sample()
    assert reading.driver_version == "550.54.15"
    assert reading.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert reading.gpus[0].uuid.startswith("GPU-")


def test_process_in_both_lists_counts_once(make_probe: Callable[..., GpuProbe]) -> None:
    """A process doing compute and graphics appears once, with its memory figure."""
    gpu = FakeGpu(compute_processes=[(7, None)], graphics_processes=[(7, GiB), (8, 2 * GiB)])
    (sample,) = make_probe(FakeNvml([gpu])).sample().gpus
    assert [(p.pid, p.used_bytes) for p in sample.processes] == [(8, 2 * GiB), (7, GiB)]


def test_memory_v1_fallback(make_probe: Callable[..., GpuProbe]) -> None:
    """An old driver without nvmlMemory_v2: v1 figures, reserved 0, v2 not retried each time."""
    nvml = FakeNvml([FakeGpu(used=GiB, reserved=256 * MiB)], v2_supported=False)
    probe = make_probe(nvml)
    for _ in range(3):
        reading = probe.sample()
        assert reading.state == GPU_OK
        (gpu,) = reading.gpus
        assert (gpu.mem_total_bytes, gpu.mem_reserved_bytes) == (80 * GiB, 0)
        assert gpu.mem_used_bytes == GiB + 256 * MiB  # v1's used includes the reservation
        assert gpu.mem_free_bytes == 80 * GiB - GiB - 256 * MiB
    assert nvml.calls["nvmlDeviceGetMemoryInfo"] == 4  # one failed v2 call, then v1 only


def test_memory_over_time(make_probe: Callable[..., GpuProbe]) -> None:
    """Each sample reads memory afresh."""
    nvml = FakeNvml(2)
    probe = make_probe(nvml)
    nvml.set_used(1, 3 * GiB)
    assert probe.sample().gpus[1].mem_used_bytes == 3 * GiB
    nvml.set_used(1, 5 * GiB)
    assert probe.sample().gpus[1].mem_used_bytes == 5 * GiB


def test_init_once(make_probe: Callable[..., GpuProbe]) -> None:
    """nvmlInit and the driver version query run once across many samples."""
    nvml = FakeNvml(2)
    probe = make_probe(nvml)
    for _ in range(4):
        assert probe.sample().state == GPU_OK
    assert nvml.init_count == 1
    assert nvml.calls["nvmlSystemGetDriverVersion"] == 1
    assert nvml.calls["nvmlDeviceGetCount"] == 4


def test_absent_is_never_retried(make_probe: Callable[..., GpuProbe]) -> None:
    """No libnvidia-ml.so: state absent, and nvmlInit is not tried again."""
    clock = FakeClock()
    nvml = FakeNvml(fail_init=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    probe = make_probe(nvml, clock=clock, retry_interval=60)
    for _ in range(3):
        reading = probe.sample()
        assert (reading.state, reading.error) == (GPU_ABSENT, "NVML_ERROR_LIBRARY_NOT_FOUND")
        assert reading.gpus == ()
        clock.now += 3600
    assert nvml.init_count == 1


def test_real_pynvml_without_driver_is_absent(make_probe: Callable[..., GpuProbe]) -> None:
    """The real pynvml on a host without the NVIDIA driver gives state absent."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this host has libnvidia-ml.so.1")
    reading = make_probe(None).sample()
    assert (reading.state, reading.error) == (GPU_ABSENT, "NVML_ERROR_LIBRARY_NOT_FOUND")


def test_real_pynvml_path_also_maps_a_missing_library_to_absent(
    make_probe: Callable[..., GpuProbe], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the quick library check, the real pynvml's LibraryNotFound is absent too."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this host has libnvidia-ml.so.1")
    monkeypatch.setattr(probes_module, "nvml_library_present", lambda: True)
    reading = make_probe(None).sample()
    assert (reading.state, reading.error) == (GPU_ABSENT, "NVML_ERROR_LIBRARY_NOT_FOUND")


def test_missing_library_does_not_import_pynvml() -> None:
    """Without libnvidia-ml, the probe answers absent without importing pynvml at all."""
    code = (
        "import sys, ctypes\n"
        "try:\n    ctypes.CDLL('libnvidia-ml.so.1'); print('skip')\n"
        "except OSError:\n"
        "    from perfd.probes.nvml import GpuProbe\n"
        "    probe = GpuProbe(); state = probe.sample().state; probe.close()\n"
        "    print(state, 'pynvml' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if out.stdout.strip().endswith("skip"):
        pytest.skip("this host has libnvidia-ml.so.1")
    assert out.stdout.strip().splitlines()[-1] == "absent False"  # after the probe's log line


def test_driver_not_loaded_retries_after_interval(make_probe: Callable[..., GpuProbe]) -> None:
    """driver_not_loaded retries nvmlInit at most every retry_interval, then recovers."""
    clock = FakeClock()
    nvml = FakeNvml(2, fail_init=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    probe = make_probe(nvml, clock=clock, retry_interval=60)
    reading = probe.sample()
    assert (reading.state, reading.error) == (GPU_DRIVER_NOT_LOADED, "NVML_ERROR_DRIVER_NOT_LOADED")
    clock.now += 59
    assert probe.sample().state == GPU_DRIVER_NOT_LOADED
    assert nvml.init_count == 1
    clock.now += 1
    assert probe.sample().state == GPU_DRIVER_NOT_LOADED
    assert nvml.init_count == 2
    nvml.fail_init = None  # modprobe nvidia
    clock.now += 30
    assert probe.sample().state == GPU_DRIVER_NOT_LOADED  # not yet due
    clock.now += 30
    reading = probe.sample()
    assert (reading.state, len(reading.gpus)) == (GPU_OK, 2)
    assert nvml.init_count == 3


def test_init_error_is_named_and_retried(make_probe: Callable[..., GpuProbe]) -> None:
    """Any other nvmlInit failure is "error" with the NVML error's name, retried later."""
    clock = FakeClock()
    nvml = FakeNvml(fail_init=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    probe = make_probe(nvml, clock=clock, retry_interval=10)
    reading = probe.sample()
    assert (reading.state, reading.error) == (GPU_ERROR, "NVML_ERROR_LIB_RM_VERSION_MISMATCH")
    clock.now += 10
    probe.sample()
    assert nvml.init_count == 2


def test_driver_unloaded_mid_run(make_probe: Callable[..., GpuProbe]) -> None:
    """The driver going away after init: driver_not_loaded, then a fresh nvmlInit when due."""
    clock = FakeClock()
    nvml = FakeNvml(1)
    probe = make_probe(nvml, clock=clock, retry_interval=60)
    assert probe.sample().state == GPU_OK
    nvml.fail("nvmlDeviceGetCount", pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    assert probe.sample().state == GPU_DRIVER_NOT_LOADED
    assert nvml.shutdown_count == 1  # the first init is released before the next
    nvml.heal("nvmlDeviceGetCount")
    assert probe.sample().state == GPU_DRIVER_NOT_LOADED  # not yet due
    clock.now += 60
    assert probe.sample().state == GPU_OK
    assert nvml.init_count == 2


def test_gpu_lost_mid_run(make_probe: Callable[..., GpuProbe]) -> None:
    """A GPU falling off the bus is reported lost, by index and UUID; the others still report."""
    nvml = FakeNvml(2)
    probe = make_probe(nvml)
    assert probe.sample().state == GPU_OK
    nvml.lose(1)
    for _ in range(2):
        reading = probe.sample()
        assert (reading.state, reading.error) == (GPU_LOST, "NVML_ERROR_GPU_IS_LOST")
        healthy, lost = reading.gpus
        assert (healthy.state, healthy.mem_total_bytes) == (GPU_OK, 80 * GiB)
        assert (lost.index, lost.uuid, lost.state) == (1, nvml.gpus[1].uuid, GPU_LOST)
        assert lost.error == "NVML_ERROR_GPU_IS_LOST"
        assert (lost.mem_total_bytes, lost.mem_used_bytes, lost.processes) == (0, 0, ())


def test_lost_before_first_sample_has_no_uuid(make_probe: Callable[..., GpuProbe]) -> None:
    """A GPU lost before perfd ever saw it still appears, by index."""
    nvml = FakeNvml(2)
    nvml.lose(0)
    reading = make_probe(nvml).sample()
    assert [(g.index, g.uuid, g.state) for g in reading.gpus] == [
        (0, "", GPU_LOST),
        (1, nvml.gpus[1].uuid, GPU_OK),
    ]


def test_unknown_nvml_error_is_named(make_probe: Callable[..., GpuProbe]) -> None:
    """A core field failing with an unexpected NVML error makes that GPU "error", by name."""
    nvml = FakeNvml(2)
    nvml.fail("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_UNKNOWN, index=1)
    reading = make_probe(nvml).sample()
    assert (reading.state, reading.error) == (GPU_ERROR, "NVML_ERROR_UNKNOWN")
    assert [(g.state, g.error) for g in reading.gpus] == [
        (GPU_OK, None),
        (GPU_ERROR, "NVML_ERROR_UNKNOWN"),
    ]


def test_count_failure_is_an_error_reading(make_probe: Callable[..., GpuProbe]) -> None:
    """nvmlDeviceGetCount failing gives an "error" reading with no GPUs."""
    nvml = FakeNvml(2)
    nvml.fail("nvmlDeviceGetCount", pynvml.NVML_ERROR_IRQ_ISSUE)
    reading = make_probe(nvml).sample()
    assert (reading.state, reading.error, reading.gpus) == (
        GPU_ERROR,
        "NVML_ERROR_IRQ_ISSUE",
        (),
    )


def test_foreign_exception_never_escapes(make_probe: Callable[..., GpuProbe]) -> None:
    """Even a non-NVML exception from the library becomes a state, and the thread survives."""
    nvml = FakeNvml(1)
    nvml.fail("nvmlDeviceGetCount", RuntimeError("ctypes went wrong"))
    probe = make_probe(nvml)
    reading = probe.sample()
    assert (reading.state, reading.error) == (GPU_ERROR, "RuntimeError")
    nvml.heal("nvmlDeviceGetCount")
    assert probe.sample().state == GPU_OK


OPTIONAL = [
    ("nvmlDeviceGetUtilizationRates", ("utilization_percent", "memory_utilization_percent")),
    ("nvmlDeviceGetTemperature", ("temperature_c",)),
    ("nvmlDeviceGetPowerUsage", ("power_watts",)),
    ("nvmlDeviceGetEnforcedPowerLimit", ("power_limit_watts",)),
    ("nvmlDeviceGetPersistenceMode", ("persistence_mode",)),
    ("nvmlDeviceGetCudaComputeCapability", ("compute_capability",)),
]


@pytest.mark.parametrize(("function", "fields"), OPTIONAL)
@pytest.mark.parametrize(
    "error", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION]
)
def test_optional_field_unavailable_is_none(
    make_probe: Callable[..., GpuProbe], function: str, fields: tuple[str, ...], error: int
) -> None:
    """An optional figure NVML cannot give is None; the GPU stays ok."""
    nvml = FakeNvml(1)
    nvml.fail(function, error)
    reading = make_probe(nvml).sample()
    assert reading.state == GPU_OK
    (gpu,) = reading.gpus
    for name in fields:
        assert getattr(gpu, name) is None
    assert gpu.mem_total_bytes == 80 * GiB


def test_processes_not_supported_is_empty(make_probe: Callable[..., GpuProbe]) -> None:
    """No process list from NVML (NOT_SUPPORTED, or pynvml's version mismatch): no processes."""
    nvml = FakeNvml([FakeGpu(compute_processes=[(1, GiB)], graphics_processes=[(2, GiB)])])
    nvml.fail("nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_NOT_SUPPORTED)
    nvml.fail("nvmlDeviceGetGraphicsRunningProcesses", pynvml.NVMLLibraryMismatchError("old"))
    reading = make_probe(nvml).sample()
    assert (reading.state, reading.gpus[0].processes) == (GPU_OK, ())


def test_mig_instances(make_probe: Callable[..., GpuProbe]) -> None:
    """A GPU in MIG mode reports each populated MIG device's memory; empty slots are skipped."""
    nvml = FakeNvml([FakeGpu(mig=[(10 * GiB, GiB), (20 * GiB, 3 * GiB)]), FakeGpu()])
    nvml.fail("nvmlDeviceGetUtilizationRates", pynvml.NVML_ERROR_NOT_SUPPORTED, index=0)
    mig_gpu, plain = make_probe(nvml).sample().gpus
    assert mig_gpu.mig_enabled
    assert [(m.index, m.mem_total_bytes, m.mem_used_bytes) for m in mig_gpu.mig] == [
        (0, 10 * GiB, GiB),
        (1, 20 * GiB, 3 * GiB),
    ]
    assert [m.uuid for m in mig_gpu.mig] == ["MIG-0-0-fake", "MIG-0-1-fake"]
    assert mig_gpu.utilization_percent is None
    assert (plain.mig_enabled, plain.mig) == (False, ())


def test_hang_times_out_without_pile_up(make_probe: Callable[..., GpuProbe]) -> None:
    """A hung NVML call: "timeout" within the timeout, at once while stuck, recovery after."""
    nvml = FakeNvml(2)
    probe = make_probe(nvml, timeout=0.2)
    assert probe.sample().state == GPU_OK
    release = threading.Event()
    nvml.hang(release)
    started = time.monotonic()
    reading = probe.sample()
    waited = time.monotonic() - started
    assert (reading.state, reading.error, reading.gpus) == (GPU_ERROR, "timeout", ())
    assert nvml.blocked.is_set()
    assert waited < 5  # bounded by the timeout, not by the 60 s hang
    started = time.monotonic()
    for _ in range(5):
        assert probe.sample().error == "timeout"
    assert time.monotonic() - started < waited  # no waiting while the call is stuck
    assert not probe.wait_idle(0)
    release.set()
    assert probe.wait_idle(10)
    reading = probe.sample()
    assert (reading.state, len(reading.gpus)) == (GPU_OK, 2)
    # The ok sample, the stuck one, the recovered one: nothing queued behind the hang.
    assert nvml.calls["nvmlDeviceGetCount"] == 3
    assert [t.name for t in threading.enumerate()].count("perfd-nvml") == 1


def test_state_change_logged_once(make_probe: Callable[..., GpuProbe]) -> None:
    """Several failing samples log one gpu.state_changed with a hint; recovery logs once."""
    out = io.StringIO()
    log.configure(stream=out)
    clock = FakeClock()
    nvml = FakeNvml(1, fail_init=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    probe = make_probe(nvml, clock=clock, retry_interval=5)
    for _ in range(4):
        probe.sample()
        clock.now += 5  # retried every time, failing the same way
    assert nvml.init_count == 4
    (changed,) = [e for e in events(out) if e["event"] == "gpu.state_changed"]
    assert changed["level"] == "warning"
    assert changed["logger"] == "perfd.probes"
    assert changed["state"] == GPU_DRIVER_NOT_LOADED
    assert changed["error"] == "NVML_ERROR_DRIVER_NOT_LOADED"
    assert "modprobe nvidia" in changed["hint"]
    nvml.fail_init = None
    for _ in range(3):
        assert probe.sample().state == GPU_OK
    assert [e["event"] for e in events(out)] == ["gpu.state_changed", "gpu.recovered"]


def test_lost_gpu_logged_once_as_error(make_probe: Callable[..., GpuProbe]) -> None:
    """A lost GPU logs one error naming the GPU, with what to do."""
    out = io.StringIO()
    log.configure(stream=out)
    nvml = FakeNvml(2)
    probe = make_probe(nvml)
    probe.sample()
    nvml.lose(1)
    for _ in range(3):
        probe.sample()
    (entry,) = events(out)
    assert (entry["event"], entry["level"], entry["gpu"]) == ("gpu.state_changed", "error", 1)
    assert (entry["state"], entry["error"]) == (GPU_LOST, "NVML_ERROR_GPU_IS_LOST")
    assert entry["hint"].startswith("GPU 1 fell off the bus; check `dmesg` for Xid errors")


@pytest.mark.parametrize(
    ("fail_init", "hint"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver library (libnvidia-ml.so) found"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML error NVML_ERROR_UNKNOWN"),
    ],
)
def test_hints(make_probe: Callable[..., GpuProbe], fail_init: int, hint: str) -> None:
    """Each failure's log line says what to do about it."""
    out = io.StringIO()
    log.configure(stream=out)
    make_probe(FakeNvml(fail_init=fail_init)).sample()
    (entry,) = events(out)
    assert entry["hint"].startswith(hint)


@pytest.mark.slow
def test_timeout_hint(make_probe: Callable[..., GpuProbe]) -> None:
    """A timeout is logged once, naming the timeout; recovery is logged."""
    out = io.StringIO()
    log.configure(stream=out)
    nvml = FakeNvml(1)
    probe = make_probe(nvml, timeout=0.1)
    release = threading.Event()
    nvml.hang(release)
    probe.sample()
    probe.sample()
    release.set()
    assert probe.wait_idle(10)
    probe.sample()
    changed, recovered = events(out)
    assert changed["error"] == "timeout"
    assert changed["hint"] == (
        "an NVML call did not return within 0.1s; the GPU or driver may be hung"
    )
    assert recovered["event"] == "gpu.recovered"


def test_close_shuts_nvml_down() -> None:
    """close() calls nvmlShutdown once and stops the NVML thread; later samples say closed."""
    nvml = FakeNvml(1)
    probe = GpuProbe(nvml)
    probe.sample()
    probe.close()
    probe.close()
    assert nvml.shutdown_count == 1
    assert "perfd-nvml" not in [t.name for t in threading.enumerate()]
    reading: GpuReading = probe.sample()
    assert (reading.state, reading.error) == (GPU_ERROR, "closed")


def test_close_without_init_does_not_shut_down() -> None:
    """A probe that never initialised NVML neither starts a thread nor calls nvmlShutdown."""
    nvml = FakeNvml(1)
    GpuProbe(nvml).close()
    failed = FakeNvml(fail_init=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    probe = GpuProbe(failed)
    probe.sample()
    probe.close()
    assert (nvml.calls, failed.shutdown_count) == ({}, 0)


def test_slow_init_gets_the_init_allowance(make_probe: Callable[..., GpuProbe]) -> None:
    """nvmlInit slower than the per-sample timeout still succeeds on the first sample."""
    nvml = FakeNvml(1)
    probe = make_probe(nvml, timeout=0.05)
    release = threading.Event()
    nvml.hang(release)

    def release_later() -> None:
        nvml.blocked.wait(10)  # nvmlInit is now stuck inside NVML
        time.sleep(0.3)  # longer than the 0.05 s per-sample timeout, far below INIT_TIMEOUT
        release.set()

    releaser = threading.Thread(target=release_later)
    releaser.start()
    reading = probe.sample()
    releaser.join(10)
    assert (reading.state, len(reading.gpus)) == (GPU_OK, 1)
    assert nvml.init_count == 1


def test_gpu_process_names_are_looked_up_once_per_pid(
    make_probe: Callable[..., GpuProbe], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU process's name is read once while it runs; a pid that goes away is forgotten."""
    lookups: list[int] = []
    monkeypatch.setattr(probes_module, "process_name", lambda pid: lookups.append(pid) or f"p{pid}")
    nvml = FakeNvml(1)
    nvml.gpus[0].compute_processes = [(101, 1 << 30), (102, 2 << 30)]
    probe = make_probe(nvml)
    for _ in range(3):
        reading = probe.sample()
    assert [p.name for p in reading.gpus[0].processes] == ["p102", "p101"]
    assert sorted(lookups) == [101, 102]
    nvml.gpus[0].compute_processes = [(102, 2 << 30)]
    probe.sample()
    nvml.gpus[0].compute_processes = [(101, 1 << 30), (102, 2 << 30)]  # pid 101 reused
    probe.sample()
    assert sorted(lookups) == [101, 101, 102]


def test_absent_nvml_answers_without_the_nvml_thread(make_probe: Callable[..., GpuProbe]) -> None:
    """Once NVML is known absent, samples answer at once and never touch NVML again."""
    nvml = FakeNvml(1, fail_init=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    probe = make_probe(nvml)
    assert probe.sample().state == "absent"
    calls = dict(nvml.calls)
    for _ in range(5):
        assert probe.sample().state == "absent"
    assert dict(nvml.calls) == calls
