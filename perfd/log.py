"""structlog set-up: one JSON object per line on stdout, journald priorities, a rotating file.

Every line has ``ts`` (RFC 3339, UTC), ``level``, ``event`` (a dotted name such as
``config.reloaded``), ``logger`` and the event's fields. When stdout is the journal
(``$JOURNAL_STREAM`` names it), each line starts with the sd-daemon ``<N>`` priority so that
``journalctl -p warning`` filters by level. Values of secret-looking keys are redacted, and so
are the secret parts of URLs in values and in a logged exception (perfd.redaction).

Logging never blocks the caller: stdout, when it can block (a pipe, the journal's socket, a
terminal), is written by a thread of its own through a bounded queue (perfd.logstream), and
the log file must be a regular file, opened without following a symlink and without blocking
(perfd.files): a FIFO, a symlink or a device at its path is refused.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import errno
import json
import math
import os
import re
import sys
import threading
from collections.abc import Iterator, MutableMapping
from typing import IO, TYPE_CHECKING, Any, Final

import structlog

from perfd import files, redaction
from perfd.errors import ConfigError
from perfd.logstream import StreamWriter

if TYPE_CHECKING:
    from perfd.config import LoadedConfig

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
    reopened when its path no longer names the open inode (logrotate moved it), never through
    a symlink and never blocking: a FIFO, a symlink or a device there is a failure
    (perfd.files.open_append). A failure is logged once (``log.file_failed``, naming the file,
    its role ``what`` and the error) and perfd carries on, trying again at each line; the next
    success is logged too (``log.file_writable``).
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
            st = os.lstat(self.path)  # a symlink put in the file's place is another inode
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:  # missing, or a path through a non-directory: open() says which
            current = None
        if self._fd is None or current != self._inode:
            self._close()
            self._fd = files.open_append(self.path)
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


_writer_lock = threading.Lock()
_writer: StreamWriter | None = None  # stdout's, kept across reloads
EXIT_FLUSH_TIMEOUT: Final = 2.0  # seconds perfd waits at exit for stdout to take its queued lines


def _report_dropped(dropped: int, total: int) -> None:
    get("perfd.log").warning(
        "log.lines_dropped",
        dropped=dropped,
        total=total,
        reason="stdout did not take lines fast enough (nobody reading it?)",
    )


def _stream_writer(stream: IO[str]) -> StreamWriter:
    """The writer of ``stream``: one at a time, replaced when another stream is given."""
    global _writer
    with _writer_lock:
        writer = _writer
        if writer is None or writer.stream is not stream:
            if writer is not None:
                writer.close()
            if _writer is None:  # every way out writes the last lines (a start failure too)
                atexit.register(flush, EXIT_FLUSH_TIMEOUT)
            writer = _writer = StreamWriter(stream, _report_dropped)
        return writer


def flush(timeout: float = 2.0) -> bool:
    """Wait up to ``timeout`` seconds for stdout's queued lines (at exit); True when written."""
    writer = _writer
    return True if writer is None else writer.flush(timeout)


class LineSink:
    """Writes rendered lines to stdout (never blocking: StreamWriter) and, optionally, to an
    AppendFile."""

    def __init__(
        self, stream: IO[str] | None = None, path: str = "", file: AppendFile | None = None
    ) -> None:
        self._stream = stream
        self.file = file or (AppendFile(path, is_log=True) if path else None)

    def write(self, line: str, file_line: str | None = None) -> None:
        """Write ``line`` to stdout and ``file_line`` (default: ``line``) to the file."""
        stream = self._stream or sys.stdout
        if stream is not None:  # None: perfd was started with stdout closed
            _stream_writer(stream).write(line)
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


_sink = LineSink()


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


# What json.dumps with ensure_ascii=False leaves raw but must not reach a log line: DEL and the
# C1 controls (U+0085 and U+2028/U+2029 are line ends to str.splitlines() and some log
# viewers; U+009B is a CSI to some terminals), bidi and zero-width format characters
# (U+202E reverses what follows on `journalctl` or `tail -f`), and lone surrogates (which
# cannot be encoded at all). Written as JSON escapes: one event is always one line, safe on a
# terminal, whatever a client put in a model name, and the JSON still reads back the same.
_UNSAFE_JSON: Final = re.compile(
    "[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


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
    json_line = _UNSAFE_JSON.sub(_json_escape, json_line)
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
    _sink = LineSink(stream, file, same)
    if same is None:
        old.close()
    structlog.configure(
        processors=[_filter, redact, render],
        logger_factory=lambda *args: _SinkLogger(args[0] if args else "perfd"),
        # Loggers are assembled per call, so a logger used before configure() (tests, import
        # time) still follows the configuration; perfd logs little enough for this to be cheap.
        cache_logger_on_first_use=False,
    )


def check_files(loaded: LoadedConfig) -> None:
    """ConfigError when ``[log] file`` or ``[alerts] log_file`` names something other than a
    regular file (a FIFO, a symlink, a directory, a device): at start and at reload, before
    anything is opened. A missing file is fine (it is created); opening it later is safe too."""
    cfg = loaded.config
    for key, path in (("log.file", cfg.log.file), ("alerts.log_file", cfg.alerts.log_file)):
        kind = files.problem(path) if path else None
        if kind is not None:
            raise ConfigError(
                str(loaded.path),
                key,
                f"{path} is {kind}, not a regular file",
                value=path,
                allowed='the path of a regular file (or a new one), or "" for none',
            )


def enabled(level: str) -> bool:
    """True when events of ``level`` are written: lets a hot path skip building them."""
    return LEVELS[level] >= _State.threshold


def get(name: str) -> Any:
    """A logger whose lines carry ``logger=name``."""
    return structlog.get_logger(name)
