"""The settings of the monitor: sampling, the alert rules and where alerts are sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from perfd.redaction import redact_url
from perfd.schema import option, section
from perfd.settings import DAY


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
        maximum=7 * DAY,
    )
    trend_window: float = option(
        300.0,
        "The span the least-squares trend is fitted over.",
        kind="duration",
        minimum=1,
        maximum=7 * DAY,
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
        maximum=DAY,
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
        maximum=DAY,
        key="for",
    )
    repeat: float = option(
        4 * 3600.0,
        "Log a still-firing alert again after this long.",
        kind="duration",
        minimum=60,
        maximum=30 * DAY,
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
class StateRule:
    """An alert on a state (an engine down, a GPU claimed beyond its memory): firing at
    `severity` once the state has held `for`."""

    enabled: bool = option(True, "Evaluate this rule.", kind="bool")
    severity: str = option(
        "critical", "The alert's severity.", kind="choice", choices=("warning", "critical")
    )
    clear: int = option(
        1,
        "Samples without the state needed to resolve.",
        kind="int",
        minimum=1,
        maximum=10000,
    )
    for_: float = option(
        30.0,
        "How long the state must hold before the alert fires.",
        kind="duration",
        minimum=0,
        maximum=DAY,
        key="for",
    )
    repeat: float = option(
        4 * 3600.0,
        "Log a still-firing alert again after this long.",
        kind="duration",
        minimum=60,
        maximum=30 * DAY,
    )


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
        maximum=30 * DAY,
    )
    crit: float = option(
        300.0,
        "Escalate to critical when time to full is under this.",
        kind="duration",
        minimum=0,
        maximum=30 * DAY,
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
        maximum=DAY,
        key="for",
    )
    repeat: float = option(
        4 * 3600.0,
        "Log a still-firing alert again after this long.",
        kind="duration",
        minimum=60,
        maximum=30 * DAY,
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
    kv_cache_usage: ThresholdRule = section(
        lambda: ThresholdRule(warn=90.0, crit=98.0, for_=60.0),
        "Each engine's KV cache used, percent of its capacity.",
    )
    engine_waiting: ThresholdRule = section(
        lambda: ThresholdRule(warn=10.0, crit=50.0, for_=60.0, unit_max=1e6),
        "Each engine's requests waiting in its queue.",
    )
    engine_preemptions: ThresholdRule = section(
        lambda: ThresholdRule(warn=1.0, crit=10.0, for_=60.0, unit_max=1e6),
        "Each engine's preemptions per minute (requests evicted from a full KV cache).",
    )
    engine_down: StateRule = section(
        lambda: StateRule(severity="critical", for_=30.0),
        "An engine that cannot be read: down, timeout or error.",
    )
    gpu_oversubscribed: StateRule = section(
        lambda: StateRule(severity="warning", for_=0.0),
        "Engines on one GPU whose memory claims add up to more than the GPU.",
    )
    webhook: SinkConfig = section(
        SinkConfig, "Also POST each alert transition as JSON to this URL."
    )
    alertmanager: SinkConfig = section(
        SinkConfig,
        "Also send alerts to a Prometheus Alertmanager (url like http://127.0.0.1:9093).",
    )
