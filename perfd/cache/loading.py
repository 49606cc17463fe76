"""One load, measured: the memory a model cost, read around its loader's call.

``measured_load`` runs on the load thread and reads the meter before and after; the cache says
whether any other load overlapped (then the deltas are not this model's alone), and
``measurement`` picks which figure the entry keeps. Sizes: the loader's estimate (or
size_hint) before loading, the measured cost after (RSS delta; NVML's or torch's CUDA delta),
both kept; budgets use the measurement once known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from perfd.cache.meter import Meter
from perfd.loaders.base import Loaded, Loader, ModelSpec


@dataclass
class Outcome:
    """What a load thread saw: the loaded model or the error, its time and memory deltas."""

    loaded: Loaded | None = None
    error: BaseException | None = None
    seconds: float = 0.0
    rss: int = 0  # RSS after - before
    cuda: int | None = None  # torch's count after - before, when torch reports both
    nvml: int | None = None  # NVML's per-process use after - before, on a GPU
    alone: bool = False  # no other load ran at any moment of this one


class Measured(NamedTuple):
    bytes: int | None
    by: str | None  # "rss", "nvml", "torch" or "remote"
    torch: int | None = None  # torch's CUDA count beside NVML's


NOT_MEASURED = Measured(None, None)


def measured_load(loader: Loader, spec: ModelSpec, meter: Meter) -> Outcome:
    """Call ``loader.load(spec)`` between two readings of ``meter``; never raises."""
    outcome = Outcome()
    on_gpu = spec.device.startswith("cuda:")
    before, cuda_before = meter.rss_bytes(), meter.cuda_bytes(spec.device)
    nvml_before = meter.gpu_bytes(spec.device) if on_gpu else None
    began = time.monotonic()
    try:
        outcome.loaded = loader.load(spec)
    except BaseException as exc:
        outcome.error = exc
    outcome.seconds = time.monotonic() - began
    outcome.rss = meter.rss_bytes() - before
    cuda_after = meter.cuda_bytes(spec.device)
    if cuda_before is not None and cuda_after is not None:
        outcome.cuda = cuda_after - cuda_before
    nvml_after = meter.gpu_bytes(spec.device) if on_gpu else None
    if nvml_before is not None and nvml_after is not None:
        outcome.nvml = nvml_after - nvml_before
    return outcome


def measurement(outcome: Outcome, device: str, *, local_memory: bool) -> Measured:
    """The figure a loaded entry keeps, and what measured it."""
    if not local_memory:
        # A remote model: what its first load imports (an HTTP client) is not the model's,
        # and it holds no local weights.
        return Measured(0, "remote")
    if device != "cpu" and outcome.nvml is not None and outcome.alone:
        # What nvidia-smi shows for perfd: allocator caches and the CUDA context included,
        # unlike torch's own count (kept beside it as measured_torch).
        return Measured(outcome.nvml, "nvml", outcome.cuda)
    if device != "cpu" and outcome.cuda is not None:
        return Measured(outcome.cuda, "torch")
    if device == "cpu" and outcome.alone:
        return Measured(max(0, outcome.rss), "rss")
    return NOT_MEASURED
