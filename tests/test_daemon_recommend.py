"""`recommend` in a real perfd: live hardware, planned hardware, config contents, errors."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

import perfctl
from perfd.wire import protocol
from tests.conftest import Perfd, StartPerfd
from tests.test_recommend_bounds import MAX_REPLY_BYTES, QWEN_MOE, worst_request

MOE_CONFIG = QWEN_MOE


def call(perfd: Perfd, socket: str | None = None, **args: Any) -> dict[str, Any]:
    with perfctl.Client(socket, runtime_dir=perfd.runtime_dir, timeout=20) as client:
        return client.call("recommend", **args)


def test_q4_0_kv_with_vllm_is_planned_as_fp8() -> None:
    """vLLM has no q4_0 KV cache: the plan counts the fp8 it will really use."""
    from perfd import recommend as r

    def plan(kv: str) -> dict[str, Any]:
        req = r.Query(model="llama-3.1-8b", gpu="H100", kv_dtype=kv)
        return r.recommend(req, r.plan_hardware(req, None))

    assert plan("q4_0")["kv_bytes_per_token"] == plan("fp8")["kv_bytes_per_token"]


# -- bounded input, bounded work, bounded replies (issue 12, findings 1, 3 and 5) --------------

ATTACK = "1" + " " * 120_000 + "!"  # took the old size regex 35 s, holding the GIL


class Raw:
    """A DEALER on one of perfd's sockets: several requests outstanding, replies as bytes."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], path: Path) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{path}")

    def send(self, request_id: str, cmd: str, **args: Any) -> None:
        frame = protocol.encode_request(protocol.Request(id=request_id, cmd=cmd, args=args))
        self.sock.send_multipart([b"", frame])

    def receive(self, timeout: float = 20.0) -> bytes:
        assert self.sock.poll(int(timeout * 1000)), "no reply"
        return bytes(self.sock.recv_multipart()[-1])

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()


class Pinger(threading.Thread):
    """Another client pinging perfd's admin socket until stopped; the slowest answer kept."""

    def __init__(self, perfd: Perfd) -> None:
        super().__init__(daemon=True)
        self.perfd, self.slowest, self.count = perfd, 0.0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        with perfctl.Client(runtime_dir=self.perfd.runtime_dir, timeout=60) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                client.call("ping")
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.count += 1
                self.stop.wait(0.01)


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("memory", "memory: a size is at most 64 characters long (like "),
        ("kv_budget", "kv_budget: a size is at most 64 characters long (like "),
        ("gpu", "gpu must be a string of at most 256 characters, not 120002 characters"),
    ],
)
def test_a_long_size_text_is_refused_at_once_while_ping_answers(
    start_perfd: StartPerfd, field: str, words: str
) -> None:
    """ "1" + 120000 spaces + "!" as memory, kv_budget or gpu: invalid_args naming the field and
    the limit, at once, without the text; another client's ping is answered within 0.5 s."""
    perfd = start_perfd()
    pinger = Pinger(perfd)
    pinger.start()
    try:
        for _ in range(5):
            started = time.perf_counter()
            with pytest.raises(perfctl.InvalidArgs) as caught:
                call(perfd, str(perfd.readonly_socket), model="llama-3.1-8b", **{field: ATTACK})
            assert time.perf_counter() - started < 5
            assert words in str(caught.value)
            assert len(str(caught.value)) < 300
    finally:
        pinger.stop.set()
        pinger.join(30)
    assert pinger.count > 0
    assert pinger.slowest < 0.5
    assert call(perfd, model="llama-3.1-8b", gpu="H100", memory="64GiB")["fits"] is True


def test_an_moe_config_with_a_trillion_layers_cannot_lock_admins_out(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """num_hidden_layers: 1e12 in an MoE config (it looped for ever): `perfctl recommend
    --config-json` exits 1 naming key, value and range; 80 more on the read-only socket are all
    answered invalid_args, and the admin's commands keep working."""
    perfd = start_perfd()
    config = {**MOE_CONFIG, "num_hidden_layers": 1e12}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = perfd.ctl("recommend", "--config-json", str(path), "--gpu", "H100", timeout=30)
    assert out.returncode == 1, out
    assert "num_hidden_layers must be a whole number from 1 to 4096, not 1000000000000.0" in (
        out.stderr
    )
    with zmq.Context() as ctx, Raw(ctx, perfd.readonly_socket) as raw:
        for batch in range(5):
            for i in range(16):
                raw.send(f"moe-{batch}-{i}", "recommend", model="x", config=config, gpu="H100")
            for _ in range(16):
                reply = json.loads(raw.receive())
                assert reply["error"]["code"] == "invalid_args", reply
    ps = perfd.ctl("ps", timeout=10)
    assert ps.returncode == 0, ps
    assert perfd.ctl("evict", "--all", timeout=10).returncode == 0


def test_the_worst_allowed_request_gets_a_small_reply(start_perfd: StartPerfd) -> None:
    """The largest request the bounds allow, over the read-only socket: the whole reply, as
    sent, is under the documented 64 KiB (a 4.6 KB request once had a 62 MB reply)."""
    perfd = start_perfd()
    worst = worst_request()
    args = {
        "model": worst.model,
        "config": worst.config,
        "gpu": worst.gpu,
        "gpus": worst.gpus,
        "engine": worst.engine,
        "context": worst.context,
        "quant": worst.quant,
        "memory": worst.memory,
    }
    with zmq.Context() as ctx, Raw(ctx, perfd.readonly_socket) as raw:
        raw.send("worst", "recommend", **args)
        reply = raw.receive()
    body = json.loads(reply)
    assert body["ok"] is True, body
    assert len(body["result"]["hardware"]["gpus"]) == 64
    assert len(reply) < MAX_REPLY_BYTES


@pytest.mark.parametrize(
    "change",
    [
        {"max_position_embeddings": 1e300},  # a 989-row context table
        {"max_position_embeddings": 1e300, "num_hidden_layers": 10**280, "vocab_size": 1},
    ],
)
def test_requests_that_made_huge_replies_get_short_errors(
    start_perfd: StartPerfd, change: dict[str, Any]
) -> None:
    """Requests of a few hundred bytes that were answered with 0.5-0.8 MB (one 4.6 KB request
    had 62 MB): now an invalid_args reply of under 1 KiB."""
    perfd = start_perfd()
    with zmq.Context() as ctx, Raw(ctx, perfd.readonly_socket) as raw:
        raw.send("big", "recommend", model="x", config={**MOE_CONFIG, **change}, gpu="H100")
        reply = raw.receive()
        raw.send("gpus", "recommend", model="llama-3.1-8b", gpu="H100", gpus=1024)
        many = raw.receive()
    for body in (reply, many):
        assert json.loads(body)["error"]["code"] == "invalid_args", body[:300]
        assert len(body) < 1024
