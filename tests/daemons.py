"""Helpers for tests that run real external servers (Prometheus, Alertmanager) on loopback."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path


def wait_until(check: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> None:
    """Poll ``check`` until it holds (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


@contextlib.contextmanager
def ready_server(argv: list[str], port: int, log: Path, timeout: float = 60) -> Iterator[str]:
    """Run ``argv`` (a Prometheus-family server listening on 127.0.0.1:``port``, its output
    in ``log``), wait until GET /-/ready answers 200, yield its URL, stop it afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(ready, timeout=timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
