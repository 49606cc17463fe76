"""The provider client against real local HTTP/HTTPS servers: retries, errors, TLS, SSE, stats."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme

from perfd import log
from perfd.config import ProviderConfig
from perfd.net import http
from perfd.net.provider import (
    AuthError,
    Provider,
    ProviderConfigError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    Providers,
    ProviderUnavailable,
    RateLimited,
)
from tests.httpservers import (
    Reply,
    ScriptedServer,
    ScriptedTLSServer,
    closed_port,
    sse_reply,
    write_ca,
)

KEY = "sk-or-v1-0123456789abcdefSECRET"
COMPLETION = {"id": "c1", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
FAST = {"backoff_factor": 0.0, "backoff_jitter": 0.0, "connect_timeout": 2.0, "read_timeout": 5.0}

MakeProvider = Callable[..., Provider]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A scripted HTTP server on 127.0.0.1, stopped after the test."""
    with ScriptedServer(default=Reply(200, COMPLETION)) as srv:
        yield srv


@pytest.fixture
def make_provider(server: ScriptedServer) -> Iterator[MakeProvider]:
    """Build Providers aimed at ``server`` (or ``base_url=``), with fast backoff; closed after."""
    built: list[Provider] = []

    def make(environ: dict[str, str] | None = None, **overrides: Any) -> Provider:
        settings = {"base_url": f"{server.url}/v1", **FAST, **overrides}
        provider = Provider("local", ProviderConfig(**settings), environ=environ or {})
        built.append(provider)
        return provider

    yield make
    for provider in built:
        provider.close()


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, str]:
    """A private CA and its certificate's PEM file."""
    authority = trustme.CA()
    return authority, write_ca(authority, tmp_path / "ca.pem")


