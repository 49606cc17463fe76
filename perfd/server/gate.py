"""Who may run what, per message: the check between a decoded request and its command.

The gate applies perfd.server.access (who a sender is, the admin policy) to each message on
the sockets: it reads the message's properties, knows which socket took it, logs every admin
command and every refusal (``command.admin``, ``access.denied``) and holds the remote keys
(docs/security.md draws the whole picture).

The server (perfd.server.loop) asks the gate two questions about each request:

- ``caller``: for the tcp endpoint, which authorized key sent it (``User-Id``) and whether that
  key may run admin commands; for the ipc sockets, whether the socket takes admin commands.
- ``authorize``, for an admin command: on the admin socket, may this sender (uid, gid, pid
  from ``Peer-Address``) run it, per perfd.server.access.AdminPolicy? Either way the command and its
  caller are logged (``command.admin``), and a refusal too (``access.denied``, rate-limited).
- ``refuse``: an admin command from a caller ``caller`` said may not run one (a read key,
  perfd-ro.sock) is logged as ``access.denied`` too (rate-limited per key or uid).

It also answers zmq.auth's CURVE callback (``callback``): a client key gets through the
handshake only when it is in ``remote_keys``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import zmq

from perfd import log
from perfd.server.access import AdminPolicy, Peer
from perfd.wire import protocol
from perfd.wire.protocol import ProtocolError

if TYPE_CHECKING:
    from perfd.wire.keys import AuthorizedKey

_log = log.get("perfd.server")

# What a bound socket is: which commands it takes and how its callers are known.
ADMIN: Final = "admin"  # ipc perfd.sock: every command, admin ones per AdminPolicy
READONLY: Final = "readonly"  # ipc perfd-ro.sock: read-only commands
REMOTE: Final = "remote"  # tcp with CURVE: per the client key's role

# A refused caller is logged once per this many seconds (a loop of refused calls cannot
# flood the journal); the lines in between are counted.
DENIAL_LOG_INTERVAL: Final = 60.0


class Message(Protocol):
    """What the gate reads of a received message: its properties (a zmq.Frame)."""

    def get(self, name: str) -> Any: ...


class Gate:
    """The admin policy and the remote keys, swapped whole by a reload."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy: AdminPolicy | None = None  # None: the admin socket's mode is the only gate
        self.remote_keys: dict[str, AuthorizedKey] = {}  # Z85 key -> its role and name
        self._clock = clock
        self._denials: dict[object, tuple[float, int]] = {}  # who -> (last logged, suppressed)

    def caller(self, kind: str, head: Message, request_id: str) -> tuple[Peer | None, str | None]:
        """For the tcp endpoint: the client key's Peer, and why it may not run admin
        commands (None when it may). Local peers are looked up only for admin commands."""
        if kind != REMOTE:
            return None, (
                f"needs the admin socket {protocol.MAIN_SOCKET}; this is the read-only socket"
                if kind == READONLY
                else None
            )
        key = self.remote_keys.get(_property(head, "User-Id") or "")
        if key is None:  # let in at connect time, removed from authorized_keys since
            raise ProtocolError(
                protocol.FORBIDDEN,
                "this client key is no longer in perfd's authorized_keys",
                request_id,
            )
        peer = Peer(key_name=key.name, address=_property(head, "Peer-Address"))
        if key.role != "admin":
            return peer, f"needs an admin key; key '{key.name}' is read-only"
        return peer, None

    def authorize(
        self,
        request: protocol.Request,
        kind: str,
        head: Message,
        *,
        audit: str,
        peer: Peer | None,
    ) -> None:
        """Log who runs an admin command (at ``audit`` level); raise ProtocolError
        (forbidden) for a local sender outside the admin policy."""
        if peer is None:
            peer = Peer.from_ipc(_property(head, "Peer-Address"))
        refusal = None
        if kind == ADMIN and self.policy is not None:
            refusal = self.policy.refusal(peer)
        if refusal is None and not log.enabled(audit):
            return  # infer at the default level: no event to build (a hot path)
        target = request.args.get("model")
        facts: dict[str, Any] = {"cmd": request.cmd, **peer.fields()}
        if isinstance(target, str):
            facts["model"] = target[:128]
        if refusal is not None:
            self._log_denial(peer.uid, facts, refusal)
            raise ProtocolError(protocol.FORBIDDEN, refusal, request.id)
        _log.log(log.LEVELS[audit], "command.admin", **facts)

    def refuse(
        self, request: protocol.Request, kind: str, head: Message, peer: Peer | None, reason: str
    ) -> ProtocolError:
        """Log (rate-limited) an admin command refused to a read-only caller, a read key on
        tcp or anyone on perfd-ro.sock; the ProtocolError (forbidden) to reply with."""
        if peer is None:
            peer = Peer.from_ipc(_property(head, "Peer-Address"))
        facts: dict[str, Any] = {"cmd": request.cmd, **peer.fields(), "socket": kind}
        who = ("key", peer.key_name) if peer.key_name is not None else peer.uid
        self._log_denial(who, facts, reason)
        return ProtocolError(protocol.FORBIDDEN, reason, request.id)

    def callback(self, domain: str, key: bytes) -> bool:
        """zmq.auth's CURVE callback, on the authenticator's thread (``remote_keys`` is only
        ever replaced whole, so reading it there is safe)."""
        text = key.decode("ascii", "replace")
        if text in self.remote_keys:
            return True
        # One log line a minute for every refused key together: a stranger can make up a new
        # key for every connection, so a per-key limit would not bound the journal.
        self._log_denial("remote", {"key": text}, "client key not in authorized_keys")
        return False

    def _log_denial(self, who: object, facts: dict[str, Any], reason: str) -> None:
        now = self._clock()
        last, suppressed = self._denials.get(who, (float("-inf"), 0))
        if now - last < DENIAL_LOG_INTERVAL:
            self._denials[who] = (last, suppressed + 1)
            return
        if len(self._denials) > 1024:
            self._denials.clear()
        self._denials[who] = (now, 0)
        _log.warning("access.denied", **facts, reason=reason, suppressed_since_last=suppressed)


def client_of(kind: str, head: Message) -> str:
    """Who sent a message, for the shares of ``max_in_flight`` (perfd.server.shares): the CURVE key
    on the tcp endpoint, the uid (SO_PEERCRED) on the ipc sockets."""
    if kind == REMOTE:
        return f"key:{_property(head, 'User-Id') or '?'}"
    uid = Peer.from_ipc(_property(head, "Peer-Address")).uid
    return f"uid:{uid}" if uid is not None else "uid:?"


def _property(frame: Message, name: str) -> str | None:
    """A message property (``Peer-Address``, ``User-Id``); None where the transport has none."""
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) else None
