"""The model cache: budgets, LRU, pins, leases, keep-alive, single flight, real unloads."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from perfd import config, log
from perfd.cache import errors
from perfd.cache.core import READY, ModelCache
from perfd.cache.errors import CacheError
from perfd.cache.meter import ProcessMeter, RssParts
from perfd.handlers.errors import code_for
from perfd.loaders.base import Loaded, LoaderError, ModelSpec
from tests.daemons import wait_until

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_lines() -> io.StringIO:
    """perfd's log lines, written here instead of stdout (the autouse fixture resets it)."""
    stream = io.StringIO()
    log.configure(stream=stream)
    return stream


def logged(stream: io.StringIO, event: str) -> dict[str, Any]:
    """The first ``event`` in ``stream``, once the load thread has written it."""
    wait_until(lambda: f'"event": "{event}"' in stream.getvalue())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return next(line for line in lines if line["event"] == event)


class FakeLoader:
    """Loads "models" of a size given in options (bytes), optionally blocking or failing."""

    name = "fake"

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.unloads: list[Any] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail: Exception | None = None
        self.allocate = False

    def estimate(self, spec: ModelSpec) -> int | None:
        return int(spec.options.get("size", 0)) or None

    def load(self, spec: ModelSpec) -> Loaded:
        self.loads.append(spec.name)
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        model: dict[str, Any] = {"name": spec.name}
        if self.allocate:
            block = bytearray(int(spec.options["size"]))
            block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # touch every page
            model["block"] = block
        return Loaded(model, self.estimate(spec))

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        return {"model": model["name"], "inputs": inputs}

    def unload(self, model: Any) -> None:
        self.unloads.append(model["name"])


def make_cache(
    models: dict[str, int],
    *,
    budget: str = "100MiB",
    loader: FakeLoader | None = None,
    measure: bool = False,
    meter: Any = None,
    **cache: Any,
) -> tuple[ModelCache, FakeLoader, Clock]:
    """A cache of fake models named by size in MiB; pins via a `pinned` set in cache kw."""
    pinned = cache.pop("pinned", set())
    keep = cache.pop("keep_alive_by_model", {})
    doc: dict[str, Any] = {"cache": {"ram_budget": budget, **cache}, "models": {}}
    for name, mib in models.items():
        table: dict[str, Any] = {"loader": "fake", "options": {"size": mib * MiB}}
        if name in pinned:
            table["pin"] = True
        if name in keep:
            table["keep_alive"] = keep[name]
        doc["models"][name] = table
    cfg = config.parse(doc)
    loader = loader or FakeLoader()
    clock = Clock()

    def loader_for(name: str) -> Any:
        if name != "fake":
            raise LoaderError(f"unknown loader {name}")
        return loader

    cache_obj = ModelCache(
        cfg.cache,
        cfg.models,
        loader_for,
        lambda device: 1 << 30,
        clock=clock,
        measure=measure,
        meter=meter,
    )
    return cache_obj, loader, clock


def use(cache: ModelCache, clock: Clock, name: str) -> None:
    clock.now += 1
    with cache.lease(name):
        pass


def loaded(cache: ModelCache) -> list[str]:
    return sorted(cache.loaded_names())


def test_hit_after_miss() -> None:
    """The first lookup loads (a miss); the next is a hit with no second load."""
    cache, loader, clock = make_cache({"a": 10})
    use(cache, clock, "a")
    use(cache, clock, "a")
    assert loader.loads == ["a"]
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["hit_ratio"]) == (1, 1, 0.5)


def test_lru_evicts_least_recently_used() -> None:
    """Over budget, the least recently used model goes first."""
    cache, loader, clock = make_cache({"a": 40, "b": 40, "c": 40})
    use(cache, clock, "a")
    use(cache, clock, "b")
    use(cache, clock, "a")
    use(cache, clock, "c")
    assert loaded(cache) == ["a", "c"]
    assert cache.stats()["evictions"]["lru"] == 1
    assert loader.unloads == ["b"]


