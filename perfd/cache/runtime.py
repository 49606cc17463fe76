"""perfd's own memory on each device, apart from its models': the runtime overhead.

A device's first use costs the process memory that is no model's and does not come back on
eviction: imports (torch, a tokenizer library), the CUDA context, cuBLAS workspaces, allocator
pools, heap pages the allocator keeps. The cache keeps, per device, the process's figure
before the first load there (the baseline: RSS on "cpu", NVML's per-process memory on
"cuda:N"), and after each load (that no other load overlapped) and each released unload sets

    runtime overhead = figure now - baseline - the bytes of the models loaded there now

(never below 0). After the last model on a device is evicted this is the residue: the figure
after release minus the figure before the first load. Host RSS is the cpu figure for every
load, whatever its device: a GPU model's imports and CUDA libraries are host memory too.

The overhead counts once against its device's budget (perfd.cache.policy), never against a
model. Plain data, changed under the cache's lock; the figures are read outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Hold:
    """A device where a pressure round freed much less than it projected: no further pressure
    evictions there until use is below the low watermark or a model loads there."""

    projected_bytes: int
    freed_bytes: int
    used_percent: float


@dataclass
class DeviceRuntime:
    baseline: int | None = None  # the process's figure before the first load on the device
    overhead: int | None = None  # the last computed runtime overhead
    hold: Hold | None = None


class Runtime:
    """Each device's baseline, runtime overhead and pressure hold."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceRuntime] = {}

    def _device(self, device: str) -> DeviceRuntime:
        return self.devices.setdefault(device, DeviceRuntime())

    def start(self, device: str, figure: int | None) -> None:
        """The figure before a load on ``device``: the baseline is the lowest seen (the first
        load's, also when two first loads overlapped and the later one finished first)."""
        state = self._device(device)
        if figure is not None:
            state.baseline = figure if state.baseline is None else min(state.baseline, figure)

    def observe(self, device: str, figure: int | None, model_bytes: int) -> None:
        """The figure now, with ``model_bytes`` of models loaded on ``device``."""
        state = self.devices.get(device)
        if state is None or state.baseline is None or figure is None:
            return
        state.overhead = max(0, figure - state.baseline - model_bytes)

    def overhead(self, device: str) -> int:
        """What the budget adds once for ``device`` (0 while unknown)."""
        state = self.devices.get(device)
        return (state.overhead or 0) if state is not None else 0

    def report(self) -> list[dict[str, Any]]:
        """The ``ps`` reply's "runtime" list: one row per device with a known overhead."""
        return [
            {"device": device, "runtime_overhead_bytes": state.overhead}
            for device, state in sorted(self.devices.items())
            if state.overhead is not None
        ]

    # -- pressure holds ---------------------------------------------------------------------

    def held(self, device: str, used_percent: float, low: float) -> bool:
        """Whether pressure evictions on ``device`` are held; a hold ends once use is below
        ``low``."""
        state = self.devices.get(device)
        if state is None or state.hold is None:
            return False
        if used_percent < low:
            state.hold = None
            return False
        return True

    def hold(self, device: str, hold: Hold) -> bool:
        """Hold pressure evictions on ``device``; True when newly held (log it once)."""
        state = self._device(device)
        new = state.hold is None
        state.hold = hold
        return new

    def loaded(self, device: str) -> None:
        """A model loaded on ``device``: the memory picture changed, a hold there ends."""
        state = self.devices.get(device)
        if state is not None:
            state.hold = None
