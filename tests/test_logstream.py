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


def _drain(stream: io.BufferedReader, into: bytearray) -> None:
    while chunk := stream.read1(1 << 16):
        into.extend(chunk)


# -- a real perfd ---------------------------------------------------------------------------


def test_perfd_with_a_full_stdout_pipe_keeps_answering_and_stops_on_sigterm(
    short_dir: Path, tmp_path: Path
) -> None:
    """perfd's stdout a pipe nobody reads, filled far past its 64 KiB by debug lines: ping is
    still answered within 0.5 s, the watchdog still fed, SIGTERM still ends perfd (exit 0)."""
    config = tmp_path / "perfd.toml"
    config.write_text('[log]\nlevel = "debug"\n[monitor]\ninterval = "200ms"\n')
    notify = NotifySocket(short_dir / "notify")
    runtime = short_dir / "run"
    proc = subprocess.Popen(
        [*command("perfd"), "--config", str(config), "--runtime-dir", str(runtime)],
        env=clean_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000"),
        stdout=subprocess.PIPE,  # never read
        stderr=subprocess.DEVNULL,
    )
    try:
        notify.wait_for("READY=1", timeout=30)
        with perfctl.Client(runtime_dir=runtime, timeout=10, retries=0) as client:
            # Each logs request.rejected at debug (some 370 bytes): 1.4 MiB, past the pipe's
            # 64 KiB and stdout's queue (logstream.MAX_QUEUED_BYTES) too.
            assert logstream.MAX_QUEUED_BYTES < 4000 * 370
            for _ in range(4000):
                with pytest.raises(CommandFailed):
                    client.call("no_such_command_" + "x" * 100)
            for _ in range(5):
                started = time.monotonic()
                assert client.ping()["pid"] == proc.pid
                assert time.monotonic() - started < 0.5
        fed = sum("WATCHDOG=1" in m for m in notify.messages)
        notify.wait_for("WATCHDOG=1", timeout=5)  # still fed after the flood
        assert sum("WATCHDOG=1" in m for m in notify.messages) > fed
        assert proc.stdout is not None
        out = bytearray()
        reader = threading.Thread(target=_drain, args=(proc.stdout, out))
        reader.start()  # someone reads at last: the drop is reported
        deadline = time.monotonic() + 20
        while b'"log.lines_dropped"' not in out and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
        notify.close()
    entries = [json.loads(line) for line in out.decode().splitlines()]
    (dropped,) = [e for e in entries if e["event"] == "log.lines_dropped"]
    assert dropped["dropped"] > 0
    assert entries[-1]["event"] == "daemon.stopped"  # written before exit
