"""The worker pool: jobs run off the caller's thread; stop() never hangs on a stuck job."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from perfd.server.workers import WorkerPool


def test_results_and_exceptions_reach_done() -> None:
    """done() receives the result, or the exception the job raised."""
    pool = WorkerPool(2)
    outcomes: list[tuple[Any, Any]] = []
    finished = threading.Event()

    def done(result: Any, exc: Any) -> None:
        outcomes.append((result, exc))
        if len(outcomes) == 2:
            finished.set()

    def boom(_: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("x")

    pool.submit(lambda args: {"n": args["n"] * 2}, {"n": 21}, done)
    pool.submit(boom, {}, done)
    assert finished.wait(5)
    assert ({"n": 42}, None) in outcomes
    assert any(isinstance(exc, KeyError) for _, exc in outcomes)
    assert pool.stop(5) == []


def test_stop_does_not_hang_on_a_stuck_job() -> None:
    """A job that never returns is reported by name; stop() returns within its timeout."""
    pool = WorkerPool(1, name="w")
    gate = threading.Event()
    started = threading.Event()

    def stuck(_: dict[str, Any]) -> dict[str, Any]:
        started.set()
        gate.wait(30)
        return {}

    pool.submit(stuck, {}, lambda *_: None)
    assert started.wait(5)
    began = time.monotonic()
    assert pool.stop(0.2) == ["w-0"]
    assert time.monotonic() - began < 5
    gate.set()


@pytest.mark.parametrize("size", [1, 4])
def test_idle_pool_stops_cleanly(size: int) -> None:
    """An idle pool stops with no thread left."""
    assert WorkerPool(size).stop(5) == []
