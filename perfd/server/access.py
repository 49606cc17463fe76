"""Who a sender is, and whether perfd's admin policy lets them change perfd (docs/security.md).

This module holds the decisions only: ``Peer`` (a sender's identity, parsed from what libzmq
reports), ``AdminPolicy`` (may this uid run admin commands?) and ``user_name``. It reads the
user database and /proc, but knows no socket, no message and no log: perfd.server.gate applies
it to each message on the sockets, logs the outcome and rate-limits the refusals.

Every message on an ipc socket carries the sender's credentials, which the kernel took when
the client connected (SO_PEERCRED); libzmq exposes them as the ``Peer-Address`` property,
``localhost:UID:GID:PID`` on Linux. Messages on the tcp endpoint carry the client's CURVE
public key as ``User-Id`` and its IP address as ``Peer-Address``.

Admin commands on the admin socket are allowed to:

- root and perfd's own user;
- members of ``[server] group`` (the admin socket's group) and of ``[access] admin_groups``:
  the peer's gid at connect time, the supplementary groups of its process (``Groups:`` in
  /proc/PID/status, read only while that pid still belongs to the peer's uid; this is how a
  service with ``SupplementaryGroups=perfd`` is known), or the group lists in the user
  database;
- the users named in ``[access] admin_users`` (names or numeric uids).

So a loose mode on perfd.sock (chmod 666) alone never grants control. Lookups in the user
database are cached for ``ttl`` seconds per uid, so a group change applies within that.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Peer:
    """The sender of one message: local credentials, or a remote key and address."""

    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    key_name: str | None = None  # tcp: the authorized key's name
    address: str | None = None  # tcp: the client's IP address

    @classmethod
    def from_ipc(cls, peer_address: str | None) -> Peer:
        """Parse libzmq's ``localhost:UID:GID:PID``; an unknown form gives an anonymous Peer."""
        parts = (peer_address or "").rsplit(":", 3)
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            return cls(uid=int(parts[1]), gid=int(parts[2]), pid=int(parts[3]))
        return cls()

    def fields(self) -> dict[str, Any]:
        """What the log says about this peer."""
        if self.key_name is not None:
            return {"key": self.key_name, "address": self.address}
        out: dict[str, Any] = {"uid": self.uid, "gid": self.gid, "pid": self.pid}
        if self.uid is not None:
            out["user"] = user_name(self.uid)
        return out


@functools.lru_cache(maxsize=256)  # a log field: a renamed user shows late, harmlessly
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _uid_of(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _gid_of(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class AdminPolicy:
    """Decides whether a local peer may run admin commands (see the module docstring)."""

    def __init__(
        self,
        *,
        users: Iterable[str] = (),
        groups: Iterable[str] = (),
        service_uid: int | None = None,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        proc: Path = Path("/proc"),
    ) -> None:
        self.users = tuple(users)
        self.groups = tuple(groups)
        self.service_uid = os.geteuid() if service_uid is None else service_uid
        self.ttl = ttl
        self._clock = clock
        self._proc = proc
        self._cache: dict[tuple[int, int | None, int | None], tuple[float, str | None]] = {}

    def unknown_names(self) -> list[str]:
        """Configured users and groups that do not exist here (logged as a warning)."""
        return [f"user {u}" for u in self.users if _uid_of(u) is None] + [
            f"group {g}" for g in self.groups if _gid_of(g) is None
        ]

    def refusal(self, peer: Peer) -> str | None:
        """None when ``peer`` may run admin commands, else why not (for the reply)."""
        if peer.uid is None:
            return "perfd cannot tell who sent this request (no peer credentials)"
        key = (peer.uid, peer.gid, peer.pid)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        answer = self._decide(peer.uid, peer.gid, peer.pid)
        if len(self._cache) > 4096:  # a bounded cache: uids are few, but be safe
            self._cache.clear()
        self._cache[key] = (now, answer)
        return answer

    def _decide(self, uid: int, gid: int | None, pid: int | None) -> str | None:
        if uid in (0, self.service_uid):
            return None
        if uid in {_uid_of(u) for u in self.users}:
            return None
        admin_gids = {g for g in (_gid_of(name) for name in self.groups) if g is not None}
        if gid is not None and gid in admin_gids:
            return None
        if pid is not None and admin_gids & self._process_groups(pid, uid):
            return None
        try:
            account = pwd.getpwuid(uid)
        except KeyError:
            account = None
        if account is not None:
            if account.pw_gid in admin_gids:
                return None
            for admin_gid in admin_gids:
                try:
                    if account.pw_name in grp.getgrgid(admin_gid).gr_mem:
                        return None
                except KeyError:
                    continue
        who = account.pw_name if account is not None else f"uid {uid}"
        return f"{who} may not run admin commands: only {self.allowed()} may"

    def allowed(self) -> str:
        """Who may run admin commands, in words: ``root, members of group perfd and the user
        alice ([access] admin_users)``; a configured group that does not exist says so."""
        who = ["root"]
        if self.service_uid != 0:
            name = user_name(self.service_uid)
            who.append(
                f"perfd's own user {name if name != str(self.service_uid) else 'uid ' + name}"
            )
        groups = list(dict.fromkeys(self.groups))  # [server] group may repeat in admin_groups
        if groups:
            shown = [g if _gid_of(g) is not None else f"{g} (no such group here)" for g in groups]
            who.append(f"members of group{'s' if len(groups) > 1 else ''} {_and(shown)}")
        if self.users:
            users = _and(list(self.users))
            who.append(
                f"the user{'s' if len(self.users) > 1 else ''} {users} ([access] admin_users)"
            )
        return _and(who)

    def _process_groups(self, pid: int, uid: int) -> set[int]:
        """The supplementary groups of process ``pid``, if it still runs as ``uid``.

        The kernel recorded the uid at connect time; checking it again guards against the pid
        having been reused by another user's process since.
        """
        try:
            text = (self._proc / str(pid) / "status").read_text()
        except OSError:
            return set()
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        uids = fields.get("Uid", "").split()
        if len(uids) < 2 or uids[1] != str(uid):  # effective uid
            return set()
        return {int(g) for g in fields.get("Groups", "").split() if g.isdigit()}
