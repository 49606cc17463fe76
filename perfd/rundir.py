"""The runtime directory: its modes, the single-instance lock, stale sockets, socket ownership.

Layout (the directory is 0755 so every local user can reach the read-only socket)::

    perfd.lock      flock held while perfd runs; holds its pid
    perfd.sock      admin socket, 0660, group `perfd`
    perfd-ro.sock   read-only socket, 0666
"""

from __future__ import annotations

import fcntl
import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

from perfd import protocol
from perfd.errors import AlreadyRunning, StartupError

LOCK_FILE = "perfd.lock"
DIR_MODE = 0o755
ADMIN_MODE = 0o660
READONLY_MODE = 0o666


def prepare(path: Path) -> None:
    """Create the directory (0755) or check an existing one is ours and not writable by others."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise StartupError(
            f"cannot create runtime directory {path}: {exc.strerror}; "
            "set runtime_dir, --runtime-dir or PERFD_RUNTIME_DIR to a directory you own"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"runtime directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StartupError(
            f"runtime directory {path} belongs to uid {st.st_uid}, not to perfd's uid "
            f"{os.geteuid()}; another user's directory cannot hold perfd's sockets"
        )
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def lock(path: Path) -> int:
    """Take the single-instance lock; raise AlreadyRunning naming the holder's pid."""
    file = path / LOCK_FILE
    fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(
            f"another perfd (pid {holder}) is running with runtime directory {path}; "
            "stop it first (systemctl stop perfd) or choose another --runtime-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(path: Path, fd: int) -> None:
    (path / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


def answers(socket_path: Path, timeout: float = 0.5) -> bool:
    """True when something answers a ping on this ipc socket."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{socket_path}")
        sock.send(protocol.encode_request(protocol.Request(id="probe", cmd="ping")))
        return bool(sock.poll(int(timeout * 1000)))
    except zmq.ZMQError:
        return False
    finally:
        sock.close(linger=0)


def clear_socket(socket_path: Path) -> bool:
    """Refuse if a perfd answers on ``socket_path``; remove a stale file. True when removed.

    A second bind on an ipc endpoint silently steals it from the first daemon, so this check
    runs before every bind.
    """
    if not socket_path.exists() and not socket_path.is_symlink():
        return False
    if not socket_path.is_socket():
        raise StartupError(f"{socket_path} exists and is not a socket; remove it or move it")
    if answers(socket_path):
        raise AlreadyRunning(
            f"another perfd already answers on {socket_path}; stop it first (systemctl stop perfd)"
        )
    socket_path.unlink()
    return True


@dataclass(frozen=True)
class Group:
    gid: int
    name: str
    fallback: bool  # True when the configured group does not exist


def resolve_group(name: str) -> Group:
    """The admin socket's group; the user's own group when ``name`` does not exist."""
    try:
        return Group(grp.getgrnam(name).gr_gid, name, fallback=False)
    except KeyError:
        gid = os.getegid()
        try:
            own = grp.getgrgid(gid).gr_name
        except KeyError:
            own = str(gid)
        return Group(gid, own, fallback=True)


def set_modes(admin: Path, readonly: Path, group: Group) -> None:
    """Give the admin socket 0660 and its group, the read-only socket 0666.

    Under the systemd unit the socket is born with group perfd (Group=perfd) and chown() is
    filtered out by SystemCallFilter, so chown only when the group differs.
    """
    if os.stat(admin).st_gid != group.gid:
        try:
            os.chown(admin, -1, group.gid)
        except PermissionError:
            raise StartupError(
                f"cannot give {admin} to group {group.name}: perfd's user is not a member; "
                "add it to the group or set [server] group to one of its groups"
            ) from None
    os.chmod(admin, ADMIN_MODE)
    os.chmod(readonly, READONLY_MODE)
