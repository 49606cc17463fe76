"""The Prometheus endpoint: ``[metrics] listen = "127.0.0.1:9464"`` serves /metrics.

Imported only when metrics are on, so a perfd without them never loads prometheus_client.
Everything comes from what perfd already holds: the monitor's latest snapshot (no NVML call
of its own, however often it is scraped), the firing alerts, the cache's and the providers'
stats when those are started (a scrape never builds them), the alert sinks' counters. The
collector turns them into metric families with pure functions (``host_families`` ...); one
``CollectorRegistry`` of perfd's own holds it, the cache's load-time histogram (fed by the
cache's ``on_load`` hook) and prometheus_client's ProcessCollector (``process_*``). One
thread serves it over HTTP within fixed bounds (perfd.metrics.server), not prometheus_client's
thread-per-connection server.

    perfd_host_memory_total_bytes 6.7e+10
    perfd_host_memory_verdict{verdict="healthy"} 1.0
    perfd_gpu_memory_used_ratio{gpu="0"} 0.5
    perfd_cache_hits_total{model="llama"} 12.0
    process_resident_memory_bytes 4.1e+07

Names follow Prometheus' conventions (perfd_ prefix, base units, _total counters). Labels are
bounded: GPUs by index (``perfd_gpu_info`` alone carries uuid and name), models by name
(configured ones and those loaded now), providers and sinks by config name, alerts by rule and
resource.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from perfd import __version__, log
from perfd.errors import StartupError
from perfd.metrics.engines import claim_families, engine_families, process_families
from perfd.metrics.server import BoundedHTTPServer, Limits, prometheus_reply
from perfd.monitor import verdicts as assess
from perfd.probes.samples import GPU_STATES
from perfd.wire.values import EVICTION_REASONS

if TYPE_CHECKING:
    from perfd.monitor.alerts import Alert
    from perfd.monitor.sampler import Monitor
    from perfd.monitor.snapshot import Gpu, Snapshot

_log = log.get("perfd.metrics")

GPU_STATE_SET: Final = (*GPU_STATES, "disabled")
SEVERITIES: Final = ("warning", "critical")
LOAD_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

Stats = Callable[[], Mapping[str, Any] | None]  # None: that part has not started


def split_listen(listen: str) -> tuple[str, int]:
    """[metrics] listen as (host, port): "[::1]:9464" -> ("::1", 9464)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


# -- pure: values in, metric families out -------------------------------------------------------


