"""The ZeroMQ server in-process: dispatch, slow commands off the socket thread, busy, timeout."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from perfd.errors import CommandError
from perfd.handlers import table as handlers
from perfd.server.loop import Command, Server, WithFrames
from perfd.wire import protocol


@contextmanager
def running(server: Server, directory: Path) -> Iterator[str]:
    """Bind the server in ``directory`` and run its loop on a thread until the block ends."""
    path = directory / "perfd.sock"
    server.bind(path, readonly=False)
    server.bind(directory / "perfd-ro.sock", readonly=True)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.poll(0.05)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield f"ipc://{path}"
    finally:
        stop.set()
        thread.join(10)
        server.close()


class Peer:
    """A DEALER client that can have several requests outstanding."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, request_id: str, cmd: str, **args: Any) -> None:
        frame = protocol.encode_request(protocol.Request(id=request_id, cmd=cmd, args=args))
        self.sock.send_multipart([b"", frame])

    def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.sock.poll(int(timeout * 1000)), "no reply"
        body: dict[str, Any] = json.loads(self.sock.recv_multipart()[-1])
        return body

    def nothing_within(self, timeout: float) -> bool:
        return not self.sock.poll(int(timeout * 1000))


def _commands(gate: threading.Event) -> dict[str, Command]:
    def slow(_: dict[str, Any]) -> dict[str, Any]:
        gate.wait(10)
        return {"slow": True}

    def fails(args: dict[str, Any]) -> dict[str, Any]:
        if args.get("how") == "nicely":
            raise CommandError(protocol.NOT_FOUND, "no such thing")
        raise RuntimeError("bug")

    return {
        "ping": Command("ping", lambda _: {"pong": True}),
        "slow": Command("slow", slow, slow=True),
        "fails": Command("fails", fails, args={"how": (str,)}),
        "fails_slowly": Command("fails_slowly", fails, slow=True, args={"how": (str,)}),
        "admin": Command("admin", lambda _: {}, admin=True),
        "typed": Command("typed", lambda a: a, args={"n": (int,)}, required=frozenset({"n"})),
        "huge": Command("huge", lambda _: {"n": 10**5000}, slow=True),
        "huge_inline": Command("huge_inline", lambda _: {"n": 10**5000}),
        "bad_frames": Command("bad_frames", lambda _: WithFrames({}, [object()]), slow=True),
        "crash": Command("crash", lambda _: {}, slow=True, timeout=lambda: 1 / 0),
        "slow_admin": Command("slow_admin", slow, slow=True, admin=True),
        "arrays": Command("arrays", lambda _, frames: {"n": len(frames)}, frames=True),
    }


def test_ping_answers_while_a_slow_command_runs(short_dir: Path) -> None:
    """A slow command runs on the worker pool; ping is answered meanwhile."""
    gate = threading.Event()
    server = Server(_commands(gate), workers=2)
    assert not server.pool_started
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        peer.send("s", "slow")
        peer.send("p", "ping")
        assert peer.receive()["id"] == "p"
        assert server.pool_started
        gate.set()
        reply = peer.receive()
        assert (reply["id"], reply["result"]) == ("s", {"slow": True})
        peer.sock.close()


@pytest.mark.slow
def test_slow_command_timeout(short_dir: Path) -> None:
    """A slow command past command_timeout gets `timeout`, and its late result is dropped."""
    gate = threading.Event()
    server = Server(_commands(gate), workers=1, command_timeout=0.2)
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        peer.send("s", "slow")
        reply = peer.receive()
        assert reply["error"]["code"] == "timeout"
        gate.set()
        assert peer.nothing_within(0.3)
        peer.send("p", "ping")
        assert peer.receive()["ok"] is True
        peer.sock.close()


