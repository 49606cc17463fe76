"""The pooled client of OpenAI-compatible APIs: one ``[providers.NAME]`` table, one Provider.

    providers = Providers(config.providers)
    reply = providers.get("openrouter").chat({"model": "...", "messages": [...]})
    for chunk in providers.get("openrouter").chat_stream(body): ...

Each Provider owns a requests.Session built by perfd.net.http (a connection pool, the POST-safe
Retry, the CA bundle) and sends ``Authorization: Bearer <key>`` when a key is configured. The
key comes from the environment variable named by ``api_key_env`` or from ``api_key_file``
(stripped), read once when the Provider is built; it never appears in logs, stats, reprs, error
messages or answers: the provider's answers (errors, completions, stream chunks) have it
replaced by ``<redacted>``, also HTML-escaped, percent-encoded or JSON-escaped, and so have the
secret parts of ``base_url`` (user:password@...), which error messages of requests and urllib3
embed. Redirects are never followed: a 3xx answer is a ProviderHTTPError naming its target.
requests is imported when the first Provider is built, not with this module.

Every failure is a ProviderError with ``provider``, ``kind``, ``status``, ``message`` (the
provider's own, truncated) and ``retries`` (how many times urllib3 retried this call)::

    ProviderError
    ├── ProviderUnavailable     kind "connect" (refused, reset, TLS) or "timeout"
    ├── ProviderHTTPError       kind "http": a 3xx/4xx/5xx answer
    │   ├── AuthError           kind "auth": 401, 403
    │   └── RateLimited         kind "rate_limited": 429 after the retries
    ├── ProviderProtocolError   kind "protocol": a body that is not the JSON or SSE expected
    └── ProviderConfigError     kind "config": no key, unreadable key file, unknown provider
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from perfd import __version__, log, redaction
from perfd.errors import PerfdError
from perfd.net.http import (
    Malformed,
    causes,
    error_message,
    parse_stream,
    read_secret,
    redirect_message,
)
from perfd.redaction import Scrubber, url_secrets

if TYPE_CHECKING:
    import requests

    from perfd.config import ProviderConfig

__all__ = [
    "AuthError",
    "Provider",
    "ProviderConfigError",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderProtocolError",
    "ProviderUnavailable",
    "Providers",
    "RateLimited",
    "read_api_key",
]

T = TypeVar("T")
_log = log.get("perfd.provider")


class ProviderError(PerfdError):
    """A provider call failed; the attributes say how (see the module docstring)."""

    kind = "provider"

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        kind: str | None = None,
        status: int | None = None,
        retries: int = 0,
    ) -> None:
        self.provider = provider
        self.message = message
        self.kind = kind or type(self).kind
        self.status = status
        self.retries = retries
        facts = [self.kind] + ([f"HTTP {status}"] if status is not None else [])
        if retries:
            facts.append(f"{retries} {'retry' if retries == 1 else 'retries'}")
        super().__init__(f"provider {provider!r} ({', '.join(facts)}): {message}")


class ProviderUnavailable(ProviderError):
    kind = "connect"


class ProviderHTTPError(ProviderError):
    kind = "http"


class AuthError(ProviderHTTPError):
    kind = "auth"


class RateLimited(ProviderHTTPError):
    kind = "rate_limited"


class ProviderProtocolError(ProviderError):
    kind = "protocol"


class ProviderConfigError(ProviderError):
    kind = "config"


def read_api_key(name: str, cfg: ProviderConfig, environ: Mapping[str, str]) -> str:
    """The provider's API key ("" when none is configured); never echoed in an error."""
    try:
        return read_secret(env=cfg.api_key_env, file=cfg.api_key_file, environ=environ)
    except ValueError as exc:
        key = "api_key_env" if cfg.api_key_env else "api_key_file"
        raise ProviderConfigError(name, f"{exc} ({key})") from None


