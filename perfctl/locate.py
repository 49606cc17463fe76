"""Where perfd is, and whether to trust what listens there: perfctl's checks before it sends
a request (docs/security.md, "Finding perfd").

- The runtime directory is the first of perfd.wire.paths.client_runtime_dirs() that holds a
  socket. It must be a real directory that no one else may write to, owned by you or root,
  or sit in a directory that only root may write to (so root made it and handed it over, as
  systemd's RuntimeDirectory= does for /run/perfd). A stranger's /tmp/perfd-UID is refused.
- The socket must be a socket, owned (and listened on) by you, root or its directory's owner.
- A plain AF_UNIX connect before the ZeroMQ request names a stale socket at once (nothing
  listens; the lock is not held), instead of a timeout seconds later.

Each refusal is a DaemonNotRunning (perfctl exit 3) or AccessDenied (exit 4) that says what
is wrong and what to do. Standard library and perfd.wire.sockprobe only.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from dataclasses import dataclass

from perfctl.errors import AccessDenied, DaemonNotRunning
from perfd.wire import paths, protocol, sockprobe

_ELSEWHERE = "PERFD_RUNTIME_DIR=DIR perfctl ..., or perfctl --socket PATH"


class NoSocket(DaemonNotRunning):
    """No perfd socket in any place perfctl looked."""

    hint = f"is perfd running? systemctl status perfd; a perfd started elsewhere: {_ELSEWHERE}"


class NotASocket(DaemonNotRunning):
    """The path given is a directory or a file that is not a socket."""

    hint = "perfd's sockets are perfd.sock and perfd-ro.sock in its runtime directory"


class StaleSocket(DaemonNotRunning):
    """A socket file nothing listens on (a perfd that was killed left it behind)."""

    hint = "start perfd again (it removes stale sockets), or remove the file"


class Untrusted(DaemonNotRunning):
    """A directory or socket that another user could have put there: nothing is sent."""

    hint = (
        "remove it (it is not yours: ask root) or point perfctl at perfd's real directory: "
        f"{_ELSEWHERE}"
    )


@dataclass(frozen=True)
class Target:
    """Where one request goes."""

    endpoint: str
    path: str | None  # the socket file, for ipc
    dir_owner: int | None  # the runtime directory's owner; None for an explicit socket


def _name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _has_socket(directory: str) -> bool:
    return any(
        os.path.lexists(os.path.join(directory, name))
        for name in (protocol.MAIN_SOCKET, protocol.READONLY_SOCKET)
    )


def find(candidates: list[tuple[str, str]]) -> tuple[str, int]:
    """The first candidate directory with a socket in it, checked; and its owner's uid."""
    for directory, _origin in candidates:
        if _has_socket(directory):
            return directory, check_dir(directory)
    places = [f"{d} ({origin})" for d, origin in candidates]
    listed = places[0] if len(places) == 1 else ", ".join(places[:-1]) + " or " + places[-1]
    env = f"${paths.RUNTIME_DIR_ENV}"
    unset = "" if candidates[0][1] == env else f"; {env} is not set"
    raise NoSocket(f"perfd is not running: no socket in {listed}{unset}")


def check_dir(directory: str) -> int:
    """The runtime directory's owner, once it passes the rules in the module docstring."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        raise Untrusted(f"runtime directory {directory} is a symlink; perfd never runs in one")
    if not stat.S_ISDIR(st.st_mode):
        raise NotASocket(f"runtime directory {directory} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Untrusted(
            f"runtime directory {directory} is writable by others (mode {mode:04o}), so anyone "
            "could have put the socket there; perfd never runs in such a directory"
        )
    me = os.geteuid()
    if st.st_uid in (me, 0):
        return st.st_uid
    parent = os.path.dirname(os.path.abspath(directory))
    pst = os.stat(parent)
    if pst.st_uid in (me, 0) and not pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return st.st_uid  # only root (or you) could have made it in there
    raise Untrusted(
        f"runtime directory {directory} belongs to {_name(st.st_uid)}, not to you or root, "
        f"in {parent}, where anyone may create it: another local user may have made it to "
        "receive your requests, so perfctl sends nothing there"
    )


def check_socket(target: Target) -> sockprobe.Probe:
    """Refuse a socket that is missing, not a socket, stale or not trustworthy; return what
    the kernel says about its listener."""
    path = target.path
    assert path is not None, "only ipc endpoints have a socket file"
    try:
        link = os.lstat(path)
        st = os.stat(path) if stat.S_ISLNK(link.st_mode) else link
    except FileNotFoundError:
        raise NoSocket(f"perfd is not running: no socket at {path}") from None
    if stat.S_ISDIR(st.st_mode):
        sock = os.path.join(path, protocol.MAIN_SOCKET)
        raise NotASocket(f"{path} is a directory, not a socket; perfd's would be {sock}")
    if not stat.S_ISSOCK(st.st_mode):
        raise NotASocket(f"{path} is not a socket but a {_kind(st.st_mode)}")
    parent = os.path.dirname(os.path.abspath(path))
    owners = {os.geteuid(), 0}
    if target.dir_owner is not None:
        owners.add(target.dir_owner)
    else:
        pst = os.stat(parent)
        if pst.st_mode & stat.S_IWOTH and not pst.st_mode & stat.S_ISVTX:
            raise Untrusted(f"{path} is in {parent}, which anyone may write to")
        owners.add(pst.st_uid)
    strangers = sorted({link.st_uid, st.st_uid} - owners)
    if strangers:
        uid = strangers[0]
        raise Untrusted(
            f"{path} belongs to {_name(uid)}, not to you, root or the owner of {parent}; "
            "perfctl sends nothing to it"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise AccessDenied(f"permission denied on {path}", path)
    probe = sockprobe.probe(path)
    if probe.error is None:
        if probe.uid not in owners:
            raise Untrusted(
                f"the process listening on {path} (pid {probe.pid}) runs as "
                f"{_name(probe.uid or 0)}, not as you, root or the owner of {parent}"
            )
        return probe
    if probe.refused:
        raise _stale(path, parent)
    if probe.error in (errno.EACCES, errno.EPERM):
        raise AccessDenied(f"permission denied on {path}", path)
    if probe.error == errno.ENOENT:
        raise NoSocket(f"perfd is not running: no socket at {path}")
    return probe  # busy (backlog full) or slow: let the request and its timeout decide


def _stale(path: str, directory: str) -> DaemonNotRunning:
    holder = sockprobe.read_holder(directory)
    if sockprobe.lock_held(directory):
        pid = holder.pid if holder is not None else "?"
        return DaemonNotRunning(
            f"perfd (pid {pid}) holds the lock in {directory} but nothing listens on {path}: "
            "it is starting or stopping; retry shortly"
        )
    by = f" by perfd pid {holder.pid}" if holder is not None and holder.pid != "?" else ""
    return StaleSocket(
        f"perfd is not running: {path} is a stale socket, left{by} when it was killed "
        "(nothing listens on it and its lock is not held)"
    )


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "file of another kind"
