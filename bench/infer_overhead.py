"""Benchmark 8: what going through perfd adds to an inference on a warm model.

One perfd (PYTHONPATH = the repository, so the tests' toy models load) serves two python
models: ``tests.models.toy:make_echo`` (returns its inputs) and ``make_doubler`` (2 * inputs as
float32). One REQ socket, like perfctl's, sends ``infer`` requests made with
``perfd.wire.protocol.encode_request`` (a fresh id each) and decodes each reply with
``decode_reply``: the client's own encoding and decoding count, as they would for any caller.

Each round times, in a shuffled order, one of each of:

- ``infer`` echo, JSON input ``{"x": [1, 2, 3]}`` (the subject);
- the same model called in-process: ``make_echo()`` once, then ``model(inputs)`` (baseline);
- info, to split the added cost: the same request frame sent to a bare pyzmq ROUTER echo
  server (``bench.echo``, its own process: the ZeroMQ transport floor), ``ping`` (perfd's
  dispatch, answered on its socket thread), and ``evict`` with ``all`` and ``dry_run`` (a
  *slow* command like ``infer``, so it goes through perfd's worker pool, but does next to
  nothing there);
- ``infer`` doubler with a [1, 1024] float32 array as a raw frame (``perfd.wire.arrays``: the
  multipart path, reply frames decoded back into an array), and in-process
  ``make_doubler()(array)`` (its baseline).

Added cost = socket percentile - in-process percentile (p50 and p99 apart). Warm-up requests
(untimed) load both models first.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    ROOT,
    Check,
    PerfdProcess,
    cpu_seconds,
    median,
    percentile,
    print_table,
    short_tempdir,
    start_echo,
    stop_process,
)

TARGET_MS = 0.3  # added p50, small JSON input
WARMUP = 200
ECHO_INPUT = {"x": [1, 2, 3]}
ARRAY_SHAPE = (1, 1024)
CONFIG = """
[models.echo]
target = "tests.models.toy:make_echo"
keep_alive = "forever"
[models.doubler]
target = "tests.models.toy:make_doubler"
keep_alive = "forever"
"""

ECHO, ECHO_LOCAL, ARRAY, ARRAY_LOCAL = "echo", "echo_local", "array", "array_local"
ZMQ, PING, SLOW = "zmq_echo", "ping", "slow_noop"
LINES = (ECHO, ECHO_LOCAL, ZMQ, PING, SLOW, ARRAY, ARRAY_LOCAL)


@dataclass(frozen=True)
class Options:
    requests: int = 3000  # timed rounds (one sample of each line per round)


class Client:
    """One REQ socket to perfd's admin socket; every call encodes and decodes for real."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.count = 0

    def call(
        self, cmd: str, args: dict[str, Any], frames: list[bytes] | None = None
    ) -> tuple[Any, list[bytes]]:
        from perfd.wire import protocol

        self.count += 1
        request_id = f"b-{self.count}"
        payload = protocol.encode_request(protocol.Request(request_id, cmd, args))
        if frames:
            self.sock.send_multipart([payload, *frames], copy=False)
        else:
            self.sock.send(payload)
        if not self.sock.poll(20000):
            raise RuntimeError(f"no reply from perfd to {cmd} within 20 s")
        parts = self.sock.recv_multipart()
        reply = protocol.decode_reply(parts[0])
        if not reply.ok or reply.id != request_id:
            raise RuntimeError(f"perfd answered {cmd}: {reply.error_code}: {reply.error_message}")
        return reply.result, parts[1:]

    def bounce(self, payload: bytes) -> Any:
        """Send a frame to the echo server and decode what comes back (the same frame)."""
        self.sock.send(payload)
        if not self.sock.poll(20000):
            raise RuntimeError("no reply from the echo server within 20 s")
        return json.loads(self.sock.recv())

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _calls(perfd: Client, echo: Client) -> dict[str, Callable[[], None]]:
    """One request (or in-process call) per line, each checking its answer."""
    import numpy as np

    from perfd.wire import arrays, protocol
    from tests.models import toy

    echo_model, doubler_model = toy.make_echo(), toy.make_doubler()
    count = ARRAY_SHAPE[0] * ARRAY_SHAPE[1]
    array = np.linspace(0, 1, count, dtype=np.float32).reshape(ARRAY_SHAPE)
    array_value, array_meta, array_frames = arrays.to_frames(array)
    last = float(array[0, -1]) * 2

    def echo_infer() -> None:
        result, _ = perfd.call("infer", {"model": "echo", "inputs": ECHO_INPUT})
        if result["outputs"] != ECHO_INPUT:
            raise RuntimeError(f"echo answered {result}")

    def echo_local() -> None:
        if echo_model(ECHO_INPUT) is not ECHO_INPUT:
            raise RuntimeError("echo changed its input")

    def zmq_echo() -> None:
        echo.count += 1
        request_id = f"e-{echo.count}"
        args = {"model": "echo", "inputs": ECHO_INPUT}
        payload = protocol.encode_request(protocol.Request(request_id, "infer", args))
        if echo.bounce(payload)["id"] != request_id:
            raise RuntimeError("the echo server answered another request")

    def ping() -> None:
        perfd.call("ping", {})

    def slow_noop() -> None:
        result, _ = perfd.call("evict", {"all": True, "dry_run": True})
        if not result["dry_run"]:
            raise RuntimeError("evict --dry-run evicted")

    def array_infer() -> None:
        args = {"model": "doubler", "inputs": array_value, "arrays": array_meta}
        result, frames = perfd.call("infer", args, array_frames)
        out = arrays.decode(result["outputs"], result["arrays"], frames)
        if out.shape != ARRAY_SHAPE or float(out[0, -1]) != last:
            raise RuntimeError("doubler answered a wrong array")

    def array_local() -> None:
        if doubler_model(array).shape != ARRAY_SHAPE:
            raise RuntimeError("doubler answered a wrong array")

    return {
        ECHO: echo_infer,
        ECHO_LOCAL: echo_local,
        ZMQ: zmq_echo,
        PING: ping,
        SLOW: slow_noop,
        ARRAY: array_infer,
        ARRAY_LOCAL: array_local,
    }


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    if str(ROOT) not in sys.path:  # tests.models lives in the repository, beside bench
        sys.path.insert(0, str(ROOT))
    samples: dict[str, list[float]] = {name: [] for name in LINES}
    clients: list[Client] = []
    with short_tempdir() as workdir:
        perfd = PerfdProcess(workdir, config=CONFIG, env={"PYTHONPATH": str(ROOT)})
        perfd.start()
        echo_server = None
        try:
            echo_server = start_echo(f"ipc://{workdir / 'echo.sock'}", workdir)
            client = Client(f"ipc://{perfd.admin_socket}")
            clients.append(client)
            clients.append(Client(f"ipc://{workdir / 'echo.sock'}"))
            calls = _calls(client, clients[1])
            for _ in range(WARMUP):  # loads both models, warms both sides' code paths
                for call in calls.values():
                    call()
            rng = random.Random(8)
            order = list(calls.items())
            cpu_before = cpu_seconds(perfd.pid)
            for _ in range(options.requests):
                rng.shuffle(order)
                for name, call in order:
                    started = time.perf_counter()
                    call()
                    samples[name].append((time.perf_counter() - started) * 1000)
            server_cpu = cpu_seconds(perfd.pid) - cpu_before
            errors = client.call("status", {})[0]["requests"]["errors"]
            loads = {m["name"]: m["loads"] for m in client.call("ps", {})[0]["models"]}
        finally:
            for each in clients:
                each.close()
            if echo_server is not None:
                stop_process(echo_server)
            perfd.stop()
    if errors:
        raise RuntimeError(f"perfd counted {errors} error replies")
    if loads != {"echo": 1, "doubler": 1}:
        raise RuntimeError(f"each model should have loaded once: {loads}")
    return _report(options, samples, server_cpu, len(json.dumps(ECHO_INPUT)))


