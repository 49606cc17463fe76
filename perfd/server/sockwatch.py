"""The I/O side of connection limits: socket monitors, dropping a connection, the fd limit, RSS.

The policy (which connection goes) is perfd.server.connections'. Here each ROUTER socket gets a
monitor socket whose ACCEPTED/DISCONNECTED events carry the connection's fd; a connection is
dropped by ``shutdown()`` on that fd (libzmq then sees the peer gone, closes its fd and
forgets the peer), after checking that the fd still is a connection of that listener.

libzmq accepts connections on its own I/O thread, whatever perfd's main loop is doing; so the
monitor sockets are read by a thread of their own ("perfd-sockwatch") that drops what is over
the cap at once, even while the main loop is busy (a flood of connects while it imports a
module would otherwise run perfd out of files, and libzmq aborts on EMFILE). The tables are
shared with the socket thread, which records each message's connection: ``lock`` guards them.
Dropping needs no spare file descriptor (the fd is wrapped, not duplicated).
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from perfd import log
from perfd.server.connections import ConnectionTable, fit_cap

_log = log.get("perfd.server")

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
CHECK_INTERVAL = 0.05  # seconds between two RSS checks while connections are open
_PAGE = os.sysconf("SC_PAGE_SIZE")


def fit_to_fd_limit(cap: int, sockets: int) -> int:
    """``cap`` connections per socket, or fewer (logged) to fit the soft file limit;
    ValueError saying what to do when not even a few fit."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fitted = fit_cap(cap, sockets, limit)
    if not fitted:
        raise ValueError(
            f"the file limit ({limit}) leaves no room for connections; raise it "
            "(LimitNOFILE= in the unit, ulimit -n)"
        )
    if fitted < cap:
        _log.warning(
            "connections.capped",
            max_connections=cap,
            using=fitted,
            file_limit=limit,
            hint="raise the file limit (LimitNOFILE=) or lower [server] max_connections",
        )
    return fitted


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (0 where there is none)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class _Watched:
    kind: str
    table: ConnectionTable
    monitor: zmq.Socket[bytes]
    address: str | int | None = None  # the listener's: an ipc path, or a tcp port


