"""From one read to the next record: the state machine and the rates. Pure logic.

``advance(previous, target, outcome, ...)`` turns an engine's previous record and the outcome of
one read (a ``Reading``, or the ``EngineUnavailable`` that stopped it) into its next record:

- a good read is ``up``; an unavailable one takes the exception's state (``down``, ``timeout``,
  ``error``) and its message as the reason, and keeps the last good reading for the post-mortem;
- ``since`` moves only when the state changes;
- ``preemptions_per_min`` comes from two reads of the counter (a counter that went back, an
  engine restarted, gives no rate until the next read);
- ``prefix_cache_hit_ratio`` is hits / queries since the previous read where the engine has the
  counters (vLLM), else the ratio the engine reports itself (SGLang's cache_hit_rate);
- ``gpu_memory_bytes`` is NVML's per-process memory of the engine's pids, summed.

``transition(previous, record)`` says which log event a change of state is (``engine.up``,
``engine.down``, ``engine.timeout``, ``engine.error``, ``engine.starting``) or None when the
state stayed: the watcher logs once per transition, never per read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from perfd.engines.errors import EngineUnavailable
from perfd.engines.record import UP, EngineRecord, Reading, Target


@dataclass(frozen=True)
class Counters:
    """The counters of the previous good read, with its monotonic time."""

    t: float
    preemptions: float | None
    prefix_queries: float | None
    prefix_hits: float | None


def gpu_bytes(pids: tuple[int, ...], processes: Mapping[int, int]) -> int | None:
    """The engine's processes' GPU memory (NVML's per-process figures, every GPU summed); None
    when none of its pids holds GPU memory NVML reports (or it has no known pids)."""
    held = [processes[pid] for pid in pids if pid in processes]
    return sum(held) if held else None


def _rate_per_min(cur: float | None, prev: float | None, elapsed: float) -> float | None:
    if cur is None or prev is None or elapsed <= 0 or cur < prev:
        return None
    return round((cur - prev) / elapsed * 60.0, 3)


def _hit_ratio(reading: Reading, counters: Counters | None) -> float | None:
    q, h = reading.prefix_cache_queries_total, reading.prefix_cache_hits_total
    if q is not None and h is not None and counters is not None:
        pq, ph = counters.prefix_queries, counters.prefix_hits
        if pq is not None and ph is not None and q > pq and h >= ph:
            return round(min(1.0, (h - ph) / (q - pq)), 4)
    return reading.prefix_cache_hit_ratio


def advance(
    previous: EngineRecord | None,
    counters: Counters | None,
    target: Target,
    outcome: Reading | EngineUnavailable,
    *,
    now: float,
    wall: float,
    processes: Mapping[int, int],
) -> tuple[EngineRecord, Counters | None]:
    """The next record of ``target`` and the counters to keep for the next read."""
    memory = gpu_bytes(target.pids, processes)
    if isinstance(outcome, EngineUnavailable):
        state, reason = outcome.state, str(outcome) or type(outcome).__name__
        kept = previous.reading if previous is not None else None
        since = previous.since if previous is not None and previous.state == state else wall
        record = EngineRecord(
            target=target,
            state=state,
            reason=reason,
            reading=kept,
            gpu_memory_bytes=memory,
            read_at=wall,
            since=since,
        )
        return record, None  # rates start again from the next good read
    elapsed = now - counters.t if counters is not None else 0.0
    rate = None
    if counters is not None:
        rate = _rate_per_min(outcome.preemptions_total, counters.preemptions, elapsed)
    since = previous.since if previous is not None and previous.state == UP else wall
    record = EngineRecord(
        target=target,
        state=UP,
        reading=outcome,
        preemptions_per_min=rate,
        prefix_cache_hit_ratio=_hit_ratio(outcome, counters),
        gpu_memory_bytes=memory,
        read_at=wall,
        since=since,
    )
    kept_counters = Counters(
        now,
        outcome.preemptions_total,
        outcome.prefix_cache_queries_total,
        outcome.prefix_cache_hits_total,
    )
    return record, kept_counters


def transition(previous: EngineRecord | None, record: EngineRecord) -> str | None:
    """The log event of a state change, or None (same state; a first read that is up is a
    change: ``engine.up``)."""
    if previous is not None and previous.state == record.state:
        return None
    return f"engine.{record.state}"


def with_target(record: EngineRecord, target: Target) -> EngineRecord:
    """The record with a newer target (pids or unit found by discovery meanwhile)."""
    return record if record.target == target else replace(record, target=target)
