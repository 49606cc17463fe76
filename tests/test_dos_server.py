"""Denial of service against the ZeroMQ side of a real perfd, under the service's file limit.

Each test runs one attack from docs/security.md against a perfd subprocess started with
RLIMIT_NOFILE 1024 (soft and hard: the limit cannot be raised) and checks, while the attack
holds: perfd is alive, a fresh client's ping is answered within 0.5 s, perfd's RSS (VmRSS in
/proc/PID/status) stays under the documented bound, and admin commands still work.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import resource
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import perfctl
from perfd.wire import keys, protocol
from tests.conftest import Perfd, StartPerfd
from tests.daemons import wait_until

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
NOFILE = 1024  # systemd's default soft file limit for a service
MODELS = """
[models.echo]
target = "tests.models.toy:make_echo"
[models.gated]
target = "tests.models.toy:make_gated"
"""
# perfd's RSS may pass its size at start by [server] max_buffered_bytes plus what one check
# interval lets in (docs/config.md): with the 64 MiB these tests set, 192 MiB in all.
BUFFERED = 64 * MiB
RSS_SLACK = 128 * MiB


Start = Callable[..., Perfd]


@pytest.fixture
def start_capped(start_perfd: StartPerfd) -> Start:
    """Start perfd with RLIMIT_NOFILE 1024:1024 and the toy models; READY when returned.
    ``config_text`` goes into its [server] table."""

    def start(config_text: str = "") -> Perfd:
        config = f"[server]\nmax_buffered_bytes = {BUFFERED}\n{config_text}\n{MODELS}"
        return start_perfd(config, env={"PYTHONPATH": str(ROOT)}, nofile=NOFILE)

    return start


@pytest.fixture(autouse=True)
def _many_files() -> Iterator[None]:
    """The attacker (this process) may open more files than perfd."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def rss(pid: int) -> int:
    """VmRSS of ``pid`` in bytes, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssPeak:
    """Samples a process's RSS on a thread every 20 ms until stopped; ``peak`` is the most."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def ping_time(endpoint: str | Path, curve: perfctl.Curve | None = None) -> float:
    """Seconds a fresh client takes to connect and have its ping answered."""
    began = time.monotonic()
    with perfctl.Client(endpoint, timeout=5, retries=0, curve=curve) as client:
        assert client.call("ping")["pong"] is True
    return time.monotonic() - began


def assert_serving(perfd: Perfd, peak: int, baseline: int) -> None:
    """perfd alive, a fresh ping under 0.5 s, RSS under the bound, admin commands work."""
    assert perfd.proc.poll() is None, perfd.log_path.read_text()[-3000:]
    took = ping_time(perfd.readonly_socket)
    print(f"start RSS {baseline / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, ping {took:.3f}s")
    assert took < 0.5, f"ping took {took:.3f}s"
    assert peak < baseline + BUFFERED + RSS_SLACK, (
        f"peak RSS {peak / MiB:.0f} MiB, start {baseline / MiB:.0f} MiB"
    )
    with perfctl.Client(perfd.admin_socket, timeout=20, retries=0) as admin:
        assert "echo" in json.dumps(admin.load("echo"))
        assert admin.infer("echo", [1, 2]) == [1, 2]
        assert "echo" in json.dumps(admin.evict("echo"))


def dropped_replies(perfd: Perfd) -> int:
    with perfctl.Client(perfd.readonly_socket, timeout=5, retries=0) as client:
        count: int = client.call("status")["requests"]["dropped"]
    return count