def test_busy_when_too_many_in_flight(short_dir: Path) -> None:
    """More than max_in_flight slow commands in flight: the next one gets `busy`."""
    gate = threading.Event()
    server = Server(_commands(gate), workers=1, max_in_flight=4)
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        for i in range(5):
            peer.send(f"s{i}", "slow")
        reply = peer.receive()
        assert (reply["id"], reply["error"]["code"]) == ("s4", "busy")
        gate.set()
        assert sorted(peer.receive()["id"] for _ in range(4)) == ["s0", "s1", "s2", "s3"]
        peer.sock.close()


def test_handler_errors_become_replies(short_dir: Path) -> None:
    """CommandError keeps its code; any other exception is `internal`; the server goes on."""
    server = Server(_commands(threading.Event()))
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        peer.send("a", "fails", how="nicely")
        assert peer.receive()["error"] == {"code": "not_found", "message": "no such thing"}
        peer.send("b", "fails")
        assert peer.receive()["error"]["code"] == "internal"
        peer.send("c", "fails_slowly")
        assert peer.receive()["error"]["code"] == "internal"
        peer.send("d", "fails_slowly", how="nicely")
        assert peer.receive()["error"]["code"] == "not_found"
        peer.send("e", "ping")
        assert peer.receive()["result"] == {"pong": True}
        peer.sock.close()


def test_argument_validation(short_dir: Path) -> None:
    """Unknown, missing and wrongly typed args get `invalid_args` naming the argument."""
    server = Server(_commands(threading.Event()))
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        peer.send("a", "typed")
        assert "needs argument 'n'" in peer.receive()["error"]["message"]
        peer.send("b", "typed", n="3")
        assert "'n' must be int" in peer.receive()["error"]["message"]
        peer.send("c", "typed", n=True)
        assert peer.receive()["error"]["code"] == "invalid_args"
        peer.send("d", "typed", n=3, m=4)
        assert "no argument 'm'" in peer.receive()["error"]["message"]
        peer.send("e", "typed", n=3)
        assert peer.receive()["result"] == {"n": 3}
        peer.sock.close()


def test_readonly_socket_refuses_admin_commands(short_dir: Path) -> None:
    """Admin commands on the read-only socket get `forbidden`; the admin socket allows them."""
    server = Server(_commands(threading.Event()))
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        ro = Peer(ctx, f"ipc://{short_dir / 'perfd-ro.sock'}")
        ro.send("a", "admin")
        assert ro.receive()["error"]["code"] == "forbidden"
        ro.send("b", "ping")
        assert ro.receive()["ok"] is True
        admin = Peer(ctx, endpoint)
        admin.send("c", "admin")
        assert admin.receive()["ok"] is True
        ro.sock.close()
        admin.sock.close()


def test_drain_finishes_in_flight_replies(short_dir: Path) -> None:
    """After stop_accepting, in-flight commands still get their replies; new ones wait."""
    gate = threading.Event()
    server = Server(_commands(gate))
    server.bind(short_dir / "perfd.sock", readonly=False)
    with zmq.Context() as ctx:
        peer = Peer(ctx, f"ipc://{short_dir / 'perfd.sock'}")
        peer.send("s", "slow")
        while not server.in_flight:
            server.poll(0.05)
        server.stop_accepting()
        peer.send("late", "ping")
        threading.Timer(0.1, gate.set).start()
        assert server.drain(5) == 0
        assert peer.receive()["id"] == "s"
        assert peer.nothing_within(0.1)
        server.close()
        peer.sock.close()


def test_envelope_without_delimiter(short_dir: Path) -> None:
    """A DEALER that sends no empty delimiter frame still gets an answer in kind."""
    server = Server(_commands(threading.Event()))
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(protocol.encode_request(protocol.Request(id="x", cmd="ping")))
        assert sock.poll(5000)
        (frame,) = sock.recv_multipart()
        assert json.loads(frame)["result"] == {"pong": True}
        sock.close()


