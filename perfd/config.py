"""perfd's configuration: the settings, their defaults, and loading perfd.toml.

The settings are frozen dataclasses built with ``schema.option`` and ``schema.section``;
``load`` validates a file strictly (see perfd.schema), and ``reference_markdown`` renders the
table in docs/config.md, which a test keeps identical.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from perfd import files, schema
from perfd.errors import ConfigError
from perfd.redaction import redact_url
from perfd.schema import option, section, section_map
from perfd.wire import paths, protocol

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final = ("json", "console")

_DAY: Final = 86400.0


@dataclass(frozen=True)
class LogConfig:
    level: str = option("info", "Lowest level written.", kind="choice", choices=LOG_LEVELS)
    format: str = option(
        "json",
        "`json`: one JSON object per line; `console`: for humans. `perfd --log-format` wins.",
        kind="choice",
        choices=LOG_FORMATS,
    )
    file: str = option(
        "",
        "Append JSON lines to this file, reopened when logrotate moves it. Empty: stdout only. "
        "A regular file: a symlink, FIFO or device is refused.",
        kind="path",
    )


@dataclass(frozen=True)
class ServerConfig:
    group: str = option(
        "perfd",
        "Group owning the admin socket `perfd.sock` (mode 0660). If it does not exist, the "
        "user's own group is used, with a warning when the group was set here or perfd runs "
        "as a systemd service.",
        kind="str",
    )
    workers: int = option(
        4,
        "Threads that run slow commands off the socket thread.",
        kind="int",
        minimum=1,
        maximum=256,
    )
    max_message_bytes: int = option(
        protocol.DEFAULT_MAX_MESSAGE_BYTES,
        "Largest message (all its frames together) accepted on the read-only socket and the "
        "tcp endpoint: a bigger frame drops the sender's connection (ZMQ_MAXMSGSIZE), a "
        "bigger message gets `bad_request`.",
        kind="size",
        minimum=1024,
        maximum=1 << 30,
    )
    max_admin_message_bytes: int = option(
        protocol.DEFAULT_MAX_ADMIN_MESSAGE_BYTES,
        "Largest message (all its frames together) accepted on the admin socket, where `infer` "
        "sends arrays as raw frames.",
        kind="size",
        minimum=1024,
        maximum=4 << 30,
    )
    max_in_flight: int = option(
        64,
        "Slow commands (load, infer, evict, reload...) running or queued for a worker, counting "
        "those that timed out but still hold one; one more gets a `busy` reply.",
        kind="int",
        minimum=1,
        maximum=100_000,
    )
    max_in_flight_per_client: int = option(
        16,
        "Slow commands one caller (a uid on the local sockets, a key on the tcp endpoint) may "
        "have in flight (at most `max_in_flight`); one more gets `busy`. root and perfd's own "
        "user are not counted. One caller runs on at most `workers - 1` threads at once.",
        kind="int",
        minimum=1,
        maximum=100_000,
    )
    admin_reserve: int = option(
        16,
        "Slots of `max_in_flight` only admin commands (load, evict, infer...) may take (at "
        "most `max_in_flight - 1`): read-only ones get `busy` past `max_in_flight - "
        "admin_reserve`, and run on at most `workers - 1` threads together.",
        kind="int",
        minimum=0,
        maximum=100_000,
    )
    max_connections: int = option(
        256,
        "Connections each socket (perfd.sock, perfd-ro.sock, the tcp endpoint) keeps; past "
        "it the oldest idle one is dropped (never one awaiting a reply). Lowered at start, "
        "with a warning, to fit perfd's file limit.",
        kind="int",
        minimum=8,
        maximum=1_000_000,
    )
    max_buffered_bytes: int = option(
        256 << 20,
        "How far perfd's RSS may pass its size at start plus its models' before every "
        "connection not awaiting a reply is dropped (bounds a message that never ends).",
        kind="size",
        minimum=16 << 20,
        maximum=1 << 40,
    )
    command_timeout: float = option(
        60.0,
        "A slow command still running after this gets a `timeout` reply.",
        kind="duration",
        minimum=0.001,
        maximum=_DAY,
    )
    shutdown_timeout: float = option(
        10.0,
        "On SIGTERM, how long in-flight commands may run before perfd exits anyway.",
        kind="duration",
        minimum=0,
        maximum=300,
    )


@dataclass(frozen=True)
class AccessConfig:
    admin_users: tuple[str, ...] = option(
        (),
        "Users (names or numeric uids) who may also run admin commands. root, perfd's own "
        "user and members of `[server] group` always may; anyone else is refused even when "
        "the socket's mode lets them connect.",
        kind="names",
    )
    admin_groups: tuple[str, ...] = option(
        (),
        "Groups (names or numeric gids) whose members may also run admin commands.",
        kind="names",
    )


_TCP: Final = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+|\*):([0-9]{1,5})$")


@dataclass(frozen=True)
class RemoteConfig:
    listen: str = option(
        "",
        'Also serve perfd on this `tcp://HOST:PORT` endpoint (e.g. "tcp://10.0.0.5:7710"), '
        "encrypted and authenticated with CURVE. Empty: off. perfd refuses to start with it "
        "set and no keys.",
        kind="str",
    )
    secret_key_file: str = option(
        "",
        "perfd's CURVE key pair: the `.key_secret` file `perfctl keygen NAME` writes (mode "
        "0600). Clients need its public half, the `.key` file.",
        kind="path",
    )
    authorized_keys: str = option(
        "",
        "The client public keys let in, one per line: `KEY read|admin [NAME]`; `read` keys "
        "run read-only commands only. Re-read on reload.",
        kind="path",
    )

    def problems(self) -> list[tuple[str, str]]:
        if not self.listen:
            return []
        match = _TCP.match(self.listen)
        if not match or not 0 <= int(match.group(2)) < 65536:
            return [
                (
                    "listen",
                    f'must be "tcp://HOST:PORT" (e.g. "tcp://10.0.0.5:7710"), not {self.listen!r}',
                )
            ]
        if not self.secret_key_file:
            return [
                (
                    "secret_key_file",
                    "a tcp endpoint needs perfd's CURVE key pair (perfctl keygen); "
                    "perfd never serves tcp without it",
                )
            ]
        if not self.authorized_keys:
            return [
                (
                    "authorized_keys",
                    "a tcp endpoint needs a list of client public keys; "
                    "perfd never serves tcp to anyone",
                )
            ]
        return []


@dataclass(frozen=True)
class MonitorConfig:
    interval: float = option(
        5.0, "Time between samples.", kind="duration", minimum=0.05, maximum=3600
    )
    history: float = option(
        3600.0,
        "How much history the trend ring buffer keeps.",
        kind="duration",
        minimum=60,
        maximum=7 * _DAY,
    )
    trend_window: float = option(
        300.0,
        "The span the least-squares trend is fitted over.",
        kind="duration",
        minimum=1,
        maximum=7 * _DAY,
    )
    trend_noise_percent: float = option(
        1.0,
        "A change over the trend window smaller than this percent of capacity is `stable`.",
        kind="float",
        minimum=0,
        maximum=100,
    )
    top_processes: int = option(
        5,
        "How many of the largest processes (by RSS) `stats` lists.",
        kind="int",
        minimum=0,
        maximum=100,
    )
    processes_interval: float = option(
        30.0,
        "Time between scans of every process for the top list (the costliest probe).",
        kind="duration",
        minimum=0.05,
        maximum=_DAY,
    )
    gpu: bool = option(True, "Sample NVIDIA GPUs through NVML.", kind="bool")
    nvml_timeout: float = option(
        2.0,
        "An NVML call that takes longer marks the GPUs `error` (a hung GPU cannot stall perfd).",
        kind="duration",
        minimum=0.01,
        maximum=60,
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.trend_window > self.history:
            return [("trend_window", f"must not exceed history ({self.history:g}s)")]
        if self.interval > self.trend_window:
            return [("interval", f"must not exceed trend_window ({self.trend_window:g}s)")]
        return []


@dataclass(frozen=True)
class ThresholdRule:
    """An alert on a value that is bad when high: firing at `warn`, escalated at `crit`."""

    enabled: bool = option(True, "Evaluate this rule.", kind="bool")
    warn: float = option(
        80.0, "Fire a warning at or above this.", kind="float", minimum=0, maximum=1000
    )
    crit: float = option(
        95.0, "Escalate to critical at or above this.", kind="float", minimum=0, maximum=1000
    )
    clear: int = option(
        5,
        "Samples below `warn` needed to resolve (hysteresis).",
        kind="int",
        minimum=1,
        maximum=10000,
    )
    for_: float = option(
        30.0,
        "How long the condition must hold before the alert fires.",
        kind="duration",
        minimum=0,
        maximum=_DAY,
        key="for",
    )
    repeat: float = option(
        4 * 3600.0,
        "Log a still-firing alert again after this long.",
        kind="duration",
        minimum=60,
        maximum=30 * _DAY,
    )
    unit_max: float = field(default=100.0, repr=False)  # internal: largest sensible threshold

    def problems(self) -> list[tuple[str, str]]:
        if self.warn > self.unit_max:
            return [("warn", f"must be at most {self.unit_max:g}")]
        if self.warn > self.crit:
            return [("crit", f"must be at least warn ({self.warn:g})")]
        if self.crit > self.unit_max:
            return [("crit", f"must be at most {self.unit_max:g}")]
        return []


@dataclass(frozen=True)
class ExhaustionRule:
    """Predicted exhaustion: little free AND the trend says full soon."""

    enabled: bool = option(True, "Evaluate this rule.", kind="bool")
    free_below: float = option(
        20.0, "Only when less than this percent is free.", kind="float", minimum=0, maximum=100
    )
    warn: float = option(
        1800.0,
        "Fire a warning when time to full is under this.",
        kind="duration",
        minimum=0,
        maximum=30 * _DAY,
    )
    crit: float = option(
        300.0,
        "Escalate to critical when time to full is under this.",
        kind="duration",
        minimum=0,
        maximum=30 * _DAY,
    )
    clear: int = option(
        5,
        "Samples outside the condition needed to resolve.",
        kind="int",
        minimum=1,
        maximum=10000,
    )
    for_: float = option(
        0.0,
        "How long the condition must hold before the alert fires.",
        kind="duration",
        minimum=0,
        maximum=_DAY,
        key="for",
    )
    repeat: float = option(
        4 * 3600.0,
        "Log a still-firing alert again after this long.",
        kind="duration",
        minimum=60,
        maximum=30 * _DAY,
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.crit > self.warn:
            return [("crit", f"must not exceed warn ({self.warn:g}s): crit is the shorter time")]
        return []


@dataclass(frozen=True)
class SinkConfig:
    """Where alert transitions are also sent over HTTP (empty url: off)."""

    url: str = option(
        "",
        "The endpoint; empty turns this sink off. Its secret parts (user:password@, token "
        "query values and path segments) are redacted wherever perfd shows it.",
        kind="str",
        secret="url",
    )
    queue: int = option(
        1000,
        "Transitions waiting to be sent; when full, the oldest is dropped and counted.",
        kind="int",
        minimum=1,
        maximum=1_000_000,
    )
    timeout: float = option(
        5.0, "Connect and read timeout of each POST.", kind="duration", minimum=0.01, maximum=300
    )
    retries: int = option(
        3, "Retries of a failed POST (backoff with jitter).", kind="int", minimum=0, maximum=20
    )
    token_env: str = option(
        "",
        "Name of an environment variable holding a bearer token (never the token itself).",
        kind="str",
    )
    ca_bundle: str = option(
        "", "CA bundle for an https url (default: certifi's, or $REQUESTS_CA_BUNDLE).", kind="path"
    )
    resend: float = option(
        60.0,
        "Alertmanager only: send still-firing alerts again this often (Alertmanager resolves "
        "alerts it stops hearing about).",
        kind="duration",
        minimum=1,
        maximum=86400,
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.url and not self.url.startswith(("http://", "https://")):
            shown = redact_url(self.url)
            return [("url", f"must start with http:// or https://, not {shown!r}")]
        return []


@dataclass(frozen=True)
class AlertsConfig:
    history: int = option(
        100,
        "Alert transitions kept in memory for `perfctl alerts`.",
        kind="int",
        minimum=1,
        maximum=100000,
    )
    log_file: str = option(
        "",
        "Append each alert transition as one JSON line to this file (survives logrotate). "
        "Empty: none. A regular file: a symlink, FIFO or device is refused.",
        kind="path",
    )
    host_memory: ThresholdRule = section(
        lambda: ThresholdRule(warn=80.0, crit=95.0),
        "Host memory used, percent: (total - available) / total.",
    )
    swap: ThresholdRule = section(
        lambda: ThresholdRule(warn=50.0, crit=90.0), "Swap used, percent."
    )
    psi: ThresholdRule = section(
        lambda: ThresholdRule(warn=10.0, crit=40.0, for_=10.0),
        "Memory pressure: percent of time some task stalled on memory over each interval.",
    )
    gpu_memory: ThresholdRule = section(
        lambda: ThresholdRule(warn=95.0, crit=99.0),
        "Each GPU's memory used, percent: (total - free) / total. Inference servers preallocate "
        "(vLLM takes 90% by default), so the defaults sit above that.",
    )
    gpu_temperature: ThresholdRule = section(
        lambda: ThresholdRule(warn=83.0, crit=90.0, for_=60.0, unit_max=150.0),
        "Each GPU's temperature, degrees Celsius.",
    )
    exhaustion: ExhaustionRule = section(
        ExhaustionRule,
        "Host memory and each GPU: under `free_below` percent free and filling up.",
    )
    webhook: SinkConfig = section(
        SinkConfig, "Also POST each alert transition as JSON to this URL."
    )
    alertmanager: SinkConfig = section(
        SinkConfig,
        "Also send alerts to a Prometheus Alertmanager (url like http://127.0.0.1:9093).",
    )


_DEVICE: Final = re.compile(r"cpu|cuda:[0-9]+")  # fullmatch: "$" would let "cpu\n" through


@dataclass(frozen=True)
class CacheConfig:
    ram_budget: str = option(
        "50%",
        "Host memory the cached models may take: a percent of RAM (of the cgroup limit when "
        "lower) or a size.",
        kind="budget",
    )
    gpu_budget: str = option(
        "90%", "Memory the cached models may take on each GPU: a percent or a size.", kind="budget"
    )
    max_models: int = option(
        16, "Most models loaded at once (0: no limit).", kind="int", minimum=0, maximum=10000
    )
    keep_alive: float = option(
        300.0,
        'How long an idle model stays loaded; 0 unloads it when idle, -1 or "forever" keeps it.',
        kind="ttl",
        maximum=365 * _DAY,
    )
    load_timeout: float = option(
        300.0,
        "A load still running after this fails for every waiter.",
        kind="duration",
        minimum=0.01,
        maximum=_DAY,
    )
    high_watermark: float = option(
        90.0,
        "Host (or GPU) memory used percent at which cold models are evicted...",
        kind="float",
        minimum=1,
        maximum=100,
    )
    low_watermark: float = option(
        80.0, "...until use is below this percent.", kind="float", minimum=0, maximum=100
    )
    housekeeping: float = option(
        1.0,
        "How often expired keep-alives and the watermarks are checked.",
        kind="duration",
        minimum=0.01,
        maximum=3600,
    )
    evictions_history: int = option(
        100, "Recent evictions kept for `stats`.", kind="int", minimum=1, maximum=100000
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.low_watermark >= self.high_watermark:
            return [("low_watermark", f"must be below high_watermark ({self.high_watermark:g})")]
        return []


@dataclass(frozen=True)
class ModelConfig:
    loader: str = option(
        "python",
        "`python`, `onnx`, `openai` (a remote model), or one registered under `perfd.loaders`.",
        kind="str",
    )
    target: str = option(
        "", 'python loader: `"module:callable"`, called with `options`.', kind="str"
    )
    path: str = option("", "onnx (and file-based loaders): the model file.", kind="path")
    device: str = option("cpu", '`"cpu"` or `"cuda:N"`.', kind="str")
    keep_alive: float | None = option(
        None, "Overrides `[cache] keep_alive` for this model.", kind="ttl", maximum=365 * _DAY
    )
    pin: bool = option(False, "Never evict this model.", kind="bool")
    preload: bool = option(False, "Load this model when perfd starts.", kind="bool")
    size_hint: int = option(
        0,
        "Expected size when the loader cannot estimate it (0: unknown).",
        kind="size",
        minimum=0,
        maximum=1 << 50,
    )
    options: dict[str, Any] = option(
        None,
        "Passed to the loader (python: the factory's keyword arguments). Entries named like "
        "a secret (`api_key`, `password`, `token`...) are redacted wherever perfd shows them.",
        kind="table",
        secret="table",
    )
    provider: str = option("", "openai loader: the `[providers.NAME]` to call.", kind="str")
    model: str = option(
        "",
        'openai loader: the remote model id (e.g. "meta-llama/llama-3.1-8b-instruct").',
        kind="str",
    )

    def problems(self) -> list[tuple[str, str]]:
        problem = device_problem(self.device)
        if problem is not None:
            return [("device", problem)]
        if self.loader == "python" and ":" not in self.target:
            return [("target", 'the python loader needs target = "module:callable"')]
        if self.loader == "onnx" and not self.path:
            return [("path", "the onnx loader needs path = the model file")]
        if self.loader == "openai" and not (self.provider and self.model):
            return [("model", 'the openai loader needs provider = "NAME" and model = "id"')]
        return []


def device_problem(device: str) -> str | None:
    """What is wrong with a model's ``device``, or None: a [models.NAME] table's and a
    run-time ``load``'s (check_model_fields) are checked by this one rule."""
    if _DEVICE.fullmatch(device):
        return None
    return f'must be "cpu" or "cuda:N", not {schema.shown(device)}'


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


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = option(
        "",
        'Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. "127.0.0.1:9464". Empty: off.',
        kind="str",
    )
    allow_remote: bool = option(
        False,
        "Allow a listen address beyond loopback (metrics show host and GPU details).",
        kind="bool",
    )
    max_connections: int = option(
        64,
        "Connections held at once; one more closes the oldest that has not sent a complete "
        "request (or, when every one is taking its reply, is closed itself).",
        kind="int",
        minimum=1,
        maximum=4096,
    )
    timeout: float = option(
        5.0,
        "A client must send its whole request within this from connecting, and take its "
        "whole reply within it again; else it is dropped (slowloris).",
        kind="duration",
        minimum=0.1,
        maximum=300,
    )
    max_request_bytes: int = option(
        8192,
        "Largest request line and headers together; a bigger request gets 431 and is closed.",
        kind="size",
        minimum=1024,
        maximum=1 << 20,
    )

    def problems(self) -> list[tuple[str, str]]:
        if not self.listen:
            return []
        host, sep, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            return [("listen", f'must be "HOST:PORT" (e.g. "127.0.0.1:9464"), not {self.listen!r}')]
        if not self.allow_remote and host not in ("127.0.0.1", "::1", "localhost"):
            return [("listen", f"{host} is beyond loopback; set allow_remote = true to allow it")]
        return []