class Provider:
    """The client of one ``[providers.NAME]``: pooled, retrying, counted."""

    def __init__(
        self, name: str, cfg: ProviderConfig, *, environ: Mapping[str, str] | None = None
    ) -> None:
        from perfd.net import http

        self.name = name
        self._cfg = cfg
        self._base = cfg.base_url.rstrip("/")
        self._shown_url = redaction.redact_url(self._base)
        if cfg.ca_bundle and not os.path.exists(cfg.ca_bundle):
            raise ProviderConfigError(name, f"ca_bundle {cfg.ca_bundle} does not exist")
        self._key = read_api_key(name, cfg, os.environ if environ is None else environ)
        self._scrubber = Scrubber([self._key, *url_secrets(self._base)])
        self._stats = http.HttpStats()
        headers = {"Accept": "application/json", "User-Agent": f"perfd/{__version__}"}
        if cfg.referer:
            headers["HTTP-Referer"] = cfg.referer
        if cfg.title:
            headers["X-Title"] = cfg.title
        retry = http.post_safe_retry(
            total=cfg.retries,
            connect=cfg.connect_retries,
            read=cfg.read_retries,
            status=cfg.status_retries,
            backoff_factor=cfg.backoff_factor,
            backoff_jitter=cfg.backoff_jitter,
            backoff_max=cfg.backoff_max,
        )
        self._session = http.make_session(
            pool_maxsize=cfg.pool_maxsize,
            retry=retry,
            ca_bundle=cfg.ca_bundle,
            headers=headers,
            stats=self._stats,
        )
        if self._key:
            self._session.auth = http.BearerAuth(self._key)
        self._timeout = (cfg.connect_timeout, cfg.read_timeout)
        source = (cfg.api_key_env and f"env {cfg.api_key_env}") or (
            cfg.api_key_file and f"file {cfg.api_key_file}"
        )
        _log.info(
            "provider.ready",
            provider=name,
            base_url=self._shown_url,
            key_from=source or None,
            pool_maxsize=cfg.pool_maxsize,
        )

    def __repr__(self) -> str:
        return f"Provider({self.name!r}, base_url={self._shown_url!r})"

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST {base_url}/chat/completions and return the completion object."""
        return self._scrubber.value(self._call("POST", "/chat/completions", body, _object))

    def models(self) -> list[dict[str, Any]]:
        """GET {base_url}/models and return its ``data`` list."""
        return self._scrubber.value(self._call("GET", "/models", None, _model_list))

    def chat_stream(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST with ``"stream": true`` and yield each chunk until ``data: [DONE]``.

        The request is sent when iteration starts; closing the iterator early closes the
        connection. A chunk carrying ``error`` (OpenRouter's mid-stream failure) raises.
        """
        import requests

        started, retries, failure = time.monotonic(), 0, None
        try:
            response, retries = self._send(
                "POST", "/chat/completions", {**body, "stream": True}, stream=True
            )
            with response:
                lines = response.iter_lines()
                try:
                    for chunk in parse_stream(lines):
                        if chunk.get("error"):
                            raise self._stream_error(chunk, retries)
                        yield self._scrubber.value(chunk)
                except Malformed as exc:
                    raise self._protocol(str(exc), retries) from None
                except requests.RequestException as exc:
                    raise self._transport_error(exc, retries) from exc
                with contextlib.suppress(requests.RequestException):
                    for _ in itertools.islice(lines, 16):
                        pass  # read the body's end after [DONE]: the connection is reused
        except ProviderError as exc:
            failure, retries = exc.kind, exc.retries
            self._log_failure(exc)
            raise
        finally:
            self._stats.record(time.monotonic() - started, retries, failure, streamed=True)

    def stats(self) -> dict[str, Any]:
        return {"base_url": self._shown_url, **self._stats.as_dict()}

    def close(self) -> None:
        self._session.close()

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None, parse: Callable[[Any], T]
    ) -> T:
        started = time.monotonic()
        try:
            response, retries = self._send(method, path, body, stream=False)
            try:
                result = parse(response.json())
            except (ValueError, Malformed) as exc:
                text = response.content[:100].decode("utf-8", "replace")
                raise self._protocol(
                    f"unexpected {path} answer ({exc}): {text!r}", retries
                ) from None
        except ProviderError as exc:
            self._stats.record(time.monotonic() - started, exc.retries, exc.kind)
            self._log_failure(exc)
            raise
        elapsed = time.monotonic() - started
        self._stats.record(elapsed, retries, None)
        _log.debug("provider.request", provider=self.name, path=path, retries=retries)
        return result

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool
    ) -> tuple[requests.Response, int]:
        """Send one request (urllib3 retries it); a response that is not 2xx raises."""
        import requests

        from perfd.net import http

        with http.counting_retries() as tally:
            try:
                response = self._session.request(
                    method,
                    self._base + path,
                    json=body,
                    timeout=self._timeout,
                    stream=stream,
                    allow_redirects=False,  # never re-send the prompt to another server
                )
            except requests.RequestException as exc:
                raise self._transport_error(exc, tally.retries) from exc
        if response.status_code >= 300:
            with response:
                raise self._http_error(response, tally.retries)
        return response, tally.retries

    def _http_error(self, response: requests.Response, retries: int) -> ProviderError:
        import requests

        status = response.status_code
        if 300 <= status < 400:
            message = self._scrub(redirect_message(response, "base_url"))
            return ProviderHTTPError(self.name, message, status=status, retries=retries)
        try:
            text = response.content.decode("utf-8", "replace")
        except requests.RequestException:  # the body broke off: the status says enough
            text = ""
        message = self._scrub(error_message(text) or f"HTTP {status} {response.reason}")
        cls: type[ProviderError] = ProviderHTTPError
        if status in (401, 403):
            cls = AuthError
            message += " (check the API key)"
        elif status == 429:
            cls = RateLimited
        return cls(self.name, message, status=status, retries=retries)

    def _stream_error(self, chunk: dict[str, Any], retries: int) -> ProviderError:
        error = chunk["error"]
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and 100 <= code < 600 else None
        message = self._scrub(error_message(chunk) or "error chunk in the stream")
        return ProviderHTTPError(self.name, message, status=status, retries=retries)

    def _transport_error(self, exc: requests.RequestException, retries: int) -> ProviderError:
        import requests
        from urllib3.exceptions import ReadTimeoutError

        chain = causes(exc)
        reason = self._scrub(str(chain[-1]) or type(chain[-1]).__name__)
        host = redaction.host(self._base)
        errors = requests.exceptions
        kind, message = "connect", f"connection to {host} failed: {reason}"
        if isinstance(exc, errors.SSLError):
            message = (
                f"TLS with {host} failed: {reason} (if the server's certificate is signed by "
                "a private CA, set ca_bundle to that CA's PEM file)"
            )
        elif isinstance(exc, errors.ConnectTimeout):
            kind = "timeout"
            message = f"no connection to {host} within {self._cfg.connect_timeout:g}s"
        elif isinstance(exc, errors.ReadTimeout) or any(
            isinstance(e, ReadTimeoutError) for e in chain
        ):
            kind = "timeout"
            message = f"{host} sent nothing for {self._cfg.read_timeout:g}s (read_timeout)"
        elif isinstance(exc, errors.ContentDecodingError):
            return self._protocol(f"undecodable body: {reason}", retries)
        elif isinstance(exc, (errors.InvalidURL, errors.InvalidSchema, errors.MissingSchema)):
            return ProviderConfigError(self.name, f"bad URL: {reason}", retries=retries)
        return ProviderUnavailable(self.name, message, kind=kind, retries=retries)

    def _protocol(self, message: str, retries: int) -> ProviderError:
        return ProviderProtocolError(self.name, self._scrub(message), retries=retries)

    def _scrub(self, text: str) -> str:
        """``text`` without the key or base_url's secrets, in any encoding, nor URL secrets."""
        return self._scrubber.text(text)

    def _log_failure(self, exc: ProviderError) -> None:
        facts = {"kind": exc.kind, "status": exc.status, "retries": exc.retries}
        _log.warning("provider.failed", provider=self.name, message=exc.message, **facts)