def test_read_only_commands_match_the_command_table() -> None:
    """protocol.READ_ONLY_COMMANDS, used by perfctl, is exactly the daemon's non-admin commands."""

    class View:
        started_at = 0.0
        started_monotonic = 0.0
        runtime_dir = Path("/run/perfd")
        loaded = None

        def components(self) -> dict[str, str]:
            return {}

        def request_counts(self) -> dict[str, Any]:
            return {}

        def reload(self) -> dict[str, Any]:
            return {}

    table = handlers.build(View())  # type: ignore[arg-type]
    assert {n for n, c in table.items() if not c.admin} == protocol.READ_ONLY_COMMANDS


def test_a_result_that_cannot_be_sent_is_an_internal_reply(short_dir: Path) -> None:
    """A result JSON cannot carry, or a frame that is not a buffer, from a slow or an inline
    command: an `internal` reply with the request's id, and the loop serves on."""
    server = Server(_commands(threading.Event()), workers=1)
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        for cmd in ("huge", "huge_inline", "bad_frames"):
            peer.send(cmd, cmd)
            reply = peer.receive()
            assert (reply["id"], reply["error"]["code"]) == (cmd, "internal")
            assert reply["error"]["message"].startswith(f"'{cmd}' failed inside perfd")
        peer.send("p", "ping")
        assert peer.receive()["ok"] is True
        assert server.counters.errors == 3
        peer.sock.close()


def test_a_crash_while_handling_answers_internal_with_the_id(short_dir: Path) -> None:
    """A bug outside the handler (here its timeout raises) gets an `internal` reply carrying
    the request's id; the loop serves on."""
    server = Server(_commands(threading.Event()), workers=1)
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        peer.send("c1", "crash")
        reply = peer.receive()
        assert (reply["id"], reply["error"]["code"]) == ("c1", "internal")
        assert (
            reply["error"]["message"] == "perfd failed to handle this request; see the daemon's log"
        )
        peer.send("p", "ping")
        assert peer.receive()["ok"] is True
        peer.sock.close()


def test_a_message_over_the_byte_limit_in_all_its_frames(short_dir: Path) -> None:
    """The limit counts every frame of a message: 3 frames of 2,000 bytes under a 4 KiB limit
    get `bad_request` saying the size; the same frames within it are served."""
    server = Server(_commands(threading.Event()), max_admin_message_bytes=4096)
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        peer = Peer(ctx, endpoint)
        request = protocol.encode_request(protocol.Request(id="a", cmd="arrays"))
        peer.sock.send_multipart([b"", request, b"x" * 2000, b"x" * 2000, b"x" * 2000])
        reply = peer.receive()
        assert reply["error"]["code"] == "bad_request"
        assert "over this socket's limit of 4096 bytes" in reply["error"]["message"]
        peer.sock.send_multipart([b"", request, b"x" * 1000, b"x" * 1000])
        assert peer.receive()["result"] == {"n": 2}
        peer.sock.close()


def test_read_only_slow_commands_leave_the_admin_reserve(short_dir: Path) -> None:
    """With max_in_flight 4 and admin_reserve 2, a third read-only slow command is `busy`
    (naming admin_reserve) while an admin one is still taken and runs on a free worker."""
    gate = threading.Event()
    server = Server(_commands(gate), workers=3, max_in_flight=4, admin_reserve=2)
    with running(server, short_dir) as endpoint, zmq.Context() as ctx:
        ro = Peer(ctx, f"ipc://{short_dir / 'perfd-ro.sock'}")
        for i in range(3):
            ro.send(f"r{i}", "slow")
        reply = ro.receive()
        assert (reply["id"], reply["error"]["code"]) == ("r2", "busy")
        assert "admin_reserve" in reply["error"]["message"]
        admin = Peer(ctx, endpoint)
        admin.send("a", "slow_admin")
        assert admin.nothing_within(0.2)  # taken, running: no busy reply
        gate.set()
        assert admin.receive()["id"] == "a"
        assert sorted(ro.receive()["id"] for _ in range(2)) == ["r0", "r1"]
        ro.sock.close()
        admin.sock.close()
