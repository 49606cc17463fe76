"""Real HTTP and HTTPS servers on 127.0.0.1 for tests, scripted one reply per request.

    with ScriptedServer() as server:                      # http://127.0.0.1:<ephemeral port>
        server.enqueue(Reply(429, headers={"Retry-After": "1"}), Reply(200, {"ok": True}))
        ...                                               # point a client at server.url
        first, second = server.wait_for_requests(2)
        assert second.arrived - first.arrived >= 0.9

Reply(status=200, body=b"", headers={}, *, delay=0, close=False, stall=False, chunks=None,
      stall_before_chunk=None)
    One answer. ``body``: bytes or str sent as is, any other value as JSON (with Content-Type:
    application/json). ``delay``: seconds to wait first. ``close``: read the request, then close
    the connection without answering. ``stall``: wait until ``release()`` (or ``stop()``)
    before answering; pair it with a client read timeout. ``chunks``: byte strings sent with
    Transfer-Encoding: chunked, each flushed (``body`` is ignored); ``stall_before_chunk=N``
    stalls (until released) after sending chunks[:N].
sse_reply(events, *, done=True, status=200) -> Reply
    A text/event-stream: a ``: keep-alive`` comment, ``event:``/``id:`` fields a client must
    skip, one ``data: <json>`` event per item (a str item is sent as the data verbatim), then
    ``data: [DONE]`` unless ``done`` is False. Each event is its own chunk.
Recorded: method, path, headers (dict, lower-case names), body (bytes), arrived
    (time.monotonic() when the request was read), peer ((host, port) of the client's
    connection); ``.json()`` decodes the body.
ScriptedServer(default=Reply(200, {}), *, port=0)  started on construction (port 0: any free)
    .url ("http://127.0.0.1:PORT"), .port
    .enqueue(*replies)   answered in order; once the queue is empty ``default`` answers
    .requests            the Recorded requests so far, in arrival order (a copy)
    .peers               the distinct client (host, port) seen: one per TCP connection used
    .connections         connections accepted (TLS ones that failed the handshake included)
    .errors              exceptions raised while serving (a broken pipe after a client timeout)
    .wait_for_requests(n, timeout=10.0) -> the first n Recorded (AssertionError if fewer come)
    .release()           let stalled replies go on
    .stop()              release, close client connections, join the threads (idempotent);
                         also on leaving ``with``
ScriptedTLSServer(ca, default=...)               https://127.0.0.1:PORT, with a certificate for
    127.0.0.1 and localhost signed by ``ca`` (a trustme.CA)
write_ca(ca, path) -> str     the CA certificate's PEM written to ``path`` (a ca_bundle)
closed_port() -> int          a port on 127.0.0.1 that nothing listens on
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STALL_LIMIT = 30.0  # a stalled reply gives up after this even if nobody releases it


@dataclass
class Reply:
    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    close: bool = False
    stall: bool = False
    chunks: list[bytes] | None = None
    stall_before_chunk: int | None = None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float
    peer: tuple[str, int]

    def json(self) -> Any:
        return json.loads(self.body)


def sse_reply(events: Iterable[Any], *, done: bool = True, status: int = 200) -> Reply:
    """An OpenAI-style event stream of ``events`` (see the module docstring)."""
    chunks = [b": keep-alive\n\n", b"event: message\nid: 1\n"]
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        chunks.append(f"data: {data}\n\n".encode())
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return Reply(status, headers={"Content-Type": "text/event-stream"}, chunks=chunks)


def write_ca(ca: Any, path: Path) -> str:
    """Write the trustme CA's certificate (PEM) to ``path``; return the path as a str."""
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so that pool reuse shows
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        peer = (self.client_address[0], self.client_address[1])
        reply = owner.next_reply(
            Recorded(self.command, self.path, headers, body, time.monotonic(), peer)
        )
        if reply.delay:
            owner.stopping.wait(reply.delay)
        if reply.stall:
            owner.released.wait(STALL_LIMIT)
        if reply.close:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunks is not None:
            self._send_chunks(reply)
            return
        payload = reply.body
        if not isinstance(payload, bytes | str):
            payload = json.dumps(payload)
            if "Content-Type" not in reply.headers:
                self.send_header("Content-Type", "application/json")
        data = payload.encode() if isinstance(payload, str) else payload
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _send_chunks(self, reply: Reply) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index, chunk in enumerate(reply.chunks or []):
            if index == reply.stall_before_chunk:
                self.server.owner.released.wait(STALL_LIMIT)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, owner: ScriptedServer, port: int = 0) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no getfqdn(): no DNS in tests
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner.opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.owner.closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.errors.append(sys.exc_info()[1])


class ScriptedServer:
    """A threaded HTTP server answering from a queue of Replies; see the module docstring."""

    scheme = "http"

    def __init__(self, default: Reply | None = None, *, port: int = 0) -> None:
        self.default = default or Reply(200, {})
        self.errors: list[BaseException | None] = []
        self.released = threading.Event()
        self.stopping = threading.Event()
        self.connections = 0
        self._queue: deque[Reply] = deque()
        self._requests: list[Recorded] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Condition()
        self._server = _Server(self, port)
        self._wrap()
        self.port: int = self._server.server_address[1]
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.start()
        self._stopped = False

    def _wrap(self) -> None:
        """Hook for the TLS variant: wrap the listening socket."""

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def peers(self) -> set[tuple[str, int]]:
        return {request.peer for request in self.requests}

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= n, timeout):
                raise AssertionError(f"{len(self._requests)} requests came, not {n}")
            return self._requests[:n]

    def next_reply(self, request: Recorded) -> Reply:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            return self._queue.popleft() if self._queue else self.default

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._sockets.add(sock)

    def closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        self.released.set()
        self._server.shutdown()
        self._thread.join()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:  # wake handlers waiting for a kept-alive connection's next request
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()


class ScriptedTLSServer(ScriptedServer):
    """ScriptedServer over TLS, its certificate (127.0.0.1, localhost) signed by ``ca``."""

    scheme = "https"

    def __init__(self, ca: Any, default: Reply | None = None) -> None:
        self._ca = ca
        super().__init__(default)

    def _wrap(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server.socket = context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