OPENROUTER_URL: Final = "https://openrouter.ai/api/v1"


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str = option(
        OPENROUTER_URL,
        "The OpenAI-compatible API: OpenRouter's by default; OpenAI, vLLM, llama.cpp's server "
        "and Ollama's /v1 work the same. Its secret parts (user:password@...) are redacted "
        "wherever perfd shows it.",
        kind="str",
        secret="url",
    )
    api_key_env: str = option(
        "",
        'Name of the environment variable holding the API key (e.g. "OPENROUTER_API_KEY").',
        kind="str",
    )
    api_key_file: str = option(
        "", "A file holding the API key (used when api_key_env is empty).", kind="path"
    )
    pool_maxsize: int = option(
        10, "Connections kept open to the provider.", kind="int", minimum=1, maximum=1000
    )
    retries: int = option(3, "Retries in all.", kind="int", minimum=0, maximum=20)
    connect_retries: int = option(
        3, "Retries of connection errors.", kind="int", minimum=0, maximum=20
    )
    read_retries: int = option(
        2,
        "Retries of read errors (never for a POST that may have been processed).",
        kind="int",
        minimum=0,
        maximum=20,
    )
    status_retries: int = option(
        3,
        "Retries on 429/500/502/503/504 (a POST only on 429 and 503).",
        kind="int",
        minimum=0,
        maximum=20,
    )
    backoff_factor: float = option(
        0.5, "Exponential backoff base, seconds.", kind="float", minimum=0, maximum=60
    )
    backoff_jitter: float = option(
        0.25,
        "Random extra backoff, up to this many seconds.",
        kind="float",
        minimum=0,
        maximum=60,
    )
    backoff_max: float = option(
        30.0,
        "Longest backoff (also caps Retry-After).",
        kind="duration",
        minimum=0,
        maximum=3600,
    )
    connect_timeout: float = option(
        5.0, "Connect timeout.", kind="duration", minimum=0.01, maximum=300
    )
    read_timeout: float = option(
        120.0,
        "Read timeout (time between bytes).",
        kind="duration",
        minimum=0.01,
        maximum=3600,
    )
    ca_bundle: str = option(
        "", "CA bundle for https (default: certifi's, or $REQUESTS_CA_BUNDLE).", kind="path"
    )
    referer: str = option(
        "",
        "OpenRouter attribution: sent as HTTP-Referer (your site's URL).",
        kind="str",
        secret="url",
    )
    title: str = option(
        "", "OpenRouter attribution: sent as X-Title (your app's name).", kind="str"
    )

    def problems(self) -> list[tuple[str, str]]:
        if not self.base_url.startswith(("http://", "https://")):
            shown = redact_url(self.base_url)
            return [("base_url", f"must start with http:// or https://, not {shown!r}")]
        if self.api_key_env and self.api_key_file:
            return [("api_key_file", "give api_key_env or api_key_file, not both")]
        return []


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
    }
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
        text = files.read_regular(file)  # never blocks: a FIFO or a device is refused
    except FileNotFoundError:
        if explicit:
            raise ConfigError(str(file), None, "file not found") from None
        return Loaded(Config(), file, exists=False)
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
    return Loaded(parse(data, str(file)), file, exists=True)


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
