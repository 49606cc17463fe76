"""The bounded /metrics server: parsing, replies, its limits, and a real perfd under attack."""

from __future__ import annotations

import gzip
import json
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

import perfctl
from perfd.metrics.server import (
    BadRequest,
    BoundedHTTPServer,
    HttpRequest,
    Limits,
    head_end,
    parse_request,
    prometheus_reply,
    render,
)
from tests.conftest import StartPerfd
from tests.daemons import wait_until
from tests.httpservers import closed_port

# -- pure -----------------------------------------------------------------------------------


def test_head_end_finds_crlf_and_bare_lf() -> None:
    """The head ends at the first blank line; None while it has not come."""
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody") == 27
    assert head_end(b"GET / HTTP/1.1\nHost: x\n\n") == 24
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") is None


def test_parse_request_reads_line_headers_and_query() -> None:
    """Method, path, query and lower-cased headers; a repeated header is joined."""
    head = b"GET /metrics?name[]=up HTTP/1.1\r\nAccept: a\r\naccept: b\r\nHost: h\r\n\r\n"
    request = parse_request(head)
    assert request.method == "GET"
    assert request.path == "/metrics"
    assert request.query == "name[]=up"
    assert request.headers == {"accept": "a, b", "host": "h"}
    assert parse_request(b"GET http://h:1/metrics HTTP/1.0\r\n\r\n").path == "/metrics"


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"GET /metrics\r\n\r\n", 400, "METHOD TARGET HTTP/1.x"),
        (b"GET / FTP/1.0\r\n\r\n", 400, "HTTP/1.0 or HTTP/1.1"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "use HTTP/1.1"),
        (b"g3t / HTTP/1.1\r\n\r\n", 400, "bad method"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad header line"),
        (b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n", 400, "bad header line"),
    ],
)
def test_parse_request_refuses_what_it_cannot_serve(head: bytes, status: int, words: str) -> None:
    """A malformed request is a BadRequest with its status and what is wrong."""
    with pytest.raises(BadRequest, match=re.escape(words)) as bad:
        parse_request(head)
    assert bad.value.status == status


def test_render_closes_and_counts_the_body() -> None:
    """Every reply says Connection: close and carries its Content-Length."""
    out = render(200, [("Content-Type", "text/plain")], b"hello")
    assert out == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello"
    )


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("perfd_a", "A.", registry=registry).set(1)
    Gauge("perfd_b", "B.", registry=registry).set(2)
    return registry


