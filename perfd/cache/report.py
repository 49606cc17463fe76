"""What the cache shows: the ``ps`` entries and the ``stats`` section, made from its data.

The cache copies what it needs under its lock; these functions format it without the lock
(docs/protocol.md shows the replies).
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from perfd.cache.entry import Entry, ModelStats
from perfd.wire.values import FOREVER, READY, rfc3339


@dataclass(frozen=True)
class Counters:
    """The cache-wide figures, copied under the cache's lock."""

    hits: int
    misses: int
    by_reason: dict[str, int]
    model_stats: dict[str, tuple[int, int, int]]  # name -> hits, misses, loads
    recent_evictions: list[dict[str, Any]]  # newest first
    configured: list[str]


def counters(
    hits: int,
    misses: int,
    *,
    by_reason: dict[str, int],
    model_stats: dict[str, ModelStats],
    evictions: collections.deque[dict[str, Any]],
    configured: Iterable[str],
) -> Counters:
    """A copy of the cache's figures (call it under the lock)."""
    return Counters(
        hits,
        misses,
        dict(by_reason),
        {name: (s.hits, s.misses, s.loads) for name, s in model_stats.items()},
        list(evictions)[::-1],
        sorted(configured),
    )


def describe(e: Entry, now: float, wall: float) -> dict[str, Any]:
    """One ``ps`` entry; ``now`` is the cache's clock, ``wall`` the time of day."""
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


def eviction(entry: Entry, reason: str, wall: float, freed: int | None) -> dict[str, Any]:
    """The record of one unload (``stats``' recent_evictions, the cache.evicted log line)."""
    return {
        "model": entry.spec.name,
        "reason": reason,
        "at": rfc3339(wall),
        "device": entry.spec.device,
        "bytes": entry.size,
        "freed_rss_bytes": freed,
    }


def stats(
    models: list[dict[str, Any]], figures: Counters, budget: Callable[[str], int | None]
) -> dict[str, Any]:
    """The ``cache`` section of ``stats`` from the ``ps`` entries and the counters."""
    by_device: dict[str, dict[str, int]] = {}
    for m in models:
        sums = by_device.setdefault(m["device"], {"estimated_bytes": 0, "measured_bytes": 0})
        sums["estimated_bytes"] += m["estimated_bytes"] or 0
        sums["measured_bytes"] += m["measured_bytes"] or 0
    for name, sums in by_device.items():
        sums["budget_bytes"] = budget(name) or 0
    lookups = figures.hits + figures.misses
    return {
        "models": models,
        "loaded": sum(1 for m in models if m["state"] == READY),
        "hits": figures.hits,
        "misses": figures.misses,
        "hit_ratio": round(figures.hits / lookups, 4) if lookups else None,
        "devices": by_device,
        "evictions": figures.by_reason,
        # every model looked up so far, loaded or not: the counters outlive evictions
        "counters": {
            name: {"hits": hits, "misses": misses, "loads": loads}
            for name, (hits, misses, loads) in sorted(figures.model_stats.items())
        },
        "recent_evictions": figures.recent_evictions,
        "configured": figures.configured,
    }
