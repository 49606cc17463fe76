"""The socket watch: the RSS valve's decisions, with a fake RSS and clock; the fd limit."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import zmq

from perfd.server.gate import READONLY
from perfd.server.sockwatch import CHECK_INTERVAL, Watch
from tests.daemons import wait_until

MiB = 1 << 20


class Fakes:
    def __init__(self) -> None:
        self.now = 0.0
        self.rss = 100 * MiB

    def clock(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += CHECK_INTERVAL


def limit_of(base: int) -> Callable[[int], int | None]:
    """An rss_limit: ``base`` when RSS is over it."""
    return lambda rss: base if rss > base else None


def test_growth_with_no_idle_connection_is_allowed_once_not_shed_again() -> None:
    """Over the limit with nothing to drop: the excess becomes an allowance (logged), and
    the same RSS is not over the limit any more."""
    fakes = Fakes()
    watch = Watch(8, limit_of(64 * MiB), 1024 * MiB, fakes.clock, lambda: fakes.rss)
    watch.tick()
    assert watch.allowance == 36 * MiB
    fakes.step()
    watch.tick()
    assert watch.allowance == 36 * MiB


def test_idle_connections_go_first_busy_ones_only_past_the_allowance() -> None:
    """Over the limit: connections not awaiting a reply are dropped, busy ones kept; past
    limit + max_allowance the busy ones go too. (The fds here are pipes, not connections of
    the listener: they are forgotten, never shut down.)"""
    fakes = Fakes()
    watch = Watch(8, limit_of(64 * MiB), 16 * MiB, fakes.clock, lambda: fakes.rss)
    read, write = os.pipe()
    with zmq.Context() as ctx:
        sock = ctx.socket(zmq.ROUTER)
        watch.attach(sock, READONLY)
        table = watch.table(sock)
        assert table is not None
        table.accepted(read, 0.0)
        table.accepted(write, 0.0)
        table.hold(write)
        watch.tick()
        assert read not in table
        assert write in table
        fakes.step()
        watch.tick()  # 36 MiB over, 16 MiB allowed: the busy one goes too
        assert write not in table
        assert table.dropped == 2
        watch.close()
        sock.close(linger=0)
    os.close(read)
    os.close(write)


def test_connections_over_the_cap_are_dropped_while_the_loop_is_busy(short_dir: Path) -> None:
    """libzmq accepts on its own thread, so drops must not wait for perfd's main loop: with
    nobody polling the ROUTER socket, its watch still holds it to the cap (a flood of connects
    while the main loop imports a module used to run perfd out of files: libzmq aborts)."""
    path = short_dir / "flood.sock"
    watch = Watch(8)
    with zmq.Context() as ctx:
        sock = ctx.socket(zmq.ROUTER)
        watch.attach(sock, READONLY)
        sock.bind(f"ipc://{path}")
        watch.bound(sock, f"ipc://{path}")
        table = watch.table(sock)
        assert table is not None
        held = []
        try:
            for _ in range(64):
                client = socket.socket(socket.AF_UNIX)
                client.connect(str(path))
                held.append(client)
            wait_until(lambda: table.dropped >= 64 - 8, timeout=10)
            assert len(table) <= 8
        finally:
            for client in held:
                client.close()
            watch.close()
            sock.close(linger=0)