def test_prefers_one_cold_entry_that_covers_the_shortfall() -> None:
    """Rather than two small LRU entries, evict one older-but-big-enough entry."""
    cache, _, clock = make_cache({"small1": 10, "big": 50, "small2": 10, "new": 60})
    use(cache, clock, "small1")
    use(cache, clock, "big")
    use(cache, clock, "small2")
    use(cache, clock, "new")  # needs 60: 70 used + 60 > 100 -> shortfall 30; big alone covers
    assert loaded(cache) == ["new", "small1", "small2"]


def test_cannot_fit_fails_at_once_with_numbers() -> None:
    """A model bigger than the budget minus pinned bytes is refused without evicting anything."""
    cache, loader, clock = make_cache({"pinned": 60, "other": 10, "huge": 50}, pinned={"pinned"})
    use(cache, clock, "pinned")
    use(cache, clock, "other")
    with pytest.raises(errors.NoCapacity) as caught:
        use(cache, clock, "huge")
    assert code_for(caught.value) == "no_capacity"
    facts = caught.value
    assert (facts.model, facts.device, facts.need) == ("huge", "cpu", 50 * MiB)
    assert (facts.budget, facts.fixed, facts.freeable) == (100 * MiB, 60 * MiB, 40 * MiB)
    assert "needs 0.05 GiB" in caught.value.message
    assert "0.04 GiB" in caught.value.message  # what could be freed
    assert loaded(cache) == ["other", "pinned"]
    assert loader.loads == ["pinned", "other"]


def test_leased_entries_are_never_evicted() -> None:
    """A model in use cannot be evicted, by LRU or by hand."""
    cache, _, clock = make_cache({"a": 60, "b": 60})
    lease = cache.lease("a")
    with pytest.raises(errors.NoCapacity) as caught:
        use(cache, clock, "b")
    assert code_for(caught.value) == "no_capacity"
    with pytest.raises(errors.InUse, match="in use by 1") as in_use:
        cache.evict("a")
    assert (in_use.value.model, in_use.value.leases) == ("a", 1)
    assert code_for(in_use.value) == "busy"
    lease.release()
    use(cache, clock, "b")
    assert loaded(cache) == ["b"]


def test_pinned_entries_are_never_evicted() -> None:
    """Pinned: not by LRU, not by pressure, not by hand until unpinned."""
    cache, _, clock = make_cache({"p": 30, "x": 30, "y": 50}, pinned={"p"})
    use(cache, clock, "p")
    use(cache, clock, "x")
    use(cache, clock, "y")  # must evict x, not the older p
    assert loaded(cache) == ["p", "y"]
    with pytest.raises(errors.Pinned, match="pinned") as pinned:
        cache.evict("p")
    assert (pinned.value.model, code_for(pinned.value)) == ("p", "busy")
    cache.housekeep({"cpu": 99.0})
    assert loaded(cache) == ["p"]  # pressure took y, the unpinned one
    cache.pin("p", False)
    cache.evict("p")
    assert loaded(cache) == []


def test_max_models() -> None:
    """max_models evicts the LRU model even when bytes would fit."""
    cache, _, clock = make_cache({"a": 1, "b": 1, "c": 1}, max_models=2)
    for name in ("a", "b", "c"):
        use(cache, clock, name)
    assert loaded(cache) == ["b", "c"]


def test_keep_alive_ttl_and_zero_and_forever() -> None:
    """Idle models expire after keep_alive; 0 unloads when idle; forever stays."""
    cache, _, clock = make_cache(
        {"ttl": 1, "zero": 1, "forever": 1},
        keep_alive="30s",
        keep_alive_by_model={"zero": 0, "forever": "forever"},
    )
    for name in ("ttl", "zero", "forever"):
        use(cache, clock, name)
    assert loaded(cache) == ["forever", "ttl"]  # zero went at release
    clock.now += 26  # "ttl" was last used 2 s before the end of the loop: idle 28 s
    assert cache.housekeep() == []
    clock.now += 3  # idle 31 s
    assert [r["model"] for r in cache.housekeep()] == ["ttl"]
    clock.now += 10**6
    cache.housekeep()
    assert loaded(cache) == ["forever"]
    assert cache.stats()["evictions"]["ttl"] == 2


