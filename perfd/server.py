"""The ZeroMQ side of perfd: two ROUTER sockets, request dispatch and the worker pool.

The main loop (perfd.daemon) calls ``Server.poll`` over and over. Only that thread touches the
ZeroMQ sockets. Fast commands run inline; commands marked ``slow`` run on a worker pool that is
built on first use, and their replies come back through a queue plus a wake-up byte on a
socketpair that the poller also watches (the same pair receives signal numbers, see
``Server.wakeup_fd``). Nothing a client sends can raise out of ``poll``.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from perfd.access import Peer
    from perfd.keys import AuthorizedKey, KeyPair

from perfd import log, protocol
from perfd.errors import CommandError, StartupError
from perfd.gate import ADMIN, READONLY, REMOTE, Gate
from perfd.protocol import ProtocolError
from perfd.workers import Result, WorkerPool

_log = log.get("perfd.server")

# Messages taken from one socket per poll turn, so one busy client cannot starve the other.
_BATCH = 64


@dataclass(frozen=True)
class Command:
    """A command: its handler, who may run it, where it runs and which args it takes.

    ``args`` maps each accepted argument to the Python types allowed for it.
    """

    name: str
    handler: Callable[..., Any]  # (args) -> result; (args, frames) when ``frames``
    admin: bool = False
    slow: bool = False
    args: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    frames: bool = False  # accepts raw frames after the JSON one (perfd.arrays)
    timeout: Callable[[], float] | None = None  # instead of the server's command_timeout
    audit: str = "info"  # the level at which an admin command's caller is logged


@dataclass(frozen=True)
class WithFrames:
    """A result whose reply carries raw frames after the JSON one."""

    result: dict[str, Any]
    frames: list[bytes]


MAX_EXTRA_FRAMES = 64


@dataclass
class _Pending:
    sock: zmq.Socket[bytes]
    envelope: list[bytes]
    request_id: str
    cmd: str
    deadline: float
    answered: bool = False
    timeout: float = 0.0


@dataclass
class Counters:
    requests: int = 0
    errors: int = 0
    dropped: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


class Server:
    """Binds the admin and read-only sockets and answers requests on them."""

    def __init__(
        self,
        commands: Mapping[str, Command],
        *,
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
        max_admin_message_bytes: int | None = None,
        workers: int = 4,
        max_in_flight: int = 64,
        command_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.commands = dict(commands)
        self.max_message_bytes = max_message_bytes
        self.max_admin_message_bytes = max_admin_message_bytes or max_message_bytes
        self.workers = workers
        self.max_in_flight = max_in_flight
        self.command_timeout = command_timeout
        self.counters = Counters()
        self._clock = clock
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._poller = zmq.Poller()
        self._sockets: dict[zmq.Socket[bytes], str] = {}  # socket -> ADMIN, READONLY, REMOTE
        self.gate = Gate(clock)  # who may run what: the admin policy, the remote keys
        self._auth: Any = None  # zmq.auth's ThreadAuthenticator, with a tcp endpoint
        self._paths: list[Path] = []
        self._pool: WorkerPool | None = None
        self._pending: dict[int, _Pending] = {}
        self._done: queue.SimpleQueue[tuple[int, Result | None, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._next_token = 0
        self._accepting = True
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller.register(self._wake_r.fileno(), zmq.POLLIN)

    # -- set-up -----------------------------------------------------------------------------

    @property
    def wakeup_fd(self) -> int:
        """A non-blocking fd for ``signal.set_wakeup_fd``: a signal wakes the poll at once."""
        return self._wake_w.fileno()

    def bind(self, path: Path, *, readonly: bool) -> None:
        limit = self.max_message_bytes if readonly else self.max_admin_message_bytes
        sock = self._router(limit)
        sock.bind(f"ipc://{path}")
        self._sockets[sock] = READONLY if readonly else ADMIN
        self._paths.append(path)
        self._poller.register(sock, zmq.POLLIN)

    def bind_remote(self, endpoint: str, pair: KeyPair, keys: dict[str, AuthorizedKey]) -> str:
        """Serve ``endpoint`` (tcp://) with CURVE: only ``keys`` get in. Returns the endpoint
        bound (with the port chosen when it was 0)."""
        from zmq.auth.thread import ThreadAuthenticator  # asyncio: only with a tcp endpoint

        assert pair.secret is not None
        self.gate.remote_keys = keys
        if self._auth is None:
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve_callback("*", self.gate)
        sock = self._router(self.max_message_bytes)
        sock.curve_server = True
        sock.curve_publickey = pair.public
        sock.curve_secretkey = pair.secret
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)  # a vanished host's connection is found and freed
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise StartupError(f"cannot listen on {endpoint}: {exc.strerror}") from None
        self._sockets[sock] = REMOTE
        self._poller.register(sock, zmq.POLLIN)
        bound: bytes = sock.getsockopt(zmq.LAST_ENDPOINT)  # type: ignore[assignment]
        return bound.decode()

    def _router(self, max_message_bytes: int) -> zmq.Socket[bytes]:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
        # A reply to a client that has gone raises EHOSTUNREACH: counted as dropped, not lost
        # silently.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        return sock

    @property
    def pool_started(self) -> bool:
        return self._pool is not None

    @property
    def in_flight(self) -> int:
        return sum(1 for p in self._pending.values() if not p.answered)

    # -- the loop ---------------------------------------------------------------------------

    def poll(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for work and do it; True when the wake fd fired."""
        deadline = self._next_deadline()
        if deadline is not None:
            until = max(0.0, deadline - self._clock())
            timeout = until if timeout is None else min(timeout, until)
        ms = None if timeout is None else int(timeout * 1000) + 1
        events = dict(self._poller.poll(ms))
        woke = self._wake_r.fileno() in events
        if woke:
            self._drain_wake()
        for sock, kind in self._sockets.items():
            if self._accepting and events.get(sock):
                self._serve(sock, kind)
        self._finish_done()
        self._expire()
        return woke

    def stop_accepting(self) -> None:
        """Stop reading requests; replies to those in flight still go out."""
        self._accepting = False
        for sock in self._sockets:
            self._poller.unregister(sock)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for in-flight commands; return how many were left."""
        end = self._clock() + timeout
        while self.in_flight and self._clock() < end:
            self.poll(min(0.1, max(0.0, end - self._clock())))
        return self.in_flight

    def close(self, thread_timeout: float = 2.0) -> None:
        """Stop the pool, close the sockets and unlink the socket files."""
        if self._pool is not None:
            busy = self._pool.stop(thread_timeout)
            if busy:
                _log.warning("thread.still_alive", threads=busy, action="exiting anyway")
        for sock in self._sockets:
            sock.close(linger=200)
        self._sockets.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()
        for path in self._paths:
            path.unlink(missing_ok=True)
        self._wake_r.close()
        self._wake_w.close()

    # -- requests ---------------------------------------------------------------------------

    def _serve(self, sock: zmq.Socket[bytes], kind: str) -> None:
        for _ in range(_BATCH):
            try:
                # The first frame as a zmq.Frame: it carries the sender's Peer-Address and
                # User-Id. The rest are copied out (small JSON, or array frames to keep).
                head = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [head.bytes]
            while sock.getsockopt(zmq.RCVMORE):
                frames.append(sock.recv(copy=True))
            if len(frames) < 2:  # no body at all: nothing to answer
                self.counters.dropped += 1
                continue
            envelope, body = _split(frames)
            try:
                self._handle(sock, kind, head, envelope, body)
            except Exception:  # a bug in perfd must not take the socket loop down
                _log.exception("request.crashed")
                message = "perfd failed to handle this request; see the daemon's log"
                self._reply_error(sock, envelope, _id_of(body), protocol.INTERNAL, message)

    def _handle(
        self,
        sock: zmq.Socket[bytes],
        kind: str,
        head: zmq.Frame,
        envelope: list[bytes],
        body: list[bytes],
    ) -> None:
        self.counters.requests += 1
        if not body:
            msg = "expected a message frame after the envelope, got none"
            self._reply_error(sock, envelope, None, protocol.BAD_REQUEST, msg)
            return
        try:
            request = protocol.decode_request(body[0])
            peer, refused = self.gate.caller(kind, head, request.id)
            command = self._command_for(request, kind, refused, head, peer)
            if command.admin:
                self.gate.authorize(request, kind, head, audit=command.audit, peer=peer)
            run = self._runner(command, request, body[1:])
        except ProtocolError as exc:
            self._reply_error(sock, envelope, exc.request_id, exc.code, exc.message)
            return
        if command.slow:
            timeout = command.timeout() if command.timeout else self.command_timeout
            self._submit(sock, envelope, request, run, timeout)
            return
        try:
            result = run(request.args)
        except CommandError as exc:
            self._reply_error(sock, envelope, request.id, exc.code, exc.message)
            return
        except Exception:
            _log.exception("command.failed", cmd=request.cmd)
            message = f"'{request.cmd}' failed inside perfd; see the daemon's log"
            self._reply_error(sock, envelope, request.id, protocol.INTERNAL, message)
            return
        self._deliver(sock, envelope, request.id, result, request.cmd)

    def _runner(
        self, command: Command, request: protocol.Request, extra: list[bytes]
    ) -> Callable[[dict[str, Any]], Any]:
        """The handler call for this request, with its extra frames when it takes them."""
        if not extra:
            return (lambda args: command.handler(args, [])) if command.frames else command.handler
        if not command.frames:
            raise ProtocolError(
                protocol.BAD_REQUEST,
                f"'{command.name}' takes 1 message frame after the envelope, got {1 + len(extra)}",
                request.id,
            )
        if len(extra) > MAX_EXTRA_FRAMES:
            raise ProtocolError(
                protocol.BAD_REQUEST, f"at most {MAX_EXTRA_FRAMES} array frames", request.id
            )
        return lambda args: command.handler(args, extra)

    def _deliver(
        self,
        sock: zmq.Socket[bytes],
        envelope: list[bytes],
        request_id: str | None,
        result: Any,
        cmd: str,
    ) -> None:
        """Send a result; a result JSON cannot carry, or frames that are not bytes, get an
        `internal` reply with the request's id (a bug in a handler, logged)."""
        try:
            if isinstance(result, WithFrames):
                payload = protocol.encode_result(request_id, result.result)
                # pyzmq checks every frame is a buffer before sending any: no half message
                self._send(sock, envelope, payload, result.frames)
            else:
                self._send(sock, envelope, protocol.encode_result(request_id, result))
        except (protocol.Unencodable, TypeError, ValueError) as exc:
            _log.error("command.failed", cmd=cmd, error=str(exc)[:200])
            message = f"'{cmd}' failed inside perfd: {str(exc)[:200]}"
            self._reply_error(sock, envelope, request_id, protocol.INTERNAL, message)

    def _command_for(
        self,
        request: protocol.Request,
        kind: str,
        refused: str | None,
        head: zmq.Frame,
        peer: Peer | None,
    ) -> Command:
        command = self.commands.get(request.cmd)
        if command is None:
            known = ", ".join(sorted(self.commands))
            raise ProtocolError(
                protocol.UNKNOWN_COMMAND,
                f"unknown command '{request.cmd[:64]}'; known: {known}",
                request.id,
            )
        if refused is not None and command.admin:  # logged: docs/security.md
            reason = f"'{command.name}' changes perfd and {refused}"
            raise self.gate.refuse(request, kind, head, peer, reason)
        unknown = sorted(set(request.args) - set(command.args))
        if unknown:
            allowed = ", ".join(sorted(command.args)) or "none"
            raise ProtocolError(
                protocol.INVALID_ARGS,
                f"'{command.name}' takes no argument {unknown[0][:64]!r}; allowed: {allowed}",
                request.id,
            )
        missing = sorted(command.required - set(request.args))
        if missing:
            raise ProtocolError(
                protocol.INVALID_ARGS, f"'{command.name}' needs argument '{missing[0]}'", request.id
            )
        for name, value in request.args.items():
            types = command.args[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                wanted = " or ".join(t.__name__ for t in types)
                raise ProtocolError(
                    protocol.INVALID_ARGS,
                    f"'{command.name}' argument '{name}' must be {wanted}",
                    request.id,
                )
        return command

    # -- slow commands ----------------------------------------------------------------------

    def _submit(
        self,
        sock: zmq.Socket[bytes],
        envelope: list[bytes],
        request: protocol.Request,
        run: Callable[[dict[str, Any]], Any],
        timeout: float,
    ) -> None:
        # Count commands that timed out but still hold a worker: the pool's queue is bounded.
        if len(self._pending) >= self.max_in_flight:
            message = f"{len(self._pending)} commands in flight; retry shortly"
            self._reply_error(sock, envelope, request.id, protocol.BUSY, message)
            return
        if self._pool is None:
            self._pool = WorkerPool(self.workers)
            _log.info("component.started", component="workers", threads=self.workers)
        token = self._next_token
        self._next_token += 1
        deadline = self._clock() + timeout
        self._pending[token] = _Pending(
            sock, envelope, request.id, request.cmd, deadline, timeout=timeout
        )
        self._pool.submit(
            run, request.args, lambda result, exc: self._completed(token, result, exc)
        )

    def _completed(self, token: int, result: Result | None, exc: BaseException | None) -> None:
        """Runs on the worker thread: hand the outcome to the socket thread."""
        self._done.put((token, result, exc))
        with contextlib.suppress(OSError):  # buffer full: a wake-up is already pending
            self._wake_w.send(b"\0")

    def _finish_done(self) -> None:
        while True:
            try:
                token, result, exc = self._done.get_nowait()
            except queue.Empty:
                return
            pending = self._pending.pop(token, None)
            if pending is None or pending.answered:
                continue
            sock, envelope, request_id = pending.sock, pending.envelope, pending.request_id
            if isinstance(exc, CommandError):
                self._reply_error(sock, envelope, request_id, exc.code, exc.message)
            elif exc is not None:
                _log.error("command.failed", cmd=pending.cmd, error=repr(exc))
                message = f"'{pending.cmd}' failed inside perfd; see the daemon's log"
                self._reply_error(sock, envelope, request_id, protocol.INTERNAL, message)
            else:
                self._deliver(sock, envelope, request_id, result, pending.cmd)

    def _expire(self) -> None:
        now = self._clock()
        for pending in self._pending.values():
            if not pending.answered and now >= pending.deadline:
                pending.answered = True
                message = f"'{pending.cmd}' did not finish within {pending.timeout:g}s"
                _log.warning("command.timeout", cmd=pending.cmd, timeout_s=pending.timeout)
                self._reply_error(
                    pending.sock, pending.envelope, pending.request_id, protocol.TIMEOUT, message
                )

    def _next_deadline(self) -> float | None:
        deadlines = [p.deadline for p in self._pending.values() if not p.answered]
        return min(deadlines) if deadlines else None

    # -- replies ----------------------------------------------------------------------------

    def _reply_error(
        self,
        sock: zmq.Socket[bytes],
        envelope: list[bytes],
        request_id: str | None,
        code: str,
        message: str,
    ) -> None:
        self.counters.errors += 1
        self.counters.by_code[code] = self.counters.by_code.get(code, 0) + 1
        _log.debug("request.rejected", code=code, message=message)
        self._send(sock, envelope, protocol.encode_error(request_id, code, message))

    def _send(
        self,
        sock: zmq.Socket[bytes],
        envelope: list[bytes],
        payload: bytes,
        frames: list[bytes] | None = None,
    ) -> None:
        if sock.closed:
            return
        try:
            sock.send_multipart([*envelope, payload, *(frames or ())], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:  # the peer is gone or its queue is full: drop, never block
            self.counters.dropped += 1

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass


def _id_of(body: list[bytes]) -> str | None:
    """The request's id, when its frame reads as a request at all (for a crash's reply)."""
    try:
        return protocol.decode_request(body[0]).id if body else None
    except ProtocolError:
        return None


def _split(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split [identity, (b"",) body...] into the reply envelope and the body frames.

    REQ peers put an empty delimiter after the identity; DEALER peers may not.
    """
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]
