"""The model cache: byte budgets per device, LRU eviction, leases, pins, keep-alive,
single-flight loads, and unloads that really give memory back.

Rules (each one a complaint about other model servers that perfd must not earn):

- A model that cannot fit, even after evicting everything evictable, is refused at once with
  the numbers (no eviction loop).
- Eviction takes least-recently-used entries, never a pinned one or one with a lease (every
  inference holds a lease), and prefers one cold entry that alone covers the shortfall.
- Concurrent requests for a model that is loading wait for that one load; a failed or timed
  out load reports its error to every waiter and leaves nothing behind.
- Sizes: the loader's estimate (or size_hint) before loading, the measured cost after
  (RSS delta; torch's CUDA delta), both kept; budgets use the measurement once known.

Policy and bookkeeping happen under one lock; loading, inference and unloading do not.
"""

from __future__ import annotations

import collections
import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from perfd import log
from perfd.cache import meter as memory
from perfd.config import CacheConfig, ModelConfig
from perfd.errors import CommandError
from perfd.loaders.base import Loader, LoaderError, ModelSpec
from perfd.monitor.alerts import rfc3339
from perfd.wire import protocol
from perfd.wire.values import EVICTION_REASONS, FOREVER, LOADING, READY, UNLOADING

_log = log.get("perfd.cache")

# Below this, an RSS delta is mostly imports and allocator slack: too noisy to call a leak.
LEAK_CHECK_MIN_BYTES: Final = 64 << 20

Capacity = Callable[[str], int | None]  # device -> its total bytes (RAM, cgroup limit, GPU)
GpuUse = Callable[[str], int | None]  # "cuda:N" -> this process's memory there, from NVML
LoaderFor = Callable[[str], Loader]


def budget_bytes(text: str, capacity: int | None) -> int | None:
    """A "50%" or "16GiB" budget in bytes; None when a percent has no known capacity."""
    from perfd.wire.units import parse_size

    if text.endswith("%"):
        return None if capacity is None else int(capacity * float(text[:-1]) / 100)
    return parse_size(text)


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
    measured_by: str | None = None  # "rss", "nvml" or "torch"
    measured_torch: int | None = None  # torch's CUDA count, when NVML measured
    leases: int = 0
    last_used: float = 0.0
    stats: ModelStats = field(default_factory=ModelStats)
    done: threading.Event = field(default_factory=threading.Event)
    error: CommandError | None = None
    abandoned: bool = False
    victims: list[Entry] = field(default_factory=list)  # to evict before this one loads

    @property
    def size(self) -> int:
        return self.measured if self.measured is not None else (self.estimate or 0)

    @property
    def evictable(self) -> bool:
        return self.state == READY and not self.pinned and self.leases == 0


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


