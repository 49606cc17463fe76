"""structlog set-up: one JSON object per line on stdout, journald priorities, a rotating file.

Every line has ``ts`` (RFC 3339, UTC), ``level``, ``event`` (a dotted name such as
``config.reloaded``), ``logger`` and the event's fields. When stdout is the journal
(``$JOURNAL_STREAM`` names it), each line starts with the sd-daemon ``<N>`` priority so that
``journalctl -p warning`` filters by level. Values of secret-looking keys are redacted, and so
are the secret parts of URLs in values and in a logged exception (perfd.redaction).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import os
import sys
import threading
from collections.abc import Iterator, MutableMapping
from typing import IO, Any, Final

import structlog

from perfd import redaction

LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_SYSLOG_PRIORITY: Final = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
REDACTED: Final = redaction.REDACTED


class _State:
    """What configure() sets; read by the processors on every event."""

    threshold = LEVELS["info"]
    console = False
    journald = False


class AppendFile:
    """A file of lines that survives logrotate and a full or unwritable disk.

    Each line goes out in one write() on an O_APPEND descriptor, so it lands whole. The file is
    reopened when its path no longer names the open inode (logrotate moved it). A failure is
    logged once (``log.file_failed``, naming the file, its role ``what`` and the error) and
    perfd carries on, trying again at each line; the next success is logged too
    (``log.file_writable``).
    """

    def __init__(self, path: str, what: str = "log file", *, is_log: bool = False) -> None:
        self.path = path
        self._what = what
        self._is_log = is_log  # perfd's own log file: its failure is logged to stdout only
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self.failed = False
        self._closed = False  # replaced by a reload: a late line is written, nothing kept open

    def write_line(self, line: str) -> bool:
        """Append one line; False when it could not be written."""
        with self._lock:  # reentrant: the log file's "writable again" line comes back here
            try:
                self._reopen_if_moved()
                assert self._fd is not None
                os.write(self._fd, (line + "\n").encode())
                if self._closed:  # a thread that still held this file when it was replaced
                    self._close()
            except OSError as exc:
                self._close()
                if not self.failed:
                    self.failed = True
                    self._report_failure(exc)
                return False
            if self.failed:
                self.failed = False
                get("perfd.log").info("log.file_writable", file=self.path, what=self._what)
            return True

    def _report_failure(self, error: OSError) -> None:
        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        fields = {"file": self.path, "what": self._what, "error": error.strerror, "errno": code}
        with _stdout_only(self._is_log):  # not into the file that just failed
            get("perfd.log").error("log.file_failed", **fields, action="going on without it")

    def _reopen_if_moved(self) -> None:
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:  # missing, or a path through a non-directory: open() says which
            current = None
        if self._fd is None or current != self._inode:
            self._close()
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o640)
            st = os.fstat(self._fd)
            self._inode = (st.st_dev, st.st_ino)

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._inode = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close()


_local = threading.local()  # stdout_only: this thread is reporting a file's failure


@contextlib.contextmanager
def _stdout_only(on: bool = True) -> Iterator[None]:
    """Log lines written meanwhile by this thread skip the log file (stdout only)."""
    before = getattr(_local, "stdout_only", False)
    _local.stdout_only = on or before
    try:
        yield
    finally:
        _local.stdout_only = before


class Sink:
    """Writes rendered lines to stdout and, optionally, to an AppendFile."""

    def __init__(
        self, stream: IO[str] | None = None, path: str = "", file: AppendFile | None = None
    ) -> None:
        self._stream = stream
        self.file = file or (AppendFile(path, is_log=True) if path else None)
        self._lock = threading.Lock()

    def write(self, line: str, file_line: str | None = None) -> None:
        """Write ``line`` to stdout and ``file_line`` (default: ``line``) to the file."""
        with self._lock:
            stream = self._stream or sys.stdout
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed (journald restarted): nothing better to do
        if self.file is not None and not getattr(_local, "stdout_only", False):
            self.file.write_line(line if file_line is None else file_line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _SinkLogger:
    """The structlog logger: writes each rendered line to the current sink.

    Looking the sink up at each call lets cached loggers follow a reload to a new file.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, line: str, file_line: str) -> None:
        _sink.write(line, file_line)

    debug = info = warning = error = critical = exception = msg


