"""What every benchmark shares: interpreters, clean environments, a perfd under a fake systemd,
process clean-up, statistics, tables and the summary's checks.

Only the standard library is imported here, so helper processes stay cheap to start.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
_VENV_BIN = ROOT / ".venv" / "bin"
# The project's venv when there is one, else whatever runs the bench (kept unresolved: a venv's
# python is a symlink, and resolving it would leave the venv).
BIN = _VENV_BIN if (_VENV_BIN / "python").exists() else Path(sys.executable).parent
PYTHON = str(BIN / "python") if (BIN / "python").exists() else sys.executable

# Variables that would change what a child process does (systemd's, perfd's, Python's own).
_DROPPED_PREFIXES = ("PERFD_", "PYTHON", "WATCHDOG_")
_DROPPED_KEYS = frozenset({"NOTIFY_SOCKET", "JOURNAL_STREAM", "NO_COLOR", "LISTEN_FDS"})


def console_script(name: str) -> list[str]:
    """The venv's console script ``name``, or ``python -m name`` when it is not installed."""
    script = BIN / name
    return [str(script)] if script.exists() else [PYTHON, "-m", name]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without systemd/perfd/Python settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _DROPPED_KEYS and not key.startswith(_DROPPED_PREFIXES)
    }
    env.update(extra)
    return env


def helper_env(**extra: str) -> dict[str, str]:
    """The environment for the bench's own helper processes (``python -m bench.x``)."""
    return clean_env(PYTHONPATH=str(ROOT), **extra)


@contextlib.contextmanager
def short_tempdir(prefix: str = "pdb-") -> Iterator[Path]:
    """A temp directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_exit(proc: subprocess.Popen[Any], timeout: float) -> int | None:
    """Wait up to ``timeout`` s for a child to exit and reap it; its exit code, or None.

    Waits on a pidfd, so the exit is seen at once: Popen.wait(timeout) polls with growing
    sleeps (0.5 ms doubling up to 50 ms), which would round every timing up to its next poll.
    """
    if proc.returncode is not None:
        return proc.returncode
    if hasattr(os, "pidfd_open"):
        fd = os.pidfd_open(proc.pid)  # the child is not reaped yet, so its pid is still ours
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        return proc.wait() if ready else None
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """SIGTERM a child (if it still runs) and reap it; SIGKILL it if it will not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = wait_exit(proc, timeout)
    if code is None:
        proc.kill()
        code = proc.wait(timeout)
    return code


