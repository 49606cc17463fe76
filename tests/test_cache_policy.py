"""perfd.cache.policy: budgets, LRU choice and eviction plans, as functions of values."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfd.cache import policy
from perfd.cache.errors import NoCapacity, TooManyModels
from perfd.wire.values import FOREVER, LOADING, READY, UNLOADING

MiB = 1 << 20


@dataclass(eq=False)  # identity, like the cache's entries in a victim list
class Fake:
    """An entry as the policy sees it."""

    name: str
    size: int
    last_used: float
    device: str = "cpu"
    state: str = READY
    pinned: bool = False
    leases: int = 0

    @property
    def evictable(self) -> bool:
        return self.state == READY and not self.pinned and self.leases == 0


def names(entries: list[Fake]) -> list[str]:
    return [e.name for e in entries]


def test_budget_bytes_sizes_and_percents() -> None:
    """A size is bytes; a percent is of the capacity, or unknown without one."""
    assert policy.budget_bytes("16GiB", None) == 16 << 30
    assert policy.budget_bytes("50%", 8 << 30) == 4 << 30
    assert policy.budget_bytes("50%", None) is None


def test_lru_orders_the_evictable_oldest_first() -> None:
    """Pinned, leased, loading and unloading entries are never candidates."""
    entries = [
        Fake("new", 1, 30),
        Fake("old", 1, 10),
        Fake("pinned", 1, 1, pinned=True),
        Fake("leased", 1, 2, leases=1),
        Fake("loading", 1, 3, state=LOADING),
        Fake("going", 1, 4, state=UNLOADING),
    ]
    assert names(policy.lru(entries)) == ["old", "new"]


def test_choose_prefers_one_entry_that_covers_the_shortfall() -> None:
    """The oldest entry big enough alone wins over several small older ones."""
    cold = [Fake("s1", 10, 1), Fake("big", 50, 2), Fake("s2", 10, 3)]
    assert names(policy.choose(cold, 30)) == ["big"]


def test_choose_takes_lru_order_until_covered() -> None:
    """No single entry covers it: the oldest go until enough is freed."""
    cold = [Fake("a", 10, 1), Fake("b", 10, 2), Fake("c", 10, 3)]
    assert names(policy.choose(cold, 15)) == ["a", "b"]
    assert policy.choose(cold, 0) == []


def test_victims_refuse_what_cannot_fit_with_the_numbers() -> None:
    """Need more than budget minus the pinned / in-use bytes: NoCapacity with its facts."""
    entries = [Fake("p", 60 * MiB, 1, pinned=True), Fake("o", 10 * MiB, 2)]
    with pytest.raises(NoCapacity) as caught:
        policy.victims("huge", "cpu", 50 * MiB, entries, budget=100 * MiB, max_models=0)
    assert (caught.value.need, caught.value.budget, caught.value.fixed) == (
        50 * MiB,
        100 * MiB,
        60 * MiB,
    )
    assert caught.value.device == "cpu"


def test_victims_cover_the_shortfall_on_the_device_only() -> None:
    """Entries on another device, or already unloading, neither count nor go."""
    entries = [
        Fake("gpu", 90, 0, device="cuda:0"),
        Fake("going", 50, 0, state=UNLOADING),
        Fake("a", 40, 1),
        Fake("b", 40, 2),
    ]
    chosen = policy.victims("new", "cpu", 40, entries, budget=100, max_models=0)
    assert names(chosen) == ["a"]
    assert policy.victims("new", "cpu", 20, entries, budget=100, max_models=0) == []


def test_victims_unknown_size_or_budget_skip_the_bytes() -> None:
    """need 0 (no estimate) or no budget (a percent without capacity): bytes never refuse."""
    entries = [Fake("a", 100, 1)]
    assert policy.victims("new", "cpu", 0, entries, budget=10, max_models=0) == []
    assert policy.victims("new", "cpu", 10**12, entries, budget=None, max_models=0) == []


def test_victims_keep_max_models() -> None:
    """One model too many: the LRU one goes; none evictable: TooManyModels with its facts."""
    entries = [Fake("a", 1, 1), Fake("b", 1, 2)]
    assert names(policy.victims("c", "cpu", 1, entries, budget=None, max_models=2)) == ["a"]
    held = [Fake("a", 1, 1, leases=1), Fake("b", 1, 2, pinned=True)]
    with pytest.raises(TooManyModels) as caught:
        policy.victims("c", "cpu", 1, held, budget=None, max_models=2)
    assert (caught.value.model, caught.value.count, caught.value.limit) == ("c", 3, 2)


def test_over_budget_never_takes_the_model_just_loaded() -> None:
    """A measured load over budget evicts older entries, not itself."""
    loaded = Fake("new", 80, 9)
    entries = [Fake("a", 30, 1), Fake("b", 30, 2), loaded]
    assert names(policy.over_budget(loaded, entries, 100)) == ["a", "b"]
    assert policy.over_budget(loaded, [loaded], 100) == []
    assert policy.over_budget(loaded, [loaded], 50) == []


def test_the_runtime_overhead_counts_once_and_cannot_be_evicted() -> None:
    """A device's runtime overhead is added once to its models' bytes: a load that fits
    without it evicts with it, one that fits only if the overhead could go is refused with
    the overhead among what is fixed, and a measured load goes over budget sooner."""
    entries = [Fake("a", 30, 1), Fake("b", 30, 2)]
    plan = {"budget": 100, "max_models": 0}
    assert policy.victims("new", "cpu", 40, entries, **plan) == []
    assert names(policy.victims("new", "cpu", 40, entries, **plan, overhead=20)) == ["a"]
    assert names(policy.victims("new", "cpu", 40, entries, **plan, overhead=40)) == ["a", "b"]
    with pytest.raises(NoCapacity) as caught:
        policy.victims("new", "cpu", 90, entries, **plan, overhead=20)
    assert (caught.value.fixed, caught.value.overhead) == (20, 20)
    loaded = Fake("new", 40, 9)
    assert policy.over_budget(loaded, [*entries, loaded], 100) == []
    assert names(policy.over_budget(loaded, [*entries, loaded], 100, overhead=10)) == ["a"]


def test_under_pressure_evicts_to_the_low_watermark() -> None:
    """Above high, oldest first until the projected use is under low; under high, nothing."""
    capacity = {"cpu": 100 * MiB}
    entries = [Fake("a", 2 * MiB, 1), Fake("b", 2 * MiB, 2), Fake("c", 2 * MiB, 3)]
    chosen = policy.under_pressure(entries, {"cpu": 91.0}, capacity, high=90, low=88)
    assert names(chosen) == ["a", "b"]
    assert policy.under_pressure(entries, {"cpu": 89.0}, capacity, high=90, low=88) == []
    unknown = {"cpu": None}
    assert policy.under_pressure(entries, {"cpu": 99.0}, unknown, high=90, low=88) == []


def test_expired_keep_alive() -> None:
    """Idle for keep_alive seconds ends it; forever never ends."""
    assert not policy.expired(30, last_used=100, now=129)
    assert policy.expired(30, last_used=100, now=130)
    assert not policy.expired(FOREVER, last_used=0, now=10**12)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=100), max_size=8),
    protected=st.lists(st.booleans(), max_size=8),
    need=st.integers(min_value=1, max_value=150),
)
def test_victims_make_room_and_spare_the_protected(
    sizes: list[int], protected: list[bool], need: int
) -> None:
    """Whatever the entries: the plan never names a pinned or leased one, and after it the
    new model fits the budget; or it is refused because it cannot."""
    entries = [
        Fake(f"m{i}", size, i, pinned=i < len(protected) and protected[i])
        for i, size in enumerate(sizes)
    ]
    budget = 200
    used = sum(sizes)
    try:
        chosen = policy.victims("new", "cpu", need, entries, budget=budget, max_models=0)
    except NoCapacity as exc:
        assert need > budget - exc.fixed
        return
    assert all(e.evictable for e in chosen)
    assert used - sum(e.size for e in chosen) + need <= budget
