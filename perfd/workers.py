"""The worker pool for slow commands.

Unlike concurrent.futures' pool, whose threads the interpreter joins at exit (so one stuck
command would hang SIGTERM forever), these are daemon threads: ``stop`` joins them with a
timeout and reports the ones still busy, and perfd exits regardless.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Result = dict[str, Any]
Done = Callable[[Result | None, BaseException | None], None]


@dataclass(frozen=True)
class _Job:
    fn: Callable[[dict[str, Any]], Result]
    args: dict[str, Any]
    done: Done


class WorkerPool:
    """``size`` threads taking jobs from one queue; ``done`` runs on the worker thread."""

    def __init__(self, size: int, name: str = "perfd-worker") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[[dict[str, Any]], Result], args: dict[str, Any], done: Done
    ) -> None:
        self._jobs.put(_Job(fn, args, done))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                result = job.fn(job.args)
            except BaseException as exc:  # handed to the socket thread, which replies
                job.done(None, exc)
            else:
                job.done(result, None)

    def stop(self, timeout: float) -> list[str]:
        """Ask every thread to finish; wait up to ``timeout`` seconds; return those still busy."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]