def _object(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise Malformed(f"a JSON {type(doc).__name__}, not an object")
    return doc


def _model_list(doc: Any) -> list[dict[str, Any]]:
    data = _object(doc).get("data")
    if not isinstance(data, list):
        raise Malformed('no "data" list')
    return data


class Providers:
    """Every ``[providers.NAME]``, each built on first use and rebuilt when its config changes."""

    def __init__(
        self,
        configs: Mapping[str, ProviderConfig],
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._configs = dict(configs)
        self._environ = environ
        self._built: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Providers({self.names()!r}, used={sorted(self._built)!r})"

    def names(self) -> list[str]:
        return sorted(self._configs)

    def get(self, name: str) -> Provider:
        """The provider ``name``, built now if needed (a missing key raises here)."""
        with self._lock:
            provider = self._built.get(name)
            if provider is None:
                cfg = self._configs.get(name)
                if cfg is None:
                    known = ", ".join(sorted(self._configs)) or "none are configured"
                    raise ProviderConfigError(
                        name, f"no [providers.{name}] table in the config (known: {known})"
                    )
                provider = self._built[name] = Provider(name, cfg, environ=self._environ)
            return provider

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            built = dict(self._built)
            names = sorted(self._configs)
        return {
            n: {"used": True, **built[n].stats()} if n in built else {"used": False} for n in names
        }

    def reconfigure(self, configs: Mapping[str, ProviderConfig]) -> None:
        """Take a reloaded config: providers whose table changed or went are closed."""
        with self._lock:
            new = dict(configs)
            for name, provider in list(self._built.items()):
                if new.get(name) != self._configs.get(name):
                    provider.close()
                    del self._built[name]
            self._configs = new

    def close(self) -> None:
        with self._lock:
            for provider in self._built.values():
                provider.close()
            self._built.clear()
