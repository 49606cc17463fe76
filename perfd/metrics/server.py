"""The HTTP side of /metrics: one thread, one selector, a fixed number of connections.

prometheus_client's own server starts a thread per connection and waits on each for ever, so a
thousand idle connections cost perfd a thousand threads and file descriptors (and, at the
service's file limit, libzmq aborts perfd). This server holds every bound in one place:

- ``max_connections``: connections held at once. One more arriving closes the connection that
  has waited longest without sending a complete request (the oldest idle) to make room; when
  every connection is taking its reply, the new one is closed at once (refused).
- ``timeout``: a client must send its whole request within it from connecting, and take its
  whole reply within it again; otherwise it is dropped. A client sending its headers byte by
  byte (slowloris) or never finishing is dropped after ``timeout``, however steadily it sends.
- ``max_request_bytes``: the request line and headers together; a bigger request gets
  ``431`` and is closed. A request body is never read.

One request per connection (``Connection: close``), as prometheus_client's server does. When
accept() itself fails (EMFILE: perfd at its file limit), the oldest idle connection is closed,
or, with none idle, accepting pauses for a moment: the connection waits in the kernel's
backlog and perfd never spins or aborts.

The reply is the one prometheus_client's WSGI app gives (``prometheus_reply``): the text
format, or OpenMetrics when asked for, gzip when accepted, ``name[]`` filters, any path but
/favicon.ico, OPTIONS and GET only.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from perfd import log

_log = log.get("perfd.metrics")

REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
_CHUNK: Final = 65536
_ACCEPT_PAUSE: Final = 0.25  # seconds without accepting after EMFILE with nothing to close
_LOG_EVERY: Final = 60.0  # seconds between two warnings of one kind
_OUT_OF_FILES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class Limits:
    max_connections: int = 64
    timeout: float = 5.0
    max_request_bytes: int = 8192


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased


Response = tuple[int, list[tuple[str, str]], bytes]
Handler = Callable[[HttpRequest], Response]


class BadRequest(Exception):
    """A request perfd will not serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- pure: bytes in, a request or a reply out ----------------------------------------------


def head_end(buffer: bytes | bytearray) -> int | None:
    """Where the request's head (request line and headers) ends, or None while incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = buffer.find(b"\n\n")  # bare LF, as lenient servers accept
    return end + 2 if end >= 0 else None


def parse_request(head: bytes) -> HttpRequest:
    """The request line and headers; BadRequest saying what is wrong."""
    lines = head.decode("latin-1").replace("\r\n", "\n").rstrip("\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "the request line must be METHOD TARGET HTTP/1.x")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise BadRequest(400, "the request line must end in HTTP/1.0 or HTTP/1.1")
    if not version.startswith("HTTP/1."):
        raise BadRequest(505, f"{version} is not served; use HTTP/1.1")
    if not method.isalpha() or not method.isupper():
        raise BadRequest(400, f"bad method {method[:32]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line[:64]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    split = urlsplit(target)
    return HttpRequest(method, split.path or "/", split.query, headers)


def render(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The whole reply, closing the connection after it."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def error_reply(status: int, reason: str) -> Response:
    return status, [("Content-Type", "text/plain; charset=utf-8")], f"# {reason}\n".encode()


def prometheus_reply(registry: CollectorRegistry, request: HttpRequest) -> Response:
    """What prometheus_client's WSGI app answers (make_wsgi_app), for one request."""
    allow = [("Allow", "OPTIONS,GET")]
    if request.method == "OPTIONS":
        return 200, allow, b""
    if request.method != "GET":
        body = f"# HTTP 405 Method Not Allowed: {request.method}; use OPTIONS or GET\n"
        return 405, allow, body.encode()
    if request.path == "/favicon.ico":
        return 200, [], b""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    params = parse_qs(request.query)
    source = registry.restricted_registry(params["name[]"]) if "name[]" in params else registry
    output = encoder(source)
    headers = [("Content-Type", content_type)]
    if gzip_accepted(request.headers.get("accept-encoding", "")):
        output = gzip.compress(output)
        headers.append(("Content-Encoding", "gzip"))
    return 200, headers, output


# -- the server ------------------------------------------------------------------------------