def _gauge(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _ratio(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def host_families(snapshot: Snapshot) -> Iterator[Metric]:
    host = snapshot.host
    memory, swap, psi = host.memory, host.swap, host.psi
    yield _gauge("perfd_host_memory_total_bytes", "Host RAM.", memory.total_bytes)
    yield _gauge(
        "perfd_host_memory_available_bytes",
        "Host memory available (MemAvailable).",
        memory.available_bytes,
    )
    total = memory.total_bytes
    used = (total - memory.available_bytes) / total if total else 0.0
    yield _gauge("perfd_host_memory_used_ratio", "(total - available) / total.", used)
    verdict = _labelled(
        "perfd_host_memory_verdict", "The host memory verdict: 1 for the current one.", "verdict"
    )
    for name in assess.VERDICTS:
        verdict.add_metric([name], 1.0 if memory.verdict == name else 0.0)
    yield verdict
    trend = snapshot.host_trend
    yield _gauge(
        "perfd_host_memory_trend_bytes_per_second",
        "Slope of host memory use over the trend window.",
        round(trend.rate_bytes_per_s, 3),  # as the stats reply shows it
    )
    time_to_full = assess.time_to_full(trend)
    if time_to_full is not None:
        yield _gauge(
            "perfd_host_memory_time_to_full_seconds",
            "Host memory full in this long at the current trend (absent unless increasing).",
            time_to_full,
        )
    yield _gauge("perfd_host_swap_total_bytes", "Swap size.", swap.total_bytes)
    yield _gauge("perfd_host_swap_used_bytes", "Swap used.", swap.used_bytes)
    if psi is not None:
        for kind, stalled in (("some", psi.some_percent), ("full", psi.full_percent)):
            value = _ratio(stalled)
            if value is not None:
                yield _gauge(
                    f"perfd_host_psi_memory_{kind}_ratio",
                    f"Share of the last interval {kind} tasks stalled on memory (PSI).",
                    value,
                )
    cpu = _ratio(host.cpu_percent)
    if cpu is not None:
        yield _gauge("perfd_host_cpu_ratio", "Host CPU busy, 0..1 of all cores.", cpu)
    yield _gauge("perfd_host_load1", "1-minute load average.", host.load_avg[0])
    cgroup = host.cgroup
    if cgroup is not None:
        yield _gauge(
            "perfd_cgroup_memory_limit_bytes",
            "perfd's cgroup memory.max (present when below RAM).",
            cgroup.limit_bytes,
        )
        if cgroup.current_bytes is not None:
            yield _gauge(
                "perfd_cgroup_memory_current_bytes",
                "perfd's cgroup memory.current.",
                cgroup.current_bytes,
            )


def _used_ratio(gpu: Gpu) -> float | None:
    total = gpu.memory.total_bytes
    return (total - gpu.memory.free_bytes) / total if total else None


_GPU_FIGURES: Final[tuple[tuple[str, str, Callable[[Gpu], float | None]], ...]] = (
    # (metric, help, how to read it from a GPU)
    ("memory_total_bytes", "GPU memory.", lambda g: g.memory.total_bytes),
    ("memory_used_bytes", "GPU memory used (as nvidia-smi).", lambda g: g.memory.used_bytes),
    ("memory_free_bytes", "GPU memory free.", lambda g: g.memory.free_bytes),
    (
        "memory_reserved_bytes",
        "GPU memory reserved by the driver.",
        lambda g: g.memory.reserved_bytes,
    ),
    ("memory_used_ratio", "(total - free) / total.", _used_ratio),
    ("utilization_ratio", "GPU busy, 0..1.", lambda g: _ratio(g.utilization_percent)),
    ("temperature_celsius", "GPU temperature.", lambda g: g.temperature_c),
    ("power_watts", "GPU power draw.", lambda g: g.power_watts),
    (
        "memory_time_to_full_seconds",
        "GPU memory full in this long at the current trend (absent unless increasing).",
        lambda g: assess.time_to_full(g.trend),
    ),
)


def gpu_families(snapshot: Snapshot) -> Iterator[Metric]:
    state = _labelled(
        "perfd_gpu_state", "NVML's state for the GPUs as a whole: 1 for the current.", "state"
    )
    for name in GPU_STATE_SET:
        state.add_metric([name], 1.0 if snapshot.gpu_state == name else 0.0)
    yield state
    gpus = snapshot.gpus
    info = InfoMetricFamily("perfd_gpu", "Each GPU's uuid and name.", labels=["gpu"])
    up = _labelled("perfd_gpu_up", "1: the GPU answers; 0: lost or in error.", "gpu")
    figures = {key: _labelled(f"perfd_gpu_{key}", doc, "gpu") for key, doc, _ in _GPU_FIGURES}
    for gpu in gpus:
        index = str(gpu.index)
        info.add_metric([index], {"uuid": gpu.uuid, "name": gpu.name})
        up.add_metric([index], 1.0 if gpu.ok else 0.0)
        if not gpu.ok:
            continue  # a lost GPU has no figures: absent, not zero
        for key, _, read in _GPU_FIGURES:
            value = read(gpu)
            if value is not None:
                figures[key].add_metric([index], float(value))
    if gpus:
        yield info
        yield up
        yield from (family for family in figures.values() if family.samples)


def alert_families(firing: Iterable[Alert]) -> Iterator[Metric]:
    counts = dict.fromkeys(SEVERITIES, 0)
    each = _labelled("perfd_alert_firing", "1 per firing alert.", "rule", "resource", "severity")
    for alert in firing:
        counts[alert.severity] = counts.get(alert.severity, 0) + 1
        each.add_metric([alert.rule, alert.resource, alert.severity], 1.0)
    total = _labelled("perfd_alerts_firing", "Firing alerts by severity.", "severity")
    for severity, count in counts.items():
        total.add_metric([severity], count)
    yield total
    yield each


def cache_families(
    stats: Mapping[str, Any] | None,
    configured: Iterable[str],
    counts: Mapping[str, tuple[int, int, int]],
) -> Iterator[Metric]:
    """The cache's figures; ``counts`` holds (hits, misses, loads) of models known but not
    loaded now, so their counters do not vanish with an eviction."""
    models = stats["models"] if stats is not None else []
    evictions = stats["evictions"] if stats is not None else {}
    loaded = _labelled("perfd_cache_model_loaded", "1: loaded; 0: known, not loaded.", "model")
    estimated = _labelled(
        "perfd_cache_model_estimated_bytes", "A model's size before loading.", "model", "device"
    )
    doc = "A model's measured cost once loaded."
    measured = _labelled("perfd_cache_model_measured_bytes", doc, "model", "device")
    doc = "The bytes of a loaded model's own tensors, per device."
    tensors = _labelled("perfd_cache_model_tensor_bytes", doc, "model", "device")
    doc = "What a loaded model counts for in its device's budget."
    charged = _labelled("perfd_cache_model_bytes", doc, "model", "device")
    hits = _counter("perfd_cache_hits", "Lookups of a model that found it loaded.", "model")
    misses = _counter("perfd_cache_misses", "Lookups of a model that had to load it.", "model")
    loads = _counter("perfd_cache_loads", "Successful loads of a model.", "model")
    seen: set[str] = set()
    for m in models:
        seen.add(m["name"])
        loaded.add_metric([m["name"]], 1.0 if m["state"] == "ready" else 0.0)
        if m["estimated_bytes"] is not None:
            estimated.add_metric([m["name"], m["device"]], m["estimated_bytes"])
        if m["measured_bytes"] is not None:
            measured.add_metric([m["name"], m["device"]], m["measured_bytes"])
        for device, figure in sorted((m.get("tensor_bytes_by_device") or {}).items()):
            tensors.add_metric([m["name"], device], figure)
        if m["state"] == "ready" and m.get("bytes") is not None:
            charged.add_metric([m["name"], m["device"]], m["bytes"])
        hits.add_metric([m["name"]], m["hits"])
        misses.add_metric([m["name"]], m["misses"])
        loads.add_metric([m["name"]], m["loads"])
    for name in sorted(set(configured) | set(counts)):
        if name in seen:
            continue
        loaded.add_metric([name], 0.0)
        hit, miss, load = counts.get(name, (0, 0, 0))
        hits.add_metric([name], hit)
        misses.add_metric([name], miss)
        loads.add_metric([name], load)
    yield from (loaded, estimated, measured, tensors, charged, hits, misses, loads)
    by_reason = _counter("perfd_cache_evictions", "Models unloaded, by reason.", "reason")
    for reason in EVICTION_REASONS:
        by_reason.add_metric([reason], evictions.get(reason, 0))
    yield by_reason
    yield _gauge("perfd_cache_models_loaded", "Models loaded now.", stats["loaded"] if stats else 0)
    yield from _device_families(stats)
    requests = _counter("perfd_cache_requests", "Model lookups: hit or miss.", "result")
    requests.add_metric(["hit"], stats["hits"] if stats else 0)
    requests.add_metric(["miss"], stats["misses"] if stats else 0)
    yield requests


def _device_families(stats: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The cache's figures per device: its budget and perfd's runtime overhead there."""
    doc = "The cache's budget on a device in use."
    budget = _labelled("perfd_cache_budget_bytes", doc, "device")
    doc = "perfd's own memory on a device, apart from its models (imports, CUDA context, pools)."
    overhead = _labelled("perfd_cache_runtime_overhead_bytes", doc, "device")
    for device, figures in sorted((stats or {}).get("devices", {}).items()):
        if figures.get("budget_bytes"):
            budget.add_metric([device], figures["budget_bytes"])
        if figures.get("runtime_overhead_bytes") is not None:
            overhead.add_metric([device], figures["runtime_overhead_bytes"])
    yield budget
    yield overhead


def provider_families(stats: Mapping[str, Mapping[str, Any]] | None) -> Iterator[Metric]:
    """Each ``[providers.NAME]``'s client counters (zeros until first used)."""
    if not stats:
        return
    requests = _counter("perfd_provider_requests", "Calls to a provider.", "provider")
    retries = _counter("perfd_provider_retries", "Retries inside those calls.", "provider")
    failures = _counter("perfd_provider_failures", "Failed calls, by kind.", "provider", "kind")
    opened = _counter(
        "perfd_provider_connections_opened", "Connections opened to a provider.", "provider"
    )
    # A summary of quantiles only: the client keeps the last 1000 durations, not their sum.
    latency = Metric(
        "perfd_provider_latency_seconds",
        "Latency of a provider's last 1000 calls at quantiles 0.5 and 0.95.",
        "summary",
    )
    for name, facts in sorted(stats.items()):
        requests.add_metric([name], facts.get("requests", 0))
        retries.add_metric([name], facts.get("retries", 0))
        opened.add_metric([name], facts.get("connections_opened", 0))
        for kind, count in sorted(facts.get("failures", {}).items()):
            failures.add_metric([name, kind], count)
        for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
            ms = (facts.get("latency_ms") or {}).get(key)
            if ms is not None:
                labels = {"provider": name, "quantile": quantile}
                latency.add_sample("perfd_provider_latency_seconds", labels, ms / 1000.0)
    yield from (requests, retries, failures, opened, latency)


def sink_families(stats: Mapping[str, Mapping[str, Any]] | None) -> Iterator[Metric]:
    if not stats:
        return
    sent = _counter("perfd_alert_sink_sent", "Alert POSTs a sink delivered.", "sink")
    failed = _counter("perfd_alert_sink_failed", "Alert POSTs that failed after retries.", "sink")
    dropped = _counter(
        "perfd_alert_sink_dropped", "Alerts dropped: queue full, or unsent at stop.", "sink"
    )
    for name, facts in sorted(stats.items()):
        sent.add_metric([name], facts["sent"])
        failed.add_metric([name], facts["failed"])
        dropped.add_metric([name], facts["dropped"] + facts.get("dropped_at_stop", 0))
    yield from (sent, failed, dropped)


# -- the collector: reads what perfd holds, at scrape time ---------------------------------------


@dataclass(frozen=True)
class Sources:
    """Where a scrape reads from; each stats callable returns None while its part is off."""

    monitor: Monitor
    cache: Stats = lambda: None
    configured_models: Callable[[], Iterable[str]] = lambda: ()
    providers: Stats = lambda: None
    sinks: Stats = lambda: None


class PerfdCollector:
    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self._sources
        monitor = src.monitor
        yield InfoMetricFamily("perfd_build", "perfd's version.", value={"version": __version__})
        yield _gauge("perfd_up", "1 while perfd answers.", 1.0)
        samples = _counter("perfd_monitor_samples", "Monitor samples taken.")
        samples.add_metric([], monitor.samples)
        seconds = _counter("perfd_monitor_sample_seconds", "Time spent taking them.")
        seconds.add_metric([], monitor.sample_seconds)
        yield samples
        yield seconds
        snapshot = monitor.snapshot()
        if snapshot is not None:
            yield from host_families(snapshot)
            yield from gpu_families(snapshot)
            yield from process_families(snapshot, monitor.process_lookup)
            yield from engine_families(snapshot.engines)
            yield from claim_families(snapshot)
        yield from alert_families(monitor.firing())
        cache = src.cache()
        configured = set(cache["configured"] if cache is not None else src.configured_models())
        counters = cache["counters"] if cache is not None else {}
        counts = {n: (c["hits"], c["misses"], c["loads"]) for n, c in counters.items()}
        yield from cache_families(cache, configured, counts)
        yield from provider_families(src.providers())
        yield from sink_families(src.sinks())


# -- the server --------------------------------------------------------------------------------


class MetricsServer:
    """perfd's registry and the bounded HTTP thread serving it at http://LISTEN/metrics
    (perfd.metrics.server: one thread, ``limits`` on connections, time and request size)."""

    def __init__(self, listen: str, sources: Sources, limits: Limits | None = None) -> None:
        self.listen = listen
        self.limits = limits or Limits()
        self.registry = CollectorRegistry()
        self.registry.register(PerfdCollector(sources))
        ProcessCollector(registry=self.registry)
        self._load_seconds = Histogram(
            "perfd_cache_load_seconds",
            "Time a model's successful load took.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=self.registry,
        )
        self._server: BoundedHTTPServer | None = None

    def observe_load(self, model: str, seconds: float) -> None:
        """The cache's on_load hook."""
        self._load_seconds.labels(model=model).observe(seconds)

    def exposition(self) -> bytes:
        """The text format, as a scrape without OpenMetrics gets it."""
        return generate_latest(self.registry)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.port

    @property
    def http(self) -> BoundedHTTPServer | None:
        """The HTTP server while started (its counters, its open connections)."""
        return self._server

    def start(self) -> None:
        host, port = split_listen(self.listen)
        registry = self.registry
        try:
            server = BoundedHTTPServer(
                host, port, lambda request: prometheus_reply(registry, request), self.limits
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError(
                f"cannot serve metrics on {self.listen}: {reason}; "
                "free that port or change [metrics] listen"
            ) from None
        server.start()
        self._server = server
        _log.info(
            "component.started",
            component="metrics",
            url=f"http://{self.listen}/metrics",
            max_connections=self.limits.max_connections,
            timeout_s=self.limits.timeout,
            max_request_bytes=self.limits.max_request_bytes,
        )

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.stop(timeout)
        self._server = None
