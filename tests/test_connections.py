"""The connection table: which connection goes past the cap, and under memory pressure."""

from __future__ import annotations

from perfd.server.connections import ConnectionTable, fit_cap


def test_under_the_cap_nothing_is_dropped() -> None:
    """Up to ``cap`` connections stay."""
    table = ConnectionTable(cap=3)
    for fd in (10, 11, 12):
        table.accepted(fd, now=fd)
    assert table.over_cap() == []


def test_never_active_go_first_oldest_first_then_longest_idle() -> None:
    """Past the cap: connections that never completed a message go first (oldest first),
    then the ones idle longest."""
    table = ConnectionTable(cap=2)
    table.accepted(10, now=1)
    table.accepted(11, now=2)
    table.accepted(12, now=3)
    table.accepted(13, now=4)
    table.message(10, now=5)
    table.message(11, now=6)
    assert table.over_cap() == [12, 13]
    table.forget([12, 13])
    table.accepted(14, now=7)
    table.message(14, now=8)
    assert table.over_cap() == [10]
    assert table.dropped == 2


def test_a_connection_with_a_request_in_flight_is_never_dropped() -> None:
    """hold() keeps a connection out of over_cap and shed until release()."""
    table = ConnectionTable(cap=1)
    table.accepted(10, now=1)
    table.accepted(11, now=2)
    table.hold(10)
    assert table.over_cap() == [11]
    assert table.shed() == [11]
    table.release(10, now=3)
    assert table.shed() == [11, 10]


def test_closed_connections_are_forgotten_and_unknown_fds_ignored() -> None:
    """A close event removes the fd; hold/release/closed of unknown fds do nothing."""
    table = ConnectionTable(cap=1)
    table.accepted(10, now=1)
    table.closed(10)
    table.closed(99)
    table.hold(None)
    table.release(99, now=2)
    assert len(table) == 0
    table.message(12, now=3)  # a message before its ACCEPTED event still counts
    assert 12 in table


def test_fit_cap_leaves_a_quarter_of_the_file_limit() -> None:
    """Three sockets under 1024 files: 256 each fit; under 512 fewer; under 64 none."""
    assert fit_cap(256, 3, 1024) == 256
    assert fit_cap(256, 3, 512) == 128
    assert fit_cap(10_000, 2, 65536) == 10_000
    assert fit_cap(256, 3, 64) == 0