def flood(family: int, address: str | tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` bare connections, held open; a full backlog is waited out, not skipped."""
    held = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(2)
        deadline = time.monotonic() + 10
        while True:
            try:
                sock.connect(address)
            except BlockingIOError:  # the listen backlog is full: perfd has not accepted yet
                assert time.monotonic() < deadline, "perfd stopped accepting connections"
                time.sleep(0.001)
                continue
            break
        held.append(sock)
    return held


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


@pytest.mark.slow
def test_1100_bare_connections_to_the_read_only_socket(start_capped: Start) -> None:
    """1,100 bare connections to perfd-ro.sock under a 1024-file limit: perfd drops the
    oldest idle ones past max_connections and keeps serving (it used to abort in accept)."""
    perfd = start_capped()
    baseline = rss(perfd.proc.pid)
    peak = RssPeak(perfd.proc.pid)
    held = flood(socket.AF_UNIX, str(perfd.readonly_socket), 1100)
    try:
        wait_until(lambda: "connection.dropped" in perfd.events(), timeout=20)
        assert open_fds(perfd.proc.pid) < NOFILE - 100
        assert_serving(perfd, peak.stop(), baseline)
        entry = perfd.log_entry("limits.files")
        assert (entry["soft"], entry["hard"]) == (NOFILE, NOFILE)
    finally:
        close_all(held)


@pytest.mark.slow
@pytest.mark.skipif(not keys.curve_available(), reason="libzmq without CURVE")
def test_1100_plain_tcp_connections_to_the_curve_port(start_capped: Start, tmp_path: Path) -> None:
    """1,100 keyless TCP connections to the CURVE endpoint: perfd stays up; a keyed client
    and the local sockets are answered."""
    pair, client_pair = keys.generate(), keys.generate()
    keys.write_pair(tmp_path / "server", pair)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(f"{client_pair.public.decode()} admin ops\n")
    perfd = start_capped(
        "[remote]\n"
        'listen = "tcp://127.0.0.1:0"\n'
        f'secret_key_file = "{tmp_path / "server.key_secret"}"\n'
        f'authorized_keys = "{authorized}"\n'
    )
    endpoint = perfd.log_entry("remote.listening")["endpoint"]
    port = int(endpoint.rsplit(":", 1)[1])
    baseline = rss(perfd.proc.pid)
    peak = RssPeak(perfd.proc.pid)
    held = flood(socket.AF_INET, ("127.0.0.1", port), 1100)
    try:
        wait_until(lambda: "connection.dropped" in perfd.events(), timeout=20)
        assert open_fds(perfd.proc.pid) < NOFILE - 100
        assert client_pair.secret is not None
        curve = perfctl.Curve(client_pair.public, client_pair.secret, pair.public)
        took = ping_time(endpoint, curve)
        assert took < 0.5, f"remote ping took {took:.3f}s"
        assert_serving(perfd, peak.stop(), baseline)
    finally:
        close_all(held)


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], path: Path) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(f"ipc://{path}")
    return sock


def _request(cmd: str, request_id: str = "x", **args: Any) -> bytes:
    return protocol.encode_request(protocol.Request(request_id, cmd, args))


def zmtp_dealer(path: Path) -> socket.socket:
    """A raw ZMTP 3.1 (NULL mechanism) DEALER connection to an ipc socket, handshake sent:
    what it writes next is frames. libzmq would not send a message before its last frame;
    this can, and never finish one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    # What libzmq 4.3's own DEALER sends, paced as it does: the signature, then (once the
    # server's has come) version 3.1 and NULL, then (once its greeting and READY have come)
    # READY.
    sock.sendall(b"\xff" + b"\0" * 7 + b"\x01\x7f")
    received = b""
    while len(received) < 10:
        received += sock.recv(4096)
    sock.sendall(b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
    while len(received) < 66 or len(received) < 66 + received[65]:
        received += sock.recv(4096)
    ready = b"\x05READY\x0bSocket-Type\0\0\0\x06DEALER\x08Identity\0\0\0\0"
    sock.sendall(b"\x04" + bytes([len(ready)]) + ready)
    sock.sendall(b"\x01\x00")  # the empty delimiter frame, more to come
    return sock


@pytest.mark.slow
def test_a_message_of_one_mib_frames_never_finished(start_capped: Start) -> None:
    """A message of 1 MiB frames that never ends (written raw: 534 MiB held before, for as
    long as the connection stayed open): perfd drops the sender past the bound; meanwhile
    RSS stays under it and others are served."""
    perfd = start_capped()
    baseline = rss(perfd.proc.pid)
    peak = RssPeak(perfd.proc.pid)
    attacker = zmtp_dealer(perfd.readonly_socket)
    frame = b"\x03" + MiB.to_bytes(8, "big") + b"\0" * MiB  # MORE | LONG, 1 MiB
    sent = 0
    try:
        with contextlib.suppress(OSError):  # dropped by perfd: broken pipe or reset
            while sent < 1000:
                attacker.sendall(frame)
                sent += 1
        assert sent < 1000, "perfd took 1 GiB of one unfinished message"
        # the sender sees the reset before perfd has written the line saying why
        wait_until(lambda: "connections.shed" in perfd.events(), timeout=10)
        assert_serving(perfd, peak.stop(), baseline)
    finally:
        attacker.close()


@pytest.mark.slow
def test_one_message_of_400_one_mib_frames(start_capped: Start) -> None:
    """400 x 1 MiB frames in one message: perfd's RSS stays under the bound (it peaked at
    434 MiB), the sender is dropped or answered `bad_request`, others are served."""
    perfd = start_capped()
    baseline = rss(perfd.proc.pid)
    peak = RssPeak(perfd.proc.pid)
    frame = b"\0" * MiB
    with zmq.Context() as ctx:
        attacker = _dealer(ctx, perfd.readonly_socket)
        attacker.send_multipart([b"", *([frame] * 400)])
        wait_until(lambda: peak.peak > baseline + BUFFERED or not attacker.poll(0), timeout=20)
        time.sleep(1)
        assert_serving(perfd, peak.stop(), baseline)
        attacker.close()


@pytest.mark.slow
def test_one_mib_frames_at_full_rate(start_capped: Start) -> None:
    """1 MiB messages as fast as libzmq sends them for 5 s, replies never read: meanwhile
    RSS stays under the bound (390 MiB before) and others are served."""
    perfd = start_capped()
    baseline = rss(perfd.proc.pid)
    peak = RssPeak(perfd.proc.pid)
    frame = b"{" * (MiB - 64)
    sent = 0
    with zmq.Context() as ctx:
        attacker = _dealer(ctx, perfd.readonly_socket)

        def attack() -> None:
            nonlocal sent
            end = time.monotonic() + 5
            while time.monotonic() < end:
                with contextlib.suppress(zmq.Again):
                    attacker.send_multipart([b"", frame], zmq.NOBLOCK)
                    sent += 1

        thread = threading.Thread(target=attack)
        thread.start()
        time.sleep(2)
        try:
            assert thread.is_alive()
            assert_serving(perfd, peak.peak, baseline)
        finally:
            thread.join(10)
        assert sent > 50
        assert peak.stop() < baseline + BUFFERED + RSS_SLACK
        attacker.close()


@pytest.mark.slow
def test_replies_never_read(start_capped: Start) -> None:
    """32 clients send 2,000 requests each and never read a reply: replies past the send
    queue are dropped, not held; RSS stays under the bound (405 MiB per connection before)."""
    perfd = start_capped()
    baseline = rss(perfd.proc.pid)
    peak = RssPeak(perfd.proc.pid)
    with zmq.Context() as ctx:
        attackers = [_dealer(ctx, perfd.readonly_socket) for _ in range(32)]
        for sock in attackers:
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.RCVBUF, 4096)
        for i in range(2000):
            for sock in attackers:
                sock.send_multipart([b"", _request("config", f"c{i}")])
        wait_until(lambda: dropped_replies(perfd) > 0, timeout=30)
        assert_serving(perfd, peak.stop(), baseline)
        for sock in attackers:
            sock.close()


FLOOD = 24  # slow requests sent at once: more than max_in_flight_per_client (16)
SLOW = {"model": "gated", "inputs": "x", "options": {"seconds": 8}}


def _codes(sock: zmq.Socket[bytes], count: int, timeout: float = 20) -> dict[str, str]:
    """Read ``count`` replies (id -> "ok" or the error code)."""
    codes: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(codes) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"replies so far: {codes}"
        assert sock.poll(int(left * 1000)), f"replies so far: {codes}"
        reply = json.loads(sock.recv_multipart()[-1])
        codes[reply["id"]] = "ok" if reply["ok"] else reply["error"]["code"]
    return codes


def assert_admin_prompt(admin: perfctl.Client, ping: Callable[[], float]) -> None:
    """While the flood holds its slots: ping under 0.5 s; load, evict and infer of another
    model run (on the worker the flood may not take) within 3 s each."""
    took = ping()
    assert took < 0.5, f"ping took {took:.3f}s"
    for call in (
        lambda: admin.load("echo"),
        lambda: admin.infer("echo", [1]),
        lambda: admin.evict("echo"),
    ):
        began = time.monotonic()
        call()
        assert time.monotonic() - began < 3


@pytest.mark.slow
@pytest.mark.skipif(not keys.curve_available(), reason="libzmq without CURVE")
def test_one_key_flooding_slow_requests_gets_busy_others_run(
    start_capped: Start, tmp_path: Path
) -> None:
    """A remote admin key sends 24 slow infers at once: past max_in_flight_per_client it gets
    `busy`, while another key's ping, load, infer and evict still run promptly."""
    pair, flooder, ops = keys.generate(), keys.generate(), keys.generate()
    keys.write_pair(tmp_path / "server", pair)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(
        f"{flooder.public.decode()} admin batch\n{ops.public.decode()} admin ops\n"
    )
    perfd = start_capped(
        "[remote]\n"
        'listen = "tcp://127.0.0.1:0"\n'
        f'secret_key_file = "{tmp_path / "server.key_secret"}"\n'
        f'authorized_keys = "{authorized}"\n'
    )
    endpoint = perfd.log_entry("remote.listening")["endpoint"]
    assert flooder.secret is not None
    assert ops.secret is not None
    with zmq.Context() as ctx:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_publickey, sock.curve_secretkey = flooder.public, flooder.secret
        sock.curve_serverkey = pair.public
        sock.connect(endpoint)
        for i in range(FLOOD):
            sock.send_multipart([b"", _request("infer", f"f{i}", **SLOW)])
        busy = _codes(sock, FLOOD - 16, timeout=20)
        assert set(busy.values()) == {"busy"}, busy
        curve = perfctl.Curve(ops.public, ops.secret, pair.public)
        with perfctl.Client(endpoint, timeout=20, retries=0, curve=curve) as admin:
            assert_admin_prompt(admin, lambda: ping_time(endpoint, curve))
        sock.close()
    assert perfd.proc.poll() is None


def flood_as(uid: int, gid: int, endpoint: str, count: int) -> tuple[int, int]:
    """Fork a child that runs as ``uid`` (so SO_PEERCRED names it), sends ``count`` slow
    infers on ``endpoint`` and writes each reply's "id code" line to a pipe: (pid, read fd).
    /root is not readable by other users, so the child cannot exec an interpreter: it keeps
    this one, with every module it needs already imported."""
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns of fork with threads: the child only sends
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.connect(endpoint)
            for i in range(count):
                sock.send_multipart([b"", _request("infer", f"n{i}", **SLOW)])
            while sock.poll(30000):
                reply = json.loads(sock.recv_multipart()[-1])
                code = "ok" if reply["ok"] else reply["error"]["code"]
                os.write(write, f"{reply['id']} {code}\n".encode())
        finally:
            os._exit(0)
    os.close(write)
    return pid, read


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as user nobody")
def test_one_uid_flooding_slow_requests_gets_busy_root_runs(start_capped: Start) -> None:
    """User nobody (let in as an admin user) sends 24 slow infers on perfd.sock: past its
    share it gets `busy`, and root's ping, load, infer and evict still run promptly."""
    nobody = pwd.getpwnam("nobody")
    perfd = start_capped('[access]\nadmin_users = ["nobody"]\n')
    perfd.admin_socket.chmod(0o666)  # nobody may connect; the admin policy still decides
    pid, read = flood_as(nobody.pw_uid, nobody.pw_gid, f"ipc://{perfd.admin_socket}", FLOOD)
    try:
        with os.fdopen(read) as replies:
            busy = [replies.readline().split() for _ in range(FLOOD - 16)]
            assert {code for _, code in busy} == {"busy"}, busy
            with perfctl.Client(perfd.admin_socket, timeout=20, retries=0) as admin:
                assert_admin_prompt(admin, lambda: ping_time(perfd.admin_socket))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    denied = [e for e in perfd.logs() if e["event"] == "access.denied"]
    assert not denied, denied  # nobody was let in: the busy replies were its share


def test_max_connections_is_lowered_to_fit_the_file_limit(start_capped: Start) -> None:
    """max_connections = 1000 on two sockets under 1024 files: perfd uses 384 (a quarter of
    the limit left to itself) and says so; it serves."""
    perfd = start_capped("max_connections = 1000\n")
    entry = perfd.log_entry("connections.capped")
    assert (entry["max_connections"], entry["using"], entry["file_limit"]) == (1000, 384, NOFILE)
    assert ping_time(perfd.readonly_socket) < 0.5
