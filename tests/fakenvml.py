"""A fake NVML: pynvml's function names, signatures, return structures and exceptions.

Errors are real ``pynvml.NVMLError(code)`` instances, which pynvml maps to the subclass of that
code (``NVMLError_GpuIsLost``...), exactly as the real library raises them. Returned structures
are pynvml's own ctypes structures (``c_nvmlMemory_v2_t``...) and process objects.

    nvml = FakeNvml([FakeGpu(used=2 * GiB), FakeGpu()])
    nvml.lose(1)                         # GPU 1 fell off the bus
    nvml.fail("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_NOT_SUPPORTED)
    nvml.hang(release)                   # every call blocks until ``release`` is set

A perfd subprocess gets a ``ControlledNvml`` instead, scripted through a JSON file the test
rewrites while perfd runs; tests/launcher.py starts that perfd with the controlled NVML as its
GPU probe's (perfd.parts.Boundaries):

    control = control_file(tmp_path, gpus=[{"used": 40 * GiB}])
    perfd = start_perfd(config, nvml=control)
    control.set(gpus=[{}], fail={"nvmlDeviceGetCount": pynvml.NVML_ERROR_UNKNOWN})
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

GiB = 1024**3


@dataclass
class FakeGpu:
    """One GPU's figures; ``used`` excludes ``reserved`` (nvmlMemory_v2's meaning)."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    total: int = 80 * GiB
    used: int = 0
    reserved: int = 512 * 1024**2
    utilization: int = 30
    memory_utilization: int = 10
    temperature: int = 45
    power_mw: int = 120_000
    power_limit_mw: int = 700_000
    persistence: int = pynvml.NVML_FEATURE_ENABLED
    compute_capability: tuple[int, int] = (9, 0)
    compute_processes: list[tuple[int, int | None]] = field(default_factory=list)
    graphics_processes: list[tuple[int, int | None]] = field(default_factory=list)
    mig: list[tuple[int, int]] | None = None  # (total, used) per MIG device; None: MIG off
    max_mig_devices: int = 7
    lost: bool = False


@dataclass(frozen=True)
class _Handle:
    """What nvmlDeviceGetHandleByIndex returns: opaque to the caller."""

    index: int
    mig: int | None = None


class FakeNvml:
    """Module-like stand-in for pynvml; ``calls`` counts every function called."""

    def __init__(
        self,
        gpus: int | Sequence[FakeGpu] = 1,
        *,
        fail_init: int | None = None,
        v2_supported: bool = True,
        driver_version: str = "550.54.15",
        strings_as_bytes: bool = False,
    ) -> None:
        self.gpus = [FakeGpu() for _ in range(gpus)] if isinstance(gpus, int) else list(gpus)
        for index, gpu in enumerate(self.gpus):
            gpu.uuid = gpu.uuid or f"GPU-{index:08d}-fake-4000-8000-000000000000"
        self.fail_init = fail_init
        self.v2_supported = v2_supported
        self.driver_version = driver_version
        self.strings_as_bytes = strings_as_bytes  # pynvml < 11.5 returned bytes
        self.calls: Counter[str] = Counter()
        self.blocked = threading.Event()  # set when a call starts waiting on hang()'s event
        self._release: threading.Event | None = None
        self._failures: dict[tuple[str, int | None], BaseException | int] = {}
        self._initialised = 0  # pynvml's reference count

    def __getattr__(self, name: str) -> Any:
        """pynvml's constants and exception classes; a function the fake lacks stays missing."""
        if name.startswith(("NVML", "nvmlMemory_v")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # --- scripting

    @property
    def init_count(self) -> int:
        return self.calls["nvmlInit"]

    @property
    def shutdown_count(self) -> int:
        return self.calls["nvmlShutdown"]

    def lose(self, index: int) -> None:
        """GPU ``index`` falls off the bus: its calls raise NVML_ERROR_GPU_IS_LOST from now on."""
        self.gpus[index].lost = True

    def hang(self, release: threading.Event) -> None:
        """Every call from now on blocks until ``release`` is set (and ``blocked`` is set)."""
        self._release = release

    def set_used(self, index: int, used: int) -> None:
        self.gpus[index].used = used

    def fail(self, function: str, error: int | BaseException, index: int | None = None) -> None:
        """Make ``function`` raise NVMLError(``error``) (or ``error`` itself), on one GPU or all."""
        self._failures[(function, index)] = error

    def heal(self, function: str, index: int | None = None) -> None:
        self._failures.pop((function, index), None)

    # --- plumbing

    def _enter(self, function: str, handle: _Handle | None = None) -> FakeGpu | None:
        self.calls[function] += 1
        release = self._release
        if release is not None and not release.is_set():
            self.blocked.set()
            release.wait(60)  # a bounded hang, so a failed test cannot wedge the run
        if function != "nvmlInit" and not self._initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        gpu = None if handle is None else self.gpus[handle.index]
        if gpu is not None and gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        for key in ((function, None), (function, None if handle is None else handle.index)):
            error = self._failures.get(key)
            if isinstance(error, BaseException):
                raise error
            if error is not None:
                raise pynvml.NVMLError(error)
        return gpu

    def _gpu(self, function: str, handle: _Handle) -> FakeGpu:
        gpu = self._enter(function, handle)
        assert gpu is not None
        return gpu

    def _string(self, value: str) -> str | bytes:
        return value.encode() if self.strings_as_bytes else value

    @staticmethod
    def _processes(entries: list[tuple[int, int | None]]) -> list[Any]:
        return [
            pynvml.nvmlFriendlyObject(
                {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 0, "computeInstanceId": 0}
            )
            for pid, used in entries
        ]

    # --- pynvml's API, same names and parameters

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.fail_init is not None:
            raise pynvml.NVMLError(self.fail_init)
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetDriverVersion")
        return self._string(self.driver_version)

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self.gpus):
            self._enter("nvmlDeviceGetHandleByIndex")
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._gpu("nvmlDeviceGetHandleByIndex", _Handle(index))
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        gpu = self._gpu("nvmlDeviceGetUUID", handle)
        if handle.mig is not None:
            return self._string(f"MIG-{handle.index}-{handle.mig}-fake")
        return self._string(gpu.uuid)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        return self._string(self._gpu("nvmlDeviceGetName", handle).name)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        total, used, reserved = gpu.total, gpu.used, gpu.reserved
        if handle.mig is not None:
            assert gpu.mig is not None
            (total, used), reserved = gpu.mig[handle.mig], 0
        if not version:  # v1: "used" includes the driver's reservation
            return pynvml.c_nvmlMemory_t(
                total=total, free=total - used - reserved, used=used + reserved
            )
        if not self.v2_supported:  # an old driver: libnvidia-ml has no nvmlDeviceGetMemoryInfo_v2
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return pynvml.c_nvmlMemory_v2_t(
            version=version, total=total, reserved=reserved, free=total - used - reserved, used=used
        )

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization, memory=gpu.memory_utilization)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetPersistenceMode(self, handle: _Handle) -> int:
        return self._gpu("nvmlDeviceGetPersistenceMode", handle).persistence

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        return self._gpu("nvmlDeviceGetCudaComputeCapability", handle).compute_capability

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        return self._processes(gpu.compute_processes)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetGraphicsRunningProcesses", handle)
        return self._processes(gpu.graphics_processes)

    def nvmlDeviceGetMigMode(self, device: _Handle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetMigMode", device)
        mode = pynvml.NVML_DEVICE_MIG_DISABLE if gpu.mig is None else pynvml.NVML_DEVICE_MIG_ENABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetMaxMigDeviceCount", device)
        return 0 if gpu.mig is None else gpu.max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: _Handle, index: int) -> _Handle:
        gpu = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if gpu.mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < gpu.max_mig_devices:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig):  # an empty slot
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return _Handle(device.index, mig=index)


