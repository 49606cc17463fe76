"""The vLLM, SGLang and Ollama readers against real HTTP servers playing each engine in two
generations (tests/engineservers.py), the real get (perfd/engines/fetch.py) against hung,
slow, truncated, garbage and failing servers, and hypothesis fuzz of every reader's parsing."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfd.engines.errors import EngineDown, EngineTimeout, PayloadError
from perfd.engines.fetch import MAX_BODY, fetcher
from perfd.engines.readers import llamacpp, ollama, payload, reader, sglang, vllm
from perfd.engines.record import Reading, Target
from tests.enginepayloads import (
    OllamaFigures,
    OllamaModel,
    SglangFigures,
    SglangRank,
    VllmCore,
    VllmFigures,
    answer,
)
from tests.engineservers import EngineServer, start
from tests.httpservers import Reply, ScriptedServer, closed_port

TIMEOUT = 1.0
BOUND = TIMEOUT + 4.0  # a generous bound on a timed-out read (2 cores shared by many)
KEY = "sk-perfd-test-0123456789abcdef"


def target(server: EngineServer | ScriptedServer, kind: str = "vllm", **extra: str) -> Target:
    return Target(name=f"{kind}-test", kind=kind, url=server.url, **extra)  # type: ignore[arg-type]


def read(server: EngineServer, timeout: float = 5.0, **extra: str) -> Reading:
    t = target(server, server.kind, **extra)
    return reader(server.kind)(t, fetcher(t, timeout))


@pytest.fixture
def serve() -> Iterator[list[EngineServer]]:
    servers: list[EngineServer] = []
    yield servers
    for server in servers:
        server.stop()


# vLLM -------------------------------------------------------------------------------------

VLLM_FALLBACKS = {
    "current": (),
    "transition": (
        "vllm:gpu_cache_usage_perc",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_hits_total",
    ),
    "previous": ("vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_hit_rate"),
}


@pytest.mark.parametrize("generation", ["current", "transition", "previous"])
def test_vllm_reading_equals_what_the_server_serves(
    serve: list[EngineServer], generation: str
) -> None:
    """Every figure of a vLLM reading is the one its /metrics and /v1/models serve, in each
    generation, with the older names it fell back to."""
    core = VllmCore(
        running=5,
        waiting=7,
        usage=0.375,
        preemptions=11,
        queries=5000,
        hits=1250,
        num_gpu_blocks=4096,
        block_size=16,
    )
    figures = VllmFigures(
        model="Qwen/Qwen3-8B",
        root="/srv/qwen3-8b",
        max_model_len=32768,
        gpu_memory_utilization=0.85,
        cache_dtype="fp8",
        cores=[core],
    )
    serve.append(server := start("vllm", generation, figures=figures))
    reading = read(server)
    assert [(m.name, m.context, m.path) for m in reading.models] == [
        ("Qwen/Qwen3-8B", 32768, "/srv/qwen3-8b")
    ]
    assert reading.requests_running == 5
    assert reading.requests_waiting == 7
    assert reading.kv_capacity_tokens == 4096 * 16
    assert reading.kv_used_tokens == round(0.375 * 4096 * 16)
    assert reading.kv_usage_ratio == pytest.approx(0.375)
    assert reading.preemptions_total == 11
    assert reading.settings == {
        "block_size": 16,
        "num_gpu_blocks": 4096,
        "gpu_memory_utilization": 0.85,
        "cache_dtype": "fp8",
    }
    if generation == "previous":
        assert reading.prefix_cache_hit_ratio == pytest.approx(1250 / 5000)
        assert reading.prefix_cache_queries_total is None
    else:
        assert (reading.prefix_cache_queries_total, reading.prefix_cache_hits_total) == (5000, 1250)
    assert reading.fallbacks == VLLM_FALLBACKS[generation]


@pytest.mark.parametrize("generation", ["current", "transition"])
def test_vllm_sums_over_the_engine_label(serve: list[EngineServer], generation: str) -> None:
    """Two engine cores in one server (data parallel): counts and capacities add up, and the
    usage ratio is the used tokens of both over their capacity."""
    cores = [
        VllmCore(running=3, waiting=1, usage=0.5, preemptions=2, num_gpu_blocks=1000),
        VllmCore(running=4, waiting=6, usage=0.25, preemptions=5, num_gpu_blocks=3000),
    ]
    serve.append(server := start("vllm", generation, figures=VllmFigures(cores=cores)))
    reading = read(server)
    assert reading.requests_running == 7
    assert reading.requests_waiting == 7
    assert reading.preemptions_total == 7
    assert reading.kv_capacity_tokens == 4000 * 16
    assert reading.kv_used_tokens == 500 * 16 + 750 * 16
    assert reading.kv_usage_ratio == pytest.approx((500 + 750) / 4000)


def test_vllm_kv_cache_size_tokens_label_is_the_capacity(serve: list[EngineServer]) -> None:
    """Where cache_config_info carries kv_cache_size_tokens, that is the capacity."""
    figures = VllmFigures(kv_cache_size_tokens=30000, cores=[VllmCore(usage=0.5)])
    serve.append(server := start("vllm", "current", figures=figures))
    reading = read(server)
    assert reading.kv_capacity_tokens == 30000
    assert reading.kv_used_tokens == 15000
    assert reading.settings["kv_cache_size_tokens"] == 30000


def test_vllm_counter_grows_between_reads(serve: list[EngineServer]) -> None:
    """A preemption counter the server raises between two reads shows the increase."""
    serve.append(server := start("vllm", "current"))
    first = read(server).preemptions_total
    with server.lock:
        server.figures.cores[0].preemptions += 42
    assert read(server).preemptions_total == (first or 0) + 42


# SGLang -----------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["current", "previous"])
def test_sglang_reading_equals_what_the_server_serves(
    serve: list[EngineServer], generation: str
) -> None:
    """SGLang's figures from /metrics, the model from /v1/models, and (older servers) the pool
    and context from /get_server_info, recorded as fallbacks."""
    rank = SglangRank(
        running=9, queued=4, used_tokens=30000, max_total_tokens=120000, cache_hit_rate=0.6
    )
    figures = SglangFigures(model="Qwen/Qwen2.5-7B", path="/srv/qwen", context=65536, ranks=[rank])
    serve.append(server := start("sglang", generation, figures=figures))
    reading = read(server)
    assert [(m.name, m.context, m.path) for m in reading.models] == [
        ("Qwen/Qwen2.5-7B", 65536, "/srv/qwen")
    ]
    assert reading.requests_running == 9
    assert reading.requests_waiting == 4
    assert (reading.kv_used_tokens, reading.kv_capacity_tokens) == (30000, 120000)
    assert reading.kv_usage_ratio == pytest.approx(0.25)
    assert reading.prefix_cache_hit_ratio == pytest.approx(0.6)
    expected = (
        ()
        if generation == "current"
        else ("/get_server_info:max_total_num_tokens", "/get_server_info:context_length")
    )
    assert reading.fallbacks == expected


def test_sglang_sums_dp_ranks_and_counts_tp_ranks_once(serve: list[EngineServer]) -> None:
    """Two data-parallel ranks add up; a second tensor-parallel rank repeating rank 0's series
    is not counted twice."""
    ranks = [
        SglangRank(running=2, queued=1, used_tokens=1000, max_total_tokens=10000),
        SglangRank(running=3, queued=5, used_tokens=3000, max_total_tokens=10000),
    ]
    serve.append(
        server := start("sglang", "current", figures=SglangFigures(tp_size=2, ranks=ranks))
    )
    reading = read(server)
    assert reading.requests_running == 5
    assert reading.requests_waiting == 6
    assert (reading.kv_used_tokens, reading.kv_capacity_tokens) == (4000, 20000)


def test_sglang_failing_server_info_leaves_the_pool_unknown(serve: list[EngineServer]) -> None:
    """An older SGLang whose /get_server_info fails is still read: the pool is unknown and the
    usage ratio falls back to sglang:token_usage."""
    rank = SglangRank(used_tokens=6000, max_total_tokens=24000)
    serve.append(server := start("sglang", "previous", figures=SglangFigures(ranks=[rank])))
    server.set_mode("http503", paths=("/get_server_info",))
    reading = read(server)
    assert reading.kv_capacity_tokens is None
    assert reading.kv_used_tokens == 6000
    assert reading.kv_usage_ratio == pytest.approx(0.25)
    assert reading.models[0].context is None
    assert reading.fallbacks == ("sglang:token_usage",)


def test_sglang_without_a_model_list_is_read_from_its_metrics(serve: list[EngineServer]) -> None:
    """A /v1/models that fails (404 on a server without the OpenAI routes, a 500) leaves the
    models unknown and says why; the metrics' figures stand."""
    rank = SglangRank(used_tokens=3000, max_total_tokens=12000)
    serve.append(server := start("sglang", "current", figures=SglangFigures(ranks=[rank])))
    server.set_mode("http500", paths=("/v1/models",))
    reading = read(server)
    assert reading.models == ()
    assert (reading.kv_used_tokens, reading.kv_capacity_tokens) == (3000, 12000)
    assert "HTTP 500" in reading.settings["unavailable"]["/v1/models"]


