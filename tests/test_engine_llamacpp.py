"""The llama-server reader and the plan check against a real llama.cpp ``llama-server``
(tests/llamaserver.py: built from llama.cpp's sources by .ci/build-llama-server) serving a tiny
random Llama GGUF; every figure is compared with the server's own endpoints or its log."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfd.engines import plancheck
from perfd.engines.errors import EngineDown, PayloadError
from perfd.engines.readers import llamacpp
from perfd.engines.record import LLAMACPP, UP, EngineRecord, Reading, Target
from perfd.recommend.llama_memory import read_facts
from perfd.recommend.request import Query
from tests import llamaserver
from tests.ggufmodel import TinyLlama, write_tiny_llama

needs_server = pytest.mark.skipif(llamaserver.binary() is None, reason=llamaserver.MISSING)
MiB = 1 << 20


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One llama-server for the reading tests: 2 slots of 2048 tokens (-c 4096)."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    running = llamaserver.LlamaServer(model, log, ctx_size=4096, parallel=2)
    running.start()
    yield running
    running.stop()


def target(url: str) -> Target:
    return Target(name="llamacpp-test", kind=LLAMACPP, url=url)


def read(server: Any) -> Reading:
    return llamacpp.read(target(server.url), llamaserver.getter(server.url))


def metric(text: str, name: str) -> float:
    """A sample's value from Prometheus text, read with a regex (not perfd's parser)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@needs_server
def test_reading_matches_the_servers_own_endpoints(server: Any, model: Path) -> None:
    server.complete("the water is", n_predict=8)
    reading = read(server)
    props = server.get_json("/props")
    slots = server.get_json("/slots")
    models = server.get_json("/v1/models")
    text = server.get_text("/metrics")

    assert reading.slots_total == props["total_slots"] == 2
    served = reading.models[0]
    assert served.path == props["model_path"] == str(model)
    assert served.name == props["model_alias"] == "tiny-llama"
    assert served.context == props["default_generation_settings"]["n_ctx"] == 2048
    assert served.size_bytes == models["data"][0]["meta"]["size"]
    assert reading.settings["n_ctx_train"] == models["data"][0]["meta"]["n_ctx_train"] == 2048
    assert reading.kv_capacity_tokens == sum(slot["n_ctx"] for slot in slots) == 4096
    held = sum(slot.get("n_prompt_tokens", 0) for slot in slots)
    assert reading.kv_used_tokens == held > 0  # the completion's prompt and tokens stay cached
    assert reading.kv_usage_ratio == pytest.approx(held / 4096)
    assert reading.slots_busy == 0 == sum(slot["is_processing"] for slot in slots)
    assert reading.requests_running == metric(text, "llamacpp:requests_processing") == 0
    assert reading.requests_waiting == metric(text, "llamacpp:requests_deferred") == 0
    assert reading.settings["prompt_tokens_total"] == metric(text, "llamacpp:prompt_tokens_total")
    assert reading.settings["tokens_predicted_total"] == metric(
        text, "llamacpp:tokens_predicted_total"
    )
    assert reading.settings["tokens_predicted_total"] >= 8
    cached = metric(text, "llamacpp:prompt_tokens_cached_total")
    assert reading.prefix_cache_hits_total == cached
    assert reading.prefix_cache_queries_total == cached + metric(
        text, "llamacpp:prompt_tokens_total"
    )
    assert "unavailable" not in reading.settings


@needs_server
def test_a_running_completion_shows_a_busy_slot_and_its_tokens(server: Any) -> None:
    """A long completion in a thread: the reader sees its slot busy and tokens held; once it
    is done, no slot is busy."""
    done = threading.Event()
    result: dict[str, Any] = {}

    def complete() -> None:
        try:
            result["reply"] = server.complete("the people of the water " * 4, n_predict=1500)
        finally:
            done.set()

    thread = threading.Thread(target=complete, daemon=True)
    thread.start()
    seen: list[Reading] = []
    while not done.is_set() and not seen:
        reading = read(server)
        if reading.slots_busy:
            seen.append(reading)
        time.sleep(0.01)
    thread.join(300)
    assert seen, f"no read saw the completion running: {result}"
    busy = seen[0]
    assert busy.slots_busy == 1
    assert busy.requests_running == 1  # llamacpp:requests_processing
    assert busy.kv_used_tokens is not None
    assert busy.kv_used_tokens > 0
    after = read(server)
    assert after.slots_busy == 0
    assert result["reply"]["tokens_predicted"] == 1500  # ignore_eos: all of them


@needs_server
def test_down_then_up_again_on_the_same_port(model: Path, tmp_path: Path) -> None:
    running = llamaserver.LlamaServer(model, tmp_path / "server.log", ctx_size=512, parallel=1)
    running.start()
    try:
        assert read(running).slots_total == 1
        running.stop()
        with pytest.raises(EngineDown):
            read(running)
        running.start()
        again = read(running)
        assert again.slots_total == 1
        assert again.models[0].context == 512
    finally:
        running.stop()


