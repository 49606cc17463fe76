"""The runtime directory: its modes, the single-instance lock, stale sockets, socket ownership.

Layout (a directory perfd creates is 0755, so every local user can reach the read-only
socket)::

    perfd.lock      flock held while perfd runs; holds its pid (perfd.wire.sockprobe)
    perfd.sock      admin socket, 0660, group `perfd`
    perfd-ro.sock   read-only socket, 0666

perfd never changes the mode of a directory it did not create: an existing one must be a
real directory (not a symlink), belong to perfd's user and be writable by no one else, or
perfd refuses to start (docs/config.md, "The runtime directory").
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

from perfd import systemd
from perfd.errors import AlreadyRunning, StartupError
from perfd.server.access import user_name
from perfd.wire import protocol, sockprobe

LOCK_FILE = sockprobe.LOCK_FILE
DIR_MODE = 0o755
ADMIN_MODE = 0o660
READONLY_MODE = 0o666
_SETTINGS = "set --runtime-dir, $PERFD_RUNTIME_DIR or runtime_dir"


@dataclass(frozen=True)
class Prepared:
    """The runtime directory perfd will use."""

    created: bool  # perfd made it (mode DIR_MODE) rather than found it
    mode: int  # its permission bits, left as they were when perfd found it


def prepare(path: Path) -> Prepared:
    """Create the directory (0755), or check that an existing one is perfd's own and writable
    by no one else; never change an existing directory's mode. StartupError says what is
    wrong and what to do."""
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    for parent in reversed(missing[1:]):  # parents perfd creates are 0755 too
        _make(parent)
    created = _make(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StartupError(_unusable(path, exc)) from None
    try:
        st = os.fstat(fd)
        problem = problem_with(path, st.st_uid, st.st_mode, created=created)
        if problem:
            raise StartupError(problem)
        if created and stat.S_IMODE(st.st_mode) != DIR_MODE:  # the umask took bits away
            os.fchmod(fd, DIR_MODE)
            return Prepared(True, DIR_MODE)
        return Prepared(created, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def _make(path: Path) -> bool:
    """mkdir ``path`` with DIR_MODE whatever the umask; True when this call created it (a
    directory that existed, or a symlink, is left alone: prepare() checks it)."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StartupError(
            f"cannot create runtime directory {path}: {exc.strerror}; {_SETTINGS} to a "
            "directory you own, or create it first"
        ) from None
    try:  # by descriptor, not by name: nobody can swap the new directory for a link first
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # prepare() names the problem
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)
    return True


def _unusable(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
        return (
            f"runtime directory {path} is a symlink; perfd does not follow it (whoever can "
            f"change the link could redirect perfd's sockets): {_SETTINGS} to the real "
            "directory"
        )
    if exc.errno == errno.ENOTDIR:
        return f"runtime directory {path} is not a directory; remove it or {_SETTINGS}"
    return f"cannot open runtime directory {path}: {exc.strerror}; {_SETTINGS}"


def problem_with(path: Path, uid: int, mode: int, *, created: bool = False) -> str | None:
    """Why perfd may not use this existing directory; None when it may."""
    me = os.geteuid()
    if uid != me:
        return (
            f"runtime directory {path} belongs to {user_name(uid)} (uid {uid}), not to "
            f"perfd's user {user_name(me)} (uid {me}); another local user may have created "
            f"it to capture perfd's sockets. Remove it (as root: rm -r {path}) or {_SETTINGS} "
            "to a directory of your own"
        )
    if not created and mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"runtime directory {path} is writable by others (mode {stat.S_IMODE(mode):04o}): "
            "anyone could replace perfd's sockets there, and perfd does not change the mode of "
            f"a directory it did not create. Use a directory of perfd's own, such as "
            f"{path / 'perfd'} (perfd creates it), or remove group and world write: "
            f"chmod go-w {path}"
        )
    return None


def lock(path: Path) -> int:
    """Take the single-instance lock; raise AlreadyRunning naming the holder's pid."""
    file = path / LOCK_FILE
    fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = sockprobe.parse_lock(os.pread(fd, 256, 0).decode(errors="replace"))
        os.close(fd)
        stop = holder.stop or (f"kill {holder.pid}" if holder.pid != "?" else "stop it")
        raise AlreadyRunning(
            f"another perfd (pid {holder.pid}) is running with runtime directory {path}; "
            f"stop it first ({stop}) or choose another --runtime-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, sockprobe.lock_text(os.getpid(), systemd.service_stop_command()).encode(), 0)
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
    listener = sockprobe.probe(str(socket_path))
    if answers(socket_path):
        who = f"pid {listener.pid}" if listener.pid else "a process"
        stop = f"kill {listener.pid}" if listener.pid else "stop it"
        raise AlreadyRunning(
            f"{who} already answers on {socket_path} without holding its directory's lock; "
            f"stop it first ({stop}) or choose another --runtime-dir"
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