def test_sglang_pool_from_internal_states() -> None:
    """A /get_server_info listing the pool only per rank (internal_states) sums the ranks."""
    ranks = [SglangRank(max_total_tokens=7000), SglangRank(max_total_tokens=9000)]
    figures = SglangFigures(ranks=ranks)
    bodies = {path: real_of("sglang", "previous", figures, path) for path in ENDPOINTS["sglang"]}
    bodies["/get_server_info"] = (
        b'{"internal_states": [{"max_total_num_tokens": 7000}, '
        b'{"max_total_num_tokens": 9000}], "context_length": 4096}'
    )
    t = Target(name="s", kind="sglang", url="http://127.0.0.1:1")
    reading = reader("sglang")(t, lambda path, body=None: bodies[path])
    assert reading.kv_capacity_tokens == 16000
    assert reading.models[0].context == 4096


# Ollama -----------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["current", "previous"])
def test_ollama_reading_equals_what_the_server_serves(
    serve: list[EngineServer], generation: str
) -> None:
    """Each loaded model's size, VRAM, expiry and (newer servers) context from /api/ps, its
    architecture from a POST to /api/show; the KV capacity is the contexts' sum."""
    small = OllamaModel(
        name="llama3.2:1b", size=1_300_000_000, size_vram=1_000_000_000, context_length=4096
    )
    big = OllamaModel(
        name="qwen3:8b",
        size=6_000_000_000,
        size_vram=6_000_000_000,
        context_length=8192,
        architecture="qwen3",
        block_count=36,
        head_count=32,
        head_count_kv=8,
        key_length=128,
        value_length=128,
        embedding_length=4096,
        trained_context=40960,
    )
    serve.append(server := start("ollama", generation, figures=OllamaFigures(models=[small, big])))
    reading = read(server)
    current = generation == "current"
    for got, want in zip(reading.models, [small, big], strict=True):
        assert (got.name, got.size_bytes, got.vram_bytes, got.expires_at) == (
            want.name,
            want.size,
            want.size_vram,
            want.expires_at,
        )
        assert got.context == (want.context_length if current else None)
        assert got.architecture == {
            "architecture": want.architecture,
            "block_count": want.block_count,
            "head_count": want.head_count,
            "head_count_kv": want.head_count_kv,
            "key_length": want.key_length,
            "value_length": want.value_length,
            "embedding_length": want.embedding_length,
            "context_length": want.trained_context,
            "feed_forward_length": 8192,  # as tests/enginepayloads.py serves them
            "vocab_size": 128256,
        }
    assert reading.kv_capacity_tokens == (4096 + 8192 if current else None)
    shows = [r for r in server.requests if r.path == "/api/show"]
    assert [(r.method, r.body) for r in shows] == [
        ("POST", b'{"model": "llama3.2:1b"}'),
        ("POST", b'{"model": "qwen3:8b"}'),
    ]
    assert all(r.headers["content-type"] == "application/json" for r in shows)


