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
    def size(self) -> int:
        """What the entry counts for in its device's budget: measured once known."""
        return self.measured if self.measured is not None else (self.estimate or 0)

    @property
    def evictable(self) -> bool:
        return self.state == READY and not self.pinned and self.leases == 0
