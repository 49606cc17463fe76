"""Pooled, retrying HTTP sessions shared by the provider client and the alert sinks.

``make_session`` builds a requests.Session with one HTTPAdapter (a pool of ``pool_maxsize``
kept-alive connections per host) and a Retry from ``post_safe_retry``::

    retry = post_safe_retry(total=3, connect=3, read=2, status=3, backoff_factor=0.5,
                            backoff_jitter=0.25, backoff_max=30)
    stats = HttpStats()
    session = make_session(pool_maxsize=10, retry=retry, ca_bundle="", stats=stats)
    with counting_retries() as tally:
        started = time.monotonic()
        response = session.post(url, json=body, timeout=(5, 120))
    stats.record(time.monotonic() - started, tally.retries, None)

The Retry never repeats what a server may already have processed. Every method is retried on
connect errors (nothing was sent). Idempotent methods (GET...) are also retried on read errors
and on 429/500/502/503/504; a POST only on 429 and 503, the two answers that say the request
was not processed. Retry-After is honoured, capped by ``backoff_max``. Other errors (TLS
failures above all) are not retried, and when status retries run out the last response is
returned (``raise_on_status=False``) so callers can read its status and body.

Callers pass ``allow_redirects=False``: a 3xx answer is an error naming its target
(``redirect_message``), never followed, so a prompt or an alert is never re-sent to another
host. Its sessions honour ``ca_bundle`` even when $REQUESTS_CA_BUNDLE is set (requests would
let the variable win) and the proxy variables, and never read ~/.netrc (it would replace an
Authorization header). Also shared: ``read_secret`` (a key from an environment variable or a
file, never echoed), ``BearerAuth`` (a repr without the key),
``redirect_message`` and ``causes`` (for messages), ``error_message`` (of an error body),
``parse_stream`` (Server-Sent Events). Importing this module is cheap: requests and urllib3
come when a session or Retry is built.
"""

from __future__ import annotations

import collections
import functools
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self

from perfd import redaction

if TYPE_CHECKING:
    import socket

    import requests
    from urllib3.util import Retry

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
UNPROCESSED_STATUSES: Final = frozenset({429, 503})  # the only statuses a POST is retried on
LATENCY_WINDOW: Final = 1000  # recent durations kept for the percentiles
MESSAGE_LIMIT: Final = 300  # characters of a server's error message kept


@dataclass
class RetryTally:
    """Retries urllib3 made for the calls inside one ``counting_retries()`` block."""

    retries: int = 0


_local = threading.local()


@contextmanager
def counting_retries() -> Iterator[RetryTally]:
    """Count the retries of the requests this thread makes inside the block."""
    outer = getattr(_local, "tally", None)
    tally = _local.tally = RetryTally()
    try:
        yield tally
    finally:
        _local.tally = outer


@functools.cache
def _post_safe_retry_class() -> type[Retry]:
    from urllib3.util import Retry

    class PostSafeRetry(Retry):
        """A Retry that retries a non-idempotent method only on connect errors, 429 and 503."""

        def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
            if self.allowed_methods is None or method.upper() in self.allowed_methods:
                return super().is_retry(method, status_code, has_retry_after)
            if status_code not in UNPROCESSED_STATUSES:
                return False
            return status_code in self.status_forcelist or bool(
                self.total and self.respect_retry_after_header and has_retry_after
            )

        def parse_retry_after(self, retry_after: str) -> float:
            return min(super().parse_retry_after(retry_after), self.backoff_max)

        def increment(self, *args: Any, **kwargs: Any) -> Self:
            # urllib3 itself refuses read retries for methods outside allowed_methods (POST).
            new = super().increment(*args, **kwargs)
            tally = getattr(_local, "tally", None)  # reached only when urllib3 will retry
            if tally is not None:
                tally.retries += 1
            return new

    return PostSafeRetry