API = sorted(name for name in vars(FakeNvml) if name.startswith("nvml"))

# Copied too, so that dir() lists them as it does for the module.
for _name in dir(pynvml):
    if (
        _name.startswith(("NVML_", "NVMLError", "nvmlMemory_v"))
        or _name == "NVMLLibraryMismatchError"
    ):
        setattr(FakeNvml, _name, getattr(pynvml, _name))


# --- a fake a perfd subprocess uses, switched at run time through a file -------------------


class ControlledNvml(FakeNvml):
    """A FakeNvml that re-reads a JSON control file whenever it changes, so a test can make a
    running perfd's NVML fail and heal. Keys (each optional)::

        {"gpus": [{"used": 42949672960}, {}],   # FakeGpu fields, one object per GPU
         "fail": {"nvmlInit": 9, "nvmlDeviceGetCount": 999, "nvmlDeviceGetUUID@1": 4},
         "lost": [1],                            # GPUs fallen off the bus
         "hang": true}                           # every call blocks until hang is false

    ``function@index`` fails that function on one GPU only. Write the file with
    ``NvmlControl.set`` (atomically, by rename).
    """

    HANG_LIMIT = 60.0  # a hang the test forgets to end still ends

    def __init__(self, path: str) -> None:
        self._path = path
        self._seen: tuple[int, int] | None = None
        self._hanging = False
        super().__init__(0)
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns) == self._seen:
            return
        self._seen = (st.st_ino, st.st_mtime_ns)
        with open(self._path, encoding="utf-8") as f:
            script = json.load(f)
        gpus = [FakeGpu(**spec) for spec in script.get("gpus", [{}])]
        for index, gpu in enumerate(gpus):
            gpu.uuid = gpu.uuid or f"GPU-{index:08d}-fake-4000-8000-000000000000"
            gpu.lost = index in script.get("lost", [])
        self.gpus = gpus
        self._failures = {}
        for key, code in script.get("fail", {}).items():
            function, _, index = key.partition("@")
            self._failures[(function, int(index) if index else None)] = int(code)
        self._hanging = bool(script.get("hang"))

    def _enter(self, function: str, handle: _Handle | None = None) -> FakeGpu | None:
        self._refresh()
        deadline = time.monotonic() + self.HANG_LIMIT
        while self._hanging and time.monotonic() < deadline:
            self.blocked.set()
            time.sleep(0.02)
            self._refresh()
        return super()._enter(function, handle)


class NvmlControl:
    """The test's side of a ControlledNvml: writes its control file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self, **script: Any) -> None:
        """Replace the whole script (see ControlledNvml); the next NVML call sees it."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(script))
        os.replace(tmp, self.path)


def control_file(tmp: Path, **script: Any) -> NvmlControl:
    """A control file holding ``script``, for a perfd started through tests/launcher.py
    (``start_perfd(..., nvml=control)``), whose GPU probe reads it."""
    control = NvmlControl(tmp / "nvml.json")
    control.set(**script)
    return control
