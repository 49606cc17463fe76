"""A pool of idle processes, for benchmark 6 (``sample_cost``): real entries in /proc.

    python -m bench.sleepers        # then write a count per line on stdin

Each line read from stdin is a number N: the pool forks idle children or kills the newest
ones until exactly N are alive, then prints their pids on one line (oldest first, so the
first pids stay the same while the pool grows and shrinks). At EOF, or on SIGTERM, every
child is killed and reaped. Children also die with this process (PR_SET_PDEATHSIG), so none
outlives a killed pool. Only the standard library is imported: each child is a fork of a
small interpreter sleeping in pause().
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _child(parent: int) -> None:
    """Sleep until killed; never returns into the pool's code."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)  # let go of the pool's pipes
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the pool died before prctl took effect
            os._exit(0)
        while True:
            signal.pause()
    finally:
        os._exit(0)


def _resize(children: list[int], wanted: int) -> None:
    parent = os.getpid()
    while len(children) < wanted:
        pid = os.fork()
        if pid == 0:
            _child(parent)
        children.append(pid)
    extra = children[wanted:]
    del children[wanted:]
    for pid in extra:
        os.kill(pid, signal.SIGKILL)
    for pid in extra:
        os.waitpid(pid, 0)


def main() -> int:
    children: list[int] = []

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        for line in sys.stdin:
            _resize(children, int(line))
            print(" ".join(map(str, children)), flush=True)
    finally:  # KeyboardInterrupt, SystemExit or EOF: a second signal must not cut this short
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        _resize(children, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
