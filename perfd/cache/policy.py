"""The cache's policy: budgets, which entries to evict, when a keep-alive ends.

Functions of values, with no lock, thread or clock of their own: the cache calls them under
its lock with its entries (anything with the attributes of ``Candidate``), then acts on the
answer. Eviction takes least-recently-used entries, never a pinned one or one with a lease,
and prefers one cold entry that alone covers the shortfall; a model that cannot fit even
after evicting everything evictable is refused at once, with the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from perfd.cache.errors import NoCapacity, TooManyModels
from perfd.wire.units import parse_size
from perfd.wire.values import FOREVER, UNLOADING


class Candidate(Protocol):
    """What the policy reads of an entry."""

    @property
    def device(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def last_used(self) -> float: ...

    @property
    def evictable(self) -> bool: ...


C = TypeVar("C", bound=Candidate)


def budget_bytes(text: str, capacity: int | None) -> int | None:
    """A "50%" or "16GiB" budget in bytes; None when a percent has no known capacity."""
    if text.endswith("%"):
        return None if capacity is None else int(capacity * float(text[:-1]) / 100)
    return parse_size(text)


def lru(entries: Iterable[C]) -> list[C]:
    """The evictable ones among ``entries``, least recently used first."""
    return sorted((e for e in entries if e.evictable), key=lambda e: e.last_used)


def choose(cold: Sequence[C], shortfall: int) -> list[C]:
    """Victims for ``shortfall`` bytes from ``cold`` (LRU order): the least recently used
    entry that alone covers it, else entries in LRU order until it is covered."""
    if shortfall <= 0:
        return []
    for entry in cold:
        if entry.size >= shortfall:
            return [entry]
    victims: list[C] = []
    freed = 0
    for entry in cold:
        if freed >= shortfall:
            break
        victims.append(entry)
        freed += entry.size
    return victims


def victims(
    model: str,
    device: str,
    need: int,
    entries: Sequence[C],
    *,
    budget: int | None,
    max_models: int,
    overhead: int = 0,
) -> list[C]:
    """The entries to evict so ``model`` (``need`` more bytes on ``device``) can load among
    ``entries``, with the device's runtime ``overhead`` counted once (it cannot be evicted);
    NoCapacity or TooManyModels when no choice of victims makes room."""
    chosen: list[C] = []
    if budget is not None and need:
        on_device = [e for e in entries if e.device == device and e.state != UNLOADING]
        used = overhead + sum(e.size for e in on_device)
        fixed = overhead + sum(e.size for e in on_device if not e.evictable)
        if need > budget - fixed:
            raise NoCapacity(
                model, device=device, need=need, budget=budget, fixed=fixed, overhead=overhead
            )
        shortfall = used + need - budget
        if shortfall > 0:  # sorting every entry is the costly part: only when needed
            chosen = choose(lru(e for e in on_device), shortfall)
    if max_models:
        live = [e for e in entries if e.state != UNLOADING]
        excess = len(live) + 1 - len(chosen) - max_models
        if excess > 0:
            spare = lru(e for e in live if e not in chosen)
            if len(spare) < excess:
                raise TooManyModels(model, count=len(live) + 1, limit=max_models)
            chosen.extend(spare[:excess])
    return chosen


def over_budget(loaded: C, entries: Iterable[C], budget: int, overhead: int = 0) -> list[C]:
    """After ``loaded`` was measured: the LRU entries (never ``loaded`` itself) to evict so
    its device is back within ``budget``, the device's runtime ``overhead`` counted once."""
    on_device = [e for e in entries if e.device == loaded.device and e.state != UNLOADING]
    over = overhead + sum(e.size for e in on_device) - budget
    if over <= 0:
        return []
    return choose(lru(e for e in on_device if e is not loaded), over)


def under_pressure(
    entries: Sequence[C],
    used_percent: Mapping[str, float],
    capacity: Mapping[str, int | None],
    *,
    high: float,
    low: float,
) -> list[C]:
    """Above the ``high`` watermark on a device (``used_percent``: its use now), the cold
    entries there to evict, oldest first, until the projected use is below ``low``."""
    chosen: list[C] = []
    for device, used_now in used_percent.items():
        size = capacity.get(device)
        if used_now < high or not size:
            continue
        used = used_now
        for entry in lru(e for e in entries if e.device == device):
            if used < low:
                break
            chosen.append(entry)
            used -= 100 * entry.size / size
    return chosen


def expired(keep_alive: float, last_used: float, now: float) -> bool:
    """An idle entry past its keep-alive (``FOREVER`` never is)."""
    return keep_alive != FOREVER and now - last_used >= keep_alive
