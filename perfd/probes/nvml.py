"""The GPU probe: the only module that imports pynvml.

``GpuProbe.sample()`` reads NVML on one dedicated thread, bounded by a timeout, and turns every
NVML failure into a state::

    ok                 every GPU answered
    absent             no libnvidia-ml.so (no NVIDIA driver installed): never retried
    driver_not_loaded  the library is there, the kernel module is not: nvmlInit retried
    lost               a GPU fell off the bus (NVML_ERROR_GPU_IS_LOST); the others still report
    error              any other NVML error, or "timeout" when NVML did not answer in time

Each state change is logged once, with a hint saying what to do. It never raises from
``sample()``; it returns the plain values of perfd.probes.samples.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from perfd import log
from perfd.probes.host import process_name
from perfd.probes.samples import (
    GPU_ABSENT,
    GPU_DRIVER_NOT_LOADED,
    GPU_ERROR,
    GPU_LOST,
    GPU_OK,
    GpuProcess,
    GpuReading,
    GpuSample,
    MigInstance,
)

_log = log.get("perfd.probes")

_log = log.get("perfd.probes")

Clock = Callable[[], float]

# NVML return codes from nvml.h: part of the driver's ABI, the same in every pynvml.
_UNINITIALIZED = 1
_NOT_SUPPORTED = 3
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_ARGUMENT_VERSION_MISMATCH = 25
_MEMORY_V1_FALLBACK = {_FUNCTION_NOT_FOUND, _NOT_SUPPORTED, _ARGUMENT_VERSION_MISMATCH}

TIMEOUT = "timeout"  # GpuReading.error when NVML did not answer within the timeout
# nvmlInit alone may take seconds (every GPU wakes up when persistence mode is off), so the
# sample that initialises NVML gets this much time rather than the per-sample timeout.
INIT_TIMEOUT = 15.0
CLOSED = "closed"  # GpuReading.error after close()
_SEVERITY = {GPU_OK: 0, GPU_ERROR: 1, GPU_LOST: 2}

# What the operator should do, logged with each "gpu.state_changed".
_HINTS = {
    GPU_ABSENT: "no NVIDIA driver library (libnvidia-ml.so) found; GPU monitoring is off",
    GPU_DRIVER_NOT_LOADED: (
        "the NVIDIA kernel driver is not loaded: check `nvidia-smi` and `modprobe nvidia`"
    ),
}
_NO_PYNVML = "the nvidia-ml-py package (pynvml) is not installed; GPU monitoring is off"
_LOST = "{which} fell off the bus; check `dmesg` for Xid errors; a reboot is usually needed"
_TIMED_OUT = "an NVML call did not return within {timeout}s; the GPU or driver may be hung"


# --- host ----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """NVML strings: bytes from older pynvml, str from newer."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def nvml_library_present() -> bool:
    """Whether libnvidia-ml can be loaded, asked without importing pynvml: a failing dlopen
    takes well under a millisecond, pynvml's import about ten (and READY waits for it)."""
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


class _NvmlJob:
    """One sample's worth of NVML work, handed to the NVML thread."""

    def __init__(self, t: float) -> None:
        self.t = t
        self.done = threading.Event()
        self.reading: GpuReading | None = None