def run_timed(cmd: Sequence[str], *, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd`` to completion; its wall time (spawn to reap) and CPU time, in seconds.

    The CPU time is the growth of RUSAGE_CHILDREN, so no other child may end meanwhile.
    Output goes to a temp file (a pipe that fills up would stall the child).
    """
    with tempfile.TemporaryFile() as output:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        code = wait_exit(proc, 60.0)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code is None:
            stop_process(proc)
            raise RuntimeError(f"{' '.join(cmd)} did not finish within 60 s")
        if code != 0:
            output.seek(0)
            text = output.read().decode(errors="replace").strip()
            raise RuntimeError(f"{' '.join(cmd)} exited {code}: {text[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used, all threads, in seconds.

    Sums each thread's /proc/PID/task/TID/schedstat (nanoseconds) where the kernel has it,
    else reads utime + stime from /proc/PID/stat (clock ticks, usually 10 ms).
    """
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # the thread ended meanwhile
                total_ns += int((task / "schedstat").read_text().split()[0])
    except FileNotFoundError:
        pass
    else:
        if total_ns:
            return total_ns / 1e9
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3, state
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_echo(endpoint: str, cwd: Path) -> subprocess.Popen[str]:
    """Start ``bench.echo`` (a bare pyzmq ROUTER echo server) on ``endpoint``; once it is bound."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.echo", endpoint],
        env=helper_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":  # "" if it died
            raise RuntimeError(f"echo server did not start (exit {proc.poll()})")
    except BaseException:
        stop_process(proc)
        raise
    return proc


@contextlib.contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """perfd's log lines (warnings and up, JSON) go to a buffer instead of the bench's output
    while in-process benchmarks run perfd code; structlog's defaults come back afterwards."""
    import structlog

    from perfd import log

    buffer = io.StringIO()
    log.configure(level="warning", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


# -- systemd's side of sd_notify ---------------------------------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket playing systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float, alive: Any = None) -> str:
        """Receive until a message contains ``needle``; ``alive()`` False aborts the wait."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {needle!r} within {timeout:g}s; got {self.messages}")
            self.sock.settimeout(min(left, 0.1))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                if alive is not None and not alive():
                    raise RuntimeError(f"the sender exited before {needle!r}") from None
                continue
            self.messages.append(message)
            if needle in message:
                return message

    def drain(self) -> list[str]:
        """Take every queued message without waiting; return the new ones."""
        new: list[str] = []
        self.sock.setblocking(False)
        try:
            while True:
                new.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        self.messages.extend(new)
        return new

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class PerfdProcess:
    """A perfd started as systemd would (NOTIFY_SOCKET), in its own temp runtime directory.

    ``workdir`` gets ``run/`` (the sockets), ``notify.sock``, ``perfd.toml`` (``config``, empty
    by default, so the defaults apply whatever /etc or $XDG_CONFIG_HOME hold) and ``perfd.log``
    (its output). ``env`` adds variables to its clean environment (``PYTHONPATH`` for models
    that live in the repository); ``program`` replaces the perfd command (tests/launcher.py
    with its options and ``--``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        watchdog_usec: int | None = None,
        config: str = "",
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.program = program or []  # what runs perfd's arguments (tests/launcher.py ... --)
        self.config = config
        self.extra_env = dict(env or {})
        self.runtime_dir = workdir / "run"
        self.config_path = workdir / "perfd.toml"
        self.log_path = workdir / "perfd.log"
        self.watchdog_usec = watchdog_usec
        self.notify: NotifySocket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def admin_socket(self) -> Path:
        return self.runtime_dir / "perfd.sock"

    def start(self, timeout: float = 30.0) -> float:
        """Spawn perfd and wait for READY=1; the seconds from spawn to READY=1.

        On failure perfd is stopped and reaped before the error is raised.
        """
        self.config_path.write_text(self.config)
        self.notify = NotifySocket(self.workdir / "notify.sock")
        env = clean_env(
            NOTIFY_SOCKET=str(self.notify.path),
            PERFD_RUNTIME_DIR=str(self.runtime_dir),
            **self.extra_env,
        )
        if self.watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        perfd = self.program or console_script("perfd")
        cmd = [*perfd, "--config", str(self.config_path)]
        with self.log_path.open("ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc
        try:
            self.notify.wait_for("READY=1", timeout, alive=lambda: proc.poll() is None)
        except (TimeoutError, RuntimeError) as exc:
            stop_process(proc)
            self.notify.close()
            self.notify = None
            raise RuntimeError(f"perfd did not start ({exc}); its log:\n{self.log()}") from None
        return time.perf_counter() - started

    def stop(self) -> float:
        """SIGTERM perfd and reap it; the seconds it took to exit."""
        started = time.perf_counter()
        try:
            if self.proc is not None:
                code = stop_process(self.proc)
                if code != 0:
                    raise RuntimeError(f"perfd exited {code}; its log:\n{self.log()}")
        finally:
            if self.notify is not None:
                self.notify.close()
                self.notify = None
        return time.perf_counter() - started

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> PerfdProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# -- statistics --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline else None


# -- output ------------------------------------------------------------------------------------


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    print(f"\n== {title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


@dataclass(frozen=True)
class Check:
    """One line of the summary: a figure, its baseline and the target it is held to.

    ``on`` says what the target applies to: the ratio to the baseline or the value itself;
    ``limit`` None makes the line informational. ``paired_ratio``, when given, is the ratio
    (the median of per-round ratios) instead of value / baseline.
    """

    benchmark: str
    figure: str
    unit: str
    value: float
    baseline_name: str
    baseline: float | None
    on: Literal["ratio", "value"] = "ratio"
    op: Literal["<=", ">=", "<"] = "<="
    limit: float | None = None
    paired_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        return None if self.baseline is None else ratio(self.value, self.baseline)

    @property
    def passed(self) -> bool | None:
        if self.limit is None:
            return None
        subject = self.ratio if self.on == "ratio" else self.value
        if subject is None:
            return None
        if self.op == "<=":
            return subject <= self.limit
        if self.op == "<":
            return subject < self.limit
        return subject >= self.limit

    @property
    def target(self) -> str:
        if self.limit is None:
            return "info"
        what = "ratio" if self.on == "ratio" else self.unit
        return f"{what} {self.op} {self.limit:g}"

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "info"}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "verdict": self.verdict,
        }


def fmt(value: float | None, unit: str) -> str:
    """A value with its unit, at a precision that suits the unit."""
    if value is None:
        return "-"
    if unit == "µs" and abs(value) < 10:  # the cache's bookkeeping: a few µs
        return f"{value:.2f} {unit}"
    if unit in ("µs", "req/s"):
        return f"{value:,.0f} {unit}"
    if unit == "MiB":
        return f"{value:.1f} {unit}"
    if unit in ("% of a core", "s"):
        return f"{value:.3f} {unit}"
    if unit == "ms" and abs(value) < 10:  # sub-millisecond figures (infer overhead)
        return f"{value:.3f} {unit}" if abs(value) < 1 else f"{value:.2f} {unit}"
    return f"{value:.1f} {unit}"


def print_summary(checks: Sequence[Check]) -> None:
    rows = [
        (
            f"{c.benchmark}: {c.figure}",
            fmt(c.value, c.unit),
            f"{fmt(c.baseline, c.unit)} ({c.baseline_name})" if c.baseline_name else "-",
            "-" if c.ratio is None else f"{c.ratio:.2f}",
            c.target,
            c.verdict,
        )
        for c in checks
    ]
    print_table("SUMMARY", ["figure", "value", "baseline", "ratio", "target", "result"], rows)