def check_against_log(
    model: Path, log: Path, ctx_size: int, parallel: int, endpoints: tuple[str, ...]
) -> tuple[plancheck.PlanCheck, Reading]:
    running = llamaserver.LlamaServer(
        model, log, ctx_size=ctx_size, parallel=parallel, endpoints=endpoints
    )
    running.start()
    try:
        reading = read(running)
        lines = running.kv_lines()
    finally:
        running.stop()
    record = EngineRecord(target=target(running.url), state=UP, reading=reading)
    arch = plancheck.Arch(Query(weights_path=str(model)), read_facts(str(model), "tiny"))
    check = plancheck.check(record, [], arch, ram_bytes=8 << 30, cpu_count=2)
    assert len(lines) == 1, running.text()
    mib, cells, _layers, _seqs, streams = lines[0]
    # llama.cpp logs "%7.2f MiB": perfd's exact bytes, shown the same way
    assert check.predicted_kv_bytes is not None
    assert f"{check.predicted_kv_bytes / MiB:.2f}" == f"{mib:.2f}"
    assert check.predicted_kv_tokens == cells * streams == reading.kv_capacity_tokens
    assert check.kv_error_percent == 0
    return check, reading


@needs_server
@pytest.mark.parametrize(
    ("ctx_size", "parallel", "slot_ctx"),
    [(1024, 2, 512), (1400, 1, 1536)],  # 1400 -> GGML_PAD(1400, 256) = 1536 cells
)
def test_the_plan_checks_kv_bytes_equal_llama_cpps_own(
    model: Path, tmp_path: Path, ctx_size: int, parallel: int, slot_ctx: int
) -> None:
    """perfd's KV bytes for the served context are the size llama.cpp logs in its
    ``llama_kv_cache: size = X MiB`` line; the second server serves neither /slots nor
    /metrics, and the reader says so instead of failing."""
    endpoints = ("--metrics", "--slots") if parallel > 1 else ("--no-slots",)
    check, reading = check_against_log(model, tmp_path / "log", ctx_size, parallel, endpoints)
    assert check.served_context == slot_ctx
    assert check.concurrency == parallel
    assert check.recommended_context == TinyLlama().context_length
    if parallel > 1:
        codes = [flag.code for flag in check.flags]
        assert codes == ["context_unreachable"]  # 512 a slot where the model takes 2048
        assert "unavailable" not in reading.settings
    else:
        assert check.flags == ()
        assert set(reading.settings["unavailable"]) == {"/slots", "/metrics"}
        assert reading.slots_busy is None
        assert reading.kv_used_tokens is None


ENDPOINTS = ("/props", "/slots", "/metrics", "/v1/models")
GOOD = {
    "/props": b'{"total_slots": 2, "model_path": "/m.gguf", "model_alias": "m",'
    b' "default_generation_settings": {"n_ctx": 512}, "endpoint_slots": true,'
    b' "endpoint_metrics": true}',
    "/slots": b'[{"id": 0, "n_ctx": 512, "is_processing": true, "n_prompt_tokens": 7},'
    b' {"id": 1, "n_ctx": 512, "is_processing": false}]',
    "/metrics": b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n",
    "/v1/models": b'{"data": [{"id": "m", "meta": {"n_ctx_train": 2048, "size": 10}}]}',
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def test_the_shapes_read_in_process() -> None:
    reading = llamacpp.read(target("http://x"), GOOD.__getitem__)
    assert (reading.slots_total, reading.slots_busy, reading.kv_used_tokens) == (2, 1, 7)
    assert reading.kv_capacity_tokens == 1024
    assert reading.requests_running == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=st.binary(max_size=200) | json_values.map(lambda v: repr(v).encode()),
    shaped=json_values,
)
def test_garbage_from_any_endpoint_raises_only_payload_errors(
    endpoint: str, body: bytes, shaped: Any
) -> None:
    import json

    for payload in (body, json.dumps(shaped).encode()):
        pages = {**GOOD, endpoint: payload}
        try:
            llamacpp.read(target("http://x"), pages.__getitem__)
        except PayloadError as exc:
            assert str(exc).startswith(endpoint), exc


@pytest.mark.parametrize(
    ("endpoint", "body", "reason"),
    [
        ("/slots", b"[" * 100_000, "/slots: not JSON"),
        ("/props", b'{"a":' * 100_000, "/props: not JSON"),
        ("/props", b'{"total_slots": true}', "/props: total_slots is True, not a count"),
        ("/slots", b'[{"n_ctx": -3, "is_processing": false}]', "/slots: slot 0.n_ctx is -3"),
        ("/metrics", b"llamacpp:requests_processing NaN\n", "requests_processing is nan"),
        ("/metrics", b"\xff\xfe", "/metrics: not Prometheus text"),
        ("/v1/models", b'{"data": []}', "/v1/models: data is not a list of model objects"),
    ],
)
def test_bad_payloads_say_what_was_wrong(endpoint: str, body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        llamacpp.read(target("http://x"), {**GOOD, endpoint: body}.__getitem__)


def test_an_endpoint_answering_an_http_error_is_noted_not_fatal() -> None:
    """/slots and /metrics answering 501 (llama-server's "not supported"): the read succeeds
    without their figures and says why."""

    def get(path: str) -> bytes:
        if path in ("/slots", "/metrics"):
            raise PayloadError(f"GET {path}: HTTP 501")
        return GOOD[path]

    reading = llamacpp.read(target("http://x"), get)
    assert reading.settings["unavailable"] == {
        "/slots": "GET /slots: HTTP 501",
        "/metrics": "GET /metrics: HTTP 501",
    }
    assert reading.slots_busy is None
    assert reading.kv_capacity_tokens == 2 * 512  # total_slots x the slot context of /props
