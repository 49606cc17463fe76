"""Config: defaults, strict validation with specific errors, durations, sizes, docs in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from perfd import config, schema
from perfd.errors import ConfigError
from perfd.wire import units

ROOT = Path(__file__).resolve().parent.parent


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file means every default."""
    path = tmp_path / "perfd.toml"
    path.write_text("")
    loaded = config.load(path)
    assert loaded.config == config.Config()
    assert loaded.exists


def test_missing_default_file_means_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No file at the default path: defaults, and the path is still reported."""
    monkeypatch.setattr(config.paths, "default_config_path", lambda: str(tmp_path / "none.toml"))
    loaded = config.load()
    assert loaded.config == config.Config()
    assert not loaded.exists
    assert loaded.path == tmp_path / "none.toml"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """--config naming a missing file is an error naming the file."""
    with pytest.raises(ConfigError, match="file not found") as caught:
        config.load(tmp_path / "absent.toml")
    assert caught.value.path == str(tmp_path / "absent.toml")


def test_values_are_parsed(tmp_path: Path) -> None:
    """Sizes and durations accept units; each value lands in its field."""
    path = tmp_path / "perfd.toml"
    path.write_text(
        'runtime_dir = "/run/x"\n[log]\nlevel = "debug"\nformat = "console"\nfile = "/tmp/l"\n'
        '[server]\nworkers = 8\nmax_message_bytes = "2MiB"\ncommand_timeout = "500ms"\n'
        "shutdown_timeout = 3\n"
    )
    cfg = config.load(path).config
    assert cfg.runtime_dir == "/run/x"
    assert cfg.log == config.LogConfig("debug", "console", "/tmp/l")
    assert cfg.server.max_message_bytes == 2 << 20
    assert cfg.server.command_timeout == 0.5
    assert cfg.server.shutdown_timeout == 3.0


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("typo = 1", "typo", "unknown key"),
        ("[log]\nlevl = 'info'", "log.levl", "allowed: log.level, log.format, log.file"),
        ("[nope]\na = 1", "nope", "unknown key"),
        ("log = 3", "log", "must be a table"),
        ("[log]\nlevel = 'loud'", "log.level", 'one of "debug", "info"'),
        ("[log]\nfile = 5", "log.file", "a string"),
        ("[server]\nworkers = 0", "server.workers", "from 1 to 256"),
        ("[server]\nworkers = '4'", "server.workers", "an integer"),
        ("[server]\nworkers = true", "server.workers", "an integer"),
        ("[server]\nworkers = 2.5", "server.workers", "an integer"),
        ("[server]\nmax_message_bytes = '1 parsec'", "server.max_message_bytes", "a size"),
        ("[server]\nmax_message_bytes = 10", "server.max_message_bytes", "from 1KiB"),
        ("[server]\ncommand_timeout = 'soon'", "server.command_timeout", "a duration"),
        ("[server]\ncommand_timeout = -1", "server.command_timeout", "a duration from"),
        ("[server]\nshutdown_timeout = '1y'", "server.shutdown_timeout", "a duration"),
    ],
)
def test_bad_values_name_file_key_value_allowed(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    """Every bad key or value is a ConfigError naming the file, the key and what is allowed."""
    path = tmp_path / "perfd.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    error = caught.value
    assert error.path == str(path)
    assert error.key == key
    assert str(path) in str(error)
    assert key in str(error)
    assert words in str(error)


def test_invalid_toml_names_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    path = tmp_path / "perfd.toml"
    path.write_text("[log\n")
    with pytest.raises(ConfigError, match=r"invalid TOML.*line 1"):
        config.load(path)


def test_unreadable_file(tmp_path: Path) -> None:
    """A directory where the file should be gives a clear error, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path)


def test_binary_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError."""
    path = tmp_path / "perfd.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        (" 7 s ", 7.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    """Durations in seconds or with ms/s/m/h/d units."""
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "ms", True, None, "-1s", [1]])
def test_parse_duration_rejects(text: object) -> None:
    """Anything else is a ValueError."""
    with pytest.raises(ValueError, match="duration"):
        units.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (4096, 4096),
        ("1KiB", 1024),
        ("1KB", 1000),
        ("2MiB", 2 << 20),
        ("1G", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("10", 10),
        ("3TB", 3 * 1000**4),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    """Sizes in bytes or with decimal and binary units."""
    assert units.parse_size(text) == size


def test_changed_keys() -> None:
    """changed_keys lists dotted names of differing settings."""
    old = config.Config()
    new = config.parse({"log": {"level": "debug"}, "server": {"workers": 2}})
    assert config.changed_keys(old, new) == ["log.level", "server.workers"]


def test_to_dict_redacts_secrets() -> None:
    """Fields marked secret are redacted in the config command's output."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class WithSecret:
        api_key: str = schema.option("", "a key", kind="str", secret=True)
        name: str = schema.option("", "a name", kind="str")

    assert schema.to_dict(WithSecret("s3cret", "n")) == {"api_key": "<redacted>", "name": "n"}