class Watch:
    """The monitored sockets of one server; ``rss_limit(rss)`` says which limit ``rss`` is
    over (then idle connections go), or None."""

    def __init__(
        self,
        cap: int,
        rss_limit: Callable[[int], int | None] = lambda rss: None,
        max_allowance: int = 1 << 30,
        clock: Callable[[], float] = time.monotonic,
        rss: Callable[[], int] = rss_bytes,
    ) -> None:
        self.cap = cap
        self.rss_limit = rss_limit
        self._clock = clock
        self._rss = rss
        self._watched: dict[zmq.Socket[bytes], _Watched] = {}
        self._by_monitor: dict[zmq.Socket[bytes], _Watched] = {}
        self._next_check = 0.0
        self._last_shed_log = float("-inf")
        self.max_allowance = max_allowance
        self.allowance = 0  # RSS growth found not to be held by connections (see tick)
        self.peak_rss = 0
        self.lock = threading.Lock()  # the tables: this thread drops, the socket thread records
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_pair: tuple[socket.socket, socket.socket] | None = None  # with the thread

    def start(self) -> None:
        """Read the monitor sockets on a thread of their own (from the first one attached)."""
        if self._thread is None and self._by_monitor:
            self._wake_pair = socket.socketpair()  # a monitor attached, or close(): re-poll
            for end in self._wake_pair:
                end.setblocking(False)
            self._thread = threading.Thread(target=self._run, name="perfd-sockwatch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._wake_pair is not None
        wake = self._wake_pair[0]
        poller, watching = zmq.Poller(), 0
        while not self._stop.is_set():
            with self.lock:
                monitors = list(self._by_monitor)
            if watching != len(monitors):  # a socket attached since (the tcp one)
                poller, watching = zmq.Poller(), len(monitors)
                poller.register(wake.fileno(), zmq.POLLIN)
                for monitor in monitors:
                    poller.register(monitor, zmq.POLLIN)
            try:
                ready = poller.poll()  # close() wakes it
            except zmq.ZMQError:  # a monitor closed under us: stopping
                return
            for monitor, _ in ready:
                if isinstance(monitor, int):
                    with contextlib.suppress(OSError):
                        wake.recv(64)
                else:
                    self.events(monitor)

    def attach(self, sock: zmq.Socket[bytes], kind: str) -> zmq.Socket[bytes]:
        """Monitor ``sock`` (before it binds); return the monitor socket for the poller."""
        monitor = sock.get_monitor_socket(_EVENTS)
        watched = _Watched(kind, ConnectionTable(self.cap), monitor)
        with self.lock:
            self._watched[sock] = watched
            self._by_monitor[monitor] = watched
        if self._thread is None:
            self.start()
        else:
            self._wake()
        return monitor

    def _wake(self) -> None:
        if self._wake_pair is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is already pending
                self._wake_pair[1].send(b"\0")

    def bound(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        """Record where ``sock`` listens, to tell its connections from other fds."""
        scheme, _, rest = endpoint.partition("://")
        address: str | int = rest if scheme == "ipc" else int(rest.rsplit(":", 1)[1])
        self._watched[sock].address = address

    def set_cap(self, cap: int) -> None:
        with self.lock:
            self.cap = cap
            for watched in self._watched.values():
                watched.table.cap = cap

    def table(self, sock: zmq.Socket[bytes]) -> ConnectionTable | None:
        watched = self._watched.get(sock)
        return watched.table if watched is not None else None

    def counts(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {
                w.kind: {"open": len(w.table), "dropped": w.table.dropped}
                for w in self._watched.values()
            }

    def events(self, monitor: zmq.Socket[bytes]) -> None:
        """Take every pending event off ``monitor``; then drop what is over the cap (on the
        sockwatch thread, or the caller's when it was never started)."""
        watched = self._by_monitor[monitor]
        events = []
        while True:
            try:
                events.append(recv_monitor_message(monitor, zmq.NOBLOCK))
            except zmq.Again:
                break
            except zmq.ZMQError:
                return
        with self.lock:
            now = self._clock()
            for event in events:
                fd = int(event["value"])
                if event["event"] == zmq.EVENT_ACCEPTED:
                    watched.table.accepted(fd, now)
                elif fd in watched.table:  # DISCONNECTED, CLOSED
                    watched.table.closed(fd)
            victims = watched.table.over_cap()
            if victims:
                self._drop(watched, victims, "max_connections")

    def tick(self) -> None:
        """Every CHECK_INTERVAL: over the RSS limit, drop every connection not waiting for
        an answer (a message that never ends is held by libzmq, out of Python's sight).

        When there is none to drop, the growth is not theirs (a library a model loaded,
        memory the allocator keeps): it is allowed from then on, up to ``max_allowance``, so
        idle clients are not dropped over and over. Past the limit plus that, connections
        awaiting a reply go too (their reply is lost: a client that holds a slow request
        open while it streams a message that never ends)."""
        now = self._clock()
        if now < self._next_check:
            return
        with self.lock:
            self._tick(now)

    def _tick(self, now: float) -> None:
        self._next_check = now + CHECK_INTERVAL
        rss = self._rss()
        self.peak_rss = max(self.peak_rss, rss)
        limit = self.rss_limit(rss - self.allowance)  # the limit rss is over, or None
        if limit is None:
            return
        limit += self.allowance
        victims = [(w, w.table.shed()) for w in self._watched.values()]
        if not any(fds for _, fds in victims):
            if self.allowance + rss - limit <= self.max_allowance:
                self.allowance += rss - limit
                _log.info("connections.memory_allowed", rss_bytes=rss, allowed=self.allowance)
                return
            victims = [(w, w.table.shed(busy=True)) for w in self._watched.values()]
        dropped = 0
        for watched, fds in victims:
            dropped += len(fds)
            self._drop(watched, fds, None)
        if dropped and now - self._last_shed_log >= 10.0:
            self._last_shed_log = now
            _log.warning(
                "connections.shed",
                rss_bytes=rss,
                limit_bytes=limit,
                dropped=dropped,
                hint="perfd's memory passed [server] max_buffered_bytes over its models; "
                "connections not awaiting a reply were dropped",
            )

    def next_check(self) -> float | None:
        """When ``tick`` next needs to run (None while no connection is open)."""
        with self.lock:
            if not any(len(w.table) for w in self._watched.values()):
                return None
            return self._next_check

    def _drop(self, watched: _Watched, fds: list[int], reason: str | None) -> None:
        done = [fd for fd in fds if _shutdown(fd, watched.address)]
        watched.table.forget(fds)  # gone, or no longer ours: either way not counted
        if reason is not None and done:
            _log.info("connection.dropped", socket=watched.kind, reason=reason, count=len(done))

    def close(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(2.0)
            if self._thread.is_alive():
                _log.warning("thread.still_running", thread=self._thread.name)
        for sock, watched in self._watched.items():
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            watched.monitor.close(linger=0)
        self._watched.clear()
        self._by_monitor.clear()
        if self._wake_pair is not None:
            for end in self._wake_pair:
                end.close()
            self._wake_pair = None


def _shutdown(fd: int, address: str | int | None) -> bool:
    """Shut down the connection on ``fd`` if it still is one of the listener at ``address``
    (the fd may have been closed and reused since the event): True when it was."""
    try:
        sock = socket.socket(fileno=fd)  # wrapped, not duplicated: works out of files too
    except OSError:
        return False
    try:
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            ours = isinstance(address, str) and name == address
        else:
            ours = isinstance(address, int) and name[1] == address
        if ours:
            sock.shutdown(socket.SHUT_RDWR)
        return ours
    except OSError:
        return False
    finally:
        sock.detach()  # the fd stays libzmq's: it closes it when it sees the peer gone