def raised(call: Callable[[], object]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call()
    return info.value


def test_importing_provider_and_http_does_not_import_requests() -> None:
    """`import perfd.net.provider` (and perfd.net.http) loads neither requests nor urllib3."""
    code = (
        "import json, sys, perfd.net.provider, perfd.net.http; print(json.dumps(list(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert not loaded & {"requests", "urllib3"}


def test_chat_posts_json_and_returns_the_completion(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """chat() POSTs the body as JSON to {base_url}/chat/completions and returns the reply."""
    assert make_provider().chat(BODY) == COMPLETION
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json() == BODY
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers  # no key configured


def test_models_returns_the_data_list(server: ScriptedServer, make_provider: MakeProvider) -> None:
    """models() GETs {base_url}/models and returns its data list."""
    server.enqueue(Reply(200, {"object": "list", "data": [{"id": "a"}, {"id": "b"}]}))
    assert make_provider().models() == [{"id": "a"}, {"id": "b"}]
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/models")]


@pytest.mark.slow
def test_429_retry_after_is_honoured(server: ScriptedServer, make_provider: MakeProvider) -> None:
    """A 429 with Retry-After: 1 is retried once, about a second later, and counted."""
    server.enqueue(Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}))
    provider = make_provider()
    assert provider.chat(BODY) == COMPLETION
    first, second = server.wait_for_requests(2)
    assert second.arrived - first.arrived >= 0.9
    assert provider.stats()["retries"] == 1


def test_rate_limited_after_the_status_retries(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """429 every time: RateLimited with the status, message and retries = status_retries."""
    server.default = Reply(429, {"error": {"message": "quota exceeded"}}, {"Retry-After": "0"})
    exc = raised(lambda: make_provider(status_retries=2).chat(BODY))
    assert isinstance(exc, RateLimited)
    assert (exc.kind, exc.status, exc.retries, exc.message) == (
        "rate_limited",
        429,
        2,
        "quota exceeded",
    )
    assert len(server.requests) == 3


def test_post_is_retried_on_503(server: ScriptedServer, make_provider: MakeProvider) -> None:
    """A 503 says the POST was not processed: it is retried."""
    server.enqueue(Reply(503, {"error": {"message": "overloaded"}}))
    provider = make_provider()
    assert provider.chat(BODY) == COMPLETION
    assert len(server.requests) == 2
    assert provider.stats()["retries"] == 1


def test_post_is_not_retried_on_500_but_get_is(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """A 500 may come after the POST was processed: not retried; GET /models on 500 is."""
    server.enqueue(Reply(500, {"error": {"message": "boom"}}))
    provider = make_provider()
    exc = raised(lambda: provider.chat(BODY))
    assert isinstance(exc, ProviderHTTPError)
    assert (exc.kind, exc.status, exc.retries, exc.message) == ("http", 500, 0, "boom")
    assert len(server.requests) == 1
    server.enqueue(Reply(500, "oops"), Reply(200, {"data": []}))
    assert provider.models() == []
    assert len(server.requests) == 3


def test_post_is_not_retried_when_the_connection_closes(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """A connection closed after the POST was read may have been processed: not retried."""
    server.enqueue(Reply(close=True))
    exc = raised(lambda: make_provider().chat(BODY))
    assert isinstance(exc, ProviderUnavailable)
    assert (exc.kind, exc.retries) == ("connect", 0)
    assert len(server.requests) == 1


def test_get_is_retried_when_the_connection_closes(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """The same read error on GET /models is retried (read_retries)."""
    server.enqueue(Reply(close=True), Reply(200, {"data": [{"id": "x"}]}))
    assert make_provider().models() == [{"id": "x"}]
    assert len(server.requests) == 2


def test_connect_error_is_retried_connect_retries_times(make_provider: MakeProvider) -> None:
    """Nothing listening: retried connect_retries times, then ProviderUnavailable."""
    port = closed_port()
    provider = make_provider(base_url=f"http://127.0.0.1:{port}/v1", connect_retries=2)
    exc = raised(lambda: provider.chat(BODY))
    assert isinstance(exc, ProviderUnavailable)
    assert (exc.kind, exc.retries, exc.status) == ("connect", 2, None)
    assert f"127.0.0.1:{port}" in exc.message
    assert raised(lambda: list(provider.chat_stream(BODY))).retries == 2
    stats = provider.stats()
    assert (stats["failures"], stats["retries"], stats["streamed"]) == ({"connect": 2}, 4, 1)


def test_stalled_server_is_a_timeout(server: ScriptedServer, make_provider: MakeProvider) -> None:
    """No answer within read_timeout: ProviderUnavailable kind "timeout", POST not retried."""
    server.enqueue(Reply(stall=True))
    exc = raised(lambda: make_provider(read_timeout=0.3).chat(BODY))
    assert isinstance(exc, ProviderUnavailable)
    assert (exc.kind, exc.retries) == ("timeout", 0)
    assert "read_timeout" in exc.message
    assert len(server.requests) == 1


def test_tls_with_the_ca_bundle_works(
    ca: tuple[trustme.CA, str], make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private CA's server works with ca_bundle, which beats $REQUESTS_CA_BUNDLE."""
    authority, pem = ca
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", write_ca(trustme.CA(), Path(pem).with_name("o.pem")))
    with ScriptedTLSServer(authority, default=Reply(200, COMPLETION)) as tls:
        provider = make_provider(base_url=f"{tls.url}/v1", ca_bundle=pem)
        assert provider.chat(BODY) == COMPLETION
        assert provider.chat(BODY) == COMPLETION
        assert provider.stats()["connections_opened"] == 1
        assert len(tls.peers) == 1


def test_tls_without_the_ca_bundle_fails_clearly(
    ca: tuple[trustme.CA, str], make_provider: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ca_bundle the private CA is not trusted: a clear TLS error, not retried."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with ScriptedTLSServer(ca[0]) as tls:
        exc = raised(lambda: make_provider(base_url=f"{tls.url}/v1").chat(BODY))
        assert tls.requests == []
    assert isinstance(exc, ProviderUnavailable)
    assert (exc.kind, exc.retries) == ("connect", 0)
    assert "TLS" in exc.message
    assert "CERTIFICATE_VERIFY_FAILED" in exc.message
    assert "ca_bundle" in exc.message


def test_stream_yields_chunks_until_done(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """chat_stream() sends stream: true and yields each data chunk up to [DONE]."""
    chunks = [{"choices": [{"delta": {"content": c}}]} for c in ("Hel", "lo", " ✓")]
    server.enqueue(sse_reply(chunks))
    provider = make_provider()
    assert list(provider.chat_stream(BODY)) == chunks
    assert server.requests[0].json() == {**BODY, "stream": True}
    stats = provider.stats()
    assert (stats["requests"], stats["streamed"], stats["failures"]) == (1, 1, {})
    assert provider.chat(BODY) == COMPLETION  # the connection went back to the pool
    assert provider.stats()["connections_opened"] == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, chunks=[b"data: {not json\n\n", b"data: [DONE]\n\n"]),
        Reply(200, chunks=[b"data: [1, 2]\n\n", b"data: [DONE]\n\n"]),
        sse_reply([{"choices": []}], done=False),
    ],
    ids=["bad-json", "not-an-object", "no-done"],
)
def test_malformed_stream_is_a_protocol_error(
    server: ScriptedServer, make_provider: MakeProvider, reply: Reply
) -> None:
    """A chunk that is not a JSON object, or a stream cut off before [DONE]: kind "protocol"."""
    server.enqueue(reply)
    provider = make_provider()
    exc = raised(lambda: list(provider.chat_stream(BODY)))
    assert isinstance(exc, ProviderProtocolError)
    assert exc.kind == "protocol"
    assert provider.stats()["failures"] == {"protocol": 1}


def test_error_chunk_mid_stream_raises(server: ScriptedServer, make_provider: MakeProvider) -> None:
    """OpenRouter's mid-stream error chunk raises ProviderHTTPError with its code and message."""
    server.enqueue(sse_reply([{"choices": []}, {"error": {"code": 502, "message": "upstream"}}]))
    exc = raised(lambda: list(make_provider().chat_stream(BODY)))
    assert isinstance(exc, ProviderHTTPError)
    assert (exc.status, exc.message) == (502, "upstream")


def test_stream_stalling_midway_is_a_timeout(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """A stream that stops sending for read_timeout: kind "timeout" after the chunks so far."""
    reply = sse_reply([{"n": 1}, {"n": 2}])
    reply.stall_before_chunk = 3
    server.enqueue(reply)
    got: list[dict[str, Any]] = []
    exc = raised(lambda: got.extend(make_provider(read_timeout=0.3).chat_stream(BODY)))
    assert exc.kind == "timeout"
    assert got == [{"n": 1}]


def test_401_is_an_auth_error(server: ScriptedServer, make_provider: MakeProvider) -> None:
    """401 raises AuthError with the provider's message."""
    server.enqueue(Reply(401, {"error": {"code": 401, "message": "No auth credentials found"}}))
    exc = raised(lambda: make_provider().chat(BODY))
    assert isinstance(exc, AuthError)
    assert (exc.kind, exc.status, exc.retries) == ("auth", 401, 0)
    assert exc.message.startswith("No auth credentials found")


def test_key_from_env_is_sent_and_never_shown(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """The env key is sent as a bearer token and shown nowhere, even when echoed back."""
    out = io.StringIO()
    log.configure("debug", stream=out)
    providers = Providers(
        {"or": ProviderConfig(base_url=f"{server.url}/v1", api_key_env="OR_KEY", **FAST)},
        environ={"OR_KEY": f" {KEY}\n"},
    )
    try:
        provider = providers.get("or")
        provider.chat(BODY)
        server.enqueue(Reply(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
        exc = raised(lambda: provider.chat(BODY))
        shown = [out.getvalue(), json.dumps(providers.stats()), repr(provider), repr(providers)]
        shown += [str(exc), exc.message, repr(exc.args)]
    finally:
        providers.close()
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert "provider.ready" in shown[0]
    assert "provider.failed" in shown[0]
    assert all(KEY not in text for text in shown)


def test_key_from_file_is_stripped_and_sent(
    server: ScriptedServer, make_provider: MakeProvider, tmp_path: Path
) -> None:
    """api_key_file is read and stripped; the server sees Authorization: Bearer <key>."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    make_provider(api_key_file=str(key_file)).chat(BODY)
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_missing_key_is_a_config_error_naming_the_source(tmp_path: Path) -> None:
    """A missing variable or unreadable file: ProviderConfigError naming it, on get()."""
    configs = {
        "env": ProviderConfig(api_key_env="NO_SUCH_VAR"),
        "file": ProviderConfig(api_key_file=str(tmp_path / "absent")),
    }
    providers = Providers(configs, environ={})
    for name, needle in [("env", "NO_SUCH_VAR"), ("file", str(tmp_path / "absent"))]:
        exc = raised(functools.partial(providers.get, name))
        assert isinstance(exc, ProviderConfigError)
        assert (exc.kind, exc.provider) == ("config", name)
        assert needle in exc.message
    assert providers.stats() == {"env": {"used": False}, "file": {"used": False}}


def test_openrouter_headers_only_when_set(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """HTTP-Referer and X-Title are sent when referer/title are set, and only then."""
    make_provider(referer="https://example.org", title="perfd tests").chat(BODY)
    make_provider().chat(BODY)
    with_headers, without = server.requests
    assert with_headers.headers["http-referer"] == "https://example.org"
    assert with_headers.headers["x-title"] == "perfd tests"
    assert "http-referer" not in without.headers
    assert "x-title" not in without.headers


@pytest.mark.slow
def test_sequential_calls_reuse_one_connection(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """20 sequential calls open one connection: the client and the server agree."""
    provider = make_provider()
    for _ in range(20):
        provider.chat(BODY)
    stats = provider.stats()
    assert (stats["requests"], stats["connections_opened"], stats["reuse_ratio"]) == (20, 1, 20)
    assert len(server.peers) == 1
    assert server.connections == 1


def test_stats_count_latency_failures_and_hide_nothing_secret(
    server: ScriptedServer, make_provider: MakeProvider
) -> None:
    """stats() has base_url, requests, retries, failures by kind, p50/p95, and is JSON."""
    provider = make_provider()
    empty = provider.stats()
    assert empty["latency_ms"] == {"p50": None, "p95": None}
    provider.chat(BODY)
    server.enqueue(Reply(400, "bad request body"))
    assert raised(lambda: provider.chat(BODY)).message == "bad request body"
    stats = json.loads(json.dumps(provider.stats()))
    assert stats["base_url"] == f"{server.url}/v1"
    assert (stats["requests"], stats["retries"], stats["failures"]) == (2, 0, {"http": 1})
    assert 0 <= stats["latency_ms"]["p50"] <= stats["latency_ms"]["p95"]


def test_providers_build_lazily_and_rebuild_on_changed_config(server: ScriptedServer) -> None:
    """get() builds once; reconfigure() rebuilds only changed ones; unknown names list known."""
    a = ProviderConfig(base_url=f"{server.url}/v1", **FAST)
    providers = Providers({"a": a, "b": a})
    try:
        assert providers.stats() == {"a": {"used": False}, "b": {"used": False}}
        first_a, first_b = providers.get("a"), providers.get("b")
        assert providers.get("a") is first_a
        providers.reconfigure({"a": a, "b": replace(a, title="new")})
        assert providers.get("a") is first_a
        assert providers.get("b") is not first_b
        assert providers.names() == ["a", "b"]
        exc = raised(lambda: providers.get("c"))
        assert isinstance(exc, ProviderConfigError)
        assert "known: a, b" in exc.message
    finally:
        providers.close()


def test_retry_policy_by_method_and_status() -> None:
    """The POST-safe Retry: POST only on 429/503, GET on all five; Retry-After capped."""
    retry = http.post_safe_retry(
        total=3, connect=3, read=2, status=3, backoff_factor=0, backoff_jitter=0, backoff_max=7
    )
    assert [s for s in (429, 500, 502, 503, 504) if retry.is_retry("POST", s)] == [429, 503]
    assert all(retry.is_retry("GET", s) for s in (429, 500, 502, 503, 504))
    assert not retry.is_retry("GET", 404)
    assert retry.parse_retry_after("3600") == 7


def test_error_message_reads_the_usual_error_bodies() -> None:
    """The provider's message comes from the JSON error shapes, else the collapsed text."""
    openrouter = {
        "error": {
            "message": "Provider returned error",
            "metadata": {"provider_name": "Foo", "raw": "model overloaded"},
        }
    }
    assert http.error_message(json.dumps(openrouter)) == (
        "Provider returned error (Foo: model overloaded)"
    )
    assert http.error_message('{"error": "plain"}') == "plain"
    assert http.error_message('{"object": "error", "message": "vllm says"}') == "vllm says"
    assert http.error_message("<html>\n  Bad   Gateway </html>") == "<html> Bad Gateway </html>"
    assert len(http.error_message("x" * 1000)) == http.MESSAGE_LIMIT
    assert http.error_message("") == ""


def test_sse_data_joins_lines_and_skips_other_fields() -> None:
    """SSE parsing: multi-line data joined, comments and event/id/retry fields skipped."""
    lines = [": ping", "event: x", "id: 3", "data: a", "data:b", "", "retry: 5", "", "data: c"]
    assert list(http.sse_data(lines)) == ["a\nb", "c"]


def test_percentile_and_stats_reuse_ratio() -> None:
    """Nearest-rank percentiles; reuse_ratio is requests per connection."""
    assert http.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert http.percentile([float(n) for n in range(1, 101)], 95) == 95.0
    stats = http.HttpStats()
    for _ in range(4):
        stats.record(0.01, 1, None)
    stats.record(0.02, 0, "timeout", streamed=True)
    stats.connection_opened()
    stats.connection_opened()
    snapshot = stats.as_dict()
    assert snapshot["reuse_ratio"] == 2.5
    assert (snapshot["retries"], snapshot["streamed"], snapshot["failures"]) == (
        4,
        1,
        {"timeout": 1},
    )
