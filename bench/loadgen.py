"""The round-trip benchmark's load generator: one process per measurement.

    python -m bench.loadgen --endpoint ipc://... --clients 4 --requests 500 --cmd ping \
        --expect perfd

Starts ``--clients`` threads, each with its own REQ socket (one request outstanding, as
perfctl does). Each sends ``--warmup`` requests, waits for the others, then times
``--requests`` round trips. The request is one real perfd request, made once per thread with
``perfd.wire.protocol.encode_request``. Prints one JSON object: ``latencies_ns`` (every timed round
trip) and ``elapsed_s`` (first timed send to last timed reply, over all threads), or
``error``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass

import zmq

from perfd.wire import protocol


@dataclass(frozen=True)
class Timed:
    start_ns: int
    end_ns: int
    latencies_ns: list[int]


def _check(reply: bytes, request: bytes, request_id: str, expect: str) -> None:
    """Fail unless ``reply`` is what the server should answer."""
    if expect == "echo":
        if reply != request:
            raise RuntimeError(f"echo server answered {reply[:80]!r}")
        return
    decoded = protocol.decode_reply(reply)
    if not decoded.ok or decoded.id != request_id:
        raise RuntimeError(f"perfd answered {reply[:200]!r}")


@dataclass
class Shared:
    """What the client threads share: the context, the options, the start line, the results."""

    ctx: zmq.Context[zmq.Socket[bytes]]
    args: argparse.Namespace
    barrier: threading.Barrier
    results: list[Timed | None]
    errors: list[str]


def _client(shared: Shared, index: int) -> None:
    args, barrier = shared.args, shared.barrier
    request_id = f"bench-{index}"
    frame = protocol.encode_request(protocol.Request(id=request_id, cmd=args.cmd))
    sock = shared.ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, args.timeout_ms)
        sock.connect(args.endpoint)
        for _ in range(args.warmup):
            sock.send(frame)
            _check(sock.recv(), frame, request_id, args.expect)
        barrier.wait(timeout=60)
        latencies = [0] * args.requests
        clock = time.perf_counter_ns
        reply = b""
        start = clock()
        for i in range(args.requests):
            sent = clock()
            sock.send(frame)
            reply = sock.recv()
            latencies[i] = clock() - sent
        end = clock()
        _check(reply, frame, request_id, args.expect)
        shared.results[index] = Timed(start, end, latencies)
    except Exception as exc:  # report it as JSON; the bench turns it into an error
        shared.errors.append(f"client {index}: {exc!r}")
        barrier.abort()
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per client")
    parser.add_argument("--cmd", default="ping")
    parser.add_argument("--expect", choices=("perfd", "echo"), default="perfd")
    parser.add_argument("--timeout-ms", type=int, default=10_000)
    args = parser.parse_args(argv)

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    shared = Shared(ctx, args, threading.Barrier(args.clients), [None] * args.clients, [])
    threads = [threading.Thread(target=_client, args=(shared, i)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctx.term()
    done = [r for r in shared.results if r is not None]
    if shared.errors or len(done) != args.clients:
        print(json.dumps({"error": "; ".join(shared.errors) or "a client did not finish"}))
        return 1
    start = min(r.start_ns for r in done)
    end = max(r.end_ns for r in done)
    latencies = [ns for r in done for ns in r.latencies_ns]
    print(json.dumps({"elapsed_s": (end - start) / 1e9, "latencies_ns": latencies}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
