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
from perfd.cache.meter import RssParts
from perfd.wire.values import FOREVER, READY, rfc3339

Pair = tuple[int | None, int | None]  # a figure before and after a release


@dataclass(frozen=True)
class Freed:
    """What one unload gave back: the device's figure (``bytes``: NVML's per-process memory
    on "cuda:N", RSS on "cpu"), RSS with its anonymous and file-backed parts, and NVML's
    per-process memory on a GPU; None where not measured."""

    bytes: int | None = None
    rss: int | None = None
    anon: int | None = None
    file: int | None = None
    gpu: int | None = None

    @classmethod
    def between(
        cls,
        device: str,
        rss: Pair,
        parts: tuple[RssParts | None, RssParts | None],
        gpu: Pair,
    ) -> Freed:
        """The figures before minus after the release."""
        rss_freed, gpu_freed = _minus(*rss), _minus(*gpu)
        before, after = parts
        anon = file = None
        if before is not None and after is not None:
            anon, file = before.anon - after.anon, before.file - after.file
        return cls(rss_freed if device == "cpu" else gpu_freed, rss_freed, anon, file, gpu_freed)


def _minus(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else before - after


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
        "tensor_bytes": e.tensor_bytes,
        "tensor_bytes_by_device": dict(e.tensors) if e.tensors is not None else None,
        "tensor_parts": dict(e.tensor_parts) if e.tensor_parts else None,
        "tensor_counted_by": e.tensors_by,
        "measured_bytes": e.measured,
        "measured_by": e.measured_by,
        "measured_torch_bytes": e.measured_torch,
        "resident_delta": dict(e.resident_delta) if e.resident_delta is not None else None,
        "bytes": e.size,
        "bytes_source": e.size_source,
        "estimate_error_percent": estimate_error(e.estimate, e.size, e.size_source),
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


def estimate_error(estimated: int | None, size: int, source: str) -> float | None:
    """How far the estimate was from the model's bytes, in percent of them (positive: the
    estimate was too high); None when either is unknown."""
    if estimated is None or source == "estimate" or size <= 0:
        return None
    return round(100 * (estimated - size) / size, 1)


def eviction(entry: Entry, reason: str, wall: float, freed: Freed) -> dict[str, Any]:
    """The record of one unload (``stats``' recent_evictions, the cache.evicted log line)."""
    return {
        "model": entry.spec.name,
        "reason": reason,
        "at": rfc3339(wall),
        "device": entry.spec.device,
        "bytes": entry.size,
        "bytes_source": entry.size_source,
        "freed_bytes": freed.bytes,
        "freed_rss_bytes": freed.rss,
        "freed_anon_bytes": freed.anon,
        "freed_file_bytes": freed.file,
        "freed_gpu_bytes": freed.gpu,
    }


_DEVICE_SUMS = ("estimated_bytes", "measured_bytes", "tensor_bytes", "model_bytes")


def stats(
    models: list[dict[str, Any]],
    figures: Counters,
    budget: Callable[[str], int | None],
    runtime: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``cache`` section of ``stats`` from the ``ps`` entries, the counters and the
    devices' runtime overhead (``ps``' "runtime" list)."""
    by_device: dict[str, dict[str, int]] = {}

    def sums_for(device: str) -> dict[str, int]:
        return by_device.setdefault(device, dict.fromkeys(_DEVICE_SUMS, 0))

    for m in models:
        sums = sums_for(m["device"])
        sums["estimated_bytes"] += m["estimated_bytes"] or 0
        sums["measured_bytes"] += m["measured_bytes"] or 0
        sums["tensor_bytes"] += m["tensor_bytes"] or 0
        sums["model_bytes"] += m["bytes"] or 0
    overheads = {row["device"]: row["runtime_overhead_bytes"] for row in runtime or []}
    for device in overheads:
        sums_for(device)
    for name, sums in by_device.items():
        sums["runtime_overhead_bytes"] = overheads.get(name, 0)
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


def host_bytes(models: list[dict[str, Any]], runtime: list[dict[str, Any]]) -> int:
    """What the cache holds in host memory, from ``ps``' entries and its "runtime" list: each
    cpu model's ``bytes``, the host share of the others' tensors, and the cpu runtime overhead
    (imports and allocator pages that stay after every model is evicted)."""
    total = 0
    for m in models:
        if m["device"] == "cpu":
            total += m.get("bytes") or 0
        else:
            total += (m.get("tensor_bytes_by_device") or {}).get("cpu", 0)
    total += sum(r["runtime_overhead_bytes"] or 0 for r in runtime if r["device"] == "cpu")
    return total