def test_prometheus_reply_is_prometheus_clients() -> None:
    """Text by default, OpenMetrics on request, gzip when accepted, name[] filters, any path
    but /favicon.ico, OPTIONS and GET only: as prometheus_client's WSGI app."""
    registry = _registry()
    status, headers, body = prometheus_reply(registry, HttpRequest("GET", "/metrics", ""))
    assert status == 200
    assert dict(headers)["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"perfd_a 1.0" in body
    assert b"perfd_b 2.0" in body
    _, headers, body = prometheus_reply(
        registry, HttpRequest("GET", "/", "", {"accept": "application/openmetrics-text"})
    )
    assert dict(headers)["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    _, headers, body = prometheus_reply(
        registry, HttpRequest("GET", "/metrics", "name[]=perfd_b", {"accept-encoding": "gzip"})
    )
    assert dict(headers)["Content-Encoding"] == "gzip"
    text = gzip.decompress(body)
    assert b"perfd_b 2.0" in text
    assert b"perfd_a" not in text
    assert prometheus_reply(registry, HttpRequest("GET", "/favicon.ico", "")) == (200, [], b"")
    status, headers, _ = prometheus_reply(registry, HttpRequest("OPTIONS", "/metrics", ""))
    assert (status, headers) == (200, [("Allow", "OPTIONS,GET")])
    status, _, body = prometheus_reply(registry, HttpRequest("POST", "/metrics", ""))
    assert status == 405
    assert b"use OPTIONS or GET" in body


# -- a server in this process ---------------------------------------------------------------


Serve = Callable[..., BoundedHTTPServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start BoundedHTTPServers on 127.0.0.1 answering ``body``; stopped afterwards."""
    started: list[BoundedHTTPServer] = []

    def start(limits: Limits, body: bytes = b"ok\n") -> BoundedHTTPServer:
        server = BoundedHTTPServer(
            "127.0.0.1", 0, lambda _request: (200, [("Content-Type", "text/plain")], body), limits
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _dropped_after(sock: socket.socket, drip: bytes, every: float, limit: float) -> float:
    """Send ``drip`` one byte each ``every`` seconds until perfd closes the connection;
    the seconds it took (AssertionError after ``limit``)."""
    started = time.monotonic()
    sock.settimeout(every)
    for byte in drip * 10_000:
        if time.monotonic() - started > limit:
            raise AssertionError(f"still connected after {limit} s")
        try:
            sock.send(bytes([byte]))
            if sock.recv(4096) == b"":
                return time.monotonic() - started
            raise AssertionError("perfd answered a request that was never finished")
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError("ran out of bytes")


@pytest.mark.slow
def test_a_slowloris_client_is_dropped_after_the_timeout(serve: Serve) -> None:
    """Headers sent byte by byte keep no connection beyond ``timeout``; others are served."""
    server = serve(Limits(timeout=1.0))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
        took = _dropped_after(slow, b"GET /metrics HTTP/1.1\r\nX-Drip: aaaa", 0.1, 10.0)
    assert 0.8 <= took < 10.0
    assert server.counters.timed_out == 1
    assert _get(server.port).endswith(b"ok\n")


def test_a_request_head_over_the_limit_gets_431(serve: Serve) -> None:
    """A head over max_request_bytes is answered 431 and closed, never buffered further."""
    server = serve(Limits(max_request_bytes=1024))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 4000)
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"over 1024 bytes" in reply


def test_beyond_max_connections_the_oldest_idle_is_closed(serve: Serve) -> None:
    """A connection past the cap closes the one idle longest; a fresh scrape is served."""
    server = serve(Limits(max_connections=4, timeout=60))
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(4)]
    wait_until(lambda: server.open_connections == 4, timeout=10)
    try:
        assert _get(server.port).endswith(b"ok\n")
        assert idle[0].recv(10) == b""  # the oldest went to make room
        assert server.counters.evicted == 1
        assert server.open_connections <= 4
    finally:
        for sock in idle:
            sock.close()


def test_when_every_connection_takes_its_reply_a_new_one_is_refused(serve: Serve) -> None:
    """Connections still receiving their reply are never evicted: the newcomer is closed."""
    server = serve(Limits(max_connections=2, timeout=60), body=b"x" * (32 << 20))
    readers = []
    for _ in range(2):  # ask, then never read the 32 MiB reply
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        readers.append(sock)
    wait_until(lambda: server.counters.served == 2, timeout=10)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as late:
            assert late.recv(10) == b""
        assert server.counters.refused == 1
        assert server.counters.evicted == 0
    finally:
        for sock in readers:
            sock.close()


def test_stop_frees_the_port(serve: Serve) -> None:
    """stop() closes the listener and every connection, and joins the thread."""
    server = serve(Limits())
    held = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    wait_until(lambda: server.open_connections == 1, timeout=10)
    server.stop()
    assert held.recv(10) == b""
    held.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


AT_THE_FILE_LIMIT = """
import resource, sys
from perfd.metrics.server import BoundedHTTPServer, Limits
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
ok = lambda request: (200, [], b"ok\\n")
server = BoundedHTTPServer("127.0.0.1", 0, ok, Limits(max_connections=1000, timeout=60))
server.start()
print(server.port, flush=True)
sys.stdin.read()
c = server.counters
print("counters", c.accept_failed, c.evicted, c.served, flush=True)
server.stop()
"""


def test_out_of_files_closes_the_oldest_idle_and_goes_on() -> None:
    """A server at its file limit (64, below max_connections) answers EMFILE from accept()
    by closing the oldest idle connection: a fresh request is still served, nothing aborts."""
    child = subprocess.Popen(
        [sys.executable, "-c", AT_THE_FILE_LIMIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    port = int(child.stdout.readline())
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(150)]
    try:
        assert _get(port).endswith(b"ok\n")
    finally:
        for sock in held:
            sock.close()
    out, _ = child.communicate("", timeout=30)
    assert child.returncode == 0
    failed, evicted, served = map(int, out.splitlines()[-1].split()[1:])
    assert failed > 0
    assert evicted >= failed
    assert served == 1


# -- a real perfd, at the service's file limit ----------------------------------------------

FILE_LIMIT = 1024


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: in /proc/{pid}/status")


def _open_many(port: int, count: int) -> list[socket.socket]:
    """``count`` connections to 127.0.0.1:PORT, started at once (non-blocking connects)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 200
    if soft < need:
        assert hard >= need, f"the test needs {need} file descriptors; the hard limit is {hard}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
    return socks


def _connected(socks: list[socket.socket], timeout: float) -> int:
    """How many of ``socks`` finished connecting (perfd accepted, perhaps closed) in time."""
    with selectors.DefaultSelector() as sel:  # epoll: more than select()'s 1024 fds
        for sock in socks:
            sel.register(sock, selectors.EVENT_WRITE)
        done = 0
        deadline = time.monotonic() + timeout
        while done < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sel.unregister(key.fileobj)
                done += 1
        return done


PING = re.compile(r"pong from perfd \S+ \(pid \d+\) in (?P<ms>[0-9.]+) ms")


def test_a_thousand_idle_connections_leave_perfd_serving(start_perfd: StartPerfd) -> None:
    """1,100 idle TCP connections to /metrics, perfd at a 1024-file limit: perfd stays up,
    perfctl ping and status answer within 0.5 s, a fresh scrape is served, perfd's thread
    count stays put and every connection is accepted (the oldest idle closed for the next)."""
    port = closed_port()
    perfd_ = start_perfd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n', nofile=FILE_LIMIT)
    pid = perfd_.proc.pid
    threads_before = _threads(pid)
    idle = _open_many(port, 1100)
    try:
        threads_seen = [_threads(pid)]
        connected = _connected(idle, timeout=60)
        threads_seen.append(_threads(pid))
        assert perfd_.proc.poll() is None, perfd_.log_path.read_text()[-3000:]
        for _ in range(3):
            ping = perfd_.ctl("ping")
            assert ping.returncode == 0, ping.stderr
            match = PING.search(ping.stdout)
            assert match is not None, ping.stdout
            assert float(match["ms"]) < 500, ping.stdout
            print(ping.stdout.strip())
            threads_seen.append(_threads(pid))
        status = perfd_.ctl("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["components"]["metrics"] == "started"
        with perfctl.Client(runtime_dir=perfd_.runtime_dir) as client:
            started = time.perf_counter()
            assert client.status()["components"]["metrics"] == "started"
            assert time.perf_counter() - started < 0.5
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        assert "perfd_up 1.0" in body
        open_fds = float(re.search(r"^process_open_fds (\S+)$", body, re.M)[1])  # type: ignore[index]
        assert open_fds < FILE_LIMIT / 2
        threads_seen.append(_threads(pid))
        print(f"threads {threads_before} -> {max(threads_seen)}; open fds {open_fds:g}")
        assert max(threads_seen) <= threads_before + 2, (threads_before, threads_seen)
        assert connected == 1100
        assert "metrics.connection_limit" in perfd_.events()
    finally:
        for sock in idle:
            sock.close()
    assert perfd_.stop() == 0


def test_slow_and_silent_clients_are_dropped_by_a_real_perfd(start_perfd: StartPerfd) -> None:
    """A real perfd drops a client sending its headers byte by byte, and one sending nothing,
    after `[metrics] timeout`; a scrape meanwhile is served."""
    port = closed_port()
    perfd_ = start_perfd(f'[metrics]\nlisten = "127.0.0.1:{port}"\ntimeout = "2s"\n')
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)
    result: dict[str, float] = {}

    def drip() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            result["took"] = _dropped_after(slow, b"GET /metrics HTTP/1.1\r\nX-Drip: a", 0.2, 30)

    dripping = threading.Thread(target=drip)
    dripping.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert b"perfd_up 1.0" in reply.read()
        started = time.monotonic()
        assert silent.recv(10) == b""  # closed by perfd, not by our 30 s timeout
        assert time.monotonic() - started < 25
    finally:
        dripping.join(40)
        silent.close()
    assert 1.5 <= result["took"] < 30
    assert perfd_.proc.poll() is None
    assert perfd_.stop() == 0
