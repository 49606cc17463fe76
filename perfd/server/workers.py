"""The worker pool for slow commands.

Unlike concurrent.futures' pool, whose threads the interpreter joins at exit (so one stuck
command would hang SIGTERM forever), these are daemon threads: ``stop`` joins them with a
timeout and reports the ones still busy, and perfd exits regardless.

Jobs wait in a perfd.server.shares.FairQueue: a free thread takes admin commands first, then callers
in turn, and one caller (or read-only commands together) never holds every thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perfd.server.shares import FairQueue

Result = dict[str, Any]
Done = Callable[[Result | None, BaseException | None], None]


@dataclass(frozen=True)
class _Job:
    fn: Callable[[dict[str, Any]], Result]
    args: dict[str, Any]
    done: Done


class WorkerPool:
    """``size`` threads taking jobs from one fair queue; ``done`` runs on the worker thread."""

    def __init__(self, size: int, name: str = "perfd-worker") -> None:
        self._queue: FairQueue[_Job] = FairQueue(size)
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        fn: Callable[[dict[str, Any]], Result],
        args: dict[str, Any],
        done: Done,
        *,
        client: str = "",
        admin: bool = True,
    ) -> None:
        with self._cond:
            self._queue.push(_Job(fn, args, done), client, admin)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                item = None
                while not self._stopping and (item := self._queue.take()) is None:
                    self._cond.wait()
                if item is None:
                    return
            job = item.job
            try:
                result = job.fn(job.args)
            except BaseException as exc:  # handed to the socket thread, which replies
                job.done(None, exc)
            else:
                job.done(result, None)
            with self._cond:
                self._queue.finished(item)
                self._cond.notify_all()  # a job held back by a cap may run now

    def stop(self, timeout: float) -> list[str]:
        """Ask every thread to finish; wait up to ``timeout`` seconds; return those still busy."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]
