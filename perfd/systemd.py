"""The sd_notify protocol: READY, RELOADING, STOPPING, STATUS and the watchdog.

Everything here is a silent no-op without $NOTIFY_SOCKET (perfd started by hand). The
datagrams are written here with the standard library (no ``sdnotify`` package).

``raise_fd_limit()`` lifts perfd's soft RLIMIT_NOFILE to its hard limit at start-up
(the unit's ``LimitNOFILE=``), so the sockets and connections perfd caps fit in it.

The watchdog is only fed while every registered loop shows progress: the main loop and each
perfd thread call ``Heartbeat.beat()`` once per turn, and a heartbeat older than the watchdog
timeout withholds WATCHDOG=1, so systemd restarts a perfd with a hung thread.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Mapping


def notify_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as an AF_UNIX address: a path ("/run/systemd/notify"), or an abstract
    name ("@name" -> b"\\0name"); None for anything else (perfd then does not notify)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends sd_notify messages; does nothing when perfd was not started by systemd.

    The protocol is one AF_UNIX datagram per message, sent to $NOTIFY_SOCKET (sd_notify(3)).
    perfd writes it itself rather than through the ``sdnotify`` package: that package ships
    only an sdist whose setup.py runs (as root, on a system install) at install time, and it
    encodes with latin-1 where systemd expects UTF-8 (docs/systemd.md).
    """

    def __init__(self, *, enabled: bool = True) -> None:
        """``enabled=False``: never notify (perfd embedded in another service's process)."""
        address = notify_address(os.environ.get("NOTIFY_SOCKET", "")) if enabled else None
        self._address = address
        self._enabled = address is not None
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._last_status = ""
        self.dropped = 0  # messages the notify socket had no room for
        self.watchdog_interval = watchdog_interval(os.environ) if self._enabled else None

    @property
    def enabled(self) -> bool:
        return self._enabled

    def _send(self, message: str) -> None:
        # Never block: a notify socket nobody reads (its queue holds a few datagrams) must not
        # stall the main loop; such a message is counted and dropped.
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode(), socket.MSG_DONTWAIT, self._address)
        except BlockingIOError:
            self.dropped += 1
        except OSError:  # systemd gone (no such socket, refused): nothing to tell
            pass

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if status:
            self._last_status = status

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, line: str) -> None:
        """Send STATUS= when the line changed (systemctl status shows the last one)."""
        if line != self._last_status:
            self._last_status = line
            self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of $WATCHDOG_USEC in seconds, or None when systemd set no watchdog for us."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000


def service_stop_command(
    env: Mapping[str, str] | None = None,
    ppid: int | None = None,
    cgroup: str = "/proc/self/cgroup",
) -> str | None:
    """How to stop this perfd when systemd runs it as a service; None when it does not.

    The rule: perfd is a service when $INVOCATION_ID is set (systemd sets it for every unit
    it starts) and perfd's parent is the service manager itself: pid 1 for a system service,
    $MANAGERPID for a user service. A shell started from a service (a terminal of a desktop
    session, say) inherits INVOCATION_ID, but its perfd's parent is that shell, so a perfd run
    by hand never counts as a service. The unit is the last part of perfd's cgroup.
    """
    env = os.environ if env is None else env
    ppid = os.getppid() if ppid is None else ppid
    if not env.get("INVOCATION_ID"):
        return None
    user = env.get("MANAGERPID") == str(ppid) and ppid != 1
    if ppid != 1 and not user:
        return None
    unit = "perfd"
    try:
        with open(cgroup, encoding="utf-8", errors="replace") as file:
            for line in file:
                name = line.strip().rsplit("/", 1)[-1]
                if name.endswith(".service"):
                    unit = name
    except OSError:
        pass
    return f"systemctl {'--user ' if user else ''}stop {unit}"


class Heartbeat:
    """One loop's proof of progress."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self._clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self._clock()


class Liveness:
    """The heartbeats of perfd's loops; healthy while none is older than ``max_age``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def register(self, name: str) -> Heartbeat:
        beat = Heartbeat(name, self._clock)
        with self._lock:
            self._beats[name] = beat
        return beat

    def unregister(self, name: str) -> None:
        with self._lock:
            self._beats.pop(name, None)

    def stale(self, max_age: float) -> list[str]:
        """Names of the loops that have not beaten within ``max_age`` seconds."""
        now = self._clock()
        with self._lock:
            return sorted(name for name, b in self._beats.items() if now - b.last > max_age)


class Watchdog:
    """Decides, on each main-loop tick, whether to send WATCHDOG=1."""

    def __init__(
        self,
        notifier: Notifier,
        liveness: Liveness,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._liveness = liveness
        self._clock = clock
        self.interval = notifier.watchdog_interval
        self._next = clock()
        self.withheld: list[str] = []

    def tick(self) -> bool:
        """Feed the watchdog when due and every loop is alive; True when WATCHDOG=1 was sent."""
        if self.interval is None:
            return False
        now = self._clock()
        if now < self._next:
            return False
        # A loop is hung when it missed a whole watchdog period (2 x interval).
        self.withheld = self._liveness.stale(self.interval * 2)
        if self.withheld:
            return False
        self._next = now + self.interval
        self._notifier.watchdog()
        return True

    def timeout(self) -> float | None:
        """Seconds until the next tick is due, for the main loop's poll timeout."""
        if self.interval is None:
            return None
        return max(0.0, self._next - self._clock())


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (soft before, soft now).

    systemd gives services a soft limit of 1024 unless ``LimitNOFILE=`` says otherwise; perfd's
    caps (metrics connections, ZeroMQ peers, model files) are sized against the hard limit the
    unit sets. An unlimited hard limit is taken as the kernel's ``nr_open``. Failure leaves the
    soft limit as it was: perfd still runs, with less room.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft != resource.RLIM_INFINITY and soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, target


def _nr_open(path: str = "/proc/sys/fs/nr_open") -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default nr_open
