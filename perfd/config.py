"""perfd's configuration: the top-level ``Config``, its defaults, and loading perfd.toml.

The settings are frozen dataclasses built with ``schema.option`` and ``schema.section``, one
module per part under perfd.settings (server, monitor, models); ``Config`` here assembles them.
``load`` validates a file strictly (see perfd.schema), and ``reference_markdown`` renders the
table in docs/config.md, which a test keeps identical.

The section classes are re-exported (``__all__``), so the rest of perfd and its tests write
``config.ModelConfig`` or ``from perfd.config import CacheConfig`` and never name the module a
section lives in; a new section goes in perfd.settings and into ``__all__`` here.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from perfd import files, schema
from perfd.errors import ConfigError
from perfd.schema import option, section, section_map
from perfd.settings.engines import ENGINE_KINDS, DiscoveryConfig, EngineConfig
from perfd.settings.models import (
    OPENROUTER_URL,
    CacheConfig,
    ModelConfig,
    ProviderConfig,
    device_problem,
)
from perfd.settings.monitor import (
    AlertsConfig,
    ExhaustionRule,
    MonitorConfig,
    SinkConfig,
    StateRule,
    ThresholdRule,
)
from perfd.settings.server import (
    LOG_FORMATS,
    LOG_LEVELS,
    AccessConfig,
    LogConfig,
    MetricsConfig,
    RemoteConfig,
    ServerConfig,
)
from perfd.wire import paths

__all__ = [
    "ENGINE_KINDS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OPENROUTER_URL",
    "RESTART_ONLY",
    "AccessConfig",
    "AlertsConfig",
    "CacheConfig",
    "Config",
    "DiscoveryConfig",
    "EngineConfig",
    "ExhaustionRule",
    "LoadedConfig",
    "LogConfig",
    "MetricsConfig",
    "ModelConfig",
    "MonitorConfig",
    "ProviderConfig",
    "RemoteConfig",
    "ServerConfig",
    "SinkConfig",
    "StateRule",
    "ThresholdRule",
    "changed_keys",
    "load",
    "parse",
    "reference_markdown",
    "to_dict",
]


@dataclass(frozen=True)
class Config:
    runtime_dir: str = option(
        "",
        "Directory for the sockets. Empty: `$RUNTIME_DIRECTORY` under systemd, else "
        "`/run/perfd` for root, else `$XDG_RUNTIME_DIR/perfd`, else `/tmp/perfd-UID`. "
        "`$PERFD_RUNTIME_DIR` and `perfd --runtime-dir` win. perfd creates it (0755); an "
        "existing one must be perfd's user's and writable by no one else, and keeps its mode.",
        kind="path",
    )
    log: LogConfig = section(LogConfig, "Logging.")
    server: ServerConfig = section(ServerConfig, "The control sockets.")
    access: AccessConfig = section(AccessConfig, "Who may run admin commands.")
    remote: RemoteConfig = section(
        RemoteConfig, "Optional remote access over tcp, with CURVE keys (docs/security.md)."
    )
    monitor: MonitorConfig = section(MonitorConfig, "Host and GPU sampling.")
    alerts: AlertsConfig = section(AlertsConfig, "Alert rules and the alert log.")
    cache: CacheConfig = section(CacheConfig, "The model cache.")
    models: dict[str, ModelConfig] = section_map(ModelConfig, "One table per model.")
    metrics: MetricsConfig = section(MetricsConfig, "The Prometheus metrics endpoint.")
    providers: dict[str, ProviderConfig] = section_map(
        ProviderConfig, "One table per remote API (OpenRouter and other OpenAI-compatible ones)."
    )
    engines: dict[str, EngineConfig] = section_map(
        EngineConfig, "One table per inference engine perfd reads (docs/engines.md)."
    )
    discovery: DiscoveryConfig = section(
        DiscoveryConfig, "Finding and reading the engines on the host (docs/engines.md)."
    )

    def problems(self) -> list[tuple[str, str]]:
        for name, model in self.models.items():
            if model.loader == "openai" and model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none defined"
                return [
                    (
                        f"models.{name}.provider",
                        f"names no [providers.{model.provider or '...'}] table ({known})",
                    )
                ]
        return []


# Settings that only take effect at start; a reload that changes them logs a warning.
RESTART_ONLY: Final = frozenset(
    {
        "runtime_dir",
        "server.group",
        "server.workers",
        "server.max_message_bytes",
        "server.max_admin_message_bytes",
        "metrics.listen",
        "remote.listen",
        "remote.secret_key_file",
        "metrics.allow_remote",
        "metrics.max_connections",  # the metrics server is built once, at start
        "metrics.timeout",
        "metrics.max_request_bytes",
        "monitor.gpu",  # the probes are built once, at start
        "monitor.nvml_timeout",
        "monitor.top_processes",
        "discovery.workers",  # the engine watcher's pool is built once, at start
    }
)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from (``exists`` is False when defaults were used)."""

    config: Config
    path: Path
    exists: bool


def load(path: str | Path | None = None) -> LoadedConfig:
    """Read and validate the config file; an explicit path must exist, the default may not."""
    explicit = path is not None
    file = Path(path if path is not None else paths.default_config_path())
    try:
        text = files.read_regular(file)  # never blocks: a FIFO or a device is refused
    except FileNotFoundError:
        if explicit:
            raise ConfigError(str(file), None, "file not found") from None
        return LoadedConfig(Config(), file, exists=False)
    except files.NotRegularFile as exc:
        problem = f"cannot read: it is {exc.kind}, not a regular file"
        raise ConfigError(str(file), None, problem, allowed="a regular TOML file") from None
    except OSError as exc:
        raise ConfigError(str(file), None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode())
    except UnicodeDecodeError:
        raise ConfigError(str(file), None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), None, f"invalid TOML: {exc}") from None
    return LoadedConfig(parse(data, str(file)), file, exists=True)


def parse(data: Mapping[str, Any], path: str | None = None) -> Config:
    """Validate a parsed TOML document into a Config; raise ConfigError on the first problem."""
    parsed: Config = schema.parse(Config(), data, path)
    return parsed


def to_dict(config: Config, *, redact: bool = True) -> dict[str, Any]:
    return schema.to_dict(config, redact=redact)


def changed_keys(old: Config, new: Config) -> list[str]:
    return schema.changed_keys(old, new)


def reference_markdown() -> str:
    return schema.reference_markdown(Config())


def check_model_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The [models.NAME] settings in ``values`` (a run-time ``load``'s loader, target, path,
    device, options, size_hint), each checked and converted as the config file's are, the
    device by device_problem; ConfigError (no file) naming the key otherwise."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    checked = {key: schema.check(fields[key].metadata, v, None, key) for key, v in values.items()}
    problem = device_problem(checked.get("device", "cpu"))
    if problem is not None:
        raise ConfigError(None, "device", problem, value=checked["device"])
    return checked