def _report(
    options: Options, samples: dict[str, list[float]], server_cpu: float, input_bytes: int
) -> tuple[dict[str, Any], list[Check]]:
    stats = {
        name: {"p50_ms": median(values), "p99_ms": percentile(values, 99)}
        for name, values in samples.items()
    }
    labels = {
        ECHO: f"infer echo over the socket (JSON, {input_bytes} B input)",
        ECHO_LOCAL: "echo in-process: model(inputs)",
        ARRAY: f"infer doubler over the socket ({ARRAY_SHAPE} float32 frame)",
        ARRAY_LOCAL: "doubler in-process: model(array)",
        ZMQ: "info: the same frame to a bare ZeroMQ echo server",
        PING: "info: ping over the socket (socket thread only)",
        SLOW: "info: evict --all --dry-run (a slow no-op: worker pool)",
    }
    added = {ECHO: ECHO_LOCAL, ARRAY: ARRAY_LOCAL}
    rows = []
    for name, label in labels.items():
        st, base = stats[name], stats.get(added.get(name, ""))
        rows.append(
            (
                label,
                1000 * st["p50_ms"],
                1000 * st["p99_ms"],
                None if base is None else 1000 * (st["p50_ms"] - base["p50_ms"]),
                None if base is None else 1000 * (st["p99_ms"] - base["p99_ms"]),
            )
        )
    print_table(
        f"8. infer_overhead: warm infer through perfd vs in-process ({options.requests} "
        "interleaved rounds, µs)",
        ["what", "p50", "p99", "added p50", "added p99"],
        rows,
    )
    p50 = {name: 1000 * st["p50_ms"] for name, st in stats.items()}
    parts = {
        "zeromq_round_trip_us": p50[ZMQ],
        "perfd_dispatch_us": p50[PING] - p50[ZMQ],
        "worker_pool_us": p50[SLOW] - p50[PING],
        "infer_handler_us": p50[ECHO] - p50[SLOW],
    }
    requests = 4 * options.requests  # perfd's: echo, ping, slow no-op, array
    print(
        "the added p50, split (differences of p50s): ZeroMQ round trip "
        f"{parts['zeromq_round_trip_us']:.0f} µs + perfd dispatch (ping - ZeroMQ) "
        f"{parts['perfd_dispatch_us']:.0f} µs + worker pool hand-off (slow no-op - ping) "
        f"{parts['worker_pool_us']:.0f} µs + lease, model and reply (infer - slow no-op) "
        f"{parts['infer_handler_us']:.0f} µs. perfd CPU per request (all threads, all 4 kinds): "
        f"{1e6 * server_cpu / requests:.0f} µs"
    )
    print(f"target: added p50 (echo, small JSON input) < {TARGET_MS:g} ms; the array line is info")

    def added_check(name: str, pct: str, limit: float | None) -> Check:
        key = f"{pct}_ms"
        value = stats[name][key] - stats[added[name]][key]
        label = "echo, small JSON" if name == ECHO else f"doubler, {ARRAY_SHAPE} float32 frame"
        return Check(
            "8 infer",
            f"added {pct}: {label}",
            "ms",
            value,
            "",
            None,
            on="value",
            op="<",
            limit=limit,
        )

    checks = [
        added_check(ECHO, "p50", TARGET_MS),
        added_check(ECHO, "p99", None),
        Check(
            "8 infer",
            "infer echo p50 vs bare ZeroMQ echo p50",
            "ms",
            stats[ECHO]["p50_ms"],
            "ZeroMQ echo",
            stats[ZMQ]["p50_ms"],
        ),
        added_check(ARRAY, "p50", None),
    ]
    data = {
        "requests": options.requests,
        "stats": stats,
        "split_us": parts,
        "server_cpu_s": server_cpu,
        "samples_ms": samples,
    }
    return data, checks
