"""Which connections each ZeroMQ socket holds, and which to drop: pure logic, no I/O.

libzmq accepts connections on its own I/O thread and aborts perfd when accept() fails for
want of file descriptors (ipc), so perfd keeps the count far below the limit itself: a
socket monitor reports each accepted and closed connection by its fd, every received message
names its fd (``zmq.SRCFD``), and this table says which connection to drop when a socket holds
more than ``cap`` (perfd.server.sockwatch does the dropping). The victim is never a connection
with a request in flight: first the oldest one that never completed a message (a bare connect, or a
message that never ends), then the one idle longest.

Under memory pressure (``shed``) every connection without a request in flight goes: libzmq
buffers a multipart message until its last frame, out of perfd's sight, so an unfinished one
can only be found by dropping the connections that are not waiting for an answer. ZeroMQ
clients reconnect on their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Conn:
    accepted_at: float
    last_active: float
    messages: int = 0
    in_flight: int = 0


class ConnectionTable:
    """The connections of one socket, by fd."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._conns: dict[int, Conn] = {}
        self.dropped = 0  # connections perfd dropped (cap or memory), for stats

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, fd: object) -> bool:
        return fd in self._conns

    def accepted(self, fd: int, now: float) -> None:
        self._conns[fd] = Conn(now, now)

    def closed(self, fd: int) -> None:
        self._conns.pop(fd, None)

    def message(self, fd: int, now: float) -> None:
        """A complete message arrived on ``fd`` (one seen before its ACCEPTED event counts)."""
        conn = self._conns.get(fd)
        if conn is None:
            conn = self._conns[fd] = Conn(now, now)
        conn.messages += 1
        conn.last_active = now

    def hold(self, fd: int | None) -> None:
        """A request from ``fd`` is in flight: the connection is not dropped until ``release``."""
        conn = self._conns.get(fd) if fd is not None else None
        if conn is not None:
            conn.in_flight += 1

    def release(self, fd: int | None, now: float) -> None:
        conn = self._conns.get(fd) if fd is not None else None
        if conn is not None and conn.in_flight:
            conn.in_flight -= 1
            conn.last_active = now

    def over_cap(self) -> list[int]:
        """The fds to drop so that at most ``cap`` connections stay (fewer may be droppable)."""
        excess = len(self._conns) - self.cap
        if excess <= 0:
            return []
        idle = [(fd, c) for fd, c in self._conns.items() if not c.in_flight]
        # Never completed a message first (oldest accepted first), then the longest idle.
        idle.sort(key=lambda item: (item[1].messages > 0, item[1].last_active, item[0]))
        return [fd for fd, _ in idle[:excess]]

    def shed(self, *, busy: bool = False) -> list[int]:
        """Every fd without a request in flight (with ``busy``, every fd), never-active and
        longest idle first."""
        idle = [(fd, c) for fd, c in self._conns.items() if busy or not c.in_flight]
        idle.sort(key=lambda item: (item[1].messages > 0, item[1].last_active, item[0]))
        return [fd for fd, _ in idle]

    def forget(self, fds: list[int]) -> None:
        """``fds`` were dropped: stop counting them now (their close event follows)."""
        for fd in fds:
            if self._conns.pop(fd, None) is not None:
                self.dropped += 1


def fit_cap(cap: int, sockets: int, fd_limit: int) -> int:
    """The connections per socket that fit in ``fd_limit``: ``cap``, or less when ``sockets``
    times it would leave perfd under a quarter of the limit (and at least 128 fds) for its
    own files, threads and outgoing connections. 0 when not even 8 per socket fit."""
    reserve = max(128, fd_limit // 4)
    room = (fd_limit - reserve) // max(1, sockets)
    fitted = min(cap, room)
    return fitted if fitted >= 8 else 0
