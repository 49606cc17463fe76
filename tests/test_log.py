"""Logging: JSON lines with fixed leading keys, levels, redaction, journald, logrotate."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from perfd import log


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_shape() -> None:
    """ts (RFC 3339 UTC), level, event, logger come first, then the fields."""
    out = io.StringIO()
    log.configure(stream=out)
    log.get("perfd.test").info("thing.happened", count=3)
    (entry,) = _lines(out)
    assert list(entry) == ["ts", "level", "event", "logger", "count"]
    assert entry["level"] == "info"
    assert entry["event"] == "thing.happened"
    assert entry["logger"] == "perfd.test"
    assert str(entry["ts"]).endswith("Z")
    assert str(entry["ts"])[10] == "T"


def test_level_threshold_and_reconfigure() -> None:
    """Events below the level are dropped; reconfiguring changes it for existing loggers."""
    out = io.StringIO()
    log.configure("warning", stream=out)
    logger = log.get("perfd.test")
    logger.info("quiet")
    logger.warning("loud")
    assert [e["event"] for e in _lines(out)] == ["loud"]
    log.configure("debug", stream=out)
    logger.debug("now.visible")
    assert [e["event"] for e in _lines(out)] == ["loud", "now.visible"]


@pytest.mark.parametrize("key", ["api_key", "token", "password", "Authorization", "client_secret"])
def test_secrets_are_redacted(key: str) -> None:
    """Values of secret-looking keys never reach the log."""
    out = io.StringIO()
    log.configure(stream=out)
    log.get("t").info("x", **{key: "hunter2"})
    assert "hunter2" not in out.getvalue()
    assert _lines(out)[0][key] == log.REDACTED


def test_exception_is_logged_with_traceback() -> None:
    """log.exception() records the error level and the traceback."""
    out = io.StringIO()
    log.configure(stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        log.get("t").exception("it.failed")
    (entry,) = _lines(out)
    assert entry["level"] == "error"
    assert "ValueError: boom" in str(entry["exception"])


def test_console_format() -> None:
    """--log-format console writes one readable line per event."""
    out = io.StringIO()
    log.configure(fmt="console", stream=out)
    log.get("t").warning("disk.low", free="1G")
    line = out.getvalue()
    assert "WARNING" in line
    assert "disk.low" in line
    assert "free='1G'" in line


def test_journald_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When JOURNAL_STREAM names our stdout, lines start with the syslog priority."""
    path = tmp_path / "journal"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        log.configure("debug", stream=stream)
        logger = log.get("t")
        logger.debug("d")
        logger.info("i")
        logger.warning("w")
        logger.error("e")
        logger.critical("c")
    prefixes = [line[:3] for line in path.read_text().splitlines()]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>"]


def test_journal_stream_for_another_file_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JOURNAL_STREAM inherited from a parent (not our stdout) adds no prefix."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    out = io.StringIO()
    log.configure(stream=out)
    log.get("t").info("x")
    assert out.getvalue().startswith("{")


def test_log_file_survives_logrotate(tmp_path: Path) -> None:
    """After the file is moved away (logrotate), perfd reopens the path and keeps writing."""
    path = tmp_path / "perfd.log"
    log.configure(file=str(path), stream=io.StringIO())
    logger = log.get("t")
    logger.info("before")
    path.rename(tmp_path / "perfd.log.1")
    logger.info("after")
    assert json.loads((tmp_path / "perfd.log.1").read_text())["event"] == "before"
    assert json.loads(path.read_text())["event"] == "after"


def test_unwritable_log_file_is_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log file that cannot be written is reported once on stdout; stdout logging goes on."""
    out = io.StringIO()
    path = tmp_path / "no" / "dir" / "perfd.log"
    log.configure(file=str(path), stream=out)
    logger = log.get("t")
    logger.info("one")
    logger.info("two")
    lines = _lines(out)
    assert [e["event"] for e in lines] == ["one", "log.file_failed", "two"]
    assert (lines[1]["file"], lines[1]["errno"]) == (str(path), "ENOENT")
    assert capsys.readouterr().err == ""


def test_log_file_is_json_whatever_stdout_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log file gets plain JSON lines even with console format or journald prefixes."""
    path = tmp_path / "perfd.log"
    stdout = tmp_path / "stdout"
    with stdout.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        log.configure(fmt="console", file=str(path), stream=stream)
        log.get("t").warning("x.y", n=1)
    assert stdout.read_text().startswith("<4>")
    assert json.loads(path.read_text())["event"] == "x.y"


def test_nan_and_infinity_are_strict_json() -> None:
    """A NaN or infinite field (a bad config value) is written as a string: strict JSON."""
    out = io.StringIO()
    log.configure(stream=out)
    log.get("t").error("config.invalid", value=float("nan"), limits=[float("inf"), 1.5])
    line = out.getvalue().strip()
    entry = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in {line}"))
    assert (entry["value"], entry["limits"]) == ("nan", ["inf", 1.5])


def test_a_line_written_through_a_replaced_file_leaks_no_descriptor(tmp_path: Path) -> None:
    """A thread still holding the old log file when a reload switches files writes its line
    there, and no descriptor stays open on the old file."""
    old_path, new_path = tmp_path / "a.log", tmp_path / "b.log"
    log.configure(file=str(old_path), stream=io.StringIO())
    log.get("t").info("first")
    old = log._sink  # what a worker thread looked up before the reload
    log.configure(file=str(new_path), stream=io.StringIO())
    old.write('{"late": true}', '{"late": true}')
    assert old_path.read_text().splitlines()[-1] == '{"late": true}'
    fds = os.listdir("/proc/self/fd")
    assert not any(os.path.realpath(f"/proc/self/fd/{fd}") == str(old_path) for fd in fds)


def test_one_event_is_one_line_whatever_the_text() -> None:
    """A field holding U+2028, U+2029 or U+0085 (line ends to str.splitlines) stays one
    line, and the JSON still reads back to the same text."""
    out = io.StringIO()
    log.configure(stream=out)
    name = "a\u2028b\u2029c\x85d\ne"
    log.get("t").info("command.admin", model=name)
    assert len(out.getvalue().splitlines()) == 1
    assert json.loads(out.getvalue())["model"] == name


def test_controls_bidi_and_lone_surrogates_are_json_escapes() -> None:
    """DEL, C1 controls (a CSI), bidi overrides, zero-width characters and a lone surrogate in
    a field reach neither stdout nor the file raw: JSON escapes, reading back the same."""
    out = io.StringIO()
    log.configure(stream=out)
    name = "a\x1b[2J\x7f\x9b2J\u202egnp\u2066\u200b\ufeff\ud800z"
    log.get("t").info("command.admin", model=name)
    line = out.getvalue()
    assert line.rstrip("\n").isprintable()
    assert "\\u009b" in line
    assert "\\u202e" in line
    assert json.loads(line)["model"] == name
