"""Process-level faults against a real perfd: kill -9 and restart, SIGHUP storms during traffic,
clients that vanish mid-request or never read, and the wall clock jumping under libfaketime.

(A second perfd started while the first is alive refuses: tests/test_daemon.py
``test_second_perfd_refuses`` and ``test_second_perfd_refuses_when_socket_answers``.)
"""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

import perfctl
from perfd.wire import protocol
from tests.conftest import NotifySocket, Perfd, StartPerfd
from tests.daemons import wait_until

ROOT = Path(__file__).resolve().parent.parent
MODELS = """
[models.echo]
target = "tests.models.toy:make_echo"
[models.gated]
target = "tests.models.toy:make_gated"
"""
# Debian's package faketime (.ci/run installs it) puts the library under the multiarch dir.
FAKETIME_LIB = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
)


def start(start_perfd: StartPerfd, config: str = "", **kwargs: Any) -> Perfd:
    """A perfd that can import the toy models (tests.models.toy)."""
    env = {"PYTHONPATH": str(ROOT), **kwargs.pop("env", {})}
    return start_perfd(MODELS + config, env=env, **kwargs)


def client(perfd: Perfd, **kwargs: Any) -> perfctl.Client:
    return perfctl.Client(runtime_dir=perfd.runtime_dir, **{"timeout": 20, **kwargs})


def send(sock: zmq.Socket[bytes], request_id: str, cmd: str, **args: Any) -> None:
    """One request on a DEALER (REQ's empty delimiter first, so perfd answers in kind)."""
    sock.send_multipart([b"", protocol.encode_request(protocol.Request(request_id, cmd, args))])


def receive(sock: zmq.Socket[bytes], timeout: float = 20.0) -> dict[str, Any]:
    assert sock.poll(int(timeout * 1000)), "no reply from perfd"
    frames = sock.recv_multipart()
    assert frames[0] == b""
    reply: dict[str, Any] = json.loads(frames[1])
    return reply


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def steady(count: Callable[[], int]) -> int:
    """The lowest of a few readings: a probe's short-lived fd does not count as a baseline."""
    return min(count() for _ in range(20))


def dropped(perfd: Perfd) -> int:
    with client(perfd) as c:
        return int(c.status()["requests"]["dropped"])


def quick_ping(perfd: Perfd) -> float:
    """Seconds a fresh client's ping takes (asserted only against a generous bound)."""
    began = time.monotonic()
    with client(perfd, timeout=10, retries=0) as c:
        assert c.ping()["pong"] is True
    return time.monotonic() - began