class _Conn:
    __slots__ = ("deadline", "inbuf", "out", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbuf = bytearray()
        self.out: memoryview | None = None  # set once the reply is ready: no longer idle


@dataclass
class Counters:
    accepted: int = 0
    served: int = 0
    evicted: int = 0  # oldest idle closed to make room
    refused: int = 0  # closed at once: every connection was taking its reply
    timed_out: int = 0
    bad: int = 0  # 4xx/5xx for the request itself (too large, malformed)
    accept_failed: int = 0  # accept() errors such as EMFILE


class BoundedHTTPServer:
    """Serves ``handler`` on (host, port) from one thread, within ``limits``."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "perfd-metrics",
    ) -> None:
        """Binds at once: OSError when the address cannot be used."""
        self.limits = limits
        self.counters = Counters()
        self._handler = handler
        self._clock = clock
        self._name = name
        family, _, _, _, address = socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )[0]
        backlog = max(128, min(limits.max_connections, 4096))
        self._listener = socket.create_server(address[:2], family=family, backlog=backlog)
        self._listener.setblocking(False)
        self._port = int(self._listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._conns: dict[int, _Conn] = {}  # in the order they were accepted: oldest first
        self._paused_until: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: dict[str, float] = {}

    @property
    def port(self) -> int:
        return self._port

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                _log.warning("thread.still_alive", thread=self._name, action="exiting anyway")
                return
        else:
            self._close_all()
        self._thread = None

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, events in self._selector.select(self._select_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._service(key, events)
                self._expire()
        except Exception as exc:  # a bug here must not take perfd down: log, stop serving
            _log.error("metrics.server_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._close_all()

    def _select_timeout(self) -> float:
        now = self._clock()
        due = [c.deadline for c in self._conns.values()]
        if self._paused_until is not None:
            due.append(self._paused_until)
        return max(0.0, min(due) - now) if due else 1.0

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(64):
                pass

    def _accept(self) -> None:
        for _ in range(64):  # a burst; the rest on the next turn
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_FILES:  # ECONNABORTED and the like: that one
                    continue  # client gave up before perfd took it; take the next
                self._out_of_files(exc)
                return
            self.counters.accepted += 1
            if len(self._conns) >= self.limits.max_connections:
                if not self._evict_oldest_idle():
                    self.counters.refused += 1
                    self._warn("metrics.connection_refused", "every connection is replying")
                    sock.close()
                    continue
                self._warn(
                    "metrics.connection_limit",
                    "closed the oldest idle connection",
                    max_connections=self.limits.max_connections,
                )
            sock.setblocking(False)
            conn = _Conn(sock, self._clock() + self.limits.timeout)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _out_of_files(self, exc: OSError) -> None:
        """accept() found perfd at its file limit: free an fd, or stop accepting a moment
        (the connection waits in the kernel's backlog; the listener is level-triggered)."""
        self.counters.accept_failed += 1
        evicted = self._evict_oldest_idle()
        self._warn(
            "metrics.accept_failed",
            "closed the oldest idle connection" if evicted else "pausing accepts",
            error=exc.strerror or str(exc),
            errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
        )
        if not evicted:
            self._paused_until = self._clock() + _ACCEPT_PAUSE
            self._selector.unregister(self._listener)

    def _evict_oldest_idle(self) -> bool:
        """Close the oldest connection still without a complete request; False if none."""
        for fd, conn in self._conns.items():
            if conn.out is None:
                self.counters.evicted += 1
                self._close(fd)
                return True
        return False

    def _service(self, key: selectors.SelectorKey, events: int) -> None:
        fd = key.fd
        conn = self._conns.get(fd)
        if conn is None or conn.sock is not key.fileobj:  # closed earlier in this turn
            return
        try:
            if conn.out is None and events & selectors.EVENT_READ:
                self._read(fd, conn)
            elif conn.out is not None and events & selectors.EVENT_WRITE:
                self._write(fd, conn)
        except BlockingIOError:
            return
        except OSError:  # reset by the peer, and the like: that client is gone
            self._close(fd)

    def _read(self, fd: int, conn: _Conn) -> None:
        data = conn.sock.recv(4096)
        if not data:
            self._close(fd)
            return
        conn.inbuf += data
        end = head_end(conn.inbuf)
        limit = self.limits.max_request_bytes
        if end is None and len(conn.inbuf) <= limit:
            return
        if end is None or end > limit:
            self.counters.bad += 1
            reply = error_reply(431, f"the request's head is over {limit} bytes")
        else:
            reply = self._reply(bytes(conn.inbuf[:end]))
        conn.inbuf = bytearray()
        conn.out = memoryview(render(*reply))
        conn.deadline = self._clock() + self.limits.timeout
        self._selector.modify(conn.sock, selectors.EVENT_WRITE)
        self._write(fd, conn)

    def _reply(self, head: bytes) -> Response:
        try:
            request = parse_request(head)
        except BadRequest as bad:
            self.counters.bad += 1
            return error_reply(bad.status, bad.reason)
        try:
            reply = self._handler(request)
        except Exception as exc:
            _log.error("metrics.scrape_failed", error=f"{type(exc).__name__}: {exc}")
            return error_reply(500, "perfd could not collect its metrics; see its log")
        self.counters.served += 1
        return reply

    def _write(self, fd: int, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out[:_CHUNK])
        except BlockingIOError:
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(fd)

    def _expire(self) -> None:
        now = self._clock()
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ)
        late = [fd for fd, conn in self._conns.items() if conn.deadline <= now]
        for fd in late:
            self.counters.timed_out += 1
            self._close(fd)
        if late:
            _log.debug("metrics.timed_out", connections=len(late), timeout_s=self.limits.timeout)

    def _close(self, fd: int) -> None:
        conn = self._conns.pop(fd, None)
        if conn is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def _close_all(self) -> None:
        for fd in list(self._conns):
            self._close(fd)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _warn(self, event: str, action: str, **facts: object) -> None:
        """At most one warning of each kind a minute; the counters keep the whole count."""
        now = self._clock()
        if now - self._warned.get(event, -_LOG_EVERY) < _LOG_EVERY:
            return
        self._warned[event] = now
        _log.warning(event, action=action, **facts, counters=vars(self.counters).copy())
