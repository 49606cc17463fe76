"""perfd's stdout without ever blocking on it: lines queue for a writer thread of their own.

stdout is the journal's stream socket under systemd, but may be a pipe nobody reads, or a
terminal someone suspended with Ctrl-S. A write to it can then block for ever, and if the
main loop did that write perfd would stop answering, stop feeding the watchdog and stop
noticing SIGTERM. So a stream that can block (anything but a regular file or an in-memory
stream) is written by a daemon thread from a queue bounded in bytes; a line that finds the
queue full is dropped and counted, and the writer reports the count in a later
``log.lines_dropped`` line once the stream has caught up (half the queue free again), so the
report itself finds room. Callers never wait.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import IO, Final

MAX_QUEUED_BYTES: Final = 1 << 20  # lines waiting for a slow stdout (some 3,000); more are dropped


def can_block(stream: IO[str]) -> bool:
    """False for an in-memory stream and a regular file (written at once), else True."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    try:
        return not stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


class StreamWriter:
    """Writes lines to ``stream``; through a queue and a thread when the stream can block.

    ``report(dropped, total)`` is called on the writer thread, once the stream has caught up
    (half the queue free), with the lines dropped since the last report and in all; it may
    write() again.
    """

    def __init__(
        self,
        stream: IO[str],
        report: Callable[[int, int], None] | None = None,
        *,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.stream = stream
        self._report = report
        self._max_bytes = max_bytes
        self._queued: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._busy = False  # the thread is writing a line it took off the queue
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0  # lines that found the queue full
        self._reported = 0
        self._fd: int | None = stream.fileno() if can_block(stream) else None
        self._thread: threading.Thread | None = None

    def write(self, line: str) -> None:
        """Write ``line`` and a newline, or queue it; never waits on the stream."""
        if self._fd is None:
            with self._cond, contextlib.suppress(OSError, ValueError):
                self.stream.write(line + "\n")  # a stream closed under us: nothing better
                self.stream.flush()
            return
        data = (line + "\n").encode("utf-8", "backslashreplace")
        with self._cond:
            if self._bytes + len(data) > self._max_bytes:
                self.dropped += 1
                return
            self._queued.append(data)
            self._bytes += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="perfd-log", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(OSError, ValueError):  # text written before perfd's lines
            self.stream.flush()
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()  # flush() waits for an empty queue
                while not self._queued and not self._closed:
                    self._cond.wait()
                if not self._queued:
                    return
                data = self._queued.popleft()
                self._bytes -= len(data)
                self._busy = True
            if not _write_all(self._fd, data):
                continue  # stdout closed (journald restarted): the line is lost
            with self._cond:  # the stream caught up (half the queue free): say what was lost
                if self._bytes > self._max_bytes // 2:
                    continue
                dropped, total = self.dropped - self._reported, self.dropped
                self._reported = self.dropped
            if dropped and self._report is not None:
                self._report(dropped, total)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to drain; True when it did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queued or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Let the thread finish what is queued, then end; take no more lines after."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data``, however many calls it takes; False on an error."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except BlockingIOError:  # someone else set O_NONBLOCK on this stream: wait a little
            time.sleep(0.01)
        except OSError:
            return False
    return True
