"""Benchmark 9: the model cache's own bookkeeping with 1, 100 and 10,000 entries.

In-process, three real ``perfd.cache.core.ModelCache`` side by side, each with ``N`` entries loaded
by a trivial loader defined here (instant, a few bytes: what is timed is the cache, not a
model). ``max_models = 0`` (no limit) and a capacity of 1 PiB keep every entry in; keep_alive
is "forever" so nothing expires. perfd's log lines go to a buffer (warnings are printed).

- Preload: each cache loads its N models one by one (``lease(name).release()``: a miss and a
  load each), through the cache's real load path; the mean cost per load is shown (info).
- The subject: ``lease(name)`` + ``release()`` of a hit, on names drawn at random (uniformly,
  beforehand) from the loaded ones. Each round times a batch of ``batch`` pairs on each line,
  the lines in a shuffled order; the figure is the median over rounds of the batch's time per
  pair. Target: the largest N costs at most 2x N=1 (a hit must not scan the entries). A fourth
  line (info) draws from 100 of the largest cache's names only: the same cache, a small working
  set, which tells an O(N) path from the CPU cache misses of touching entries at random.
- After the rounds (``ONCE_RUNS`` interleaved passes, median): ``ps()`` and ``stats()`` (what
  `perfctl ps` and `perfctl stats` run: O(N) by nature), ``housekeep()`` (what perfd's keeper
  runs every ``[cache] housekeeping``, 1 s by default) and ``evictable(idle_only=True)``
  (``evict --idle``): each holds the cache's lock for most of its run, so a lease waits for it.
  Then ``evict()`` of a few entries per cache (each unload runs ``perfd.cache.meter.release()``).

The caches are dropped, not ``close()``d: close() unloads entry by entry, a full
``gc.collect()`` each, which at 10,000 entries takes minutes (the evict column shows the cost of
one); the trivial models hold nothing that needs an unload.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import Check, captured_log, median, print_table

SIZES = (1, 100, 10_000)
QUICK_SIZES = (1, 100, 2_000)
TARGET = 2.0  # lease+release at the largest N / at N=1 <= this
HOT = 100  # names in the small working set of the info line
ONCE_RUNS = 3
EVICTS = 3  # evict() calls timed per cache


@dataclass(frozen=True)
class Options:
    rounds: int = 30
    batch: int = 2000  # lease+release pairs per line and round
    sizes: tuple[int, ...] = SIZES


class TrivialLoader:
    """A loader whose models are a small object: load, infer and unload cost nothing."""

    name = "trivial"

    def estimate(self, spec: Any) -> int:
        return 1024

    def load(self, spec: Any) -> Any:
        from perfd.loaders.base import Loaded

        return Loaded(model=object(), estimate_bytes=1024)

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        return inputs

    def unload(self, model: Any) -> None:
        return None


@dataclass
class Subject:
    size: int
    cache: Any  # perfd.cache.core.ModelCache
    names: list[str]
    preload_s: float = 0.0
    once_ms: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Line:
    """One timed line: a cache and the names its lookups draw from."""

    label: str
    subject: Subject
    pool: list[str]
    pair_us: list[float] = field(default_factory=list)  # per round: µs per lease+release


def _build(size: int) -> Subject:
    from perfd import config
    from perfd.cache.core import ModelCache

    names = [f"model-{i:05d}" for i in range(size)]
    cfg = config.parse(
        {
            "cache": {"max_models": 0, "keep_alive": "forever"},
            "models": {name: {"loader": TrivialLoader.name} for name in names},
        }
    )
    loader = TrivialLoader()
    cache = ModelCache(cfg.cache, cfg.models, lambda _: loader, lambda _: 1 << 50)
    started = time.perf_counter()
    for name in names:
        cache.lease(name).release()
    subject = Subject(size, cache, names, preload_s=time.perf_counter() - started)
    loaded = len(cache.loaded_names())
    if loaded != size:
        raise RuntimeError(f"N={size}: {loaded} models loaded after the preload")
    return subject


def _time_pairs(cache: Any, names: list[str]) -> float:
    """Seconds for lease + release of each name, in order."""
    lease = cache.lease
    started = time.perf_counter()
    for name in names:
        lease(name).release()
    return time.perf_counter() - started


def _once(subjects: list[Subject], rng: random.Random) -> None:
    """ps(), stats(), housekeep(), evictable(): ONCE_RUNS interleaved passes; then evict()."""
    from perfd.cache.core import READY

    order = list(subjects)
    for _ in range(ONCE_RUNS):
        rng.shuffle(order)
        for s in order:
            cache = s.cache
            calls = {
                "ps": cache.ps,
                "stats": cache.stats,
                "housekeep": cache.housekeep,
                "evictable": lambda c=cache: c.evictable(idle_only=True),
            }
            for what, call in calls.items():
                started = time.perf_counter()
                result = call()
                s.once_ms.setdefault(what, []).append(1000 * (time.perf_counter() - started))
                if what == "ps" and (
                    len(result) != s.size or any(m["state"] != READY for m in result)
                ):
                    raise RuntimeError(f"N={s.size}: ps() lists {len(result)} models")
                if what == "housekeep" and result:
                    raise RuntimeError(f"N={s.size}: housekeep() evicted {len(result)}")
    for s in order:
        for name in rng.sample(s.names, min(EVICTS, s.size)):
            started = time.perf_counter()
            s.cache.evict(name)
            s.once_ms.setdefault("evict", []).append(1000 * (time.perf_counter() - started))


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    rng = random.Random(9)
    with captured_log() as logged:
        subjects = [_build(size) for size in options.sizes]
        largest = subjects[-1]
        lines = [Line(f"N={s.size:,}", s, s.names) for s in subjects]
        hot = min(HOT, largest.size)
        lines.append(
            Line(
                f"N={largest.size:,}, {hot} hot names (info)",
                largest,
                rng.sample(largest.names, hot),
            )
        )
        for line in lines:  # warm-up, untimed
            _time_pairs(line.subject.cache, rng.choices(line.pool, k=options.batch))
        hits_before = {s.size: s.cache.hits for s in subjects}
        order = list(lines)
        for _ in range(options.rounds):
            rng.shuffle(order)
            for line in order:
                names = rng.choices(line.pool, k=options.batch)
                seconds = _time_pairs(line.subject.cache, names)
                line.pair_us.append(1e6 * seconds / options.batch)
        for s in subjects:
            timed = sum(options.rounds * options.batch for line in lines if line.subject is s)
            if s.cache.hits != hits_before[s.size] + timed or s.cache.misses != s.size:
                raise RuntimeError(f"N={s.size}: {s.cache.hits} hits, {s.cache.misses} misses")
        _once(subjects, rng)
        gc_figures = _gc_cost()
    warnings = [line for line in logged.getvalue().splitlines() if line.strip()]
    return _report(options, subjects, lines, warnings, gc_figures)


def _gc_cost() -> dict[str, float]:
    """What a full gc.collect() (the first thing every unload does) costs in this process."""
    import gc

    times = []
    for _ in range(ONCE_RUNS):
        started = time.perf_counter()
        gc.collect()
        times.append(1000 * (time.perf_counter() - started))
    return {"objects": len(gc.get_objects()), "collect_ms": median(times)}


def _report(
    options: Options,
    subjects: list[Subject],
    lines: list[Line],
    warnings: list[str],
    gc_figures: dict[str, float],
) -> tuple[dict[str, Any], list[Check]]:
    base_us = median(lines[0].pair_us)
    figures: dict[str, dict[str, float]] = {}
    rows = []
    for line in lines:
        s = line.subject
        pair = median(line.pair_us)
        once = {what: median(values) for what, values in s.once_ms.items()}
        main = line.pool is s.names
        figures[line.label] = {"lease_release_us": pair}
        if main:
            figures[line.label].update(
                {"preload_us_per_load": 1e6 * s.preload_s / s.size}
                | {f"{what}_ms": value for what, value in once.items()}
            )
        rows.append(
            (
                line.label,
                pair,
                min(line.pair_us),
                max(line.pair_us),
                pair / base_us,
                *(
                    (
                        1e6 * s.preload_s / s.size,
                        once["ps"],
                        once["stats"],
                        once["housekeep"],
                        once["evictable"],
                        once["evict"],
                    )
                    if main
                    else (None,) * 6
                ),
            )
        )
    print_table(
        f"9. cache_bookkeeping: ModelCache with N trivial models ({options.rounds} rounds x "
        f"{options.batch} lease+release per line, interleaved)",
        [
            "entries",
            "lease+release µs",
            "min",
            "max",
            "x N=1",
            "a load µs (preload)",
            "ps() ms",
            "stats() ms",
            "housekeep() ms",
            "evictable() ms",
            "evict() ms",
        ],
        rows,
    )
    largest = subjects[-1]
    top = figures[f"N={largest.size:,}"]
    print(
        "lease+release: median over rounds of a batch's time per pair (names drawn at random "
        f"from the line's pool); target: N={largest.size:,} / N=1 <= {TARGET:g}. ps(), stats(), "
        "housekeep() (every 1 s in perfd) and evictable() hold the cache's lock: a lease waits."
    )
    print(
        f"at N={largest.size:,}: ps() {1000 * top['ps_ms'] / largest.size:.1f} µs per entry; "
        f"preloading took {largest.preload_s:.1f} s; close() or evict --all would take about "
        f"{largest.size * top['evict_ms'] / 1000:.0f} s (N x one evict())"
    )
    print(
        "evict(): each unload runs perfd.cache.meter.release(), a full gc.collect() of the process "
        f"(here {gc_figures['objects']:,.0f} objects, the three caches' included: "
        f"{gc_figures['collect_ms']:.1f} ms alone) and malloc_trim, so it costs the same at "
        "every N here"
    )
    for line in warnings[:5]:
        print(f"  perfd warning: {line[:300]}")
    largest_line = lines[len(subjects) - 1]
    checks = [
        Check(
            "9 cache",
            f"lease+release, N={largest.size:,} vs N=1",
            "µs",
            median(largest_line.pair_us),
            "N=1",
            base_us,
            limit=TARGET,
        ),
        Check(
            "9 cache",
            f"lease+release, N={largest.size:,}, {HOT} hot names",
            "µs",
            median(lines[-1].pair_us),
            "N=1",
            base_us,
        ),
        Check(
            "9 cache",
            f"ps(), N={largest.size:,}",
            "ms",
            top["ps_ms"],
            "N=100",
            figures["N=100"]["ps_ms"],
        ),
        Check(
            "9 cache",
            f"housekeep(), N={largest.size:,}",
            "ms",
            top["housekeep_ms"],
            "N=100",
            figures["N=100"]["housekeep_ms"],
        ),
        Check(
            "9 cache",
            f"a load (preload), N={largest.size:,}",
            "µs",
            top["preload_us_per_load"],
            "N=100",
            figures["N=100"]["preload_us_per_load"],
        ),
        Check(
            "9 cache",
            f"evict() one entry, N={largest.size:,}",
            "ms",
            top["evict_ms"],
            "N=100",
            figures["N=100"]["evict_ms"],
        ),
    ]
    data = {
        "rounds": options.rounds,
        "batch": options.batch,
        "sizes": list(options.sizes),
        "figures": figures,
        "pair_us": {line.label: line.pair_us for line in lines},
        "once_ms": {s.size: s.once_ms for s in subjects},
        "preload_s": {s.size: s.preload_s for s in subjects},
        "warnings": warnings,
        "gc": gc_figures,
    }
    return data, checks
