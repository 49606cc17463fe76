"""perfd's configuration: frozen dataclasses, their defaults, and strict validation.

Each field carries its documentation and its check in ``metadata``; ``parse`` walks the
dataclasses, so an unknown key, a wrong type or an out-of-range value is an error that names
the file, the key, the value and what is allowed. ``reference_markdown`` renders the same
metadata as the table in docs/config.md (a test keeps the two identical).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from perfd import paths
from perfd.errors import ConfigError

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final = ("json", "console")

_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}
_NUMBER_UNIT: Final = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: object) -> float:
    """Seconds from 30, 1.5, "500ms", "5s", "10m", "1h" or "1d"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite duration: {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _DURATION_UNITS:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    raise ValueError(f"not a duration: {value!r}")


def parse_size(value: object) -> int:
    """Bytes from 1048576, "512KiB", "1MiB", "2GB", "4G" (K/M/G/T are binary); ValueError else."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"not a size: {value!r}")


def _opt(
    default: Any,
    doc: str,
    *,
    kind: str,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """A config field: its default, its documentation and how it is checked."""
    meta = {
        "doc": doc,
        "kind": kind,
        "choices": choices,
        "min": minimum,
        "max": maximum,
        "shown": shown,
        "secret": secret,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class LogConfig:
    level: str = _opt(
        "info", "Lowest level written.", kind="choice", choices=LOG_LEVELS, shown='"info"'
    )
    format: str = _opt(
        "json",
        "`json`: one JSON object per line; `console`: for humans. `perfd --log-format` wins.",
        kind="choice",
        choices=LOG_FORMATS,
        shown='"json"',
    )
    file: str = _opt(
        "",
        "Append JSON lines to this file, reopened when logrotate moves it. Empty: stdout only.",
        kind="path",
        shown='""',
    )


@dataclass(frozen=True)
class ServerConfig:
    group: str = _opt(
        "perfd",
        "Group owning the admin socket `perfd.sock` (mode 0660). If it does not exist, the "
        "user's own group is used and a warning is logged.",
        kind="str",
        shown='"perfd"',
    )
    workers: int = _opt(
        4,
        "Threads that run slow commands off the socket thread.",
        kind="int",
        minimum=1,
        maximum=256,
    )
    max_message_bytes: int = _opt(
        1 << 20,
        "Largest request accepted (ZMQ_MAXMSGSIZE); a bigger one drops the sender's connection.",
        kind="size",
        minimum=1024,
        maximum=1 << 30,
        shown='"1MiB"',
    )
    command_timeout: float = _opt(
        60.0,
        "A slow command still running after this gets a `timeout` reply.",
        kind="duration",
        minimum=0.001,
        maximum=86400,
        shown='"60s"',
    )
    shutdown_timeout: float = _opt(
        10.0,
        "On SIGTERM, how long in-flight commands may run before perfd exits anyway.",
        kind="duration",
        minimum=0,
        maximum=300,
        shown='"10s"',
    )


@dataclass(frozen=True)
class Config:
    runtime_dir: str = _opt(
        "",
        "Directory for the sockets. Empty: `$RUNTIME_DIRECTORY` under systemd, else "
        "`/run/perfd` for root, else `$XDG_RUNTIME_DIR/perfd`. `$PERFD_RUNTIME_DIR` and "
        "`perfd --runtime-dir` win.",
        kind="path",
        shown='""',
    )
    log: LogConfig = field(default_factory=LogConfig, metadata={"doc": "Logging."})
    server: ServerConfig = field(
        default_factory=ServerConfig, metadata={"doc": "The control sockets."}
    )


# Settings that only take effect at start; a reload that changes them logs a warning.
RESTART_ONLY: Final = frozenset(
    {"runtime_dir", "server.group", "server.workers", "server.max_message_bytes"}
)


@dataclass(frozen=True)
class Loaded:
    """A validated config and where it came from (``exists`` is False when defaults were used)."""

    config: Config
    path: Path
    exists: bool


def load(path: str | Path | None = None) -> Loaded:
    """Read and validate the config file; an explicit path must exist, the default may not."""
    explicit = path is not None
    file = Path(path if path is not None else paths.default_config_path())
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(str(file), None, "file not found") from None
        return Loaded(Config(), file, exists=False)
    except OSError as exc:
        raise ConfigError(str(file), None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode())
    except UnicodeDecodeError:
        raise ConfigError(str(file), None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), None, f"invalid TOML: {exc}") from None
    return Loaded(parse(data, str(file)), file, exists=True)


def parse(data: Mapping[str, Any], path: str | None = None) -> Config:
    """Validate a parsed TOML document into a Config; raise ConfigError on the first problem."""
    parsed: Config = _parse_section(Config, data, path, prefix="")
    return parsed


def _parse_section(cls: type[Any], data: Mapping[str, Any], path: str | None, prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(
            path,
            key,
            "unknown key",
            value=data[unknown[0]],
            allowed=", ".join(prefix + name for name in fields),
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = fields[name]
        key = prefix + name
        if dataclasses.is_dataclass(spec.default_factory):
            if not isinstance(value, dict):
                raise ConfigError(path, key, f"must be a table [{key}], got {_shown(value)}")
            values[name] = _parse_section(spec.default_factory, value, path, prefix=key + ".")
        else:
            values[name] = _check(spec.metadata, value, path, key)
    return cls(**values)


def _check(meta: Mapping[str, Any], value: Any, path: str | None, key: str) -> Any:
    kind = meta["kind"]

    def fail(allowed: str) -> ConfigError:
        return ConfigError(path, key, f"bad value {_shown(value)}", value=value, allowed=allowed)

    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if kind == "choice":
        if value not in meta["choices"]:
            raise fail("one of " + ", ".join(f'"{c}"' for c in meta["choices"]))
        return value
    result: int | float
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(_range_text("an integer", meta))
        result = value
    elif kind == "size":
        try:
            result = parse_size(value)
        except ValueError:
            raise fail(
                _range_text('a size in bytes or with a unit ("512KiB", "1MiB")', meta)
            ) from None
    elif kind == "duration":
        try:
            result = parse_duration(value)
        except ValueError:
            raise fail(
                _range_text('a duration ("500ms", "5s", "10m", "1h") or seconds', meta)
            ) from None
    else:  # pragma: no cover - a programming error in this module
        raise AssertionError(f"unknown kind {kind}")
    low, high = meta["min"], meta["max"]
    if (low is not None and result < low) or (high is not None and result > high):
        raise fail(_range_text(_KIND_WORDS[kind], meta))
    return result


def _shown(value: Any) -> str:
    """A value as it looks in TOML: "text", true, 1.5, nan."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, default=str)


_KIND_WORDS: Final = {"int": "an integer", "size": "a size", "duration": "a duration"}


def _range_text(what: str, meta: Mapping[str, Any]) -> str:
    low, high = meta["min"], meta["max"]
    if low is None or high is None:
        return what
    if meta["kind"] == "size":
        return f"{what} from {_size_text(low)} to {_size_text(high)}"
    unit = "s" if meta["kind"] == "duration" else ""
    return f"{what} from {low:g}{unit} to {high:g}{unit}"


def _size_text(size: float) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{int(size // factor)}{unit}"
    return f"{int(size)} bytes"


def to_dict(config: Any, *, redact: bool = True) -> dict[str, Any]:
    """The config as plain data for the `config` command; secret values are redacted."""
    out: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            out[spec.name] = to_dict(value, redact=redact)
        elif redact and spec.metadata.get("secret") and value:
            out[spec.name] = "<redacted>"
        else:
            out[spec.name] = value
    return out


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two configs."""
    keys: list[str] = []
    for spec in dataclasses.fields(old):
        a, b = getattr(old, spec.name), getattr(new, spec.name)
        if dataclasses.is_dataclass(a):
            keys.extend(changed_keys(a, b, prefix + spec.name + "."))
        elif a != b:
            keys.append(prefix + spec.name)
    return keys


def reference_markdown() -> str:
    """The key reference table of docs/config.md, generated from the dataclasses."""
    lines: list[str] = []

    def section(cls: type[Any], prefix: str) -> None:
        rows = []
        for spec in dataclasses.fields(cls):
            if dataclasses.is_dataclass(spec.default_factory):
                continue
            meta = spec.metadata
            shown = meta["shown"] or repr(spec.default)
            rows.append(f"| `{spec.name}` | {meta['kind']} | `{shown}` | {meta['doc']} |")
        lines.append(f"### `[{prefix}]`" if prefix else "### Top level")
        lines.extend(["", "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for spec in dataclasses.fields(cls):
            if dataclasses.is_dataclass(spec.default_factory):
                section(spec.default_factory, (prefix + "." if prefix else "") + spec.name)

    section(Config, "")
    return "\n".join(lines)