def post_safe_retry(
    *,
    total: int,
    connect: int,
    read: int,
    status: int,
    backoff_factor: float,
    backoff_jitter: float,
    backoff_max: float,
) -> Retry:
    """The Retry described in the module docstring (idempotent methods retried normally)."""
    return _post_safe_retry_class()(
        total=total,
        connect=connect,
        read=read,
        status=status,
        other=0,  # TLS and other errors: a retry would fail the same way
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_jitter=backoff_jitter,
        backoff_max=backoff_max,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def make_session(
    *,
    pool_maxsize: int,
    retry: Retry,
    ca_bundle: str = "",
    headers: dict[str, str] | None = None,
    stats: HttpStats | None = None,
) -> requests.Session:
    """A session with one pooled, retrying adapter for http:// and https://.

    ``ca_bundle`` (a PEM file) replaces the system's CAs; ``headers`` go on every request;
    ``stats.connection_opened()`` is called for each new TCP connection.
    """
    session: requests.Session = _session_class()()
    on_connect = stats.connection_opened if stats is not None else None
    adapter = _adapter_class()(
        on_connect, pool_connections=4, pool_maxsize=pool_maxsize, max_retries=retry
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if ca_bundle:
        session.verify = ca_bundle
    session.headers.update(headers or {})
    session.auth = _url_auth  # any auth set stops requests reading ~/.netrc
    return session


def _url_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """HTTP Basic auth from the URL's ``user:password@``, unless an Authorization header is
    set already (a sink's bearer token); requests ignores the URL's once a session has auth."""
    from requests.auth import HTTPBasicAuth
    from requests.utils import get_auth_from_url

    user, password = get_auth_from_url(request.url or "")
    if (user or password) and "Authorization" not in request.headers:
        HTTPBasicAuth(user, password)(request)
    return request


@functools.cache
def _session_class() -> type[requests.Session]:
    import requests

    class Session(requests.Session):
        def merge_environment_settings(
            self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
        ) -> Any:
            if verify is None and self.verify is not True:
                verify = self.verify  # our ca_bundle beats $REQUESTS_CA_BUNDLE
            return super().merge_environment_settings(url, proxies, stream, verify, cert)

    return Session


@functools.cache
def _adapter_class() -> type[Any]:
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def counting_pools(on_connect: Callable[[], None]) -> dict[str, type[HTTPConnectionPool]]:
        class Connection(HTTPConnection):
            def _new_conn(self) -> socket.socket:
                sock = super()._new_conn()
                on_connect()  # a TCP connection is up (TLS comes after)
                return sock

        class TLSConnection(Connection, HTTPSConnection):
            pass

        class Pool(HTTPConnectionPool):
            ConnectionCls = Connection

        class TLSPool(HTTPSConnectionPool):
            ConnectionCls = TLSConnection

        return {"http": Pool, "https": TLSPool}

    class CountingAdapter(HTTPAdapter):
        """An HTTPAdapter whose pools report each TCP connection they open."""

        def __init__(self, on_connect: Callable[[], None] | None, **kwargs: Any) -> None:
            self._pools = counting_pools(on_connect) if on_connect is not None else None
            super().__init__(**kwargs)

        def init_poolmanager(
            self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
        ) -> None:
            super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
            if self._pools is not None:
                self.poolmanager.pool_classes_by_scheme = self._pools

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if self._pools is not None and not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = self._pools
            return manager

    return CountingAdapter


def read_secret(*, env: str, file: str, environ: Mapping[str, str]) -> str:
    """The secret in the variable named ``env``, else in ``file`` (stripped); "" when both are
    empty. Raises ValueError naming the variable or file, never showing the secret."""
    if env:
        secret, where = environ.get(env, "").strip(), f"the environment variable {env}"
        if not secret:
            raise ValueError(f"{where} is not set or empty: set it in perfd's environment")
    elif file:
        where = f"the file {file}"
        try:
            with open(file, encoding="utf-8") as handle:
                secret = handle.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read {where}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{where} is not UTF-8 text") from None
        if not secret:
            raise ValueError(f"{where} is empty")
    else:
        return ""
    if not (secret.isascii() and secret.isprintable()) or any(c.isspace() for c in secret):
        raise ValueError(f"the secret in {where} holds spaces or control characters")
    return secret


class BearerAuth:
    """requests auth sending ``Authorization: Bearer <token>``; its repr hides the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"


def redirect_message(response: requests.Response, setting: str) -> str:
    """Why a 3xx answer is refused, naming where it pointed (redacted) and what to do."""
    location = response.headers.get("Location") or ""
    target = urllib.parse.urljoin(response.url, location) if location else "nowhere given"
    return (
        f"redirected (HTTP {response.status_code}) to {redaction.redact_url(target)}: perfd "
        "follows no redirects (the request and its key would go to another server); "
        f"set {setting} to the address that answers"
    )


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors wrapped in it: requests' -> MaxRetryError -> its reason..."""
    chain = [exc]
    while len(chain) < 10:
        reason = getattr(chain[-1], "reason", None)
        inner = [a for a in (reason, *chain[-1].args) if isinstance(a, BaseException)]
        if not inner or inner[0] in chain:
            break
        chain.append(inner[0])
    return chain


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0-100) of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


class HttpStats:
    """Thread-safe counters of one client: calls, retries, failures, latency, connections."""

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self._lock = threading.Lock()
        self._durations: collections.deque[float] = collections.deque(maxlen=window)
        self._requests = 0
        self._streamed = 0
        self._retries = 0
        self._connections = 0
        self._failures: dict[str, int] = {}

    def record(
        self, duration_s: float, retries: int, failure_kind: str | None, streamed: bool = False
    ) -> None:
        """Count one call: how long it took, its retries, and its failure kind (None: ok)."""
        with self._lock:
            self._requests += 1
            self._streamed += streamed
            self._retries += retries
            self._durations.append(duration_s)
            if failure_kind is not None:
                self._failures[failure_kind] = self._failures.get(failure_kind, 0) + 1

    def connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            durations = list(self._durations)
            requests, connections = self._requests, self._connections
            result: dict[str, Any] = {
                "requests": requests,
                "streamed": self._streamed,
                "retries": self._retries,
                "failures": dict(sorted(self._failures.items())),
                "connections_opened": connections,
            }
        result["latency_ms"] = {
            "p50": round(percentile(durations, 50) * 1000, 3) if durations else None,
            "p95": round(percentile(durations, 95) * 1000, 3) if durations else None,
        }
        result["reuse_ratio"] = round(requests / connections, 2) if connections else None
        return result


class Malformed(ValueError):
    """A body that is not what the protocol promised (bad JSON, a cut-off stream)."""


def error_message(body: str | dict[str, Any], limit: int = MESSAGE_LIMIT) -> str:
    """The message of an error body: ``{"error": {"message": ...}}`` (OpenAI, OpenRouter, with
    OpenRouter's upstream ``metadata.raw``), ``{"error": "..."}``, ``{"message"|"detail": ...}``,
    else the text itself; whitespace collapsed, cut to ``limit`` characters ("" for none)."""
    doc: Any = body
    if isinstance(body, str):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
    message: Any = body if isinstance(body, str) else ""
    if isinstance(doc, dict):
        error = doc.get("error")
        found = error.get("message") if isinstance(error, dict) else error
        found = found or doc.get("message") or doc.get("detail")
        if isinstance(found, str) and found:
            message = found
            meta = error.get("metadata") if isinstance(error, dict) else None
            if isinstance(meta, dict) and isinstance(meta.get("raw"), str):
                message += f" ({meta.get('provider_name') or 'upstream'}: {meta['raw']})"
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def sse_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """The data of each Server-Sent Event in ``lines`` (comments and other fields skipped)."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def parse_stream(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Each JSON object of an OpenAI-style event stream, until ``data: [DONE]``.

    Raises Malformed for data that is not a JSON object, bytes that are not UTF-8, and a
    stream that ends without ``[DONE]`` (cut off).
    """
    try:
        for data in sse_data(lines):
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                chunk = None
            if not isinstance(chunk, dict):
                raise Malformed(f"a stream chunk is not a JSON object: {data[:100]!r}")
            yield chunk
    except UnicodeDecodeError:
        raise Malformed("the stream is not UTF-8") from None
    raise Malformed("the stream ended without data: [DONE] (cut off?)")