def test_use_resets_keep_alive() -> None:
    """Each use restarts the idle clock."""
    cache, _, clock = make_cache({"a": 1}, keep_alive="30s")
    for _ in range(5):
        use(cache, clock, "a")
        clock.now += 20
        cache.housekeep()
    assert loaded(cache) == ["a"]


def test_pressure_evicts_cold_models_to_the_low_watermark() -> None:
    """Above high_watermark, cold models go, oldest first, until projected under low."""
    cache, _, clock = make_cache(
        {"a": 20, "b": 20, "c": 20}, budget="1GiB", high_watermark=90, low_watermark=88
    )
    for name in ("a", "b", "c"):
        use(cache, clock, name)
    # capacity 1 GiB: each model is ~1.95% of it. 91% -> evict a (89.05), b (87.1) -> stop.
    records = cache.housekeep({"cpu": 91.0})
    assert [r["model"] for r in records] == ["a", "b"]
    assert all(r["reason"] == "pressure" for r in records)
    assert cache.housekeep({"cpu": 85.0}) == []


def test_single_flight_under_threads() -> None:
    """Eight concurrent requests for a loading model trigger one load and all get it."""
    loader = FakeLoader()
    loader.gate = threading.Event()
    cache, _, _ = make_cache({"a": 1}, loader=loader)
    results: list[Any] = []

    def request() -> None:
        with cache.lease("a") as lease:
            results.append(lease.model)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert loader.started.wait(5)
    loader.gate.set()
    for thread in threads:
        thread.join(10)
    assert loader.loads == ["a"]
    assert len(results) == 8
    assert all(model is results[0] for model in results)


def test_failed_load_reaches_every_waiter_and_leaves_nothing() -> None:
    """A load that raises fails every waiting request; nothing stays behind; retry works."""
    loader = FakeLoader()
    loader.gate = threading.Event()
    loader.fail = RuntimeError("weights corrupt")
    cache, _, clock = make_cache({"a": 1}, loader=loader)
    failures: list[errors.LoadFailed] = []

    def request() -> None:
        try:
            cache.lease("a")
        except errors.LoadFailed as exc:
            failures.append(exc)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert loader.started.wait(5)
    loader.gate.set()
    for thread in threads:
        thread.join(10)
    assert [code_for(e) for e in failures] == ["load_failed"] * 4
    assert "weights corrupt" in failures[0].message
    assert (failures[0].error_type, failures[0].detail) == ("RuntimeError", "weights corrupt")
    assert cache.ps() == []
    loader.fail = None
    use(cache, clock, "a")
    assert loaded(cache) == ["a"]


def test_a_loader_returning_none_is_a_load_failure() -> None:
    """A loader whose load() returns None instead of a Loaded fails the load with a message
    that says so; nothing stays behind."""

    class NoneLoader(FakeLoader):
        def load(self, spec: ModelSpec) -> Loaded:
            return None  # type: ignore[return-value]

    cache, _, _ = make_cache({"a": 1}, loader=NoneLoader())
    with pytest.raises(errors.LoadFailed) as caught:
        cache.lease("a")
    assert caught.value.error_type == "TypeError"
    assert "returned None" in caught.value.message
    assert code_for(caught.value) == "load_failed"
    assert cache.ps() == []