def test_ollama_failing_show_keeps_the_rest(serve: list[EngineServer]) -> None:
    """An /api/show that fails leaves the model's architecture unknown, with the reason,
    while /api/ps's figures stay."""
    serve.append(server := start("ollama", "current"))
    server.set_mode("http500", paths=("/api/show",))
    reading = read(server)
    assert reading.models[0].architecture is None
    assert reading.models[0].size_bytes == 2_200_000_000
    assert "HTTP 500" in reading.settings["architecture_errors"][0]
    assert "/api/show" in reading.settings["architecture_errors"][0]


# fetch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hung", "stall", "trickle", "slow"])
def test_a_hung_or_slow_engine_is_a_timeout_in_bounded_time(
    serve: list[EngineServer], mode: str
) -> None:
    """Hung, headers-then-stall, trickling and slow engines come back as EngineTimeout
    naming the endpoint, about the timeout after the call."""
    serve.append(server := start("vllm", "current", mode, delay=TIMEOUT + 2))
    t = target(server)
    started = time.monotonic()
    with pytest.raises(EngineTimeout) as caught:
        fetcher(t, TIMEOUT)("/metrics")
    assert time.monotonic() - started < BOUND
    assert str(caught.value) == f"GET {server.url}/metrics: no complete answer within 1 s"