class NotifyLog:
    """Reads perfd's notify socket on a thread, stamping each message with the monotonic time.

    An AF_UNIX datagram queue holds 10 messages (net.unix.max_dgram_qlen) and perfd's sends
    block when it is full, as they would if systemd stopped reading: so read all the time.
    """

    def __init__(self, notify: NotifySocket) -> None:
        self._sock = notify.sock
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-log")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._received.append((time.monotonic(), data.decode()))

    def messages(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._received)

    def count(self, key: str) -> int:
        return sum(1 for _, m in self.messages() if m.startswith(key))

    def wait_count(self, key: str, n: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.count(key) >= n, timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def notify_log(perfd: Perfd) -> Iterator[NotifyLog]:
    log = NotifyLog(perfd.notify)
    try:
        yield log
    finally:
        log.close()


# -- kill -9, then restart -------------------------------------------------------------------


def test_sigkill_then_restart_on_the_same_runtime_dir(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """After kill -9 with a model loaded and requests in flight, a new perfd on the same runtime
    dir removes the stale sockets, takes the stale lock and serves both sockets with their
    modes; a client connected before reconnects on its own, an in-flight call gets a clear
    DaemonTimeout."""
    gate, entered = tmp_path / "gate", tmp_path / "entered"
    first = start(start_perfd)
    rundir = first.runtime_dir
    outcome: list[BaseException] = []

    def in_flight() -> None:
        with client(first, timeout=3, long_timeout=3) as c:
            try:
                c.infer("gated", "lost", {"gate": str(gate), "entered": str(entered)})
            except perfctl.PerfctlError as exc:
                outcome.append(exc)

    with client(first, retries=0) as before, zmq.Context() as ctx:
        assert before.load("echo")["state"] == "ready"
        assert before.ping()["pid"] == first.proc.pid
        with ctx.socket(zmq.DEALER) as dealer:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(f"ipc://{first.admin_socket}")
            send(dealer, "lost-raw", "infer", model="gated", inputs=1, options={"gate": str(gate)})
            caller = threading.Thread(target=in_flight)
            caller.start()
            try:
                wait_until(entered.exists)
                assert first.stop(signal.SIGKILL) == -signal.SIGKILL
                left = set(os.listdir(rundir))
                assert {"perfd.sock", "perfd-ro.sock", "perfd.lock"} <= left
                second = start(start_perfd, runtime_dir=rundir)
            finally:
                caller.join(30)
            # The connection died with the process: the request sent on it gets no reply.
            assert not dealer.poll(200)
            send(dealer, "after", "ping")  # the same DEALER reconnected to the new perfd
            assert receive(dealer)["result"]["pid"] == second.proc.pid
        assert before.ping()["pid"] == second.proc.pid  # the same REQ socket, no retry
    (error,) = outcome
    assert isinstance(error, perfctl.DaemonTimeout)
    assert "'infer' is not retried: it may still be running in perfd" in str(error)

    removed = [e["path"] for e in second.logs() if e["event"] == "socket.stale_removed"]
    assert sorted(removed) == sorted([str(second.admin_socket), str(second.readonly_socket)])
    assert (rundir / "perfd.lock").read_text().strip() == str(second.proc.pid)
    assert stat.S_IMODE(second.admin_socket.stat().st_mode) == 0o660
    assert stat.S_IMODE(second.readonly_socket.stat().st_mode) == 0o666
    with client(second, socket=second.readonly_socket) as ro:
        assert ro.status()["pid"] == second.proc.pid
    with client(second) as admin:
        assert admin.infer("echo", [1, 2]) == [1, 2]
        assert admin.ps()["models"][0]["name"] == "echo"  # loaded again, in the new process
    assert second.stop() == 0
    assert sorted(os.listdir(rundir)) == []


# -- SIGHUP storm during traffic -------------------------------------------------------------


def _good(n: int, log_file: Path) -> str:
    return (
        MODELS
        + f'[log]\nfile = "{log_file}"\n'
        + f'[server]\ncommand_timeout = "{60 + n}s"\n'
        + '[monitor]\ninterval = "200ms"\ntrend_window = "5s"\n'
    )


def _bad(n: int) -> str:
    return MODELS + f"[server]\nworkers = 0\n# storm {n}\n"


def _write(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or a config manager does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


Check = Callable[[dict[str, Any], dict[str, Any]], bool]


def _mix(pid: int, admin: bool) -> list[tuple[str, Callable[[str], dict[str, Any]], Check]]:
    """(command, args for a request id, check of the result against those args)."""
    mix: list[tuple[str, Callable[[str], dict[str, Any]], Check]] = [
        ("ping", lambda _: {}, lambda r, _: r["pong"] is True and r["pid"] == pid),
        ("status", lambda _: {}, lambda r, _: r["pid"] == pid),
        ("config", lambda _: {}, lambda r, _: "server" in r["config"]),
        ("stats", lambda _: {}, lambda r, _: "host" in r),
        ("alerts", lambda _: {}, lambda r, _: isinstance(r["firing"], list)),
    ]
    if admin:
        mix += [
            (
                "infer",
                lambda rid: {"model": "echo", "inputs": rid},
                lambda r, a: r["outputs"] == a["inputs"],
            ),
            (
                "infer",  # a slow one: 50 ms on a worker thread
                lambda rid: {"model": "gated", "inputs": [rid], "options": {"seconds": 0.05}},
                lambda r, a: r["outputs"] == a["inputs"],
            ),
            ("ps", lambda _: {}, lambda r, _: isinstance(r["models"], list)),
        ]
    return mix


class Traffic(threading.Thread):
    """A client sending batches of 4 requests and checking every reply: its id was sent, it
    came once, it is ok, and its result belongs to that request."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], perfd: Perfd, name: str) -> None:
        super().__init__(name=name)
        self.admin = not name.startswith("ro")
        path = perfd.admin_socket if self.admin else perfd.readonly_socket
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{path}")
        self.mix = _mix(perfd.proc.pid, self.admin)
        self.stop = threading.Event()
        self.replies = 0
        self.errors: list[str] = []

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set() and not self.errors:
                batch: dict[str, tuple[str, dict[str, Any], Check]] = {}
                for _ in range(4):
                    cmd, make_args, check = self.mix[n % len(self.mix)]
                    rid = f"{self.name}-{n}"
                    n += 1
                    batch[rid] = (cmd, make_args(rid), check)
                    send(self.sock, rid, cmd, **batch[rid][1])
                self._collect(batch)
        finally:
            self.sock.close()

    def _collect(self, batch: dict[str, tuple[str, dict[str, Any], Check]]) -> None:
        seen: set[str] = set()
        while len(seen) < len(batch):
            if not self.sock.poll(30_000):
                self.errors.append(f"no reply to {sorted(set(batch) - seen)}")
                return
            reply = json.loads(self.sock.recv_multipart()[1])
            rid = reply.get("id")
            if rid not in batch or rid in seen:
                self.errors.append(f"reply {rid!r} unexpected or duplicated; sent {sorted(batch)}")
                return
            seen.add(rid)
            cmd, args, check = batch[rid]
            if not reply["ok"]:
                self.errors.append(f"{cmd} {rid}: {reply['error']}")
            elif not check(reply["result"], args):
                self.errors.append(f"{cmd} {rid}: mismatched result {reply['result']}")
            self.replies += 1


def test_sighup_storm_during_traffic(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """200 SIGHUPs in bursts, alternating good and bad files, while 4 clients keep requests
    (slow ones too) in flight: every reply arrives once and matches, perfd stays up with the
    last file's config, each RELOADING=1 gets its READY=1, the watchdog is fed throughout,
    and no fd or thread is left behind."""
    log_file = tmp_path / "perfd-file.log"
    perfd = start_perfd(
        _good(0, log_file), env={"PYTHONPATH": str(ROOT), "WATCHDOG_USEC": "2000000"}
    )
    pid = perfd.proc.pid
    with notify_log(perfd) as notes, zmq.Context() as ctx:
        clients = [Traffic(ctx, perfd, name) for name in ("admin-a", "admin-b", "admin-c", "ro")]
        for c in clients:
            c.start()
        try:
            # Warm up: the cache, the worker pool and both reload paths exist before counting.
            wait_until(lambda: all(c.replies >= 16 for c in clients), timeout=60)
            for text in (_bad(0), _good(0, log_file)):
                _write(perfd.config_path, text)
                readies = notes.count("READY=1")
                perfd.proc.send_signal(signal.SIGHUP)
                notes.wait_count("READY=1", readies + 1)
            fds_before, threads_before = steady(lambda: fds(pid)), steady(lambda: threads(pid))
            replies_before = sum(c.replies for c in clients)

            for burst in range(1, 21):  # odd bursts bad, even ones good: 20, the last, is good
                text = _bad(burst) if burst % 2 else _good(burst, log_file)
                _write(perfd.config_path, text)
                reloads = notes.count("RELOADING=1")
                for _ in range(10):
                    perfd.proc.send_signal(signal.SIGHUP)
                notes.wait_count("RELOADING=1", reloads + 1)
            # The last file written is in force once a reload has read it.
            last = 60.0 + 20

            def config_is_last() -> bool:
                with client(perfd) as c:
                    return bool(c.config()["config"]["server"]["command_timeout"] == last)

            wait_until(config_is_last)
            wait_until(lambda: sum(c.replies for c in clients) >= replies_before + 100, 60)
            notes.wait_count("WATCHDOG=1", notes.count("WATCHDOG=1") + 2)
            wait_until(lambda: fds(pid) <= fds_before)
            wait_until(lambda: threads(pid) <= threads_before)
        finally:
            for c in clients:
                c.stop.set()
            for c in clients:
                c.join(60)
        messages = notes.messages()
    assert perfd.proc.poll() is None
    assert [e for c in clients for e in c.errors] == []
    assert all(c.replies > 0 for c in clients)

    # Every RELOADING=1 is answered by READY=1 before the next one, MONOTONIC_USEC only grows.
    open_reload, usecs = False, []
    for _, message in messages:
        if message.startswith("RELOADING=1"):
            assert not open_reload, "RELOADING=1 twice without READY=1"
            open_reload = True
            usecs.append(int(message.split("MONOTONIC_USEC=")[1]))
        elif message.startswith("READY=1"):
            open_reload = False
        assert not message.startswith("STOPPING=1")
    assert not open_reload
    assert usecs == sorted(usecs)
    events = perfd.events()
    reloads = len(usecs)
    assert reloads >= 22  # signals coalesce: at least one reload per burst, not 200
    assert events.count("config.reloaded") + events.count("config.invalid") == reloads
    assert events.count("config.invalid") >= 11
    assert "watchdog.withheld" not in events
    assert "request.crashed" not in events
    assert "command.failed" not in events

    # The watchdog (2 s, fed every 1 s) never went hungry: systemd would not have killed it.
    watchdog = [t for t, m in messages if m.startswith("WATCHDOG=1")]
    assert len(watchdog) >= 3
    gaps = [b - a for a, b in itertools.pairwise(watchdog)]
    assert max(gaps) < 2.0, gaps
    assert perfd.stop() == 0


# -- clients that vanish or never read -------------------------------------------------------


REQ_CLIENT = """
import sys, zmq
from perfd.wire import protocol
ctx = zmq.Context()
sock = ctx.socket(zmq.REQ)
sock.connect(sys.argv[1])
args = {"model": "vanished", "target": "tests.models.toy:make_gated",
        "options": {"gate": sys.argv[2], "entered": sys.argv[3], "done": sys.argv[4]}}
sock.send(protocol.encode_request(protocol.Request("doomed", "load", args)))
sock.recv()  # never answered in time: the test kills this process first
"""


def test_client_vanishing_mid_request(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """A DEALER that closes right after a slow infer and a REQ process SIGKILLed during a slow
    load: perfd finishes both, drops and counts both replies, and answers others throughout."""
    files = {name: tmp_path / name for name in ("g1", "e1", "d1", "g2", "e2", "d2")}
    perfd = start(start_perfd)
    before = dropped(perfd)

    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as gone:
        gone.setsockopt(zmq.LINGER, 5000)  # close at once; libzmq still sends the request
        gone.connect(f"ipc://{perfd.admin_socket}")
        options = {"gate": str(files["g1"]), "entered": str(files["e1"]), "done": str(files["d1"])}
        send(gone, "vanishing", "infer", model="gated", inputs="x", options=options)
    wait_until(files["e1"].exists)
    assert quick_ping(perfd) < 5  # the worker is busy; the socket thread is not
    files["g1"].touch()
    wait_until(files["d1"].exists)
    wait_until(lambda: dropped(perfd) == before + 1)

    endpoint = f"ipc://{perfd.admin_socket}"
    argv = [
        sys.executable,
        "-c",
        REQ_CLIENT,
        endpoint,
        *(str(files[k]) for k in ("g2", "e2", "d2")),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(argv, env=env) as req:
        try:
            wait_until(files["e2"].exists)
        finally:
            req.kill()
    assert quick_ping(perfd) < 5
    files["g2"].touch()
    wait_until(files["d2"].exists)
    wait_until(lambda: dropped(perfd) == before + 2)
    with client(perfd) as c:
        (vanished,) = [m for m in c.ps()["models"] if m["name"] == "vanished"]
        assert vanished["state"] == "ready"  # the load was done though nobody heard of it
        assert c.infer("gated", "after") == "after"
    assert perfd.proc.poll() is None


def test_a_client_that_never_reads_does_not_block(start_perfd: StartPerfd) -> None:
    """A client that sends thousands of requests and reads no reply: once its queue is full
    (the high-water mark) perfd drops its replies and counts them, and keeps answering
    everyone else."""
    perfd = start(start_perfd)
    before = dropped(perfd)
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as hog:
        hog.setsockopt(zmq.LINGER, 0)
        hog.setsockopt(zmq.RCVHWM, 1)
        hog.setsockopt(zmq.SNDTIMEO, 30_000)
        hog.connect(f"ipc://{perfd.admin_socket}")
        with client(perfd, timeout=10, retries=0) as other:
            for i in range(4000):
                send(hog, f"hog-{i}", "config")
                if i % 500 == 0:
                    assert other.ping()["pong"] is True
            wait_until(lambda: dropped(perfd) > before, timeout=60)
            assert quick_ping(perfd) < 5
        assert hog.poll(10_000)  # what did fit in its queue is still there to read
        assert json.loads(hog.recv_multipart()[1])["id"] == "hog-0"
    assert quick_ping(perfd) < 5


# -- the wall clock jumps --------------------------------------------------------------------


@pytest.mark.skipif(
    not FAKETIME_LIB.exists(), reason=f"{FAKETIME_LIB} missing (apt-get install faketime)"
)
def test_wall_clock_jumps(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """Under libfaketime the wall clock steps forward a day, then back an hour, while perfd
    runs: uptime, keep-alives, alert timing, command and load timeouts and the watchdog follow
    the monotonic clock and ignore it; only log timestamps follow the wall clock."""
    clock_file = tmp_path / "faketime"
    clock_file.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME_TIMESTAMP_FILE": str(clock_file),
        "FAKETIME_NO_CACHE": "1",  # read the file on every call: a step takes effect at once
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "WATCHDOG_USEC": "1000000",
    }
    config = """
[models.keep]
target = "tests.models.toy:make_echo"
keep_alive = "1h"
[models.brief]
target = "tests.models.toy:make_echo"
keep_alive = "4s"
[server]
command_timeout = "1h"
[cache]
load_timeout = "1h"
housekeeping = "100ms"
[monitor]
interval = "100ms"
trend_window = "5s"
[alerts.host_memory]
warn = 0.01
crit = 100
for = 0
[alerts.swap]
enabled = false
[alerts.exhaustion]
enabled = false
[alerts.psi]
warn = 0
crit = 100
for = "1h"
"""
    perfd = start(start_perfd, config, env=env)
    files = {name: tmp_path / name for name in ("gate", "infer-in", "load-in")}
    with notify_log(perfd) as notes, client(perfd) as c, zmq.Context() as ctx:
        wait_until(lambda: "host_memory/host" in {a["id"] for a in c.alerts()["firing"]})
        c.load("keep")
        c.load("brief")
        with ctx.socket(zmq.DEALER) as slow:
            slow.setsockopt(zmq.LINGER, 0)
            slow.connect(f"ipc://{perfd.admin_socket}")
            gate = str(files["gate"])
            send(
                slow,
                "infer",
                "infer",
                model="gated",
                inputs=7,
                options={"gate": gate, "entered": str(files["infer-in"]), "timeout": 60},
            )
            send(
                slow,
                "load",
                "load",
                model="late",
                target="tests.models.toy:make_gated",
                options={"gate": gate, "entered": str(files["load-in"]), "timeout": 60},
            )
            wait_until(lambda: files["infer-in"].exists() and files["load-in"].exists())
            uptime = c.status()["uptime_s"]

            for step, offset in (("+1d", 86400), ("+23h", 82800)):
                clock_file.write_text(f"{step}\n")
                assert c.reload()["reloaded"] is True  # a log line stamped after the step
                entries = [e for e in perfd.logs() if e["event"] == "config.reloaded"]
                stamp = dt.datetime.fromisoformat(entries[-1]["ts"].replace("Z", "+00:00"))
                assert abs(stamp.timestamp() - (time.time() + offset)) < 600
                watchdogs = notes.count("WATCHDOG=1")
                notes.wait_count("WATCHDOG=1", watchdogs + 2)  # still fed after the step
                now = c.status()["uptime_s"]
                assert uptime <= now < uptime + 600
                uptime = now
                if step == "+1d":
                    # brief expires 4 s after its load, monotonic: keep (1 h) stays.
                    wait_until(lambda: "brief" not in {m["name"] for m in c.ps()["models"]}, 30)
                    assert "keep" in {m["name"] for m in c.ps()["models"]}

            files["gate"].touch()
            replies = {r["id"]: r for r in (receive(slow), receive(slow))}
        assert replies["infer"]["ok"] is True, replies["infer"]
        assert replies["infer"]["result"]["outputs"] == 7
        assert replies["load"]["ok"] is True, replies["load"]
        assert "keep" in {m["name"] for m in c.ps()["models"]}
        alerts = c.alerts()
        assert "host_memory/host" in {a["id"] for a in alerts["firing"]}
        assert "psi" not in {a["rule"] for a in alerts["firing"]}  # its 1 h `for` never passed
        trend = c.stats()
    host_memory = [
        (e["event"], e.get("repeat"))
        for e in perfd.logs()
        if e["event"].startswith("alert.") and e.get("id") == "host_memory/host"
    ]
    assert host_memory == [("alert.firing", None)]  # neither resolved nor fired again
    events = perfd.events()
    assert "command.timeout" not in events
    assert "watchdog.withheld" not in events  # no heartbeat looked stale after the step
    assert all(0 <= t["span_s"] <= 5.5 for t in _trends(trend))
    assert perfd.stop() == 0


def _trends(node: Any) -> Iterator[dict[str, Any]]:
    """Every trend (a dict with span_s) anywhere in a stats reply."""
    if isinstance(node, dict):
        if "span_s" in node:
            yield node
        for value in node.values():
            yield from _trends(value)
    elif isinstance(node, list):
        for value in node:
            yield from _trends(value)


# -- durations never read the wall clock -----------------------------------------------------

# Every place in perfd/ that reads the wall clock, with why it needs the wall clock: a
# timestamp shown to people or sent to another system, never a duration or a deadline. A place
# is the function, and the parameter whose default it is or the name it is assigned to, so a
# `clock=time.time` beside an allowed `wall=time.time` is still caught.
WALL_CLOCK_ALLOWED = {
    ("cache/core.py", "__init__(wall=)"): "ps shows last_used and expires_at as times of day",
    ("parts.py", "<module>: wall ="): "Boundaries.wall: status.started_at (uptime is monotonic)",
    ("log.py", "_timestamp: now ="): "each log line's ts",
    ("monitor/sampler.py", "__init__(wall=)"): "sampled_at and alert `since` stamps",
    ("probes/host.py", "__init__(wall=)"): "each sample's `wall` stamp",
    ("monitor/sinks.py", "_ends_at"): "Alertmanager's endsAt is a time of day",
    ("engines/watcher.py", "__init__(wall=)"): "each engine record's read_at and since stamps",
}
_WALL_CLOCK = {("time", "time"), ("time", "time_ns"), ("datetime", "now"), ("datetime", "utcnow")}


def _reads_wall_clock(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        return (name, node.attr) in _WALL_CLOCK
    return (  # from time import time: a bare time() later
        isinstance(node, ast.ImportFrom)
        and node.module == "time"
        and bool({a.name for a in node.names} & {"time", "time_ns"})
    )


def _place(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    """'function', 'function(param=)' or 'function: target =' for where ``node`` sits."""
    detail = ""
    while (parent := parents.get(node)) is not None:
        if isinstance(parent, ast.arguments) and not detail:
            positional = parent.posonlyargs + parent.args
            pairs = [
                *zip(
                    positional[len(positional) - len(parent.defaults) :],
                    parent.defaults,
                    strict=True,
                ),
                *zip(parent.kwonlyargs, parent.kw_defaults, strict=True),
            ]
            detail = next(f"({a.arg}=)" for a, d in pairs if d is node)
        elif isinstance(parent, ast.Assign | ast.AnnAssign) and not detail:
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            detail = ": " + ", ".join(ast.unparse(t) for t in targets) + " ="
        elif isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef):
            return parent.name + detail
        node = parent
    return "<module>" + detail


def test_durations_never_read_the_wall_clock() -> None:
    """perfd/ reads time.time() / datetime.now() only where it records a timestamp (each place
    allow-listed with its reason); every duration and deadline uses time.monotonic()."""
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted((ROOT / "perfd").rglob("*.py")):
        tree = ast.parse(path.read_text())
        reads = [node for node in ast.walk(tree) if _reads_wall_clock(node)]
        if not reads:
            continue
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in reads:
            place = (str(path.relative_to(ROOT / "perfd")), _place(node, parents))
            found.setdefault(place, []).append(getattr(node, "lineno", 0))
    unexpected = {k: v for k, v in found.items() if k not in WALL_CLOCK_ALLOWED}
    assert unexpected == {}, "a wall-clock read that is not a timestamp: use time.monotonic()"
    assert set(WALL_CLOCK_ALLOWED) == set(found), "allow-list entries no longer needed"
