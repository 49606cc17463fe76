"""The model cache: byte budgets per device, LRU eviction, leases, pins, keep-alive,
single-flight loads, and unloads that really give memory back.

Rules (each one a complaint about other model servers that perfd must not earn):

- A model that cannot fit, even after evicting everything evictable, is refused at once with
  the numbers (no eviction loop).
- Eviction takes least-recently-used entries, never a pinned one or one with a lease (every
  inference holds a lease), and prefers one cold entry that alone covers the shortfall.
- Concurrent requests for a model that is loading wait for that one load; a failed or timed
  out load reports its error to every waiter and leaves nothing behind.
- Sizes: the loader's estimate (or size_hint) before loading; after it, the bytes of the
  model's own tensors (counted, or reported by the loader) and the measured process delta
  (RSS; NVML's or torch's on a GPU), all kept. Budgets charge a model its tensors when known,
  else the measurement, else the estimate, and add each device's runtime overhead (perfd's
  own memory there: imports, CUDA context) once, never charging it to a model.

This module holds the locking and the order of things: policy and bookkeeping happen under
one lock; loading, inference and unloading do not. Which entries to evict is
perfd.cache.policy's, memory is read through an injected perfd.cache.meter.Meter, a load is
measured by perfd.cache.loading, and what ``ps`` and ``stats`` show is made by
perfd.cache.report. Refusals are perfd.cache.errors' exceptions, with their facts.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from perfd import log
from perfd.cache import policy, report
from perfd.cache.entry import Entry, ModelStats
from perfd.cache.errors import (
    DefinedInConfig,
    InUse,
    LoaderUnavailable,
    LoadOverdue,
    NotLoaded,
    NotReady,
    Pinned,
    StillLoading,
    UnknownModel,
)
from perfd.cache.lifecycle import LEAK_CHECK_MIN_BYTES, Capacity, Lifecycle
from perfd.cache.meter import Meter, ProcessMeter
from perfd.cache.runtime import Hold, Runtime
from perfd.config import CacheConfig, ModelConfig
from perfd.loaders.base import Loader, LoaderError, ModelSpec
from perfd.wire.values import EVICTION_REASONS, LOADING, READY, UNLOADING

__all__ = [
    "EVICTION_REASONS",
    "LEAK_CHECK_MIN_BYTES",
    "LOADING",
    "READY",
    "UNLOADING",
    "Capacity",
    "Lease",
    "ModelCache",
]

LoaderFor = Callable[[str], Loader]

# A pressure round that freed less than this share of its models' bytes holds the next ones.
PRESSURE_FREED_SHARE = 0.5

_log = log.get("perfd.cache")


class Lease:
    """A model in use: it cannot be evicted until release() (or the end of a with block)."""

    def __init__(self, cache: ModelCache, entry: Entry) -> None:
        self._cache, self._entry = cache, entry
        # Loaders may wrap what they load; `.obj` is the object the application made.
        self.model = getattr(entry.model, "obj", entry.model)
        self._handle = entry.model
        self.loader = entry.loader
        self.name = entry.spec.name

    def infer(self, inputs: Any, options: dict[str, Any] | None = None) -> Any:
        assert self.loader is not None
        return self.loader.infer(self._handle, inputs, options or {})

    def release(self) -> None:
        if self._entry is not None:
            self._cache._release(self._entry)
            self._entry = None  # type: ignore[assignment]

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class ModelCache(Lifecycle):
    """``meter`` measures loads and unloads (a ProcessMeter by default); ``measure=False``
    accounts by estimates only (tests of pure policy); ``on_load(model, seconds)`` runs after
    each successful load (metrics)."""

    def __init__(
        self,
        cfg: CacheConfig,
        models: dict[str, ModelConfig],
        loader_for: LoaderFor,
        capacity: Capacity,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        meter: Meter | None = None,
        measure: bool = True,
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_load = on_load
        self._measure = measure
        self._meter: Meter = meter if meter is not None else ProcessMeter()
        self.models = dict(models)
        self._loader_for = loader_for
        self._capacity = capacity
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._runtime_specs: dict[str, ModelSpec] = {}
        self._evictions: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=cfg.evictions_history
        )
        self._by_reason = dict.fromkeys(EVICTION_REASONS, 0)
        self._loads_running = 0
        # Models whose load ran past load_timeout and still runs: no second load of one
        # starts meanwhile (two copies could need twice the memory), name -> when abandoned.
        self._overdue: dict[str, float] = {}
        self._load_starts = 0  # loads started so far: an overlap changes it under a load
        self._model_stats: dict[str, ModelStats] = {}
        self._runtime = Runtime()  # each device's runtime overhead and pressure hold
        self.hits = 0
        self.misses = 0

    def reconfigure(self, cfg: CacheConfig, models: dict[str, ModelConfig]) -> None:
        """A reload: new budgets and model tables; loaded models take their new keep-alive
        (and a config pin), and stay loaded."""
        with self._lock:
            self.cfg = cfg
            self.models = dict(models)
            self._evictions = collections.deque(self._evictions, maxlen=cfg.evictions_history)
            for name, entry in self._entries.items():
                entry.keep_alive, pinned = self._settings(name)
                entry.pinned = entry.pinned or pinned

    # -- specs ------------------------------------------------------------------------------

    def spec(self, name: str) -> ModelSpec:
        """The model called ``name``, from the config or defined at run time; UnknownModel."""
        model = self.models.get(name)
        if model is not None:
            return ModelSpec(
                name=name,
                loader=model.loader,
                target=model.target,
                path=model.path,
                device=model.device,
                options=dict(model.options or {}),
                size_hint=model.size_hint or None,
                provider=model.provider,
                remote_model=model.model,
            )
        spec = self._runtime_specs.get(name)
        if spec is None:
            raise UnknownModel(name, tuple(sorted(set(self.models) | set(self._runtime_specs))))
        return spec

    def define(self, spec: ModelSpec) -> None:
        """A model named at run time (`perfctl load NAME --target ...`)."""
        if spec.name in self.models:
            raise DefinedInConfig(spec.name)
        self._loader(spec)  # an unknown loader fails here, before anything else
        self._runtime_specs[spec.name] = spec

    def _settings(self, name: str) -> tuple[float, bool]:
        model = self.models.get(name)
        keep_alive = self.cfg.keep_alive
        if model is not None and model.keep_alive is not None:
            keep_alive = model.keep_alive
        return keep_alive, bool(model and model.pin)

    def _loader(self, spec: ModelSpec) -> Loader:
        try:
            return self._loader_for(spec.loader)
        except LoaderError as exc:
            raise LoaderUnavailable(spec.name, spec.loader, str(exc)) from None

    # -- leases and loads -------------------------------------------------------------------

    def lease(self, name: str) -> Lease:
        """The model, loaded if needed (single flight), held until the lease is released."""
        missed = False  # one lookup counts once: a miss if it had to wait for a load
        while True:
            with self._lock:
                entry = self._entries.get(name)
                if entry is not None and entry.state == READY:
                    entry.leases += 1
                    if not missed:
                        entry.stats.hits += 1
                        self.hits += 1
                    entry.last_used = self._clock()
                    return Lease(self, entry)
                if entry is None and name in self._overdue:
                    raise LoadOverdue(name, self._clock() - self._overdue[name])
                if entry is None:
                    entry = self._plan_load(name, count_miss=not missed)
                    loader_thread = True
                else:
                    loader_thread = False
                    if entry.state == LOADING and not missed:
                        entry.stats.misses += 1
                        self.misses += 1
                missed = True
            if loader_thread:
                self._load(entry)
            elif not entry.done.wait(self.cfg.load_timeout + 1):
                raise StillLoading(name, self.cfg.load_timeout + 1)
            if entry.error is not None:
                raise entry.error
            # Loaded (or unloaded meanwhile): take the lease on the next turn.

    def get(self, name: str) -> Any:
        """The model object, loaded if needed, without holding a lease (embedded use: prefer
        ``with cache.lease(name) as m`` so it cannot be evicted while in use)."""
        with self.lease(name) as lease:
            return lease.model

    def load(self, name: str) -> dict[str, Any]:
        """Load without using (an explicit load): the entry's description."""
        with self.lease(name):
            pass
        with self._lock:
            entry = self._entries.get(name)
            return report.describe(entry, self._clock(), self._wall()) if entry else {}

    def _plan_load(self, name: str, *, count_miss: bool = True) -> Entry:
        """Under the lock: check the model fits, pick victims, reserve the entry."""
        spec = self.spec(name)
        keep_alive, pinned = self._settings(name)
        loader = self._loader(spec)
        estimate = spec.size_hint
        with contextlib.suppress(Exception):
            estimated = loader.estimate(spec)
            estimate = estimated if estimated is not None else spec.size_hint
        victims = policy.victims(
            name,
            spec.device,
            estimate or 0,
            list(self._entries.values()),
            budget=self._budget(spec.device),
            max_models=self.cfg.max_models,
            overhead=self._runtime.overhead(spec.device),
        )
        stats = self._model_stats.setdefault(name, ModelStats())
        entry = Entry(spec, keep_alive, pinned, estimate=estimate, loader=loader, stats=stats)
        if count_miss:
            stats.misses += 1
            self.misses += 1
        self._entries[name] = entry
        for victim in victims:
            victim.state = UNLOADING
        entry.victims = victims
        return entry

    def _release(self, entry: Entry) -> None:
        with self._lock:
            entry.leases -= 1
            entry.last_used = self._clock()
            unload_now = entry.leases == 0 and entry.keep_alive == 0 and entry.evictable
            if unload_now:
                entry.state = UNLOADING
        if unload_now:
            self._unload(entry, "ttl")

    # -- eviction ---------------------------------------------------------------------------

    def evict(self, name: str, reason: str = "manual") -> dict[str, Any]:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.state != READY:
                raise NotReady(name, "not loaded" if entry is None else entry.state)
            if entry.leases:
                raise InUse(name, entry.leases)
            if entry.pinned:
                raise Pinned(name)
            entry.state = UNLOADING
        return self._unload(entry, reason)

    def evictable(self, *, idle_only: bool) -> list[str]:
        """Names `evict --all` (or `--idle`: past their keep-alive) would unload now."""
        now = self._clock()
        with self._lock:
            return [
                e.spec.name
                for e in policy.lru(self._entries.values())
                if not idle_only or policy.expired(e.keep_alive, e.last_used, now)
            ]

    def housekeep(self, used_percent: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Unload expired keep-alives; above the high watermark, evict cold models until the
        projected use is below the low one. ``used_percent`` maps device to its use now.

        A pressure round that freed less than PRESSURE_FREED_SHARE of what it projected
        (the models' bytes did not come back: runtime overhead, a leak, someone else's
        memory) holds pressure evictions on that device until its use is below the low
        watermark or a model loads there, so perfd does not evict model after model for
        nothing."""
        now = self._clock()
        used = used_percent or {}
        capacity = {device: self._capacity(device) for device in used}
        low = self.cfg.low_watermark
        with self._lock:
            entries = list(self._entries.values())
            expired = [
                e for e in entries if e.evictable and policy.expired(e.keep_alive, e.last_used, now)
            ]
            for entry in expired:
                entry.state = UNLOADING
            pressing = {d: u for d, u in used.items() if not self._runtime.held(d, u, low)}
            pressure = policy.under_pressure(
                entries, pressing, capacity, high=self.cfg.high_watermark, low=low
            )
            for entry in pressure:
                entry.state = UNLOADING
        devices = {e.device for e in pressure}
        before = {device: self._figure(device) for device in devices}
        records = self._unload_all(
            [(e, "ttl") for e in expired] + [(e, "pressure") for e in pressure]
        )
        for device in sorted(devices):
            projected = sum(e.size for e in pressure if e.device == device)
            self._judge_pressure(device, projected, before[device], used[device])
        return records

    def _judge_pressure(self, device: str, projected: int, before: int | None, used: float) -> None:
        """After a pressure round on ``device``: hold further ones if it freed little."""
        if not self._measure:
            return
        after = self._figure(device)
        if before is None or after is None or projected <= 0:
            return
        freed = before - after
        if freed >= projected * PRESSURE_FREED_SHARE:
            return
        with self._lock:
            new = self._runtime.hold(device, Hold(projected, freed, used))
        if new:
            _log.warning(
                "cache.pressure_held",
                device=device,
                projected_bytes=projected,
                freed_bytes=freed,
                used_percent=used,
                low_watermark=self.cfg.low_watermark,
                hint="evicting models freed little of their bytes; no more pressure evictions "
                "on this device until its use is below low_watermark or a model loads there",
            )

    def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        self.spec(name)  # UnknownModel for an unknown name
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise NotLoaded(name)
            entry.pinned = pinned
            return report.describe(entry, self._clock(), self._wall())

    def close(self) -> None:
        """Unload everything (shutdown)."""
        with self._lock:
            entries = [e for e in self._entries.values() if e.state == READY]
            for entry in entries:
                entry.state = UNLOADING
        self._unload_all([(entry, "manual") for entry in entries])

    def evict_many(self, names: list[str]) -> list[dict[str, Any]]:
        """`evict --all` / `--idle`: those still evictable now, released once at the end."""
        with self._lock:
            batch = [self._entries[n] for n in names if n in self._entries]
            batch = [e for e in batch if e.evictable]
            for entry in batch:
                entry.state = UNLOADING
        return self._unload_all([(entry, "manual") for entry in batch])

    # -- what commands read -----------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        now, wall = self._clock(), self._wall()
        with self._lock:  # copy under the lock; the O(N) formatting happens without it
            entries = list(self._entries.values())
        entries.sort(key=lambda e: -e.last_used)
        return [report.describe(e, now, wall) for e in entries]

    def stats(self) -> dict[str, Any]:
        models = self.ps()
        with self._lock:
            figures = report.counters(
                self.hits,
                self.misses,
                by_reason=self._by_reason,
                model_stats=self._model_stats,
                evictions=self._evictions,
                configured=self.models,
            )
            runtime = self._runtime.report()
        return report.stats(models, figures, self._budget, runtime)

    def runtime_overhead(self) -> list[dict[str, Any]]:
        """``ps``' "runtime" list: each device's runtime overhead (perfd.cache.runtime)."""
        with self._lock:
            return self._runtime.report()

    def loaded_names(self) -> list[str]:
        with self._lock:
            return [n for n, e in self._entries.items() if e.state == READY]
