"""Shared fixtures: a real perfd subprocess, a socket playing systemd, the real perfctl."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog

if TYPE_CHECKING:
    from tests.fakenvml import NvmlControl

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent  # the repository: tests.launcher's package


def command(name: str) -> list[str]:
    """The installed console script, or ``python -m name`` when it is not on disk."""
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "NO_COLOR"}
        and not k.startswith("PERFD_")
    }
    env.update(extra)
    return env


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (AF_UNIX socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class NotifySocket:
    """An AF_UNIX datagram socket playing systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def receive(self, timeout: float = 10.0) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        """Receive messages until one contains ``needle``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} in {self.messages}")
            message = self.receive(left)
            if needle in message:
                return message

    def close(self) -> None:
        self.sock.close()


@dataclass
class Perfd:
    """A running perfd subprocess and what the tests need to talk to it."""

    proc: subprocess.Popen[bytes]
    runtime_dir: Path
    config_path: Path
    log_path: Path
    notify: NotifySocket
    env: dict[str, str] = field(default_factory=dict)

    @property
    def admin_socket(self) -> Path:
        return self.runtime_dir / "perfd.sock"

    @property
    def readonly_socket(self) -> Path:
        return self.runtime_dir / "perfd-ro.sock"

    def ctl(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run the real perfctl executable against this perfd."""
        env = clean_env(PERFD_RUNTIME_DIR=str(self.runtime_dir))
        return subprocess.run(
            [*command("perfctl"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self) -> list[str]:
        return [entry["event"] for entry in self.logs()]

    def log_entry(self, event: str) -> dict[str, Any]:
        """The first ``event`` perfd logged (call after a sync point: READY=1 or a reply)."""
        for entry in self.logs():
            if entry["event"] == event:
                return entry
        raise AssertionError(f"perfd never logged {event}: {self.events()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


StartPerfd = Callable[..., Perfd]


def _file_limit(nofile: int | tuple[int, int]) -> Callable[[], None]:
    """A preexec_fn setting the child's RLIMIT_NOFILE (soft, hard); an int is both."""
    limits = nofile if isinstance(nofile, tuple) else (nofile, nofile)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    return limit


@pytest.fixture
def start_perfd(short_dir: Path, tmp_path: Path) -> Iterator[StartPerfd]:
    """Start real perfd processes; each is READY (its sockets bound) when returned."""
    started: list[Perfd] = []

    def start(
        config_text: str = "",
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        runtime_dir: Path | None = None,
        nofile: int | tuple[int, int] | None = None,
        nvml: NvmlControl | None = None,
    ) -> Perfd:
        """``nofile``: run perfd with this RLIMIT_NOFILE: soft = hard = N (the unit's limit,
        which perfd cannot raise), or (soft, hard). ``nvml``: start it through tests/launcher.py
        with a ControlledNvml reading that control file (tests/fakenvml.py)."""
        index = len(started)
        rundir = runtime_dir or short_dir / f"run{index}"
        config_path = tmp_path / f"perfd{index}.toml"
        config_path.write_text(config_text)
        notify = NotifySocket(short_dir / f"notify{index}")
        log_path = tmp_path / f"perfd{index}.log"
        full_env = clean_env(NOTIFY_SOCKET=str(notify.path), **(env or {}))
        program = command("perfd")
        if nvml is not None:
            full_env.setdefault("PYTHONPATH", str(ROOT))
            launcher = [sys.executable, "-m", "tests.launcher", "--nvml-control", str(nvml.path)]
            program = [*launcher, "--"]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [
                    *program,
                    "--config",
                    str(config_path),
                    "--runtime-dir",
                    str(rundir),
                    *args,
                ],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # setrlimit only, between fork and exec: nothing that takes a lock
                preexec_fn=None if nofile is None else _file_limit(nofile),  # noqa: PLW1509
            )
        perfd = Perfd(proc, rundir, config_path, log_path, notify, full_env)
        started.append(perfd)
        if wait_ready:
            try:
                notify.wait_for("READY=1")
            except (AssertionError, TimeoutError):
                proc.kill()
                raise AssertionError(f"perfd not ready: {log_path.read_text()}") from None
        return perfd

    yield start
    for perfd in started:
        if perfd.proc.poll() is None:
            perfd.proc.kill()
            perfd.proc.wait(10)
        perfd.notify.close()


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The quick loop's rule: a test that starts a real perfd (``start_perfd``, directly or
    through a fixture) is slow, unless it is marked ``smoke``: a few such tests keep the daemon,
    its sockets and perfctl in ``pytest -m "not slow"``. tests/test_quick_loop.py checks that
    the quick tests still import every module."""
    for item in items:
        if "start_perfd" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "smoke"
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Tests that configure perfd's logging must not leak it into the next test."""
    yield
    structlog.reset_defaults()
    with contextlib.suppress(Exception):
        from perfd import log

        log.configure()
