"""The real ``get`` a reader calls: one bounded HTTP request to an engine's endpoint.

    get = fetcher(target, timeout_s=2.0)
    body = get("/metrics")                                  # GET
    body = get("/api/show", b'{"model": "llama3.2:1b"}')    # POST, Content-Type: application/json

Each call opens one connection, sends one request and reads the whole answer within
``timeout_s`` in total: the connect, the headers and the body share one deadline, and a
watchdog shuts the socket down when it passes, so an engine that accepts and never answers,
sends headers and then stalls, or trickles a byte a second, comes back as EngineTimeout about
``timeout_s`` after the call, never later. Bodies over ``MAX_BODY`` (8 MiB) are refused
(PayloadError) before they are read whole. Refused, reset or unresolvable: EngineDown. An HTTP
error status: PayloadError naming the status and the endpoint. Only http:// and https:// URLs.

Why the standard library's http.client and not perfd.net.http's pooled requests session: an
engine is read once per interval from the watcher's thread, one request at a time, so a pool
buys nothing, while http.client imports cheaply, retries nothing behind our back (a retry
would double the time a hung engine costs) and gives direct hold of the socket, which the
total deadline needs (requests' timeouts are per socket operation, so a trickling engine could
hold a read for ever).

The API key: when ``target.api_key_env`` names a set environment variable, its value goes in
an ``Authorization: Bearer`` header, read at each call (a rotated key is picked up). It is
never logged and never part of a reason: reasons name the method, the redacted URL and what
went wrong.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.parse

from perfd.engines.errors import EngineDown, EngineTimeout, EngineUnavailable, PayloadError
from perfd.engines.readers import Get
from perfd.engines.record import Target
from perfd.redaction import redact_url

MAX_BODY = 8 * 1024 * 1024
CHUNK = 64 * 1024
EXCERPT = 120  # characters of an error body quoted in a reason


def fetcher(target: Target, timeout_s: float) -> Get:
    """A ``get(path, body=None) -> bytes`` for ``target`` (see the module docstring);
    ValueError for a URL that is not http:// or https:// with a host."""
    parts = urllib.parse.urlsplit(target.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"engine {target.name}: url must be http:// or https://, not {target.url!r}"
        )
    base = parts.path.rstrip("/")

    def get(path: str, body: bytes | None = None) -> bytes:
        method = "GET" if body is None else "POST"
        where = f"{method} {redact_url(target.url.rstrip('/') + path)}"
        headers = {"Accept": "*/*", "User-Agent": "perfd"}
        key = os.environ.get(target.api_key_env) if target.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        return _request(
            parts, method, base + path, body=body, headers=headers, timeout_s=timeout_s, where=where
        )

    return get


def _connection(parts: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
    host, port = parts.hostname or "", parts.port
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls())
    return http.client.HTTPConnection(host, port, timeout=timeout)


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()  # loads the system CAs once, not at every read


def _request(
    parts: urllib.parse.SplitResult,
    method: str,
    path: str,
    *,
    body: bytes | None,
    headers: dict[str, str],
    timeout_s: float,
    where: str,
) -> bytes:
    deadline = time.monotonic() + timeout_s
    conn = _connection(parts, timeout_s)
    expired = threading.Event()
    watchdog = threading.Timer(timeout_s, _expire, (conn, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.connect()
        if expired.is_set():  # the watchdog fired before there was a socket to shut down
            raise _timeout(where, timeout_s)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = _read(response, conn, deadline, where)
        if expired.is_set():
            raise _timeout(where, timeout_s)
    except PayloadError:
        if expired.is_set():  # cut short by the watchdog, not by the engine
            raise _timeout(where, timeout_s) from None
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise _failure(exc, where, timeout_s, expired=expired.is_set()) from None
    finally:
        watchdog.cancel()
        conn.close()
    if response.status >= 400:
        raise PayloadError(f"{where}: HTTP {response.status}{_excerpt(data)}")
    if response.status >= 300:
        location = redact_url(response.getheader("Location") or "nowhere")[:EXCERPT]
        raise PayloadError(
            f"{where}: HTTP {response.status}, a redirect to {location!r} (not followed: "
            "point the engine's url at the final address)"
        )
    return data


def _failure(
    exc: OSError | http.client.HTTPException, where: str, timeout_s: float, *, expired: bool
) -> EngineUnavailable:
    """The engine state and reason of a failed request."""
    if isinstance(exc, ssl.SSLError):
        return PayloadError(f"{where}: TLS failed ({exc.reason or type(exc).__name__})")
    if expired or isinstance(exc, TimeoutError):
        return _timeout(where, timeout_s)
    if isinstance(exc, http.client.IncompleteRead):
        return PayloadError(
            f"{where}: truncated answer, {len(exc.partial)} bytes of "
            f"{_expected(exc)} before the connection closed"
        )
    if isinstance(exc, OSError):  # refused, reset, closed without an answer, no such host
        return EngineDown(f"{where}: {_os_reason(exc)}")
    return PayloadError(f"{where}: not an HTTP answer ({type(exc).__name__})")


def _read(
    response: http.client.HTTPResponse,
    conn: http.client.HTTPConnection,
    deadline: float,
    where: str,
) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_BODY:
        raise PayloadError(f"{where}: answer of {int(length)} bytes, over the {MAX_BODY} cap")
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError()
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        chunk = response.read1(CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadError(f"{where}: answer over the {MAX_BODY} byte cap")
        chunks.append(chunk)
    if response.length:  # the connection closed before Content-Length bytes came
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


def _expire(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    expired.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _timeout(where: str, timeout_s: float) -> EngineTimeout:
    return EngineTimeout(f"{where}: no complete answer within {timeout_s:g} s")


def _expected(exc: http.client.IncompleteRead) -> str:
    if exc.expected is None:
        return "an unknown length"
    return f"{len(exc.partial) + exc.expected} announced"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the engine closed the connection without answering"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the engine"
    if isinstance(exc, socket.gaierror):
        return "host not found"
    strerror = exc.strerror if isinstance(exc, OSError) else None
    return strerror or type(exc).__name__


def _excerpt(data: bytes) -> str:
    text = data[: EXCERPT * 4].decode("utf-8", "replace")
    clean = "".join(c if c.isprintable() else " " for c in text).strip()
    clean = " ".join(clean.split())[:EXCERPT]
    return f": {clean}" if clean else ""
