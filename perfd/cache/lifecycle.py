"""The life of a cache entry after its plan: the load on a thread of its own, with a timeout,
measured and then adopted or failed; the unload that gives memory back and is recorded.

``ModelCache`` (perfd.cache.core) holds the state these methods share and makes the plans
under its lock; this base holds what happens outside the lock, and the short locked steps
between.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Final

from perfd import log
from perfd.cache import policy, report
from perfd.cache.entry import Entry
from perfd.cache.errors import CacheError, LoadFailed, LoadTimeout
from perfd.cache.loading import NOT_MEASURED, Outcome, measured_load, measurement
from perfd.cache.meter import Meter
from perfd.config import CacheConfig
from perfd.loaders.base import ModelSpec
from perfd.wire.values import READY, UNLOADING

_log = log.get("perfd.cache")

# Below this, an RSS delta is mostly imports and allocator slack: too noisy to call a leak.
LEAK_CHECK_MIN_BYTES: Final = 64 << 20

Capacity = Callable[[str], int | None]  # device -> its total bytes (RAM, cgroup limit, GPU)


class Lifecycle:
    """Loads and unloads of ModelCache's entries (its __init__ sets these attributes)."""

    cfg: CacheConfig
    _lock: threading.Lock
    _entries: dict[str, Entry]
    _runtime_specs: dict[str, ModelSpec]
    _meter: Meter
    _measure: bool
    _capacity: Capacity
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _on_load: Callable[[str, float], None] | None
    _evictions: collections.deque[dict[str, Any]]
    _by_reason: dict[str, int]
    _loads_running: int
    _load_starts: int
    _overdue: dict[str, float]

    def _budget(self, device: str) -> int | None:
        text = self.cfg.ram_budget if device == "cpu" else self.cfg.gpu_budget
        return policy.budget_bytes(text, self._capacity(device))

    def _load(self, entry: Entry) -> None:
        """On the requesting thread: evict the planned victims, then load with a timeout."""
        victims, entry.victims = entry.victims, []
        for victim in victims:
            self._unload(victim, "lru")
        spec, loader = entry.spec, entry.loader
        assert loader is not None
        finished = threading.Event()

        def run() -> None:
            with self._lock:
                self._loads_running += 1
                self._load_starts += 1
                first = self._load_starts
                alone_at_start = self._loads_running == 1
            outcome = measured_load(loader, spec, self._meter)
            with self._lock:
                # No other load ran at any moment of this one: its deltas are its own.
                outcome.alone = (
                    alone_at_start and self._loads_running == 1 and self._load_starts == first
                )
                self._loads_running -= 1
            finished.set()
            self._finish(entry, outcome)

        started = self._clock()
        threading.Thread(target=run, name=f"perfd-load-{spec.name}", daemon=True).start()
        if not self._wait_for_load(entry, finished) and self._abandon(entry):
            _log.error("cache.load_timeout", model=spec.name, load_timeout_s=self.cfg.load_timeout)
            self._fail(entry, LoadTimeout(spec.name, self.cfg.load_timeout))
            return
        seconds = self._clock() - started
        entry.stats.load_seconds.append(seconds)
        if entry.error is None:
            if self._on_load is not None:
                try:
                    self._on_load(spec.name, seconds)
                except Exception:  # a metrics bug must not fail a load
                    _log.exception("cache.on_load_failed", model=spec.name)
            self._enforce_budget(entry)

    def _wait_for_load(self, entry: Entry, finished: threading.Event) -> bool:
        """Wait up to load_timeout for the load thread; True when it finished in time."""
        return finished.wait(self.cfg.load_timeout)

    def _abandon(self, entry: Entry) -> bool:
        """Give up on a load that ran out of time, unless it ended just as the wait did (then
        it stands, loaded or failed); True when given up: its late result will be discarded."""
        with self._lock:
            if entry.done.is_set():
                return False
            entry.abandoned = True
            self._overdue[entry.spec.name] = self._clock()
            return True

    def _enforce_budget(self, loaded: Entry) -> None:
        """After a load whose size was unknown beforehand: evict LRU models if the measured
        size took the device over its budget."""
        budget = self._budget(loaded.spec.device)
        if budget is None:
            return
        with self._lock:
            victims = policy.over_budget(loaded, list(self._entries.values()), budget)
            for victim in victims:
                victim.state = UNLOADING
        for victim in victims:
            self._unload(victim, "budget")

    def _finish(self, entry: Entry, outcome: Outcome) -> None:
        """On the load thread, when the loader returned: adopt the outcome, then let the
        model load again if this load had run past load_timeout."""
        try:
            self._adopt(entry, outcome)
        finally:
            with self._lock:
                self._overdue.pop(entry.spec.name, None)

    def _adopt(self, entry: Entry, outcome: Outcome) -> None:
        """On the load thread: make the entry ready, or fail it for every waiter."""
        error = outcome.error
        if error is None and outcome.loaded is None:  # a loader that broke its contract
            error = TypeError("the loader's load() returned None, not a perfd.loaders.Loaded")
        if error is not None:
            detail = str(error)
            _log.error("cache.load_failed", model=entry.spec.name, error=detail)
            self._fail(entry, LoadFailed(entry.spec.name, type(error).__name__, detail))
            return
        assert outcome.loaded is not None
        loaded = outcome.loaded
        with self._lock:
            discard = entry.abandoned  # timed out meanwhile: leave nothing behind
            if not discard:
                entry.model = loaded.model
                if loaded.estimate_bytes is not None:
                    entry.estimate = loaded.estimate_bytes
                if self._measure:
                    local = getattr(entry.loader, "local_memory", True)
                    measured = measurement(outcome, entry.spec.device, local_memory=local)
                    if measured is not NOT_MEASURED:
                        entry.measured, entry.measured_by = measured.bytes, measured.by
                        entry.measured_torch = measured.torch
                entry.state = READY
                entry.stats.loads += 1
                entry.last_used = self._clock()
                entry.done.set()
        if discard:
            with contextlib.suppress(Exception):
                assert entry.loader is not None
                entry.loader.unload(loaded.model)
            outcome.loaded = None
            del loaded
            self._meter.release()
            _log.warning(
                "cache.load_discarded",
                model=entry.spec.name,
                load_seconds=round(outcome.seconds, 3),
                reason="finished after load_timeout; unloaded",
            )
            return
        _log.info(
            "cache.loaded",
            model=entry.spec.name,
            device=entry.spec.device,
            estimate_bytes=entry.estimate,
            measured_bytes=entry.measured,
        )

    def _fail(self, entry: Entry, error: CacheError) -> None:
        with self._lock:
            entry.error = error
            entry.abandoned = True
            if self._entries.get(entry.spec.name) is entry:
                del self._entries[entry.spec.name]
            self._runtime_specs.pop(entry.spec.name, None)  # a failed run-time model is gone
            entry.done.set()

    def _unload(self, entry: Entry, reason: str, *, release: bool = True) -> dict[str, Any]:
        """Drop every reference, release memory, check it came back, record the eviction.

        ``release=False`` leaves gc + malloc_trim (tens of ms on a big heap) to the caller,
        which unloads a batch and releases once (see _unload_all); freed_rss_bytes is then
        None for each entry.
        """
        before = self._meter.rss_bytes()
        model, entry.model = entry.model, None
        with contextlib.suppress(Exception):
            assert entry.loader is not None
            entry.loader.unload(model)
        del model
        freed: int | None = None
        if release:
            self._meter.release()
            freed = before - self._meter.rss_bytes()
        with self._lock:
            if self._entries.get(entry.spec.name) is entry:
                del self._entries[entry.spec.name]
            record = report.eviction(entry, reason, self._wall(), freed)
            self._evictions.append(record)
            self._by_reason[reason] += 1
        expected = entry.measured if entry.measured_by == "rss" else None
        if (
            freed is not None
            and expected
            and expected >= LEAK_CHECK_MIN_BYTES
            and freed < expected // 2
        ):
            _log.warning(
                "cache.unload_leak",
                model=entry.spec.name,
                measured_bytes=expected,
                freed_bytes=freed,
                hint="less than half of the model's memory came back: something still "
                "references it (libraries its first load imported also stay resident)",
            )
        _log.info("cache.evicted", **record)
        return record

    def _unload_all(self, batch: list[tuple[Entry, str]]) -> list[dict[str, Any]]:
        """Unload several entries, releasing memory once at the end (one gc for all)."""
        if len(batch) == 1:
            return [self._unload(*batch[0])]
        records = [self._unload(entry, reason, release=False) for entry, reason in batch]
        if records:
            self._meter.release()
        return records
