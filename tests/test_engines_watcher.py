"""The engine watcher in process, its I/O injected: the state machine (up, down, timeout,
error, each transition logged once), the rates from two counter reads, a hung read that
delays no other engine nor records(), discovery merged, reload."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from perfd import config
from perfd.engines import state
from perfd.engines.errors import EngineDown, EngineTimeout, EngineUnavailable, PayloadError
from perfd.engines.record import Reading, ServedModel, Target
from perfd.engines.watcher import Watcher

Outcome = Reading | EngineUnavailable | Callable[[], Reading]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def no_get(_target: Target, _timeout: float) -> Callable[[str], bytes]:
    def get(path: str) -> bytes:
        raise AssertionError(f"the injected read never fetches {path}")

    return get


class Script:
    """What each engine's next read gives, by name; a callable runs on the read's thread."""

    def __init__(self, **outcomes: Outcome) -> None:
        self.outcomes: dict[str, Outcome] = dict(outcomes)
        self.reads: list[str] = []

    def __call__(self, target: Target, _get: Any) -> Reading:
        self.reads.append(target.name)
        outcome = self.outcomes[target.name]
        if isinstance(outcome, EngineUnavailable):
            raise outcome
        if callable(outcome):
            return outcome()
        return outcome


def watcher(
    script: Script,
    *names: str,
    clock: Callable[[], float] | None = None,
    processes: dict[int, int] | None = None,
    discover: Callable[[], list[Target]] = list,
    **discovery: Any,
) -> Watcher:
    engines = {
        n: {"kind": "sglang", "url": f"http://127.0.0.1:{30000 + i}", "pid": 100 + i}
        for i, n in enumerate(names)
    }
    cfg = config.parse({"engines": engines, "discovery": {"timeout": "200ms", **discovery}})
    clock = clock or Clock()
    return Watcher(
        cfg.discovery,
        cfg.engines,
        read=script,
        fetch=no_get,
        discover=discover,
        processes=lambda: processes or {},
        clock=clock,
        wall=clock,
    )


def reading(**fields: Any) -> Reading:
    return Reading(models=(ServedModel("m", context=4096),), **fields)


def by_name(w: Watcher) -> dict[str, Any]:
    return {r.target.name: r for r in w.records()}


def test_transitions_are_logged_once_each() -> None:
    """up, down, error, timeout and up again: one log line per change, none per read; a down
    engine keeps its last good reading and the reason; since moves only on a change."""
    script = Script(a=reading(requests_running=1))
    clock = Clock()
    w = watcher(script, "a", clock=clock)
    with capture_logs() as logs:
        for outcome in (
            reading(requests_running=1),
            reading(requests_running=2),
            EngineDown("/metrics: connection refused"),
            EngineDown("/metrics: connection refused"),
            PayloadError("/metrics: line 3: not Prometheus text"),
            EngineTimeout("/metrics: no answer within 2s"),
            reading(requests_running=5),
        ):
            script.outcomes["a"] = outcome
            w.read_once()
            clock.t += 5
            if isinstance(outcome, EngineDown):
                record = by_name(w)["a"]
                assert record.state == "down"
                assert record.reason == "/metrics: connection refused"
                assert record.reading.requests_running == 2  # the last good one
                assert record.since == 1010.0  # the first down read
    events = [(e["event"], e.get("reason")) for e in logs if e["event"].startswith("engine.")]
    assert events == [
        ("engine.up", None),
        ("engine.down", "/metrics: connection refused"),
        ("engine.error", "/metrics: line 3: not Prometheus text"),
        ("engine.timeout", "/metrics: no answer within 2s"),
        ("engine.up", None),
    ]
    assert by_name(w)["a"].reading.requests_running == 5
    w.stop()


def test_a_hung_read_delays_no_other_engine_nor_records() -> None:
    """One engine hangs: the turn ends at the timeout, the others are up, the hung one is
    timeout; records() answers at once meanwhile; the hung read is not started again."""
    release = threading.Event()

    def hang() -> Reading:
        release.wait(30)
        return reading()

    script = Script(slow=hang, b=reading(requests_waiting=4), c=reading(requests_waiting=0))
    w = watcher(script, "slow", "b", "c")
    turn = threading.Thread(target=w.read_once)
    turn.start()
    started = time.monotonic()
    while "slow" not in script.reads:
        time.sleep(0.01)
    w.records()  # while the read hangs
    assert time.monotonic() - started < 1.0
    turn.join(10)
    records = by_name(w)
    assert records["slow"].state == "timeout"
    assert records["b"].state == "up"
    assert records["b"].reading.requests_waiting == 4
    assert records["c"].state == "up"
    w.read_once()  # the hung read is still in flight: not started again
    assert script.reads.count("slow") == 1
    assert script.reads.count("b") == 2
    release.set()
    w.stop()


def test_rates_come_from_two_counter_reads() -> None:
    """preemptions_per_min from the counter's change over the time between reads; a counter
    that went back gives none; the prefix hit ratio from the counters' deltas, else the
    engine's own ratio; gpu_memory_bytes is NVML's memory of the engine's pids."""
    clock = Clock()
    script = Script(a=reading(preemptions_total=10.0))
    w = watcher(script, "a", clock=clock, processes={100: 3 << 30, 999: 1 << 30})
    w.read_once()
    assert by_name(w)["a"].preemptions_per_min is None  # one read: no rate yet
    assert by_name(w)["a"].gpu_memory_bytes == 3 << 30
    clock.t += 30
    script.outcomes["a"] = reading(
        preemptions_total=16.0, prefix_cache_queries_total=100.0, prefix_cache_hits_total=40.0
    )
    w.read_once()
    assert by_name(w)["a"].preemptions_per_min == pytest.approx(12.0)  # 6 in 30 s
    clock.t += 30
    script.outcomes["a"] = reading(
        preemptions_total=2.0, prefix_cache_queries_total=300.0, prefix_cache_hits_total=190.0
    )
    w.read_once()
    record = by_name(w)["a"]
    assert record.preemptions_per_min is None  # restarted: the counter went back
    assert record.prefix_cache_hit_ratio == pytest.approx(150 / 200)
    clock.t += 30
    script.outcomes["a"] = reading(prefix_cache_hit_ratio=0.31)
    w.read_once()
    assert by_name(w)["a"].prefix_cache_hit_ratio == pytest.approx(0.31)
    w.stop()


