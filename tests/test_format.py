"""perfctl's human output: pure functions of the reply's result."""

from __future__ import annotations

from perfctl import format as fmt

STATUS = {
    "version": "0.1.0",
    "pid": 4242,
    "uptime_s": 3725.2,
    "config_path": "/etc/perfd/perfd.toml",
    "config_file_present": False,
    "runtime_dir": "/run/perfd",
    "components": {"server": "started", "workers": "not_started"},
    "requests": {"total": 12, "errors": 1, "dropped": 0},
}


def test_duration() -> None:
    """Durations read as 45s, 3m 12s, 2h 05m, 3d 4h."""
    assert [fmt.duration(s) for s in (45, 192, 7500, 273600)] == [
        "45s",
        "3m 12s",
        "2h 05m",
        "3d 4h",
    ]


def test_status_is_aligned_text() -> None:
    """The status screen is a headline plus aligned rows, without colour by default."""
    text = fmt.format_status(STATUS)
    lines = text.splitlines()
    assert lines[0] == "perfd 0.1.0 · running · pid 4242 · up 1h 02m"
    values = [line.index("/") for line in lines[1:3]]
    assert values[0] == values[1]
    assert "(no file: defaults)" in text
    assert "\033[" not in text


def test_colour_only_when_asked() -> None:
    """Colour codes appear only with a colour Style."""
    assert "\033[32m" in fmt.format_status(STATUS, fmt.Style(colour=True))


def test_config_is_toml() -> None:
    """The config output parses back as TOML with the same values."""
    import tomllib

    result = {
        "path": "/etc/perfd/perfd.toml",
        "file_present": True,
        "config": {"runtime_dir": "", "log": {"level": "info"}, "server": {"workers": 4}},
    }
    assert tomllib.loads(fmt.format_config(result)) == result["config"]


def test_reload_mentions_restart() -> None:
    """Reload output lists changed keys and those that need a restart."""
    text = fmt.format_reload(
        {
            "path": "/p",
            "changed": ["log.level", "server.workers"],
            "restart_required": ["server.workers"],
        }
    )
    assert "log.level, server.workers" in text
    assert "restart perfd to apply: server.workers" in text
    assert "nothing changed" in fmt.format_reload(
        {"path": "/p", "changed": [], "restart_required": []}
    )


def test_ping() -> None:
    """Ping shows the version, pid and round trip."""
    assert fmt.format_ping({"version": "0.1.0", "pid": 7}, elapsed_ms=0.5) == (
        "pong from perfd 0.1.0 (pid 7) in 0.50 ms"
    )
