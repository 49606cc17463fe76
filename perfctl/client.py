"""The Python client API for perfd (perfctl's CLI uses it too).

    from perfctl import Client

    with Client() as perfd:
        print(perfd.status()["uptime_s"])

Exceptions::

    PerfctlError
    ├── DaemonNotRunning    no socket file: perfd is not running     (perfctl exit 3)
    │   └── DaemonTimeout   the socket exists but nobody answered     (perfctl exit 3)
    ├── AccessDenied        the socket exists but we may not use it  (perfctl exit 4)
    └── CommandFailed       perfd answered with an error; .code      (perfctl exit 1)
        ├── Forbidden, InvalidArgs, NotFound, Busy, Timeout, ConfigInvalid
        └── BadReply        the answer was not a well-formed perfd reply

Imports only the standard library, pyzmq and perfd.protocol, so perfctl starts fast.
"""

from __future__ import annotations

import itertools
import os
from types import TracebackType
from typing import Any

import zmq

from perfd import paths, protocol

DEFAULT_TIMEOUT = 3.0
BAD_REPLY = "bad_reply"  # client-side code: perfd's answer was not a well-formed reply


class PerfctlError(Exception):
    """Base of the client's errors; ``hint`` says what to try."""

    hint = ""


class DaemonNotRunning(PerfctlError):
    hint = "is perfd running? systemctl status perfd"


class DaemonTimeout(DaemonNotRunning):
    hint = "perfd is not answering; check it with systemctl status perfd and journalctl -u perfd"


class AccessDenied(PerfctlError):
    hint = "ask an admin to add you to the perfd group (usermod -aG perfd $USER), then log in again"


class CommandFailed(PerfctlError):
    """perfd answered with an error; ``code`` is the protocol's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Forbidden(CommandFailed):
    hint = AccessDenied.hint


class InvalidArgs(CommandFailed):
    pass


class NotFound(CommandFailed):
    pass


class Busy(CommandFailed):
    hint = "perfd is busy; retry shortly"


class Timeout(CommandFailed):
    pass


class ConfigInvalid(CommandFailed):
    hint = "fix the file (perfd --check-config PATH) and reload again"


class BadReply(CommandFailed):
    pass


_BY_CODE: dict[str, type[CommandFailed]] = {
    protocol.FORBIDDEN: Forbidden,
    protocol.INVALID_ARGS: InvalidArgs,
    protocol.NOT_FOUND: NotFound,
    protocol.BUSY: Busy,
    protocol.TIMEOUT: Timeout,
    protocol.CONFIG_INVALID: ConfigInvalid,
}


def _endpoint(socket: str | os.PathLike[str]) -> tuple[str, str | None]:
    """The ZeroMQ endpoint and, for ipc, the socket file's path."""
    text = os.fspath(socket)
    if text.startswith("ipc://"):
        return text, text[len("ipc://") :]
    if "://" in text:
        return text, None
    return f"ipc://{text}", text


class Client:
    """A connection to perfd.

    ``socket`` is a path or an ipc:// endpoint; by default the admin socket in the runtime
    directory, or the read-only socket for read-only commands when the admin one is not
    accessible. Each call waits ``timeout`` seconds, retries once on a fresh socket, then
    raises DaemonTimeout.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
        runtime_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self._explicit = socket
        self._runtime_dir = os.fspath(runtime_dir) if runtime_dir else paths.client_runtime_dir()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- one method per command -------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def config(self) -> dict[str, Any]:
        return self.call("config")

    def reload(self) -> dict[str, Any]:
        return self.call("reload")

    def stats(self) -> dict[str, Any]:
        """The monitor's latest snapshot: host memory, PSI, CPU, GPUs, trends, alert counts."""
        return self.call("stats")

    def alerts(self) -> dict[str, Any]:
        """Firing alerts and the recent history of alert transitions, newest first."""
        return self.call("alerts")

    # -- the exchange -----------------------------------------------------------------------

    def endpoint_for(self, cmd: str) -> tuple[str, str | None]:
        """Which endpoint a command goes to (see the class docstring)."""
        if self._explicit is not None:
            return _endpoint(self._explicit)
        admin = os.path.join(self._runtime_dir, protocol.MAIN_SOCKET)
        readonly = os.path.join(self._runtime_dir, protocol.READONLY_SOCKET)
        if cmd in protocol.READ_ONLY_COMMANDS and not _usable(admin) and os.path.exists(readonly):
            return _endpoint(readonly)
        return _endpoint(admin)

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and return its result; raise a PerfctlError subclass otherwise."""
        endpoint, path = self.endpoint_for(cmd)
        if path is not None:
            _check_path(path)
        request = protocol.Request(id=f"{self._prefix}-{next(self._ids)}", cmd=cmd, args=args)
        frame = protocol.encode_request(request)
        for _attempt in range(self.retries + 1):
            sock = self._socket(endpoint)
            sock.send(frame)
            if sock.poll(int(self.timeout * 1000)):
                return self._result(request.id, sock.recv())
            # REQ is stuck waiting for this reply: throw it away and start afresh.
            self._sockets.pop(endpoint).close(linger=0)
        raise DaemonTimeout(f"no reply from perfd on {endpoint} within {self.timeout:g}s")

    def _socket(self, endpoint: str) -> zmq.Socket[bytes]:
        sock = self._sockets.get(endpoint)
        if sock is None:
            if self._ctx is None:
                self._ctx = zmq.Context()
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
        return sock

    def _result(self, request_id: str, frame: bytes) -> dict[str, Any]:
        try:
            reply = protocol.decode_reply(frame)
        except protocol.ProtocolError as exc:
            raise BadReply(BAD_REPLY, exc.message) from None
        if reply.id != request_id:
            raise BadReply(BAD_REPLY, f"reply id {reply.id!r} != {request_id!r}")
        if reply.ok:
            assert reply.result is not None
            return reply.result
        code = reply.error_code or protocol.INTERNAL
        raise _BY_CODE.get(code, CommandFailed)(code, reply.error_message or "")


def _usable(path: str) -> bool:
    return os.access(path, os.R_OK | os.W_OK)


def _check_path(path: str) -> None:
    """Turn a missing or forbidden socket file into DaemonNotRunning or AccessDenied at once."""
    if not os.path.exists(path):
        raise DaemonNotRunning(f"perfd is not running: no socket at {path}")
    if not _usable(path):
        raise AccessDenied(f"permission denied on {path}")