@pytest.mark.parametrize(
    ("mode", "words"),
    [("truncated", "truncated answer"), ("http500", "HTTP 500"), ("http503", "HTTP 503: {")],
)
def test_a_bad_answer_is_a_payload_error_naming_the_endpoint(
    serve: list[EngineServer], mode: str, words: str
) -> None:
    """A truncated body or an HTTP error status is a PayloadError naming method, URL and what."""
    serve.append(server := start("sglang", "current", mode))
    with pytest.raises(PayloadError) as caught:
        fetcher(target(server, "sglang"), TIMEOUT)("/metrics")
    assert str(caught.value).startswith(f"GET {server.url}/metrics: {words}")


@pytest.mark.parametrize("kind", ["vllm", "sglang", "ollama"])
@pytest.mark.parametrize("mode", ["cut", "garbage", "html", "wrongjson", "truncated", "http503"])
def test_readers_turn_bad_payloads_into_payload_errors(
    serve: list[EngineServer], kind: str, mode: str
) -> None:
    """Each reader meets cut, random, HTML and wrongly shaped payloads with a PayloadError
    whose reason names the endpoint."""
    serve.append(server := start(kind, "current", mode))
    first = "/api/ps" if kind == "ollama" else "/metrics"
    with pytest.raises(PayloadError) as caught:
        read(server, TIMEOUT)
    assert first in str(caught.value)