def test_load_timeout_discards_the_late_model(log_lines: io.StringIO) -> None:
    """A load past load_timeout fails; when it finally returns, the model is unloaded and
    cache.load_discarded logged."""
    loader = FakeLoader()
    loader.gate = threading.Event()
    cache, _, _ = make_cache({"a": 1}, loader=loader, load_timeout="100ms")
    with pytest.raises(errors.LoadTimeout) as caught:
        cache.lease("a")
    assert code_for(caught.value) == "timeout"
    assert (caught.value.model, caught.value.timeout_s) == ("a", 0.1)
    assert cache.ps() == []
    done = threading.Event()
    original = loader.unload
    loader.unload = lambda model: (original(model), done.set())  # type: ignore[method-assign]
    loader.gate.set()
    assert done.wait(5)
    assert loader.unloads == ["a"]
    assert cache.ps() == []
    assert logged(log_lines, "cache.load_discarded")["model"] == "a"


def test_no_second_load_while_an_overdue_one_still_runs(log_lines: io.StringIO) -> None:
    """After a load times out, the same model is `busy` until that load ends (two copies
    could need twice the memory); then it loads again."""
    loader = FakeLoader()
    loader.gate = threading.Event()
    cache, _, _ = make_cache({"a": 1}, loader=loader, load_timeout="100ms")
    with pytest.raises(errors.LoadTimeout) as timed_out:
        cache.lease("a")
    assert code_for(timed_out.value) == "timeout"
    with pytest.raises(errors.LoadOverdue) as caught:
        cache.lease("a")
    assert code_for(caught.value) == "busy"
    assert caught.value.model == "a"
    assert caught.value.overdue_s >= 0
    assert "an earlier load of 'a' ran past load_timeout" in caught.value.message
    assert loader.loads == ["a"]  # no second load started
    unloaded = threading.Event()
    original = loader.unload
    loader.unload = lambda model: (original(model), unloaded.set())  # type: ignore[method-assign]
    loader.gate.set()
    assert unloaded.wait(5)

    def loads_again() -> bool:  # the load thread drops its mark just after the unload
        try:
            with cache.lease("a") as lease:
                return bool(lease.model == {"name": "a"})
        except CacheError as exc:
            assert isinstance(exc, errors.LoadOverdue)
            assert code_for(exc) == "busy"
            return False

    wait_until(loads_again, timeout=5, every=0.01)
    assert loader.loads == ["a", "a"]
    assert logged(log_lines, "cache.load_discarded")["model"] == "a"


def test_unknown_model_and_unknown_loader() -> None:
    """Unknown names are not_found; run-time models need a known loader."""
    cache, _, _ = make_cache({"a": 1})
    with pytest.raises(errors.UnknownModel) as caught:
        cache.lease("nope")
    assert code_for(caught.value) == "not_found"
    assert (caught.value.model, caught.value.known) == ("nope", ("a",))
    with pytest.raises(errors.LoaderUnavailable) as unavailable:
        cache.define(ModelSpec(name="rt", loader="nope"))
    assert (unavailable.value.model, unavailable.value.loader) == ("rt", "nope")
    assert code_for(unavailable.value) == "invalid_args"
    cache.define(ModelSpec(name="rt", loader="fake", options={"size": MiB}))
    with cache.lease("rt") as lease:
        assert lease.infer("hi") == {"model": "rt", "inputs": "hi"}


def test_stats_describe_each_model() -> None:
    """ps/stats carry the per-model figures perfctl ps shows."""
    cache, _, clock = make_cache({"a": 10})
    use(cache, clock, "a")
    (entry,) = cache.ps()
    assert entry["state"] == READY
    assert entry["estimated_bytes"] == 10 * MiB
    assert entry["hits"] == 0
    assert entry["misses"] == 1
    assert entry["loads"] == 1
    assert entry["load_seconds"]["last"] is not None
    assert entry["expires_at"] is not None
    assert cache.stats()["devices"]["cpu"]["estimated_bytes"] == 10 * MiB


