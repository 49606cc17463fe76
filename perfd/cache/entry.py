"""A cache entry and its counters: plain data, changed only under the cache's lock."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfd.loaders.base import Loader, ModelSpec
from perfd.wire.values import LOADING, READY

if TYPE_CHECKING:
    from perfd.cache.errors import CacheError


@dataclass
class ModelStats:
    """A model's counters; they outlive its entry, so they count across evictions."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_seconds: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=64)
    )


@dataclass
class Entry:
    spec: ModelSpec
    keep_alive: float
    pinned: bool
    state: str = LOADING
    model: Any = None
    loader: Loader | None = None
    estimate: int | None = None
    measured: int | None = None
    measured_by: str | None = None  # "rss", "nvml", "torch" or "remote"
    measured_torch: int | None = None  # torch's CUDA count, when NVML measured
    tensors: dict[str, int] | None = None  # device -> bytes of the model's own tensors
    tensors_by: str | None = None  # "torch", "numpy", "torch+numpy" or "loader"
    tensor_parts: dict[str, int] | None = None  # Loaded.parts: what the tensor bytes are
    resident_delta: dict[str, int] | None = None  # RssAnon/RssFile change across a cpu load
    leases: int = 0
    last_used: float = 0.0
    stats: ModelStats = field(default_factory=ModelStats)
    done: threading.Event = field(default_factory=threading.Event)
    error: CacheError | None = None
    abandoned: bool = False
    victims: list[Entry] = field(default_factory=list)  # to evict before this one loads

    @property
    def device(self) -> str:
        return self.spec.device

    @property
    def tensor_bytes(self) -> int | None:
        """The model's own tensors on its device, when counted or reported."""
        return None if self.tensors is None else self.tensors.get(self.spec.device)

    @property
    def size_source(self) -> str:
        """Where ``size`` comes from: "tensors", "measured" or "estimate"."""
        if self.tensor_bytes is not None:
            return "tensors"
        return "measured" if self.measured is not None else "estimate"

    @property
    def size(self) -> int:
        """What the entry counts for in its device's budget: its tensors' bytes when known,
        else the measured process delta, else the estimate."""
        tensor_bytes = self.tensor_bytes
        if tensor_bytes is not None:
            return tensor_bytes
        return self.measured if self.measured is not None else (self.estimate or 0)

    @property
    def evictable(self) -> bool:
        return self.state == READY and not self.pinned and self.leases == 0