def test_a_reader_bug_is_an_error_not_a_crash() -> None:
    """An exception other than EngineUnavailable out of a reader is an error with its text."""

    def bug() -> Reading:
        raise KeyError("slots")

    w = watcher(Script(a=bug), "a")
    w.read_once()
    record = by_name(w)["a"]
    assert record.state == "error"
    assert "KeyError" in (record.reason or "")
    w.stop()


def test_discovery_adds_engines_and_merges_configured_ones() -> None:
    """A found engine at a configured URL gives it its pids and unit; a new one is added as
    discovered; discovery off forgets the discovered ones."""
    w = watcher(Script(), "mine")
    w.merge(
        [
            Target("sglang-30000", "sglang", "http://localhost:30000", (100, 101), "sg.service"),
            Target("vllm-8000", "vllm", "http://127.0.0.1:8000", (200,), None),
        ]
    )
    records = by_name(w)
    assert records["mine"].target.pids == (100, 101)
    assert records["mine"].target.unit == "sg.service"
    assert records["vllm-8000"].target.source == "discovered"
    assert records["vllm-8000"].state == "starting"  # not read yet
    cfg = config.parse({"discovery": {"enabled": False}})
    w.reconfigure(cfg.discovery, cfg.engines)
    assert by_name(w) == {}
    w.stop()


def test_reload_adds_and_removes_configured_engines() -> None:
    """A reload adds a new [engines.NAME], drops a removed one, keeps an unchanged one's
    record."""
    script = Script(a=reading(), b=reading())
    w = watcher(script, "a")
    w.read_once()
    cfg = config.parse({"engines": {"b": {"kind": "vllm", "url": "http://127.0.0.1:8000"}}})
    w.reconfigure(cfg.discovery, cfg.engines)
    assert list(by_name(w)) == ["b"]
    cfg = config.parse(
        {
            "engines": {
                "a": {"kind": "sglang", "url": "http://127.0.0.1:30000", "pid": 100},
                "b": {"kind": "vllm", "url": "http://127.0.0.1:8000"},
            }
        }
    )
    w.read_once()
    w.reconfigure(cfg.discovery, cfg.engines)
    assert by_name(w)["b"].state == "up"
    assert by_name(w)["a"].state == "starting"
    w.stop()


def test_the_thread_reads_on_its_interval_and_stops() -> None:
    """start(): a named daemon thread reads each read_interval; stop() ends it at once."""
    script = Script(a=reading())
    w = watcher(
        script, "a", clock=time.monotonic, read_interval="100ms", timeout="50ms", enabled=False
    )
    w.start()
    deadline = time.monotonic() + 10
    while len(script.reads) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    names = {t.name: t.daemon for t in threading.enumerate()}
    assert names.get("perfd-engines") is True
    w.stop(2)
    assert "perfd-engines" not in {t.name for t in threading.enumerate()}
    assert len(script.reads) >= 3


def test_state_transition_is_pure() -> None:
    """state.transition: a first up read is engine.up; the same state twice is nothing."""
    target = Target("a", "vllm", "http://127.0.0.1:8000")
    up, _ = state.advance(None, None, target, reading(), now=1, wall=1, processes={})
    assert state.transition(None, up) == "engine.up"
    again, _ = state.advance(up, None, target, reading(), now=2, wall=2, processes={})
    assert state.transition(up, again) is None
    assert again.since == 1


def test_the_pool_runs_calls_on_daemon_threads_and_never_waits_on_a_hung_one() -> None:
    """Pool: results and exceptions come back through the futures; at most `workers` daemon
    threads; shutdown returns while a call still hangs."""
    from perfd.engines.pool import Pool

    pool = Pool(2, "test-pool")
    release = threading.Event()
    hung = pool.submit(release.wait, 30)
    assert pool.submit(lambda: 41 + 1).result(5) == 42
    with pytest.raises(KeyError):
        pool.submit({}.__getitem__, "x").result(5)
    threads = [t for t in threading.enumerate() if t.name.startswith("test-pool")]
    assert len(threads) == 2
    assert all(t.daemon for t in threads)
    started = time.monotonic()
    pool.shutdown()
    assert time.monotonic() - started < 1.0
    assert not hung.done()
    release.set()
    assert hung.result(5) is True