def test_unload_gives_real_memory_back() -> None:
    """A model holding 200 MiB: measured by RSS after load, and the RSS comes back on evict."""
    loader = FakeLoader()
    loader.allocate = True
    cache, _, clock = make_cache({"big": 200}, budget="1GiB", loader=loader, measure=True)
    use(cache, clock, "big")
    (entry,) = cache.ps()
    assert entry["measured_by"] == "rss"
    assert entry["measured_bytes"] >= 150 * MiB
    record = cache.evict("big")
    assert record["freed_rss_bytes"] >= 150 * MiB


class FakeMeter:
    """A process whose RSS grows by a model's size while it loads, and shrinks by what was
    unloaded only when release() runs (as gc and malloc_trim give it back)."""

    def __init__(self) -> None:
        self.rss = 500 * MiB
        self.unreleased = 0
        self.releases = 0

    def rss_bytes(self) -> int:
        return self.rss

    def rss_parts(self) -> RssParts | None:
        return RssParts(self.rss - 100 * MiB, 100 * MiB)  # the code and libraries: file pages

    def cuda_bytes(self, device: str) -> int | None:
        return None

    def gpu_bytes(self, device: str) -> int | None:
        return None

    def release(self) -> None:
        self.releases += 1
        self.rss -= self.unreleased
        self.unreleased = 0


class MeteredLoader(FakeLoader):
    """FakeLoader whose models weigh on a FakeMeter."""

    def __init__(self, meter: FakeMeter) -> None:
        super().__init__()
        self.meter = meter
        self.sizes: dict[str, int] = {}

    def load(self, spec: ModelSpec) -> Loaded:
        self.sizes[spec.name] = int(spec.options["size"])
        self.meter.rss += self.sizes[spec.name]
        return super().load(spec)

    def unload(self, model: Any) -> None:
        super().unload(model)
        self.meter.unreleased += self.sizes[model["name"]]


def test_the_injected_meter_measures_loads_and_unloads() -> None:
    """A cpu load is measured by the meter's RSS delta; an eviction releases through the
    meter once and records what came back."""
    meter = FakeMeter()
    loader = MeteredLoader(meter)
    cache, _, clock = make_cache({"m": 30}, loader=loader, measure=True, meter=meter)
    use(cache, clock, "m")
    (entry,) = cache.ps()
    assert (entry["measured_bytes"], entry["measured_by"]) == (30 * MiB, "rss")
    record = cache.evict("m")
    assert record["freed_rss_bytes"] == 30 * MiB
    assert meter.releases == 1


def test_a_batch_of_unloads_releases_once() -> None:
    """Expired keep-alives unloaded together run one release for all (one gc), and their
    records say freed_rss_bytes is unknown."""
    meter = FakeMeter()
    cache, _, clock = make_cache({"a": 1, "b": 1, "c": 1}, keep_alive="30s", meter=meter)
    for name in ("a", "b", "c"):
        use(cache, clock, name)
    clock.now += 60
    records = cache.housekeep()
    assert sorted(r["model"] for r in records) == ["a", "b", "c"]
    assert [r["freed_rss_bytes"] for r in records] == [None, None, None]
    assert meter.releases == 1


