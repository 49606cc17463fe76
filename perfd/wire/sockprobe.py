"""Who is behind a socket file or a lock file: the facts perfd (before it binds) and perfctl
(before it sends a request) need to name a stale socket or another perfd at once.

Standard library only, and plain strings rather than pathlib: perfctl imports this module.

The lock file (``perfd.lock`` in the runtime directory) holds perfd's pid on its first line
and, when perfd runs as a systemd service, the command that stops it on the second::

    4242
    stop: systemctl stop perfd.service
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

LOCK_FILE = "perfd.lock"
_STOP = "stop: "
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the perfd that wrote it."""

    pid: str  # "?" when the file is empty or unreadable
    stop: str | None  # "systemctl stop perfd.service" when that perfd is a service


def lock_text(pid: int, stop: str | None) -> str:
    return f"{pid}\n" + (f"{_STOP}{stop}\n" if stop else "")


def parse_lock(text: str) -> Holder:
    lines = text.splitlines()
    pid = lines[0].strip() if lines and lines[0].strip().isdigit() else "?"
    stop = next((line[len(_STOP) :].strip() for line in lines[1:] if line.startswith(_STOP)), None)
    return Holder(pid, stop or None)


def read_holder(runtime_dir: str) -> Holder | None:
    """The lock file's facts; None when there is no lock file (perfd removes it at exit)."""
    try:
        with open(os.path.join(runtime_dir, LOCK_FILE), encoding="utf-8", errors="replace") as f:
            return parse_lock(f.read(256))
    except FileNotFoundError:
        return None
    except OSError:
        return Holder("?", None)


def lock_held(runtime_dir: str, locks: str = "/proc/locks") -> bool | None:
    """Whether some process holds a flock on the runtime directory's lock file (read from
    /proc/locks, so the check takes no lock itself and cannot make a starting perfd fail).
    None when it cannot be told (no /proc)."""
    try:
        st = os.stat(os.path.join(runtime_dir, LOCK_FILE))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open(locks, encoding="ascii", errors="replace") as f:
            table = f.read()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 9825 fe:00:2147905 0 EOF"; blocked waiters start "->".
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            return True
    return False


@dataclass(frozen=True)
class Probe:
    """The outcome of one plain AF_UNIX connect to a socket file."""

    error: int | None  # None: connected; else errno (ECONNREFUSED: nothing listens)
    pid: int | None = None  # the listener's credentials (SO_PEERCRED), when connected
    uid: int | None = None

    @property
    def refused(self) -> bool:
        return self.error == errno.ECONNREFUSED


def probe(path: str, timeout: float = 0.5) -> Probe:
    """Connect to ``path`` and close again; on success the kernel tells who listens.

    A ZeroMQ peer sees a connection that closes before its greeting, and forgets it.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, _gid = _UCRED.unpack(raw)
        return Probe(None, pid, uid)
    except TimeoutError:
        return Probe(errno.ETIMEDOUT)
    except OSError as exc:
        return Probe(exc.errno or errno.EIO)
    finally:
        sock.close()