def test_refused_and_closed_are_engine_down(serve: list[EngineServer]) -> None:
    """Nothing listening, or a connection closed without an answer: EngineDown."""
    t = Target(name="gone", kind="vllm", url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(EngineDown, match="connection refused"):
        fetcher(t, TIMEOUT)("/metrics")
    serve.append(server := start("vllm", "current", "close"))
    with pytest.raises(EngineDown, match="closed the connection without answering"):
        fetcher(target(server), TIMEOUT)("/metrics")


def test_the_api_key_is_sent_and_never_shown(
    serve: list[EngineServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key from the named env var goes as a Bearer header; without it the engine's 401 is
    the reason; no reason ever holds the key."""
    serve.append(server := start("vllm", "current", api_key=KEY))
    monkeypatch.setenv("VLLM_TEST_KEY", KEY)
    assert read(server, api_key_env="VLLM_TEST_KEY").requests_running == 2
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    reasons = []
    monkeypatch.setenv("VLLM_TEST_KEY", "wrong-" + KEY)
    for mode in ("normal", "http500", "truncated", "garbage", "hung"):
        server.set_mode(mode)
        with pytest.raises((PayloadError, EngineTimeout)) as caught:
            read(server, TIMEOUT, api_key_env="VLLM_TEST_KEY")
        reasons.append(str(caught.value))
    assert "HTTP 401" in reasons[0]
    assert not [reason for reason in reasons if KEY in reason]


def test_a_body_over_the_cap_is_refused() -> None:
    """Over MAX_BODY bytes, announced or streamed chunked, is a PayloadError."""
    chunk = b"x" * (1 << 20)
    with ScriptedServer() as server:
        server.enqueue(Reply(200, b"y" * (MAX_BODY + 1)), Reply(200, chunks=[chunk] * 9))
        for _ in range(2):
            with pytest.raises(PayloadError, match="cap"):
                fetcher(target(server), 10.0)("/metrics")


def test_a_redirect_is_not_followed() -> None:
    """A 3xx answer is a PayloadError naming where it points; the target is never asked."""
    with ScriptedServer() as server:
        server.enqueue(Reply(302, headers={"Location": "http://127.0.0.1:9/metrics"}))
        with pytest.raises(
            PayloadError, match=re.escape("redirect to 'http://127.0.0.1:9/metrics'")
        ):
            fetcher(target(server), TIMEOUT)("/metrics")


def test_only_http_urls() -> None:
    """A URL that is not http:// or https:// is refused when the fetcher is made."""
    with pytest.raises(ValueError, match="http"):
        fetcher(Target(name="x", kind="vllm", url="file:///etc/passwd"), 1.0)


# fuzz -------------------------------------------------------------------------------------

ENDPOINTS = {
    "vllm": ("/metrics", "/v1/models"),
    "sglang": ("/metrics", "/v1/models", "/get_server_info", "/get_model_info"),
    "ollama": ("/api/ps", "/api/show"),
}
FIGURES = {"vllm": VllmFigures, "sglang": SglangFigures, "ollama": OllamaFigures}


def real(kind: str, generation: str, path: str) -> bytes:
    return real_of(kind, generation, FIGURES[kind](), path)


def real_of(kind: str, generation: str, figures: object, path: str) -> bytes:
    method, body = ("POST", b'{"model": "llama3.2:1b"}') if path == "/api/show" else ("GET", b"")
    return answer(kind, generation, figures, method=method, path=path, body=body)[2]


def reads_cleanly(kind: str, bodies: dict[str, bytes]) -> None:
    def get(path: str, body: bytes | None = None) -> bytes:
        return bodies[path]

    with contextlib.suppress(PayloadError):
        reader(kind)(Target(name="fuzz", kind=kind, url="http://127.0.0.1:1"), get)


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for where, cut, insert in edits:
        at = where % (len(data) + 1)
        data = data[:at] + insert + data[at + cut % 64 :]
    return data


EDITS = st.lists(
    st.tuples(st.integers(0, 1 << 20), st.integers(0, 63), st.binary(max_size=16)), max_size=6
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "data",
                    "models",
                    "id",
                    "name",
                    "model_info",
                    "max_model_len",
                    "root",
                    "size",
                    "size_vram",
                    "context_length",
                    "general.architecture",
                    "llama.block_count",
                    "max_total_num_tokens",
                    "internal_states",
                    "model_path",
                    "parent",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", ["vllm", "sglang", "ollama"])
@FUZZ
@given(data=st.data())
def test_fuzz_arbitrary_bytes_only_payload_errors(kind: str, data: st.DataObject) -> None:
    """Arbitrary bytes on any endpoint (the rest real): a Reading or a PayloadError only."""
    generation = data.draw(st.sampled_from(["current", "previous"]))
    bodies = {path: real(kind, generation, path) for path in ENDPOINTS[kind]}
    bodies[data.draw(st.sampled_from(ENDPOINTS[kind]))] = data.draw(st.binary(max_size=512))
    reads_cleanly(kind, bodies)


@pytest.mark.parametrize("kind", ["vllm", "sglang", "ollama"])
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_real_payloads_only_payload_errors(kind: str, data: st.DataObject) -> None:
    """Real payloads with bytes cut, inserted and replaced: a Reading or a PayloadError."""
    generation = data.draw(st.sampled_from(["current", "previous"]))
    bodies = {
        path: mutate(real(kind, generation, path), data.draw(EDITS)) for path in ENDPOINTS[kind]
    }
    reads_cleanly(kind, bodies)


@pytest.mark.parametrize("kind", ["vllm", "sglang", "ollama"])
@FUZZ
@given(data=st.data())
def test_fuzz_wrongly_shaped_json_only_payload_errors(kind: str, data: st.DataObject) -> None:
    """Any JSON document on the JSON endpoints: a Reading or a PayloadError."""
    import json

    bodies = {path: real(kind, "current", path) for path in ENDPOINTS[kind]}
    for path in ENDPOINTS[kind]:
        if path != "/metrics" and data.draw(st.booleans()):
            bodies[path] = json.dumps(data.draw(JSONISH)).encode()
    reads_cleanly(kind, bodies)


def test_the_dispatch_gives_each_kind_its_own_reader() -> None:
    """readers.reader(kind) is that kind's module's read (imported on first use)."""
    modules = {"vllm": vllm, "sglang": sglang, "ollama": ollama, "llamacpp": llamacpp}
    for kind, module in modules.items():
        assert reader(kind) is module.read


def test_payload_errors_name_the_endpoint() -> None:
    """The shared payload helpers: JSON that is not an object, and Prometheus text that is
    not, are PayloadErrors naming the endpoint; a NaN sample counts as absent."""
    with pytest.raises(PayloadError, match="/v1/models"):
        payload.json_object(b"[1, 2]", "/v1/models")
    with pytest.raises(PayloadError, match="/metrics"):
        payload.prometheus(b"vllm:num_requests_running{ 3\n", "/metrics")
    samples = payload.prometheus(b"sglang:num_queue_reqs NaN\nsglang:num_running_reqs 2\n", "m")
    assert samples.total("sglang:num_queue_reqs") is None
    assert samples.total("sglang:num_running_reqs") == 2