_sink = Sink()


def _filter(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    level = "warning" if method == "warn" else method
    if level == "exception":
        level = "error"
    if LEVELS.get(level, 20) < _State.threshold:
        raise structlog.DropEvent
    event["level"] = level
    return event


def is_secret_key(key: str) -> bool:
    return redaction.is_secret_name(key)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if event.get("exc_info") and sys.exc_info()[0] is not None:
        import traceback  # here, not in render: the traceback's URLs are redacted too

        event.pop("exc_info")
        event["exception"] = traceback.format_exc(limit=20)
    return redaction.redact_event(dict(event))


def _timestamp() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Characters str.splitlines() (and some log viewers) take as line ends, which json.dumps with
# ensure_ascii=False leaves raw: escaped, so that one event is always one line whatever a
# client put in a model name.
_LINE_BREAKS: Final = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _finite(value: Any) -> Any:
    """``value`` with each NaN or infinity as a string ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render(
    logger: Any, __: str, event: MutableMapping[str, Any]
) -> tuple[tuple[str, str], dict[str, Any]]:
    """Render the stdout line (JSON or console, maybe <N>-prefixed) and the file's JSON line."""
    level = event.pop("level", "info")
    head = {"ts": _timestamp(), "level": level, "event": event.pop("event", "")}
    head["logger"] = getattr(logger, "name", "perfd")
    if "exc_info" in event:
        event.pop("exc_info")
        if sys.exc_info()[0] is not None:
            import traceback

            event["exception"] = traceback.format_exc(limit=20)
    if _State.console:
        fields = " ".join(f"{k}={v!r}" for k, v in event.items())
        line = f"{head['ts']} {level.upper():8} {head['event']:28} {fields}".rstrip()
    head.update(event)
    try:
        json_line = json.dumps(head, default=str, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity (a config value, a sample): strict JSON has neither
        json_line = json.dumps(_finite(head), default=str, ensure_ascii=False)
    json_line = json_line.translate(_LINE_BREAKS)
    if not _State.console:
        line = json_line
    if _State.journald:
        line = f"<{_SYSLOG_PRIORITY.get(level, 6)}>{line}"
    # structlog calls the logger method with these positional arguments.
    return (line, json_line), {}


def stdout_is_journal(stream: IO[str] | None = None) -> bool:
    """True when $JOURNAL_STREAM names our stdout (systemd connected it to journald)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat((stream or sys.stdout).fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure(
    level: str = "info", fmt: str = "json", file: str = "", stream: IO[str] | None = None
) -> None:
    """(Re)configure logging; safe to call again on reload."""
    global _sink
    _State.threshold = LEVELS[level]
    _State.console = fmt == "console"
    _State.journald = stdout_is_journal(stream)
    # The same file keeps its AppendFile, so a reload neither reopens it nor reports a
    # failing file again.
    old = _sink
    same = old.file if old.file is not None and old.file.path == file else None
    _sink = Sink(stream, file, same)
    if same is None:
        old.close()
    structlog.configure(
        processors=[_filter, redact, render],
        logger_factory=lambda *args: _SinkLogger(args[0] if args else "perfd"),
        # Loggers are assembled per call, so a logger used before configure() (tests, import
        # time) still follows the configuration; perfd logs little enough for this to be cheap.
        cache_logger_on_first_use=False,
    )


def enabled(level: str) -> bool:
    """True when events of ``level`` are written: lets a hot path skip building them."""
    return LEVELS[level] >= _State.threshold


def get(name: str) -> Any:
    """A logger whose lines carry ``logger=name``."""
    return structlog.get_logger(name)