class CacheMachine(RuleBasedStateMachine):
    """Random lease/release/use/evict/pin/time steps never break the cache's invariants."""

    SIZES: ClassVar[dict[str, int]] = {"a": 30, "b": 40, "c": 25, "d": 50, "e": 10}

    def __init__(self) -> None:
        super().__init__()
        self.cache, _, self.clock = make_cache(dict(self.SIZES), keep_alive="60s", max_models=4)
        self.leases: list[Any] = []
        self.lookups = 0
        self.refused = 0
        self.pinned: set[str] = set()
        self.gone_while_protected: list[str] = []

    @rule(name=st.sampled_from(sorted(SIZES)), hold=st.booleans())
    def lease(self, name: str, hold: bool) -> None:
        self.clock.now += 1
        before = set(self.cache.loaded_names())
        try:
            lease = self.cache.lease(name)
        except CacheError as exc:
            assert isinstance(exc, errors.CapacityError)
            assert code_for(exc) == "no_capacity"
            self.refused += 1
            return
        finally:
            self.lookups += 1
        protected = self.pinned | {held.name for held in self.leases}
        after = set(self.cache.loaded_names())
        self.gone_while_protected += sorted((before - after) & protected)
        if hold:
            self.leases.append(lease)
        else:
            lease.release()

    @precondition(lambda self: self.leases)
    @rule(index=st.integers(min_value=0, max_value=10))
    def release(self, index: int) -> None:
        self.leases.pop(index % len(self.leases)).release()

    @rule(name=st.sampled_from(sorted(SIZES)), pin=st.booleans())
    def pin(self, name: str, pin: bool) -> None:
        try:
            self.cache.pin(name, pin)
        except CacheError:
            return
        (self.pinned.add if pin else self.pinned.discard)(name)

    @rule(name=st.sampled_from(sorted(SIZES)))
    def evict(self, name: str) -> None:
        with contextlib.suppress(CacheError):
            self.cache.evict(name)

    @rule(
        seconds=st.integers(min_value=0, max_value=120), used=st.floats(min_value=0, max_value=100)
    )
    def time_passes(self, seconds: int, used: float) -> None:
        self.clock.now += seconds
        protected = self.pinned | {held.name for held in self.leases}
        before = set(self.cache.loaded_names())
        self.cache.housekeep({"cpu": used})
        self.gone_while_protected += sorted((before - set(self.cache.loaded_names())) & protected)

    @invariant()
    def within_budget(self) -> None:
        used = sum(m["estimated_bytes"] for m in self.cache.ps())
        assert used <= 100 * MiB
        assert len(self.cache.ps()) <= 4

    @invariant()
    def protected_entries_stay(self) -> None:
        assert self.gone_while_protected == []
        for held in self.leases:
            assert held.name in self.cache.loaded_names()

    @invariant()
    def counts_add_up(self) -> None:
        stats = self.cache.stats()
        assert stats["hits"] + stats["misses"] == self.lookups - self.refused

    def teardown(self) -> None:
        for held in self.leases:
            held.release()


CacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_cache_state_machine = pytest.mark.slow(CacheMachine.TestCase)  # hypothesis, 60 runs


def test_gpu_model_measured_by_nvml_beside_estimate(log_lines: io.StringIO) -> None:
    """A cuda:N load records NVML's per-process delta (what nvidia-smi shows) as measured,
    and logs it in cache.loaded (captured: the load thread logs after the lease returns)."""
    seen = iter([1 << 30, (1 << 30) + 300 * MiB])  # before and after the load
    cfg = config.parse(
        {"models": {"g": {"loader": "fake", "device": "cuda:0", "options": {"size": 256 * MiB}}}}
    )
    loader = FakeLoader()
    cache = ModelCache(
        cfg.cache,
        cfg.models,
        lambda name: loader,
        lambda device: 80 << 30,
        meter=ProcessMeter(gpu_use=lambda device: next(seen)),
    )
    with cache.lease("g"):
        pass
    (entry,) = cache.ps()
    assert (entry["estimated_bytes"], entry["measured_bytes"], entry["measured_by"]) == (
        256 * MiB,
        300 * MiB,
        "nvml",
    )
    line = logged(log_lines, "cache.loaded")
    assert (line["model"], line["measured_bytes"]) == ("g", 300 * MiB)


@pytest.mark.slow
def test_the_tests_here_print_no_log_line() -> None:
    """pytest's output for this file's tests has no raw perfd log line in it: each test whose
    load thread logs after the test's own calls returned captures and waits for the line."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not print_no_log_line and not state_machine",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"event": ' not in out.stdout + out.stderr, out.stdout
    assert "[info" not in out.stdout + out.stderr, out.stdout
