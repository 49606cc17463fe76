"""The ZeroMQ side of perfd: two ROUTER sockets, request dispatch and the worker pool.

The main loop (perfd.daemon) calls ``Server.poll`` over and over. Only that thread touches the
ZeroMQ sockets. Fast commands run inline; commands marked ``slow`` run on a worker pool that is
built on first use, and their replies come back through a queue plus a wake-up byte on a
socketpair that the poller also watches (the same pair receives signal numbers, see
``Server.wakeup_fd``). Nothing a client sends can raise out of ``poll``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from perfd.wire.keys import AuthorizedKey, KeyPair

from perfd import log
from perfd.errors import CommandError, StartupError
from perfd.server import routers
from perfd.server.commands import Command, WithFrames, command_for, id_of, runner, split
from perfd.server.gate import ADMIN, READONLY, REMOTE, Gate, client_of
from perfd.server.shares import Shares
from perfd.server.sockwatch import Watch
from perfd.server.workers import Result, WorkerPool
from perfd.wire import protocol
from perfd.wire.protocol import ProtocolError

_log = log.get("perfd.server")

# Messages taken from one socket per poll turn, so one busy client cannot starve the other.
_BATCH = 64


@dataclass
class _Pending:
    sock: zmq.Socket[bytes]
    envelope: list[bytes]
    request_id: str
    cmd: str
    deadline: float
    answered: bool = False
    timeout: float = 0.0
    fd: int | None = None  # the connection it came on (kept open until it is answered)


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
        max_in_flight_per_client: int | None = None,
        admin_reserve: int = 0,
        max_connections: int = 256,
        rss_limit: Callable[[int], int | None] = lambda rss: None,
        rss_allowance: int = 1 << 30,
        command_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.commands = dict(commands)
        self.max_message_bytes = max_message_bytes
        self.max_admin_message_bytes = max_admin_message_bytes or max_message_bytes
        self.workers = workers
        exempt = frozenset({"uid:0", f"uid:{os.geteuid()}"})
        self.shares = Shares(max_in_flight, max_in_flight_per_client, admin_reserve, exempt)
        self.watch = Watch(max_connections, rss_limit, rss_allowance, clock)
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
        kind = READONLY if readonly else ADMIN
        sock = self._router(limit, kind)
        sock.bind(f"ipc://{path}")
        self.watch.bound(sock, f"ipc://{path}")
        self._sockets[sock] = kind
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
        sock = self._router(self.max_message_bytes, REMOTE)
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
        self.watch.bound(sock, bound.decode())
        return bound.decode()

    def _router(self, max_message_bytes: int, kind: str) -> zmq.Socket[bytes]:
        sock = routers.new_router(self._ctx, max_message_bytes)  # per message: _serve
        self.watch.attach(sock, kind)  # its monitor is read on the sockwatch thread
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
        check = self.watch.next_check()
        if check is not None:
            deadline = check if deadline is None else min(deadline, check)
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
        self.watch.tick()
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
        self.watch.close()
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
        limit = self.max_admin_message_bytes if kind == ADMIN else self.max_message_bytes
        table = self.watch.table(sock)
        for _ in range(_BATCH):
            parts = routers.receive(sock)
            if parts is None:
                return
            head, fd = parts[0], routers.fd_of(parts[0])
            if table is not None and fd is not None:
                with self.watch.lock:
                    table.message(fd, self._clock())
            size = sum(len(p) for p in parts[1:])  # the identity frame is libzmq's
            if len(parts) < 2:  # no body at all: nothing to answer
                self.counters.dropped += 1
                continue
            if size > limit:
                envelope = routers.envelope_of(parts)
                del parts
                msg = f"message of {size} bytes is over this socket's limit of {limit} bytes"
                self._reply_error(sock, envelope, None, protocol.BAD_REQUEST, msg)
                continue
            envelope, body = split(routers.copy_out(parts))
            try:
                self._handle(sock, kind, head, envelope, body, fd=fd)
            except Exception:  # a bug in perfd must not take the socket loop down
                _log.exception("request.crashed")
                message = "perfd failed to handle this request; see the daemon's log"
                self._reply_error(sock, envelope, id_of(body), protocol.INTERNAL, message)

    def _handle(
        self,
        sock: zmq.Socket[bytes],
        kind: str,
        head: zmq.Frame,
        envelope: list[bytes],
        body: list[bytes],
        *,
        fd: int | None = None,
    ) -> None:
        self.counters.requests += 1
        if not body:
            msg = "expected a message frame after the envelope, got none"
            self._reply_error(sock, envelope, None, protocol.BAD_REQUEST, msg)
            return
        try:
            request = protocol.decode_request(body[0])
            peer, refused = self.gate.caller(kind, head, request.id)
            command = command_for(
                self.commands,
                request,
                refused,
                lambda reason: self.gate.refuse(request, kind, head, peer, reason),
            )
            if command.admin:
                self.gate.authorize(request, kind, head, audit=command.audit, peer=peer)
            run = runner(command, request, body[1:])
        except ProtocolError as exc:
            self._reply_error(sock, envelope, exc.request_id, exc.code, exc.message)
            return
        if command.slow:
            timeout = command.timeout() if command.timeout else self.command_timeout
            pending = _Pending(sock, envelope, request.id, request.cmd, 0.0, fd=fd)
            self._submit(
                pending,
                request,
                run,
                client=client_of(kind, head),
                admin=command.admin,
                timeout=timeout,
            )
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

    # -- slow commands ----------------------------------------------------------------------

    def _submit(
        self,
        pending: _Pending,
        request: protocol.Request,
        run: Callable[[dict[str, Any]], Any],
        *,
        client: str,
        admin: bool,
        timeout: float,
    ) -> None:
        # Commands that timed out but still hold a worker keep their slot: the queue is bounded.
        refusal = self.shares.refusal(client, admin)
        if refusal is not None:
            self._reply_error(pending.sock, pending.envelope, request.id, protocol.BUSY, refusal)
            return
        if self._pool is None:
            self._pool = WorkerPool(self.workers)
            _log.info("component.started", component="workers", threads=self.workers)
        token = self._next_token
        self._next_token += 1
        pending.deadline, pending.timeout = self._clock() + timeout, timeout
        self._pending[token] = pending
        self.shares.hold(token, client, admin)
        self._hold(pending, True)
        self._pool.submit(
            run,
            request.args,
            lambda result, exc: self._completed(token, result, exc),
            client=client,
            admin=admin,
        )

    def _hold(self, pending: _Pending, hold: bool) -> None:
        """Keep the connection of a request awaiting its answer (``hold``), or let it go."""
        table = self.watch.table(pending.sock)
        if table is not None:
            with self.watch.lock:
                table.hold(pending.fd) if hold else table.release(pending.fd, self._clock())

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
            self.shares.release(token)
            pending = self._pending.pop(token, None)
            if pending is None or pending.answered:
                continue
            self._hold(pending, False)
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
                self._hold(pending, False)
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
        frames: list[bytes | memoryview] | None = None,
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
