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
from perfd.cache.report import Freed
from perfd.cache.runtime import Runtime
from perfd.config import CacheConfig
from perfd.loaders.base import ModelSpec
from perfd.wire.values import READY, UNLOADING

_log = log.get("perfd.cache")

# A shortfall below this is mostly allocator slack and page-cache noise: not called a leak.
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
    _runtime: Runtime

    def _budget(self, device: str) -> int | None:
        text = self.cfg.ram_budget if device == "cpu" else self.cfg.gpu_budget
        return policy.budget_bytes(text, self._capacity(device))

    def _figure(self, device: str) -> int | None:
        """The process's memory on ``device`` now: RSS on "cpu", NVML's per-process figure on
        "cuda:N" (None when NVML cannot say)."""
        if device == "cpu":
            return self._meter.rss_bytes()
        return self._meter.gpu_bytes(device) if device.startswith("cuda:") else None

    def _held_bytes(self, device: str) -> int:
        """Under the lock: the bytes of the models that hold memory on ``device`` now: those
        of the device's models, and the tensors other devices' models keep there (a GPU
        model's host tensors)."""
        held = 0
        for e in self._entries.values():
            if e.model is None:
                continue
            if e.device == device:
                held += e.size
            elif e.tensors is not None:
                held += e.tensors.get(device, 0)
        return held

    def _observe_runtime(self, figures: dict[str, int | None]) -> None:
        """Update each device's runtime overhead from its figure after a release (none while
        a load runs: a load in flight holds memory no entry accounts for yet)."""
        with self._lock:
            if self._loads_running:
                return
            for device, figure in figures.items():
                self._runtime.observe(device, figure, self._held_bytes(device))

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
            overhead = self._runtime.overhead(loaded.spec.device)
            victims = policy.over_budget(loaded, list(self._entries.values()), budget, overhead)
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
                    self._account(entry, outcome)
                entry.state = READY
                entry.stats.loads += 1
                entry.last_used = self._clock()
                if self._measure:
                    self._runtime_after_load(entry, outcome)
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
            measured_by=entry.measured_by,
            tensor_bytes=entry.tensor_bytes,
            tensor_counted_by=entry.tensors_by,
            tensor_walk_truncated=outcome.counted.truncated if outcome.counted else None,
            bytes=entry.size,
            runtime_overhead_bytes=self._runtime.overhead(entry.spec.device),
        )

    def _account(self, entry: Entry, outcome: Outcome) -> None:
        """Under the lock: the loaded entry's figures (its tensors, the process deltas)."""
        assert outcome.loaded is not None
        loaded = outcome.loaded
        local = getattr(entry.loader, "local_memory", True)
        measured = measurement(outcome, entry.spec.device, local_memory=local)
        if measured is not NOT_MEASURED:
            entry.measured, entry.measured_by = measured.bytes, measured.by
            entry.measured_torch = measured.torch
        if loaded.tensor_bytes is not None:
            entry.tensors, entry.tensors_by = dict(loaded.tensor_bytes), "loader"
        elif outcome.counted is not None:
            entry.tensors, entry.tensors_by = outcome.counted.by_device, outcome.counted.counted_by
        entry.tensor_parts = dict(loaded.parts) if loaded.parts else None
        entry.resident_delta = outcome.resident_delta() if outcome.alone and local else None

    def _runtime_after_load(self, entry: Entry, outcome: Outcome) -> None:
        """Under the lock, the entry just made ready: the baselines (the process before its
        first load) and, when no other load overlapped, each device's runtime overhead."""
        device = entry.spec.device
        self._runtime.start("cpu", outcome.rss_before)
        if device != "cpu":
            self._runtime.start(device, outcome.nvml_before)
        self._runtime.loaded(device)
        if not outcome.alone:
            return
        self._runtime.observe("cpu", outcome.rss_after, self._held_bytes("cpu"))
        if device != "cpu":
            self._runtime.observe(device, outcome.nvml_after, self._held_bytes(device))

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
        which unloads a batch and releases once (see _unload_all); the freed figures are
        then None for each entry.
        """
        device = entry.spec.device
        on_gpu = device.startswith("cuda:")
        rss_before, parts_before = self._meter.rss_bytes(), self._meter.rss_parts()
        gpu_before = self._meter.gpu_bytes(device) if on_gpu and release else None
        model, entry.model = entry.model, None
        with contextlib.suppress(Exception):
            assert entry.loader is not None
            entry.loader.unload(model)
        del model
        freed, figures = Freed(), dict[str, int | None]()
        if release:
            self._meter.release()
            rss_after, parts_after = self._meter.rss_bytes(), self._meter.rss_parts()
            figures = {"cpu": rss_after}  # the figures after: the devices' runtime overhead
            if on_gpu:
                figures[device] = self._meter.gpu_bytes(device)
            freed = Freed.between(
                device,
                (rss_before, rss_after),
                (parts_before, parts_after),
                (gpu_before, figures.get(device) if on_gpu else None),
            )
        with self._lock:
            if self._entries.get(entry.spec.name) is entry:
                del self._entries[entry.spec.name]
            record = report.eviction(entry, reason, self._wall(), freed)
            self._evictions.append(record)
            self._by_reason[reason] += 1
        if release and self._measure:
            self._observe_runtime(figures)
            self._check_leak(entry, record)
        _log.info("cache.evicted", **record)
        return record

    def _check_leak(self, entry: Entry, record: dict[str, Any]) -> None:
        """Log cache.unload_leak when an eviction gave back much less than the model's bytes
        (only for bytes that were measured or counted: an estimate is no yardstick)."""
        expected, freed = record["bytes"], record["freed_bytes"]
        if freed is None or entry.size_source == "estimate" or entry.measured_by == "remote":
            return
        share = self.cfg.unload_leak_percent / 100
        short = expected - freed
        if freed < expected * share and short >= LEAK_CHECK_MIN_BYTES:
            _log.warning(
                "cache.unload_leak",
                model=entry.spec.name,
                device=entry.spec.device,
                bytes=expected,
                bytes_source=entry.size_source,
                measured_bytes=entry.measured,
                freed_bytes=freed,
                freed_rss_bytes=record["freed_rss_bytes"],
                freed_gpu_bytes=record["freed_gpu_bytes"],
                threshold_percent=self.cfg.unload_leak_percent,
                hint="less of the model's memory came back than it holds: something still "
                "references it, or the allocator keeps its pages (its first load's "
                "imports and CUDA context stay: runtime overhead)",
            )

    def _unload_all(self, batch: list[tuple[Entry, str]]) -> list[dict[str, Any]]:
        """Unload several entries, releasing memory once at the end (one gc for all)."""
        if len(batch) == 1:
            return [self._unload(*batch[0])]
        records = [self._unload(entry, reason, release=False) for entry, reason in batch]
        if records:
            self._meter.release()
            if self._measure:
                devices = {"cpu"} | {entry.spec.device for entry, _ in batch}
                self._observe_runtime({device: self._figure(device) for device in devices})
        return records
