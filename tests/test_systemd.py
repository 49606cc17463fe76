"""sd_notify against a real AF_UNIX datagram socket; the watchdog's liveness rule."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from perfd.systemd import Liveness, Notifier, Watchdog, notify_address, watchdog_interval
from tests.conftest import StartPerfd


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock


def _notifier(monkeypatch: pytest.MonkeyPatch, address: str, usec: str = "") -> Notifier:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    return Notifier()


def test_messages_reach_the_socket(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """READY with STATUS, RELOADING with MONOTONIC_USEC and STOPPING arrive as UTF-8."""
    path = str(short_dir / "notify")
    sock = _listen(path)
    notifier = _notifier(monkeypatch, path)
    notifier.ready("mem 62% ok · gpu0 71% ↑")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=mem 62% ok · gpu0 71% ↑"
    notifier.reloading()
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=")
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()
    sock.close()


def test_a_notify_socket_nobody_reads_never_blocks(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled systemd (its datagram queue full) cannot block perfd: messages past the
    queue are dropped and counted, and the queued ones still arrive."""
    path = str(short_dir / "notify")
    sock = _listen(path)
    notifier = _notifier(monkeypatch, path)
    for i in range(2000):  # far more than an AF_UNIX datagram queue holds
        notifier.status(f"line {i}")
    assert notifier.dropped > 0
    assert sock.recv(4096) == b"STATUS=line 0"
    notifier.close()
    sock.close()


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """An abstract NOTIFY_SOCKET ("@name") works too."""
    name = f"perfd-test-{os.getpid()}"
    sock = _listen("\0" + name)
    notifier = _notifier(monkeypatch, "@" + name)
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()
    sock.close()


def test_status_sent_only_when_changed(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STATUS= goes out when the line changes, not on every tick."""
    path = str(short_dir / "notify")
    sock = _listen(path)
    notifier = _notifier(monkeypatch, path)
    notifier.status("a")
    notifier.status("a")
    notifier.status("b")
    assert sock.recv(4096) == b"STATUS=a"
    assert sock.recv(4096) == b"STATUS=b"
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    notifier.close()
    sock.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: nothing is sent and nothing fails."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.reloading()
    notifier.watchdog()
    notifier.stopping()


def test_socket_gone_is_not_fatal(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET nobody listens on is silently ignored, and no socket is leaked."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notifier = _notifier(monkeypatch, str(short_dir / "nobody"))
        assert notifier.enabled
        notifier.ready("x")
        notifier.stopping()
        notifier.close()
        del notifier
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_notify_address_forms() -> None:
    """A path is used as it is, "@name" is the abstract b"\\0name"; anything else is off."""
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@perfd/notify") == b"\0perfd/notify"
    for unusable in ("", "@", "relative/path", "vsock:2:1234"):
        assert notify_address(unusable) is None


def test_an_unusable_notify_socket_turns_notify_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET that is neither a path nor "@name" makes the notifier a no-op."""
    notifier = _notifier(monkeypatch, "relative/notify")
    assert not notifier.enabled
    notifier.ready("x")
    notifier.close()


def test_notify_needs_no_sdnotify_package() -> None:
    """The notifier is the standard library's: perfd imports no sdnotify, and does not
    depend on it (pyproject.toml)."""
    code = (
        "import os, sys\n"
        "os.environ['NOTIFY_SOCKET'] = '@perfd-nobody'\n"
        "from perfd.systemd import Notifier\n"
        "n = Notifier(); n.ready('x'); n.close()\n"
        "print('sdnotify' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert not [d for d in pyproject["project"]["dependencies"] if "sdnotify" in d.lower()]


def test_raise_fd_limit_lifts_soft_to_hard() -> None:
    """raise_fd_limit() sets the soft RLIMIT_NOFILE to the hard one, and says so."""
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))\n"
        "from perfd.systemd import raise_fd_limit\n"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "print(raise_fd_limit())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["(256, 2048) (2048, 2048)", "(2048, 2048)"]


def test_perfd_raises_its_file_limit_at_start(start_perfd: StartPerfd) -> None:
    """perfd started with soft 512 / hard 4096 files runs with 4096 and logs the change."""
    perfd_ = start_perfd("", nofile=(512, 4096))
    limits = Path(f"/proc/{perfd_.proc.pid}/limits").read_text()
    (line,) = [x for x in limits.splitlines() if x.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"]
    entry = perfd_.log_entry("daemon.fd_limit_raised")
    assert (entry["soft_before"], entry["soft"]) == (512, 4096)
    assert perfd_.stop() == 0


def test_watchdog_interval_from_env() -> None:
    """Half of WATCHDOG_USEC; none when unset, invalid or meant for another pid."""
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": pid}) == 0.0005


class RecordingNotifier(Notifier):
    """A notifier that records WATCHDOG=1 instead of sending it."""

    def __init__(self, interval: float | None) -> None:
        self.watchdog_interval = interval
        self.sent: list[str] = []

    def watchdog(self) -> None:
        self.sent.append("WATCHDOG=1")


def test_watchdog_fed_while_all_loops_beat() -> None:
    """WATCHDOG=1 every interval while every heartbeat is fresh."""
    clock = FakeClock()
    notifier = RecordingNotifier(5.0)  # WATCHDOG_USEC=10 s: feed every 5 s
    liveness = Liveness(clock)
    main, monitor = liveness.register("main"), liveness.register("monitor")
    dog = Watchdog(notifier, liveness, clock)
    assert dog.tick()
    assert not dog.tick()  # not due yet
    assert dog.timeout() == 5.0
    for _ in range(3):
        clock.now += 5
        main.beat()
        monitor.beat()
        assert dog.tick()
    assert len(notifier.sent) == 4


def test_hung_thread_withholds_watchdog() -> None:
    """A loop that stops beating for a whole watchdog period stops the pings."""
    clock = FakeClock()
    notifier = RecordingNotifier(5.0)
    liveness = Liveness(clock)
    main, _hung = liveness.register("main"), liveness.register("monitor")
    dog = Watchdog(notifier, liveness, clock)
    assert dog.tick()
    clock.now += 11
    main.beat()
    assert not dog.tick()
    assert dog.withheld == ["monitor"]
    liveness.unregister("monitor")
    assert dog.tick()


def test_no_watchdog_configured() -> None:
    """Without WATCHDOG_USEC the main loop may block indefinitely."""
    dog = Watchdog(RecordingNotifier(None), Liveness())
    assert dog.timeout() is None
    assert not dog.tick()
