"""stdout that never blocks perfd: the queue and its writer thread, and a real perfd whose
stdout is a full pipe nobody reads."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import perfctl
from perfctl.errors import CommandFailed
from perfd import logstream
from tests.conftest import NotifySocket, clean_env, command


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe (read end, write end) whose buffer is the smallest Linux allows (4 KiB)."""
    r, w = os.pipe()
    import fcntl

    fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ
    yield r, w
    for fd in (r, w):
        os.close(fd)


def test_in_memory_streams_and_regular_files_are_written_at_once(tmp_path: Path) -> None:
    """A StringIO or a regular file cannot block: written at once, no thread."""
    out = io.StringIO()
    logstream.StreamWriter(out).write("one")
    assert out.getvalue() == "one\n"
    with (tmp_path / "f").open("w") as file:
        assert not logstream.can_block(file)
        logstream.StreamWriter(file).write("two")
        assert (tmp_path / "f").read_text() == "two\n"


@pytest.mark.slow
def test_a_full_pipe_never_blocks_the_caller_and_drops_are_counted(
    pipe: tuple[int, int],
) -> None:
    """Writes to a pipe nobody reads return at once; past the queue's bound lines are dropped
    and counted; once read again, every queued line arrives and the drop is reported."""
    r, w = pipe
    reports: list[tuple[int, int]] = []
    stream = os.fdopen(os.dup(w), "w")
    writer = logstream.StreamWriter(stream, lambda d, t: reports.append((d, t)), max_bytes=64 << 10)
    assert logstream.can_block(stream)
    started = time.monotonic()
    for i in range(2000):  # 200 KiB: 4 KiB in the pipe, 64 KiB queued, the rest dropped
        writer.write(f"{i:05d} " + "x" * 94)
    assert time.monotonic() - started < 2.0  # no write waited for the reader
    assert 1000 < writer.dropped < 2000
    assert not writer.flush(0.2)  # nobody reads: the queue cannot drain
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(_read_until_quiet(r)))
    reader.start()
    assert writer.flush(10)
    writer.write("after")
    assert writer.flush(10)
    writer.close()
    reader.join(20)
    lines = bytes(got).decode().splitlines()
    assert lines[0].startswith("00000 ")
    assert lines[-1] == "after"
    assert len(lines) == 2001 - writer.dropped
    assert reports == [(writer.dropped, writer.dropped)]
    stream.close()


def _read_until_quiet(fd: int) -> bytes:
    import select

    data = bytearray()
    while select.select([fd], [], [], 2.0)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


class Reader:
    """Reads a pipe on a thread while ``reading`` is set; what it read is in ``data``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.reading = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            if not self.reading.wait(0.05):
                continue
            if select.select([self.fd], [], [], 0.05)[0]:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    return
                self.data.extend(chunk)

    def wait_for(self, needle: bytes, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            assert time.monotonic() < deadline, f"no {needle!r} in what perfd wrote"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def flood(client: perfctl.Client, requests: int = 4000) -> None:
    """Requests that each make perfd log request.rejected at debug (some 370 bytes): 4,000
    are 1.4 MiB, past a pipe's 64 KiB and past stdout's queue (MAX_QUEUED_BYTES) too."""
    assert requests * 370 > logstream.MAX_QUEUED_BYTES
    for _ in range(requests):
        with pytest.raises(CommandFailed):
            client.call("no_such_command_" + "x" * 100)


def ping_times(client: perfctl.Client, pid: int, count: int = 5) -> list[float]:
    times = []
    for _ in range(count):
        started = time.monotonic()
        assert client.ping()["pid"] == pid
        times.append(time.monotonic() - started)
    return times


# -- a real perfd ---------------------------------------------------------------------------


@pytest.mark.slow
def test_perfd_with_a_full_stdout_pipe_keeps_answering_and_stops_on_sigterm(
    short_dir: Path, tmp_path: Path
) -> None:
    """perfd's stdout a pipe nobody reads, filled far past its 64 KiB by debug lines: ping is
    still answered within 0.5 s and the watchdog still fed; once read, the dropped lines are
    reported (log.lines_dropped); filled again and unread, SIGTERM still ends perfd (exit 0)
    promptly."""
    config = tmp_path / "perfd.toml"
    config.write_text('[log]\nlevel = "debug"\n[monitor]\ninterval = "200ms"\n')
    notify = NotifySocket(short_dir / "notify")
    runtime = short_dir / "run"
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [*command("perfd"), "--config", str(config), "--runtime-dir", str(runtime)],
        env=clean_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000"),
        stdout=write_end,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    reader = Reader(read_end)
    try:
        notify.wait_for("READY=1", timeout=30)
        with perfctl.Client(runtime_dir=runtime, timeout=10, retries=0) as client:
            flood(client)
            assert max(ping_times(client, proc.pid)) < 0.5
            fed = sum("WATCHDOG=1" in m for m in notify.messages)
            notify.wait_for("WATCHDOG=1", timeout=5)  # still fed after the flood
            assert sum("WATCHDOG=1" in m for m in notify.messages) > fed

            reader.reading.set()  # someone reads at last: the drop is reported
            reader.wait_for(b'"log.lines_dropped"')
            reader.reading.clear()
            time.sleep(0.2)  # the reader is idle
            flood(client)  # full again, and nobody reads
            assert max(ping_times(client, proc.pid)) < 0.5
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.reading.set()
        reader.close()
        os.close(read_end)
        notify.close()
    entries = [json.loads(line) for line in reader.data.decode().splitlines()]
    dropped = [e for e in entries if e["event"] == "log.lines_dropped"]
    assert dropped[0]["dropped"] > 0
    assert dropped[0]["total"] == dropped[0]["dropped"]
