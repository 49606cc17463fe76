"""Files a config names, opened without blocking: perfd.files, and a real perfd whose log file
or config file is a FIFO or a symlink (refused at start and at reload, never freezing)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import perfctl
from perfd import files
from tests.conftest import Perfd, StartPerfd


def finishes(call: Callable[[], Any], timeout: float = 5.0) -> Any:
    """``call()``'s result or exception, failing the test if it blocks ``timeout`` seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{call} blocked for {timeout}s"
    if "error" in box:
        raise box["error"]
    return box.get("result")


def test_read_regular_reads_files_and_symlinks_to_them(tmp_path: Path) -> None:
    """A regular file is read whole, through a symlink too (config management links them)."""
    path = tmp_path / "perfd.toml"
    path.write_bytes(b"x" * 200_000)
    (tmp_path / "link.toml").symlink_to(path)
    assert files.read_regular(path) == b"x" * 200_000
    assert files.read_regular(tmp_path / "link.toml") == b"x" * 200_000
    with pytest.raises(FileNotFoundError):
        files.read_regular(tmp_path / "missing")


def test_read_regular_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    """A FIFO (no writer: a plain open would block for ever) or a directory is refused."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(files.NotRegularFile, match="a FIFO, not a regular file"):
        finishes(lambda: files.read_regular(fifo))
    with pytest.raises(files.NotRegularFile, match="a directory"):
        files.read_regular(tmp_path)


def test_open_append_refuses_symlinks_fifos_and_devices(tmp_path: Path) -> None:
    """A symlink (even to a regular file), a FIFO with or without a reader, a directory, a
    character device and a socket are refused, never blocking; a new file is created."""
    target = tmp_path / "target.log"
    target.write_text("")
    (tmp_path / "link.log").symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    cases = {
        tmp_path / "link.log": "a symlink",
        fifo: "a FIFO",
        tmp_path: "a directory",
        Path("/dev/null"): "a character device",
        tmp_path / "sock": "a socket",
    }
    for path, kind in cases.items():
        assert files.problem(path) == kind
        with pytest.raises(files.NotRegularFile, match=f"{kind}, not a regular file"):
            finishes(lambda path=path: files.open_append(path))  # type: ignore[misc]
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader: the open would succeed
    try:
        with pytest.raises(files.NotRegularFile, match="a FIFO"):
            finishes(lambda: files.open_append(fifo))
    finally:
        os.close(reader)
        sock.close()
    assert target.read_text() == ""
    fd = files.open_append(tmp_path / "new.log")
    os.write(fd, b"line\n")
    os.close(fd)
    assert (tmp_path / "new.log").read_text() == "line\n"
    assert files.problem(tmp_path / "new.log") is None
    assert files.problem(tmp_path / "missing.log") is None


# -- a real perfd ---------------------------------------------------------------------------


def log_config(path: Path, level: str = "info") -> str:
    return f'[log]\nlevel = "{level}"\nfile = "{path}"\n[monitor]\ninterval = "200ms"\n'


@pytest.mark.parametrize("kind", ["FIFO", "symlink"])
def test_a_log_file_that_is_a_fifo_or_symlink_is_refused_at_start(
    start_perfd: StartPerfd, tmp_path: Path, kind: str
) -> None:
    """[log] file a FIFO (which would freeze perfd when opened) or a symlink: perfd exits 1 at
    once naming the key, the path and its kind; nothing is written through the link."""
    path = tmp_path / "perfd.log.json"
    target = tmp_path / "elsewhere"
    if kind == "FIFO":
        os.mkfifo(path)
    else:
        target.write_text("")
        path.symlink_to(target)
    perfd = start_perfd(log_config(path), wait_ready=False)
    assert perfd.proc.wait(20) == 1
    said = perfd.log_path.read_text()
    expected = "a FIFO" if kind == "FIFO" else "a symlink"
    assert f"log.file: {path} is {expected}, not a regular file" in said
    assert not perfd.runtime_dir.exists()  # refused before anything was bound
    if kind == "symlink":
        assert target.read_text() == ""


def test_a_log_file_turned_fifo_is_refused_at_reload(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """A reload whose [log] file is now a FIFO answers config_invalid and keeps the old config
    (its log file still written); perfd keeps answering."""
    good = tmp_path / "good.log"
    perfd = start_perfd(log_config(good))
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    perfd.config_path.write_text(log_config(fifo, "debug"))
    out = finishes(lambda: perfd.ctl("reload"), 30)
    assert out.returncode == 1
    assert f"log.file: {fifo} is a FIFO, not a regular file" in out.stderr
    assert "the previous config stays" in out.stderr
    assert perfd.ctl("ping").returncode == 0
    invalid = [e for e in perfd.logs() if e["event"] == "config.invalid"]
    assert invalid[0]["key"] == "log.file"
    assert '"config.invalid"' in good.read_text()  # the old log file is still in use


def test_a_log_file_replaced_by_a_symlink_is_not_followed(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """The log file swapped for a symlink while perfd runs: perfd reports log.file_failed and
    writes nothing through the link; it keeps serving."""
    path = tmp_path / "perfd.log.json"
    perfd = start_perfd(log_config(path))
    victim = tmp_path / "victim"
    victim.write_text("")
    path.unlink()
    path.symlink_to(victim)
    for _ in range(3):
        assert perfd.ctl("reload").returncode == 1  # also refused: [log] file is a symlink
    deadline = time.monotonic() + 10
    while "log.file_failed" not in perfd.events() and time.monotonic() < deadline:
        time.sleep(0.1)
    failed = perfd.log_entry("log.file_failed")
    assert failed["error"] == "a symlink, not a regular file"
    assert victim.read_text() == ""
    assert perfd.ctl("ping").returncode == 0


def watchdog_times(perfd: Perfd, seconds: float) -> list[float]:
    """When each WATCHDOG=1 arrived over the next ``seconds``."""
    times = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = perfd.notify.receive(left)
        except TimeoutError:
            break
        if "WATCHDOG=1" in message:
            times.append(time.monotonic())
    return times


def test_config_replaced_by_a_fifo_and_sighup_does_not_block(start_perfd: StartPerfd) -> None:
    """The config file swapped for a FIFO, then SIGHUP: the reload is refused at once with a
    clear config.invalid, perfd keeps its old config and answers ping within 0.5 s, and the
    watchdog is fed without a gap."""
    perfd = start_perfd('[monitor]\ninterval = "200ms"\n', env={"WATCHDOG_USEC": "1000000"})
    perfd.notify.wait_for("WATCHDOG=1")
    perfd.config_path.unlink()
    os.mkfifo(perfd.config_path)
    perfd.proc.send_signal(signal.SIGHUP)
    beats = watchdog_times(perfd, 3.0)
    assert any(m.startswith("RELOADING=1") for m in perfd.notify.messages)
    assert len(beats) >= 4
    assert max(b - a for a, b in itertools.pairwise(beats)) < 1.0  # fed every 0.5 s
    with perfctl.Client(runtime_dir=perfd.runtime_dir, timeout=5, retries=0) as client:
        for _ in range(3):
            started = time.monotonic()
            client.ping()
            assert time.monotonic() - started < 0.5
        assert client.stats()["interval_s"] == 0.2  # the old config still holds
    invalid = perfd.log_entry("config.invalid")
    assert "is a FIFO, not a regular file" in invalid["error"]
    assert invalid["action"] == "keeping the previous config"
