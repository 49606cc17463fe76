"""One load, measured: the memory a model cost, read around its loader's call.

``measured_load`` runs on the load thread and reads the meter before and after; the cache says
whether any other load overlapped (then the deltas are not this model's alone), and
``measurement`` picks which figure the entry keeps. After the readings, the model's own
tensors are counted (perfd.cache.tensors) unless the loader reported them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

from perfd.cache import tensors
from perfd.cache.meter import Meter, RssParts
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
    rss_before: int = 0
    rss_after: int = 0
    parts_before: RssParts | None = None  # RssAnon/RssFile before and after
    parts_after: RssParts | None = None
    nvml_before: int | None = None
    nvml_after: int | None = None
    counted: tensors.Counted | None = None  # the tensors found in the model, when counted

    def resident_delta(self) -> dict[str, int] | None:
        """RssAnon and RssFile's change across the load, when the kernel said both times."""
        if self.parts_before is None or self.parts_after is None:
            return None
        return {
            "anon_bytes": self.parts_after.anon - self.parts_before.anon,
            "file_bytes": self.parts_after.file - self.parts_before.file,
        }


class Measured(NamedTuple):
    bytes: int | None
    by: str | None  # "rss", "nvml", "torch" or "remote"
    torch: int | None = None  # torch's CUDA count beside NVML's


NOT_MEASURED = Measured(None, None)


def measured_load(loader: Loader, spec: ModelSpec, meter: Meter) -> Outcome:
    """Call ``loader.load(spec)`` between two readings of ``meter``, then count the tensors
    the model holds unless the loader reported them; never raises.

    When torch is not imported before the load (the usual first load: the load imports it),
    torch had allocated nothing before, so its count after is the load's own."""
    outcome = Outcome()
    on_gpu = spec.device.startswith("cuda:")
    torch_absent = "torch" not in sys.modules
    outcome.rss_before, outcome.parts_before = meter.rss_bytes(), meter.rss_parts()
    cuda_before = meter.cuda_bytes(spec.device)
    if cuda_before is None and torch_absent:
        cuda_before = 0
    outcome.nvml_before = meter.gpu_bytes(spec.device) if on_gpu else None
    began = time.monotonic()
    try:
        outcome.loaded = loader.load(spec)
    except BaseException as exc:
        outcome.error = exc
    outcome.seconds = time.monotonic() - began
    outcome.rss_after, outcome.parts_after = meter.rss_bytes(), meter.rss_parts()
    outcome.rss = outcome.rss_after - outcome.rss_before
    cuda_after = meter.cuda_bytes(spec.device)
    if cuda_after is not None and cuda_before is not None:
        outcome.cuda = cuda_after - cuda_before
    outcome.nvml_after = meter.gpu_bytes(spec.device) if on_gpu else None
    if outcome.nvml_before is not None and outcome.nvml_after is not None:
        outcome.nvml = outcome.nvml_after - outcome.nvml_before
    loaded = outcome.loaded
    if isinstance(loaded, Loaded) and loaded.tensor_bytes is None:
        outcome.counted = tensors.count(loaded.model)  # after the readings: not in the deltas
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