class GpuProbe:
    """Reads every GPU through NVML on one daemon thread ("perfd-nvml").

    ``nvml`` is pynvml or a module-like stand-in; None imports pynvml on first use.
    ``sample()`` waits at most ``timeout`` seconds. While an NVML call it gave up on is still
    stuck, later samples return the "timeout" reading at once and queue nothing more.
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        timeout: float = 2.0,
        retry_interval: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._nvml: Any = nvml  # None until pynvml is imported on the NVML thread
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._jobs: queue.SimpleQueue[_NvmlJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one sample() at a time
        self._stuck: _NvmlJob | None = None
        self._closed = False
        self._logged: dict[int | None, tuple[str, str | None]] = {}  # None: NVML as a whole
        # Used on the NVML thread only.
        self._initialised = False
        self._failure: tuple[str, str] | None = None  # why NVML is not initialised
        self._retry_at = 0.0
        self._driver_version: str | None = None
        self._error_names: dict[int, str] = {}
        self._known: dict[int, tuple[str, str]] = {}  # index -> (uuid, name) last seen
        self._memory_v1: set[int] = set()  # GPUs whose driver lacks nvmlMemory_v2
        self._names: dict[int, str | None] = {}  # GPU process names by pid
        self._names_seen: set[int] = set()

    def sample(self) -> GpuReading:
        """One reading of every GPU; never raises, never waits longer than ``timeout``."""
        with self._lock:
            reading = self._submit(self._clock())
            self._log_changes(reading)
            return reading

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for an NVML call that timed out to return; True when none is in flight."""
        job = self._stuck
        return job is None or job.done.wait(timeout)

    def close(self) -> None:
        """nvmlShutdown (on the NVML thread) and stop the thread, waiting up to ``timeout``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._jobs.put(None)
        thread.join(self._timeout)
        if thread.is_alive():
            _log.warning("thread.still_alive", threads=[thread.name], action="exiting anyway")

    # --- caller's side

    def _submit(self, t: float) -> GpuReading:
        if self._closed:
            return self._failed(t, GPU_ERROR, CLOSED)
        failure = self._failure
        if failure is not None and failure[0] == GPU_ABSENT:
            return self._failed(t, *failure)  # permanent: no need to wake the NVML thread
        if self._stuck is not None:
            if not self._stuck.done.is_set():
                return self._failed(t, GPU_ERROR, TIMEOUT)
            self._stuck = None  # its late reading is stale: sample afresh
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="perfd-nvml", daemon=True)
            self._thread.start()
        job = _NvmlJob(t)
        self._jobs.put(job)
        wait = self._timeout if self._initialised else max(self._timeout, INIT_TIMEOUT)
        if job.done.wait(wait) and job.reading is not None:
            return job.reading
        self._stuck = job
        return self._failed(t, GPU_ERROR, TIMEOUT)

    def _failed(self, t: float, state: str, error: str) -> GpuReading:
        return GpuReading(t, state, error, self._driver_version, gpus=())

    def _log_changes(self, reading: GpuReading) -> None:
        """Log each change of NVML's state or a GPU's state, once."""
        if reading.gpus or reading.state == GPU_OK:
            # NVML answered: the overall state is the GPUs' own, logged per GPU.
            current: dict[int | None, tuple[str, str | None]] = {None: (GPU_OK, None)}
            current.update({gpu.index: (gpu.state, gpu.error) for gpu in reading.gpus})
        else:
            current = {None: (reading.state, reading.error)}
        for key, (state, error) in current.items():
            before = self._logged.get(key)
            if before == (state, error):
                continue
            self._logged[key] = (state, error)
            where = {} if key is None else {"gpu": key}
            if state == GPU_OK:
                if before is not None:
                    _log.info("gpu.recovered", **where, was=before[0], was_error=before[1])
                continue
            emit = _log.error if state == GPU_LOST else _log.warning
            hint = self._hint(key, state, error)
            emit("gpu.state_changed", **where, state=state, error=error, hint=hint)

    def _hint(self, index: int | None, state: str, error: str | None) -> str:
        if state == GPU_ABSENT and error == "ImportError":
            return _NO_PYNVML
        if state == GPU_LOST:
            return _LOST.format(which="a GPU" if index is None else f"GPU {index}")
        if error == TIMEOUT:
            return _TIMED_OUT.format(timeout=self._timeout)
        return _HINTS.get(state) or f"NVML error {error}"

    # --- the NVML thread

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.reading = self._read(job.t)
            except Exception as exc:  # a fault in a stand-in library must not stop the thread
                job.reading = self._failed(job.t, GPU_ERROR, type(exc).__name__)
            finally:
                job.done.set()
        self._shutdown()

    def _shutdown(self) -> None:
        """nvmlShutdown, balancing the nvmlInit that succeeded; NVML keeps a reference count."""
        if not self._initialised:
            return
        self._initialised = False
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:  # the driver is gone already: nothing left to release
            _log.debug("gpu.shutdown_failed", error=self._error_name(exc))

    def _read(self, t: float) -> GpuReading:
        failure = self._init()
        if failure is not None:
            return self._failed(t, *failure)
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except Exception as exc:
            state, error = self._classify(exc)
            if state == GPU_DRIVER_NOT_LOADED or getattr(exc, "value", None) == _UNINITIALIZED:
                self._shutdown()  # the driver went away: init again later
                self._failure = (state, error)
                self._retry_at = self._clock() + self._retry_interval
            return self._failed(t, state, error)
        self._names_seen = set()
        gpus = tuple(self._read_gpu(index) for index in range(count))
        for pid in set(self._names) - self._names_seen:  # gone: its pid may be reused
            del self._names[pid]
        worst = max(gpus, key=lambda gpu: _SEVERITY.get(gpu.state, 1), default=None)
        if worst is None or worst.state == GPU_OK:
            return GpuReading(t, GPU_OK, None, self._driver_version, gpus)
        return GpuReading(t, worst.state, worst.error, self._driver_version, gpus)

    def _init(self) -> tuple[str, str] | None:
        """nvmlInit once; the failure while it fails (retried every ``retry_interval``)."""
        if self._initialised:
            return None
        failure: tuple[str, str] | None = self._failure
        if failure is not None and (failure[0] == GPU_ABSENT or self._clock() < self._retry_at):
            return failure
        try:
            if self._nvml is None:
                if not nvml_library_present():
                    failure = (GPU_ABSENT, "NVML_ERROR_LIBRARY_NOT_FOUND")
                    self._failure = failure
                    return failure
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except ImportError:
            failure = (GPU_ABSENT, "ImportError")
        except Exception as exc:
            failure = self._classify(exc)
        else:
            self._initialised, self._failure = True, None
            version = self._optional(self._nvml.nvmlSystemGetDriverVersion)
            self._driver_version = None if version is None else _text(version)
            return None
        self._failure = failure
        self._retry_at = self._clock() + self._retry_interval
        return failure

    def _classify(self, exc: Exception) -> tuple[str, str]:
        value = getattr(exc, "value", None)
        if value == _LIBRARY_NOT_FOUND:
            state = GPU_ABSENT
        elif value == _DRIVER_NOT_LOADED:
            state = GPU_DRIVER_NOT_LOADED
        elif value == _GPU_IS_LOST:
            state = GPU_LOST
        else:
            state = GPU_ERROR
        return state, self._error_name(exc)

    def _error_name(self, exc: Exception) -> str:
        """The NVML_ERROR_* name of the error's value, else the exception's class name."""
        value = getattr(exc, "value", None)
        if not isinstance(value, int):
            return type(exc).__name__
        if not self._error_names:
            for name in dir(self._nvml):
                if name.startswith("NVML_ERROR_"):
                    code = getattr(self._nvml, name)
                    if isinstance(code, int):
                        self._error_names[code] = name
        return self._error_names.get(value) or f"{type(exc).__name__}({value})"

    def _optional(self, fn: Callable[..., Any], *args: Any) -> Any:
        """An optional figure: None when NVML cannot give it; a lost GPU still raises."""
        try:
            return fn(*args)
        except Exception as exc:
            if getattr(exc, "value", None) == _GPU_IS_LOST:
                raise
            return None

    def _read_gpu(self, index: int) -> GpuSample:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
            self._known[index] = (uuid, name)
            total, used, free, reserved = self._memory(index, handle)
            util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
            temp = self._optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            power = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
            limit = self._optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            persistence = self._optional(nvml.nvmlDeviceGetPersistenceMode, handle)
            capability = self._optional(nvml.nvmlDeviceGetCudaComputeCapability, handle)
            processes = self._processes(handle)
            mig_enabled, mig = self._mig(handle)
        except Exception as exc:
            state, error = self._classify(exc)
            uuid, name = self._known.get(index, ("", ""))
            return GpuSample(
                index=index,
                uuid=uuid,
                name=name,
                mem_total_bytes=0,
                mem_used_bytes=0,
                mem_free_bytes=0,
                mem_reserved_bytes=0,
                utilization_percent=None,
                memory_utilization_percent=None,
                temperature_c=None,
                power_watts=None,
                power_limit_watts=None,
                persistence_mode=None,
                compute_capability=None,
                processes=(),
                mig_enabled=False,
                mig=(),
                state=GPU_LOST if state == GPU_LOST else GPU_ERROR,
                error=error,
            )
        return GpuSample(
            index=index,
            uuid=uuid,
            name=name,
            mem_total_bytes=total,
            mem_used_bytes=used,
            mem_free_bytes=free,
            mem_reserved_bytes=reserved,
            utilization_percent=None if util is None else float(util.gpu),
            memory_utilization_percent=None if util is None else float(util.memory),
            temperature_c=None if temp is None else float(temp),
            power_watts=None if power is None else power / 1000,
            power_limit_watts=None if limit is None else limit / 1000,
            persistence_mode=None if persistence is None else bool(persistence),
            compute_capability=None if capability is None else (capability[0], capability[1]),
            processes=processes,
            mig_enabled=mig_enabled,
            mig=mig,
        )

    def _memory(self, index: int, handle: Any) -> tuple[int, int, int, int]:
        """(total, used, free, reserved): nvmlMemory_v2, or v1 (reserved 0) on older drivers."""
        nvml = self._nvml
        if index not in self._memory_v1:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
                return int(info.total), int(info.used), int(info.free), int(info.reserved)
            except (TypeError, AttributeError):  # a pynvml without the version argument
                self._memory_v1.add(index)
            except Exception as exc:
                if getattr(exc, "value", None) not in _MEMORY_V1_FALLBACK:
                    raise
                self._memory_v1.add(index)
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        return int(info.total), int(info.used), int(info.free), 0

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        used: dict[int, int | None] = {}
        nvml = self._nvml
        for query in (
            nvml.nvmlDeviceGetComputeRunningProcesses,
            nvml.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            for process in self._optional(query, handle) or ():
                pid, figure = int(process.pid), process.usedGpuMemory
                if used.get(pid) is None:  # a process in both lists counts once
                    used[pid] = None if figure is None else int(figure)
        order = sorted(used.items(), key=lambda item: -(item[1] or 0))
        return tuple(GpuProcess(pid, figure, self._name(pid)) for pid, figure in order)

    def _name(self, pid: int) -> str | None:
        """A GPU process's name, looked up once while the pid keeps using a GPU."""
        self._names_seen.add(pid)
        if pid not in self._names:
            self._names[pid] = process_name(pid)
        return self._names[pid]

    def _mig(self, handle: Any) -> tuple[bool, tuple[MigInstance, ...]]:
        nvml = self._nvml
        mode = self._optional(nvml.nvmlDeviceGetMigMode, handle)
        if mode is None or mode[0] != nvml.NVML_DEVICE_MIG_ENABLE:
            return False, ()
        instances = []
        for slot in range(self._optional(nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            device = self._optional(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
            info = None if device is None else self._optional(nvml.nvmlDeviceGetMemoryInfo, device)
            if info is None:  # an empty slot (NVML_ERROR_NOT_FOUND)
                continue
            uuid = self._optional(nvml.nvmlDeviceGetUUID, device)
            instances.append(
                MigInstance(
                    slot, None if uuid is None else _text(uuid), int(info.total), int(info.used)
                )
            )
        return True, tuple(instances)
