"""Bad input over the real sockets: a fuzz of 100,000+ malformed messages against a real perfd.

tests/fuzzing.py makes the messages (a seeded generator plus hypothesis strategies built from
the daemon's command table) and checks each reply against what the protocol says perfd must
answer. Seeds are fixed and hypothesis is derandomized, so a failure reproduces.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfd.wire import protocol
from tests import fuzzing
from tests.conftest import Perfd, StartPerfd

ROOT = str(Path(__file__).resolve().parent.parent)
SEED = 82  # issue 8, point 2
WARMUP = 12_000  # before the RSS baseline: every code path once, the allocators' high water
ROUNDS = 10  # after each: ping within PING_TIMEOUT, oversize frames on both sockets
PER_ROUND = 10_000
EXAMPLES = 200  # hypothesis examples per command
PING_EVERY = 2_500  # messages between pings, sent while the fuzz is in flight
PING_TIMEOUT = 3.0  # perfctl's default
LIMITS = {True: protocol.DEFAULT_MAX_MESSAGE_BYTES, False: fuzzing.ADMIN_LIMIT}
RSS_GROWTH = 10 << 20


@contextlib.contextmanager
def systemd_listening(perfd: Perfd) -> Iterator[None]:
    """Read perfd's sd_notify messages as systemd would (a reload sends two), so that a full
    notify queue never blocks perfd's loop."""
    stop = threading.Event()
    perfd.notify.sock.settimeout(0.1)

    def drain() -> None:
        while not stop.is_set():
            with contextlib.suppress(socket.timeout):
                perfd.notify.sock.recv(4096)

    thread = threading.Thread(target=drain, name="notify-drain")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def hypothesis_messages(ids: fuzzing.Generator) -> list[tuple[str, list[bytes]]]:
    """EXAMPLES hypothesis-generated argument sets for every command in the daemon's table."""
    messages: list[tuple[str, list[bytes]]] = []

    def collector(name: str) -> Any:
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(args=fuzzing.args_strategy(fuzzing.COMMANDS[name]), delimited=st.booleans())
        def collect(args: dict[str, Any], delimited: bool) -> None:
            frame = ids.request(name, args)
            messages.append(("hypothesis", [b"", frame] if delimited else [frame]))

        return collect

    for name in sorted(fuzzing.COMMANDS):
        collector(name)()
    return messages


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzz_both_sockets(start_perfd: StartPerfd) -> None:
    """100,000+ malformed messages over both sockets: perfd stays up, answers each one as the
    protocol says (never `internal`), pings within 3 s throughout, and grows < 10 MB of RSS."""
    perfd = start_perfd(fuzzing.CONFIG, env={"PYTHONPATH": ROOT})
    pid = perfd.proc.pid
    generator = fuzzing.Generator(SEED)
    started = time.monotonic()
    with (
        systemd_listening(perfd),
        zmq.Context() as ctx,
        fuzzing.Fuzzer(ctx, perfd.admin_socket, perfd.readonly_socket) as fuzzer,
    ):
        fuzzer.run(hypothesis_messages(generator))
        fuzzer.one_by_one(generator.nesting_sweep(range(940, 1010)))
        fuzzer.run(generator.messages(WARMUP))
        rss_before, warmed_up = fuzzer.trimmed_rss(pid), fuzzer.tally.total
        for _ in range(ROUNDS):
            fuzzer.run(generator.messages(PER_ROUND), ping_every=PING_EVERY)
            for readonly, limit in LIMITS.items():
                size = limit + generator.randint(1, 1 << 16)
                fuzzer.oversize(readonly, size, alone=generator.random() < 0.5)
        rss_after = fuzzer.trimmed_rss(pid)
        for readonly in (True, False):
            assert fuzzer.call("ping", readonly=readonly, timeout=PING_TIMEOUT).ok
        status = fuzzer.call("status").result
    tally = fuzzer.tally
    print(
        f"\nfuzz: {tally.total} messages in {time.monotonic() - started:.1f}s;"
        f" by category {dict(tally.sent)}; by socket {dict(tally.by_socket)};"
        f" replies {dict(tally.replies)}; handled {dict(sorted(tally.handled.items()))};"
        f" RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB;"
        f" {len(fuzzer.pings)} pings, slowest {max(fuzzer.pings):.3f}s"
    )
    assert perfd.proc.poll() is None, perfd.log_path.read_text()[-3000:]
    assert fuzzer.internal == [], fuzzer.internal[:10]
    assert fuzzer.failures == [], fuzzer.failures[:10]
    assert tally.total - warmed_up >= 100_000
    assert min(tally.by_socket.values()) > 50_000
    assert {name.split(":")[0] for name in tally.handled} == set(fuzzing.COMMANDS)
    assert rss_after - rss_before < RSS_GROWTH, (rss_before, rss_after)
    assert status is not None
    assert status["requests"] == {"total": fuzzer.delivered, "errors": tally.errors, "dropped": 0}
    assert perfd.stop() == 0  # and it still shuts down cleanly; its log is complete now
    assert "request.crashed" not in perfd.events()