def test_docs_config_md_matches_code() -> None:
    """docs/config.md holds exactly the reference generated from the dataclasses."""
    text = (ROOT / "docs" / "config.md").read_text()
    match = re.search(
        r"<!-- BEGIN GENERATED: config.reference_markdown\(\) -->\n(.*)<!-- END GENERATED -->",
        text,
        re.S,
    )
    assert match, "docs/config.md lacks the generated reference markers"
    assert match.group(1).strip() == config.reference_markdown().strip()


def test_every_key_is_documented() -> None:
    """Every setting has documentation and appears in the generated reference."""
    reference = config.reference_markdown()
    for name, spec, _ in schema.leaves(config.Config()):
        assert spec.metadata["doc"], name
        assert f"| `{name.rsplit('.', 1)[-1]}` |" in reference


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_durations_rejected(tmp_path: Path, value: str) -> None:
    """nan and inf are not durations (every range check would pass them)."""
    path = tmp_path / "perfd.toml"
    path.write_text(f"[server]\ncommand_timeout = {value}\n")
    with pytest.raises(ConfigError, match="a duration"):
        config.load(path)


def test_messages_read_well(tmp_path: Path) -> None:
    """Ranges are worded for people: sizes with units, values as TOML."""
    path = tmp_path / "perfd.toml"
    path.write_text("[server]\nmax_message_bytes = 10\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert "bad value 10" in str(caught.value)
    assert "a size from 1KiB to 1GiB" in str(caught.value)
    path.write_text('[log]\nlevel = "loud"\n')
    with pytest.raises(ConfigError, match='bad value "loud"'):
        config.load(path)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[alerts.host_memory]\nwarn = 90\ncrit = 80", "alerts.host_memory.crit", "at least warn"),
        ("[alerts.host_memory]\ncrit = 120", "alerts.host_memory.crit", "at most 100"),
        ("[alerts.gpu_temperature]\nwarn = 95\ncrit = 120", None, None),
        ("[alerts.exhaustion]\nwarn = '5m'\ncrit = '30m'", "alerts.exhaustion.crit", "shorter"),
        ("[alerts.swap]\nfor = 'soon'", "alerts.swap.for", "a duration"),
        ("[alerts.swap]\nfor_ = '1s'", "alerts.swap.for_", "unknown key"),
        ("[alerts.swap]\nenabled = 'yes'", "alerts.swap.enabled", "true or false"),
        ("[alerts.psi]\nwarn = 'high'", "alerts.psi.warn", "a number"),
        ("[monitor]\ntrend_window = '2h'", "monitor.trend_window", "must not exceed history"),
        ("[monitor]\ninterval = '10m'", "monitor.interval", "must not exceed trend_window"),
        ("[monitor]\ngpu = 1", "monitor.gpu", "true or false"),
    ],
)
def test_monitor_and_alert_settings(
    tmp_path: Path, text: str, key: str | None, words: str | None
) -> None:
    """Alert rules check their fields and each other (warn below crit, shorter crit times)."""
    path = tmp_path / "perfd.toml"
    path.write_text(text + "\n")
    if key is None:
        config.load(path)
        return
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_rule_tables_keep_their_own_defaults(tmp_path: Path) -> None:
    """Setting one key of a rule keeps that rule's other defaults (not another rule's)."""
    path = tmp_path / "perfd.toml"
    path.write_text("[alerts.gpu_temperature]\nwarn = 80\n[alerts.host_memory]\nfor = '1m'\n")
    alerts = config.load(path).config.alerts
    assert (alerts.gpu_temperature.warn, alerts.gpu_temperature.crit) == (80.0, 90.0)
    assert alerts.gpu_temperature.for_ == 60.0
    assert (alerts.host_memory.warn, alerts.host_memory.for_) == (80.0, 60.0)
    assert config.to_dict(config.load(path).config)["alerts"]["host_memory"]["for"] == 60.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (30, "30s"), (600, "10m"), (14400, "4h"), (1.5, "1.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations print in the shortest exact unit, and parse back."""
    assert units.format_duration(seconds) == text
    assert units.parse_duration(text) == seconds