class ModelCache:
    def __init__(
        self,
        cfg: CacheConfig,
        models: dict[str, ModelConfig],
        loader_for: LoaderFor,
        capacity: Capacity,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        measure: bool = True,
        gpu_use: GpuUse | None = None,
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_load = on_load  # (model, load seconds) after each successful load: metrics
        self._measure = measure  # False: account by estimates only (tests of pure policy)
        self._gpu_use = gpu_use
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
            known = ", ".join(sorted(set(self.models) | set(self._runtime_specs))) or "none"
            raise CommandError(protocol.NOT_FOUND, f"unknown model '{name}'; known: {known}")
        return spec

    def define(self, spec: ModelSpec) -> None:
        """A model named at run time (`perfctl load NAME --target ...`)."""
        if spec.name in self.models:
            raise CommandError(
                protocol.INVALID_ARGS, f"'{spec.name}' is defined in the config; load it by name"
            )
        self._loader(spec)  # an unknown loader fails here, before anything else
        self._runtime_specs[spec.name] = spec

    def _settings(self, name: str) -> tuple[float, bool]:
        model = self.models.get(name)
        keep_alive = self.cfg.keep_alive
        if model is not None and model.keep_alive is not None:
            keep_alive = model.keep_alive
        return keep_alive, bool(model and model.pin)

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
                    waited = self._clock() - self._overdue[name]
                    raise CommandError(
                        protocol.BUSY,
                        f"an earlier load of '{name}' ran past load_timeout and has been "
                        f"running {waited:.0f}s more; it is unloaded when it ends, then '{name}' "
                        "can load again: retry later",
                    )
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
                raise CommandError(protocol.TIMEOUT, f"'{name}' is still loading")
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
            return self._describe(entry, self._clock(), self._wall()) if entry else {}

    def _plan_load(self, name: str, *, count_miss: bool = True) -> Entry:
        """Under the lock: check the model fits, pick victims, reserve the entry."""
        spec = self.spec(name)
        keep_alive, pinned = self._settings(name)
        loader = self._loader(spec)
        estimate = spec.size_hint
        with contextlib.suppress(Exception):
            estimated = loader.estimate(spec)
            estimate = estimated if estimated is not None else spec.size_hint
        victims = self._victims(spec.device, estimate or 0, name)
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

    def _loader(self, spec: ModelSpec) -> Loader:
        try:
            return self._loader_for(spec.loader)
        except LoaderError as exc:
            raise CommandError(protocol.INVALID_ARGS, str(exc)) from None

    def _victims(self, device: str, need: int, name: str) -> list[Entry]:
        """Entries to evict so ``need`` more bytes fit on ``device``; CommandError if none can."""
        budget = self._budget(device)
        on_device = [e for e in self._entries.values() if e.spec.device == device]
        victims: list[Entry] = []
        if budget is not None and need:
            used = sum(e.size for e in on_device if e.state != UNLOADING)
            fixed = sum(e.size for e in on_device if e.state != UNLOADING and not e.evictable)
            if need > budget - fixed:
                raise CommandError(
                    protocol.NO_CAPACITY,
                    f"'{name}' needs {_gib(need)} on {device}, but only {_gib(budget - fixed)} of "
                    f"the {_gib(budget)} budget can be freed ({_gib(fixed)} is pinned, in use or "
                    "loading); raise [cache] budgets, unpin or evict models",
                )
            shortfall = used + need - budget
            if shortfall > 0:  # sorting every entry is the costly part: only when needed
                cold = sorted((e for e in on_device if e.evictable), key=lambda e: e.last_used)
                victims = _choose(cold, shortfall)
        limit = self.cfg.max_models
        if limit:
            live = [e for e in self._entries.values() if e.state != UNLOADING]
            excess = len(live) + 1 - len(victims) - limit
            if excess > 0:
                spare = sorted(
                    (e for e in live if e.evictable and e not in victims), key=lambda e: e.last_used
                )
                if len(spare) < excess:
                    raise CommandError(
                        protocol.NO_CAPACITY,
                        f"'{name}' would be model {len(live) + 1} of max_models = {limit}, and "
                        "every loaded model is pinned or in use",
                    )
                victims.extend(spare[:excess])
        return victims

    def _budget(self, device: str) -> int | None:
        text = self.cfg.ram_budget if device == "cpu" else self.cfg.gpu_budget
        return budget_bytes(text, self._capacity(device))

    def _load(self, entry: Entry) -> None:
        """On the requesting thread: evict the planned victims, then load with a timeout."""
        victims, entry.victims = entry.victims, []
        for victim in victims:
            self._unload(victim, "lru")
        spec, loader = entry.spec, entry.loader
        assert loader is not None
        outcome: dict[str, Any] = {}
        finished = threading.Event()
        on_gpu = spec.device.startswith("cuda:")

        def run() -> None:
            with self._lock:
                self._loads_running += 1
                self._load_starts += 1
                first = self._load_starts
                alone_at_start = self._loads_running == 1
            before, cuda_before = memory.rss_bytes(), memory.cuda_allocated(spec.device)
            nvml_before = self._gpu_use(spec.device) if self._gpu_use and on_gpu else None
            began = time.monotonic()
            try:
                outcome["loaded"] = loader.load(spec)
            except BaseException as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - began
            outcome["rss"] = memory.rss_bytes() - before
            cuda_after = memory.cuda_allocated(spec.device)
            if cuda_before is not None and cuda_after is not None:
                outcome["cuda"] = cuda_after - cuda_before
            nvml_after = self._gpu_use(spec.device) if self._gpu_use and on_gpu else None
            if nvml_before is not None and nvml_after is not None:
                outcome["nvml"] = nvml_after - nvml_before
            with self._lock:
                # No other load ran at any moment of this one: its deltas are its own.
                outcome["alone"] = (
                    alone_at_start and self._loads_running == 1 and self._load_starts == first
                )
                self._loads_running -= 1
            finished.set()
            self._finish(entry, outcome)

        started = self._clock()
        threading.Thread(target=run, name=f"perfd-load-{spec.name}", daemon=True).start()
        if not self._wait_for_load(entry, finished) and self._abandon(entry):
            _log.error("cache.load_timeout", model=spec.name, load_timeout_s=self.cfg.load_timeout)
            self._fail(
                entry,
                CommandError(
                    protocol.TIMEOUT,
                    f"loading '{spec.name}' took longer than load_timeout "
                    f"({self.cfg.load_timeout:g}s); it will be discarded when it finishes",
                ),
            )
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
            on_device = [
                e
                for e in self._entries.values()
                if e.spec.device == loaded.spec.device and e.state != UNLOADING
            ]
            over = sum(e.size for e in on_device) - budget
            victims = []
            if over > 0:
                cold = sorted(
                    (e for e in on_device if e.evictable and e is not loaded),
                    key=lambda e: e.last_used,
                )
                victims = _choose(cold, over)
            for victim in victims:
                victim.state = UNLOADING
        for victim in victims:
            self._unload(victim, "budget")

    def _finish(self, entry: Entry, outcome: dict[str, Any]) -> None:
        """On the load thread, when the loader returned: adopt the outcome, then let the
        model load again if this load had run past load_timeout."""
        try:
            self._adopt(entry, outcome)
        finally:
            with self._lock:
                self._overdue.pop(entry.spec.name, None)

    def _adopt(self, entry: Entry, outcome: dict[str, Any]) -> None:
        """On the load thread: make the entry ready, or fail it for every waiter."""
        error = outcome.get("error")
        if error is not None:
            message = f"loading '{entry.spec.name}' failed: {type(error).__name__}: {error}"
            _log.error("cache.load_failed", model=entry.spec.name, error=str(error))
            self._fail(entry, CommandError(protocol.LOAD_FAILED, message))
            return
        loaded = outcome["loaded"]
        with self._lock:
            if entry.abandoned:  # timed out meanwhile: leave nothing behind
                discard = True
            else:
                discard = False
                entry.model = loaded.model
                if loaded.estimate_bytes is not None:
                    entry.estimate = loaded.estimate_bytes
                if not self._measure:
                    pass
                elif not getattr(entry.loader, "local_memory", True):
                    # A remote model: what its first load imports (an HTTP client) is not
                    # the model's, and it holds no local weights.
                    entry.measured, entry.measured_by = 0, "remote"
                elif entry.spec.device != "cpu" and "nvml" in outcome and outcome["alone"]:
                    # What nvidia-smi shows for perfd: allocator caches and the CUDA context
                    # included, unlike torch's own count (kept beside it as measured_torch).
                    entry.measured, entry.measured_by = outcome["nvml"], "nvml"
                    entry.measured_torch = outcome.get("cuda")
                elif entry.spec.device != "cpu" and "cuda" in outcome:
                    entry.measured, entry.measured_by = outcome["cuda"], "torch"
                elif entry.spec.device == "cpu" and outcome["alone"]:
                    entry.measured, entry.measured_by = max(0, outcome["rss"]), "rss"
                entry.state = READY
                entry.stats.loads += 1
                entry.last_used = self._clock()
                entry.done.set()
        if discard:
            with contextlib.suppress(Exception):
                assert entry.loader is not None
                entry.loader.unload(loaded.model)
            del loaded
            memory.release()
            _log.warning(
                "cache.load_discarded",
                model=entry.spec.name,
                load_seconds=round(outcome["seconds"], 3),
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

    def _fail(self, entry: Entry, error: CommandError) -> None:
        with self._lock:
            entry.error = error
            entry.abandoned = True
            if self._entries.get(entry.spec.name) is entry:
                del self._entries[entry.spec.name]
            self._runtime_specs.pop(entry.spec.name, None)  # a failed run-time model is gone
            entry.done.set()

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
                state = "not loaded" if entry is None else entry.state
                raise CommandError(protocol.NOT_FOUND, f"'{name}' is {state}")
            if entry.leases:
                raise CommandError(
                    protocol.BUSY, f"'{name}' is in use by {entry.leases} request(s); retry later"
                )
            if entry.pinned:
                raise CommandError(protocol.BUSY, f"'{name}' is pinned; unpin it first")
            entry.state = UNLOADING
        return self._unload(entry, reason)

    def evictable(self, *, idle_only: bool) -> list[str]:
        """Names `evict --all` (or `--idle`: past their keep-alive) would unload now."""
        now = self._clock()
        with self._lock:
            return [
                e.spec.name
                for e in sorted(self._entries.values(), key=lambda e: e.last_used)
                if e.evictable and (not idle_only or self._expired(e, now))
            ]

    def _expired(self, entry: Entry, now: float) -> bool:
        return entry.keep_alive != FOREVER and now - entry.last_used >= entry.keep_alive

    def _unload(self, entry: Entry, reason: str, *, release: bool = True) -> dict[str, Any]:
        """Drop every reference, release memory, check it came back, record the eviction.

        ``release=False`` leaves gc + malloc_trim (tens of ms on a big heap) to the caller,
        which unloads a batch and releases once (see _unload_all); freed_rss_bytes is then
        None for each entry.
        """
        before = memory.rss_bytes()
        model, entry.model = entry.model, None
        with contextlib.suppress(Exception):
            assert entry.loader is not None
            entry.loader.unload(model)
        del model
        freed: int | None = None
        if release:
            memory.release()
            freed = before - memory.rss_bytes()
        with self._lock:
            if self._entries.get(entry.spec.name) is entry:
                del self._entries[entry.spec.name]
            record = {
                "model": entry.spec.name,
                "reason": reason,
                "at": rfc3339(self._wall()),
                "device": entry.spec.device,
                "bytes": entry.size,
                "freed_rss_bytes": freed,
            }
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

    def housekeep(self, used_percent: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Unload expired keep-alives; above the high watermark, evict cold models until the
        projected use is below the low one. ``used_percent`` maps device to its use now."""
        now = self._clock()
        with self._lock:
            expired = [e for e in self._entries.values() if e.evictable and self._expired(e, now)]
            for entry in expired:
                entry.state = UNLOADING
            pressure = self._pressure_victims(used_percent or {})
        return self._unload_all([(e, "ttl") for e in expired] + [(e, "pressure") for e in pressure])

    def _unload_all(self, batch: list[tuple[Entry, str]]) -> list[dict[str, Any]]:
        """Unload several entries, releasing memory once at the end (one gc for all)."""
        if len(batch) == 1:
            return [self._unload(*batch[0])]
        records = [self._unload(entry, reason, release=False) for entry, reason in batch]
        if records:
            memory.release()
        return records

    def _pressure_victims(self, used_percent: dict[str, float]) -> list[Entry]:
        victims: list[Entry] = []
        for device, used_now in used_percent.items():
            capacity = self._capacity(device)
            if used_now < self.cfg.high_watermark or not capacity:
                continue
            used = used_now
            cold = sorted(
                (e for e in self._entries.values() if e.spec.device == device and e.evictable),
                key=lambda e: e.last_used,
            )
            for entry in cold:
                if used < self.cfg.low_watermark:
                    break
                entry.state = UNLOADING
                victims.append(entry)
                used -= 100 * entry.size / capacity
        return victims

    def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        self.spec(name)  # not_found for an unknown model
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise CommandError(protocol.NOT_FOUND, f"'{name}' is not loaded; load it first")
            entry.pinned = pinned
            return self._describe(entry, self._clock(), self._wall())

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
        return [self._describe(e, now, wall) for e in entries]

    def stats(self) -> dict[str, Any]:
        models = self.ps()
        by_device: dict[str, dict[str, int]] = {}
        for m in models:
            figures = by_device.setdefault(m["device"], {"estimated_bytes": 0, "measured_bytes": 0})
            figures["estimated_bytes"] += m["estimated_bytes"] or 0
            figures["measured_bytes"] += m["measured_bytes"] or 0
        for name, figures in by_device.items():
            figures["budget_bytes"] = self._budget(name) or 0
        with self._lock:
            lookups = self.hits + self.misses
            return {
                "models": models,
                "loaded": sum(1 for m in models if m["state"] == READY),
                "hits": self.hits,
                "misses": self.misses,
                "hit_ratio": round(self.hits / lookups, 4) if lookups else None,
                "devices": by_device,
                "evictions": dict(self._by_reason),
                # every model looked up so far, loaded or not: the counters outlive evictions
                "counters": {
                    name: {"hits": s.hits, "misses": s.misses, "loads": s.loads}
                    for name, s in sorted(self._model_stats.items())
                },
                "recent_evictions": list(self._evictions)[::-1],
                "configured": sorted(self.models),
            }

    def _describe(self, e: Entry, now: float, wall: float) -> dict[str, Any]:
        seconds = sorted(e.stats.load_seconds)
        expires = None
        if e.state == READY and e.leases == 0 and e.keep_alive not in (FOREVER,) and not e.pinned:
            expires = rfc3339(wall + max(0.0, e.last_used + e.keep_alive - now))
        return {
            "name": e.spec.name,
            "state": e.state,
            "loader": e.spec.loader,
            "device": e.spec.device,
            "estimated_bytes": e.estimate,
            "measured_bytes": e.measured,
            "measured_by": e.measured_by,
            "measured_torch_bytes": e.measured_torch,
            "hits": e.stats.hits,
            "misses": e.stats.misses,
            "loads": e.stats.loads,
            "load_seconds": {
                "last": round(e.stats.load_seconds[-1], 4) if e.stats.load_seconds else None,
                "p50": round(statistics.median(seconds), 4) if seconds else None,
                "p95": round(seconds[int(0.95 * (len(seconds) - 1))], 4) if seconds else None,
            },
            "last_used": rfc3339(wall - (now - e.last_used)) if e.last_used else None,
            "keep_alive_s": e.keep_alive,
            "expires_at": expires,
            "leases": e.leases,
            "pinned": e.pinned,
        }

    def loaded_names(self) -> list[str]:
        with self._lock:
            return [n for n, e in self._entries.items() if e.state == READY]


def _choose(cold: list[Entry], shortfall: int) -> list[Entry]:
    """Victims for ``shortfall`` bytes: the least recently used entry that alone covers it,
    else entries in LRU order until it is covered."""
    if shortfall <= 0:
        return []
    for entry in cold:
        if entry.size >= shortfall:
            return [entry]
    victims, freed = [], 0
    for entry in cold:
        if freed >= shortfall:
            break
        victims.append(entry)
        freed += entry.size
    return victims


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
