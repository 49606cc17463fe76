"""The Prometheus endpoint: the collector's families, promtool, a real perfd, a real Prometheus."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

import perfd
from perfd import config
from perfd.cache.core import ModelCache
from perfd.errors import ConfigError
from perfd.loaders.base import Loaded, ModelSpec
from perfd.metrics.exporter import MetricsServer, Sources
from perfd.monitor.sampler import Monitor
from perfd.probes.samples import Psi
from tests.conftest import StartPerfd
from tests.daemons import ready_server, wait_until
from tests.fakeprobes import FakeGpuProbe, FakeHostProbe, GiB, gpu_sample, host_sample
from tests.httpservers import closed_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def meminfo_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingGpuProbe(FakeGpuProbe):
    """The fake probe, counting its samples (each would be a round of NVML calls)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.samples = 0

    def sample(self) -> Any:
        self.samples += 1
        return super().sample()


class SizedLoader:
    """Models of ``options.size`` bytes (estimated), loaded at once."""

    name = "sized"

    def estimate(self, spec: ModelSpec) -> int | None:
        return int(spec.options.get("size", 0)) or None

    def load(self, spec: ModelSpec) -> Loaded:
        return Loaded(model={"name": spec.name}, estimate_bytes=self.estimate(spec))

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        return inputs

    def unload(self, model: Any) -> None:
        return None


def two_gpu_monitor(**alerts: Any) -> tuple[Monitor, FakeHostProbe, CountingGpuProbe, Clock]:
    """A monitor over fake probes: GPU 0 half full, GPU 1 lost."""
    cfg = config.parse({"alerts": alerts})
    host = FakeHostProbe(host_sample(used_percent=50.0))
    gpus = CountingGpuProbe(gpu_sample(0, used_percent=50.0), gpu_sample(1, state="lost"))
    gpus.state = "lost"
    clock = Clock()
    monitor = Monitor(cfg.monitor, cfg.alerts, host_probe=host, gpu_probe=gpus, clock=clock)
    return monitor, host, gpus, clock


def scrape(server: MetricsServer) -> Samples:
    return parse(server.exposition().decode())


# -- the collector ------------------------------------------------------------------------


def test_host_and_gpu_figures() -> None:
    """Host memory, swap, CPU, verdict and per-GPU figures come out in base units and ratios."""
    monitor, _, _, _ = two_gpu_monitor()
    monitor.sample_once()
    s = scrape(MetricsServer("127.0.0.1:0", Sources(monitor)))
    assert value(s, "perfd_up") == 1
    assert value(s, "perfd_build_info", version=perfd.__version__) == 1
    assert value(s, "perfd_monitor_samples_total") == 1
    assert value(s, "perfd_host_memory_total_bytes") == 64 * GiB
    assert value(s, "perfd_host_memory_available_bytes") == 32 * GiB
    assert value(s, "perfd_host_memory_used_ratio") == pytest.approx(0.5)
    assert value(s, "perfd_host_memory_verdict", verdict="healthy") == 1
    for other in ("full_but_healthy", "pressure", "critical"):
        assert value(s, "perfd_host_memory_verdict", verdict=other) == 0
    assert value(s, "perfd_host_swap_total_bytes") == 8 * GiB
    assert value(s, "perfd_host_swap_used_bytes") == 0
    assert value(s, "perfd_host_cpu_ratio") == pytest.approx(0.125)
    assert value(s, "perfd_host_load1") == 0.5
    assert value(s, "perfd_gpu_state", state="lost") == 1
    assert value(s, "perfd_gpu_state", state="ok") == 0
    assert value(s, "perfd_gpu_info", gpu="0", uuid="GPU-00000000", name="NVIDIA H100 80GB HBM3")
    assert value(s, "perfd_gpu_up", gpu="0") == 1
    assert value(s, "perfd_gpu_up", gpu="1") == 0
    assert value(s, "perfd_gpu_memory_total_bytes", gpu="0") == 80 * GiB
    assert value(s, "perfd_gpu_memory_used_bytes", gpu="0") == 40 * GiB
    assert value(s, "perfd_gpu_memory_free_bytes", gpu="0") == 40 * GiB
    assert value(s, "perfd_gpu_memory_reserved_bytes", gpu="0") == 0
    assert value(s, "perfd_gpu_memory_used_ratio", gpu="0") == pytest.approx(0.5)
    assert value(s, "perfd_gpu_utilization_ratio", gpu="0") == pytest.approx(0.3)
    assert value(s, "perfd_gpu_temperature_celsius", gpu="0") == 50
    assert value(s, "perfd_gpu_power_watts", gpu="0") == 200
    assert value(s, "process_resident_memory_bytes")


def test_unknown_figures_are_absent_not_zero() -> None:
    """No PSI, no cgroup limit, a flat trend and a lost GPU leave their series out."""
    monitor, _, _, _ = two_gpu_monitor()
    monitor.sample_once()
    s = scrape(MetricsServer("127.0.0.1:0", Sources(monitor)))
    present = names(s)
    for name in (
        "perfd_host_psi_memory_some_ratio",
        "perfd_host_psi_memory_full_ratio",
        "perfd_host_memory_time_to_full_seconds",
        "perfd_gpu_memory_time_to_full_seconds",
        "perfd_cgroup_memory_limit_bytes",
    ):
        assert name not in present
    assert value(s, "perfd_host_memory_trend_bytes_per_second") == 0
    lost = {labels for name, labels in s if name.startswith("perfd_gpu_memory")}
    assert lost
    assert all(("gpu", "1") not in labels for labels in lost)


def test_psi_and_time_to_full_when_known() -> None:
    """With PSI and memory rising on the host and GPU 0, their ratios and times appear."""
    monitor, host, gpus, clock = two_gpu_monitor()
    for step in range(6):
        clock.now += 5
        psi = Psi(step * 500_000, step * 100_000, 1.0, 1.0, 0.1, 0.1)
        host.next = host_sample(clock.now, used_percent=40.0 + 2 * step, psi=psi)
        gpus.gpus[0] = gpu_sample(0, used_percent=40.0 + 2 * step)
        monitor.sample_once()
    s = scrape(MetricsServer("127.0.0.1:0", Sources(monitor)))
    assert value(s, "perfd_host_psi_memory_some_ratio") == pytest.approx(0.1)
    assert value(s, "perfd_host_psi_memory_full_ratio") == pytest.approx(0.02)
    rate = value(s, "perfd_host_memory_trend_bytes_per_second")
    assert rate == pytest.approx(0.02 * 64 * GiB / 5, rel=0.01)
    ttf = value(s, "perfd_host_memory_time_to_full_seconds")
    assert ttf == pytest.approx(50 * 5 / 2, rel=0.01)
    assert value(s, "perfd_gpu_memory_time_to_full_seconds", gpu="0") == pytest.approx(
        50 * 5 / 2, rel=0.01
    )


def test_firing_alerts_by_severity_and_rule() -> None:
    """A firing alert is one perfd_alert_firing series; perfd_alerts_firing counts them."""
    monitor, _, _, _ = two_gpu_monitor(
        host_memory={"warn": 10, "crit": 40, "for": 0}, gpu_memory={"warn": 30, "for": 0}
    )
    monitor.sample_once()
    s = scrape(MetricsServer("127.0.0.1:0", Sources(monitor)))
    assert value(s, "perfd_alerts_firing", severity="critical") == 1
    assert value(s, "perfd_alerts_firing", severity="warning") == 1
    assert value(s, "perfd_alert_firing", rule="host_memory", resource="host", severity="critical")
    assert value(s, "perfd_alert_firing", rule="gpu_memory", resource="gpu0", severity="warning")


def test_scrapes_never_sample_the_gpus() -> None:
    """Scraping reads the monitor's latest snapshot: no GPU probe (NVML) call of its own."""
    monitor, _, gpus, _ = two_gpu_monitor()
    monitor.sample_once()
    server = MetricsServer("127.0.0.1:0", Sources(monitor))
    before = gpus.samples
    for _ in range(5):
        server.exposition()
    assert gpus.samples == before == 1


def test_before_the_first_sample_only_perfd_itself() -> None:
    """With no sample yet, perfd_up and the counters answer; host and GPU series are absent."""
    monitor, _, _, _ = two_gpu_monitor()
    s = scrape(MetricsServer("127.0.0.1:0", Sources(monitor)))
    assert value(s, "perfd_up") == 1
    assert value(s, "perfd_monitor_samples_total") == 0
    assert not {n for n in names(s) if n.startswith(("perfd_host_", "perfd_gpu_"))}


def _cache(sources: Sources) -> tuple[ModelCache, MetricsServer]:
    """A cache of three configured models (a fake loader) and a server reading it."""
    cfg = config.parse(
        {
            "cache": {"keep_alive": "forever"},
            "models": {
                "small": {"loader": "sized", "options": {"size": 1000}},
                "big": {"loader": "sized", "options": {"size": 5000}, "device": "cuda:0"},
                "idle": {"loader": "sized"},
            },
        }
    )
    loader = SizedLoader()
    server: MetricsServer | None = None

    def on_load(model: str, seconds: float) -> None:
        assert server is not None
        server.observe_load(model, seconds)

    cache = ModelCache(
        cfg.cache, cfg.models, lambda _: loader, lambda _: 100 * GiB, measure=False, on_load=on_load
    )
    server = MetricsServer("127.0.0.1:0", replace(sources, cache=cache.stats))
    return cache, server


def test_cache_figures_per_model() -> None:
    """Per-model sizes, loaded flags, hits, misses, loads, the load-time histogram,
    evictions by reason and the request totals; a scraped model's counters outlive its
    eviction."""
    monitor, _, _, _ = two_gpu_monitor()
    monitor.sample_once()
    cache, server = _cache(Sources(monitor))
    cache.load("small")  # a miss and a load
    cache.get("small")
    cache.get("small")  # two hits
    cache.load("big")
    cache.get("big")
    assert value(scrape(server), "perfd_cache_model_loaded", model="big") == 1
    cache.evict("big")
    s = scrape(server)
    assert value(s, "perfd_cache_model_loaded", model="small") == 1
    assert value(s, "perfd_cache_model_loaded", model="big") == 0
    assert value(s, "perfd_cache_model_loaded", model="idle") == 0
    assert value(s, "perfd_cache_model_estimated_bytes", model="small", device="cpu") == 1000
    assert value(s, "perfd_cache_budget_bytes", device="cpu") == 50 * GiB
    assert "perfd_cache_model_measured_bytes" not in names(s)  # measure=False
    assert value(s, "perfd_cache_hits_total", model="small") == 2
    assert value(s, "perfd_cache_misses_total", model="small") == 1
    assert value(s, "perfd_cache_loads_total", model="small") == 1
    assert value(s, "perfd_cache_hits_total", model="big") == 1  # evicted: still counted
    assert value(s, "perfd_cache_loads_total", model="big") == 1
    assert value(s, "perfd_cache_hits_total", model="idle") == 0
    assert value(s, "perfd_cache_load_seconds_count", model="small") == 1
    assert value(s, "perfd_cache_load_seconds_bucket", model="small", le="600.0") == 1
    assert value(s, "perfd_cache_evictions_total", reason="manual") == 1
    assert value(s, "perfd_cache_evictions_total", reason="lru") == 0
    assert value(s, "perfd_cache_models_loaded") == 1
    assert value(s, "perfd_cache_requests_total", result="hit") == 3
    assert value(s, "perfd_cache_requests_total", result="miss") == 2


def test_tensor_bytes_charged_bytes_and_runtime_overhead_are_exported() -> None:
    """The cache's memory truth on /metrics equals its own accounting (``ps``, ``stats``):
    a model's tensor bytes per device, what its budget charges, and perfd's runtime overhead
    (here: a first load that grows RSS by the model's tensors plus 300 KiB of imports)."""
    from tests.test_cache import FakeMeter

    meter = FakeMeter()

    class TensorLoader(SizedLoader):
        name = "tensors"
        first = True

        def load(self, spec: ModelSpec) -> Loaded:
            size = int(spec.options["size"])
            meter.rss += size + (300 << 10 if self.first else 0)
            self.first = False
            return Loaded({"name": spec.name}, size, tensor_bytes={"cpu": size - 24, "cuda:0": 24})

    cfg = config.parse(
        {
            "cache": {"keep_alive": "forever"},
            "models": {"m": {"loader": "tensors", "options": {"size": 4 << 20}}},
        }
    )
    loader = TensorLoader()
    cache = ModelCache(cfg.cache, cfg.models, lambda _: loader, lambda _: 100 * GiB, meter=meter)
    monitor, _, _, _ = two_gpu_monitor()
    monitor.sample_once()
    server = MetricsServer("127.0.0.1:0", replace(Sources(monitor), cache=cache.stats))
    try:
        server.start()
        cache.load("m")
        s = scrape(server)
        (entry,) = cache.ps()
        assert value(s, "perfd_cache_model_tensor_bytes", model="m", device="cpu") == (4 << 20) - 24
        assert value(s, "perfd_cache_model_tensor_bytes", model="m", device="cuda:0") == 24
        assert value(s, "perfd_cache_model_bytes", model="m", device="cpu") == entry["bytes"]
        assert entry["bytes"] == (4 << 20) - 24
        overhead = cache.stats()["devices"]["cpu"]["runtime_overhead_bytes"]
        assert value(s, "perfd_cache_runtime_overhead_bytes", device="cpu") == overhead
        assert overhead == (300 << 10) + 24  # what the RSS grew by beyond the cpu tensors
    finally:
        server.stop()


def test_a_failing_load_hook_does_not_fail_the_load() -> None:
    """The cache logs an on_load hook's exception and keeps the model loaded."""
    cfg = config.parse({"models": {"m": {"loader": "sized"}}})
    loader = SizedLoader()

    def broken(model: str, seconds: float) -> None:
        raise RuntimeError("bug")

    cache = ModelCache(
        cfg.cache, cfg.models, lambda _: loader, lambda _: GiB, measure=False, on_load=broken
    )
    cache.load("m")
    assert cache.loaded_names() == ["m"]


def test_eviction_reasons_match_the_cache() -> None:
    """The reasons perfd_cache_evictions_total lists are the cache's: both take perfd.wire's."""
    from perfd.cache import core as cache
    from perfd.metrics import exporter as metrics
    from perfd.wire import values

    assert metrics.EVICTION_REASONS is cache.EVICTION_REASONS is values.EVICTION_REASONS


def test_cache_not_started_reports_zeros_and_configured_models() -> None:
    """Before the cache starts: zero counters, configured models not loaded; nothing built."""
    monitor, _, _, _ = two_gpu_monitor()
    server = MetricsServer("127.0.0.1:0", Sources(monitor, configured_models=lambda: ["a", "b"]))
    s = scrape(server)
    assert value(s, "perfd_cache_model_loaded", model="a") == 0
    assert value(s, "perfd_cache_hits_total", model="b") == 0
    assert value(s, "perfd_cache_models_loaded") == 0
    assert value(s, "perfd_cache_evictions_total", reason="pressure") == 0
    assert value(s, "perfd_cache_requests_total", result="miss") == 0


PROVIDERS = {
    "openrouter": {
        "used": True,
        "requests": 7,
        "retries": 2,
        "failures": {"rate_limited": 1},
        "connections_opened": 1,
        "latency_ms": {"p50": 120.0, "p95": 900.0},
    },
    "local": {"used": False},
}
SINKS = {"webhook": {"sent": 4, "failed": 1, "dropped": 2, "dropped_at_stop": 1}}


def test_providers_and_alert_sinks() -> None:
    """Provider requests, retries, failures, connections and latency quantiles; sink counts."""
    monitor, _, _, _ = two_gpu_monitor()
    sources = Sources(monitor, providers=lambda: PROVIDERS, sinks=lambda: SINKS)
    s = scrape(MetricsServer("127.0.0.1:0", sources))
    assert value(s, "perfd_provider_requests_total", provider="openrouter") == 7
    assert value(s, "perfd_provider_requests_total", provider="local") == 0
    assert value(s, "perfd_provider_retries_total", provider="openrouter") == 2
    failures = value(s, "perfd_provider_failures_total", provider="openrouter", kind="rate_limited")
    assert failures == 1
    assert value(s, "perfd_provider_connections_opened_total", provider="openrouter") == 1
    p95 = value(s, "perfd_provider_latency_seconds", provider="openrouter", quantile="0.95")
    assert p95 == pytest.approx(0.9)
    assert value(s, "perfd_alert_sink_sent_total", sink="webhook") == 4
    assert value(s, "perfd_alert_sink_failed_total", sink="webhook") == 1
    assert value(s, "perfd_alert_sink_dropped_total", sink="webhook") == 3


def _everything() -> MetricsServer:
    """A server whose output holds every family perfd makes."""
    monitor, host, _, clock = two_gpu_monitor(host_memory={"warn": 10, "for": 0})
    for step in range(5):
        clock.now += 5
        psi = Psi(step * 500_000, step * 100_000, 1.0, 1.0, 0.1, 0.1)
        host.next = host_sample(clock.now, used_percent=40.0 + 2 * step, psi=psi)
        monitor.sample_once()
    cache, server = _cache(Sources(monitor, providers=lambda: PROVIDERS, sinks=lambda: SINKS))
    cache.load("small")
    cache.load("big")
    return server


# The GPU process series take DCGM exporter's label names (gpu, UUID, modelName: issue 16),
# so that one query joins both exporters; promtool's style lint wants snake_case for those.
DCGM_CAMEL_CASE = {
    f"{name} label names should be written in 'snake_case' not 'camelCase'"
    for name in ("perfd_gpu_process_memory_used_bytes", "perfd_gpu_memory_unaccounted_bytes")
}


def test_promtool_check_metrics_passes() -> None:
    """`promtool check metrics` finds no problem in perfd's exposition, but the camelCase of
    the DCGM exporter label names the GPU process series share with it."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    text = _everything().exposition()
    assert b"perfd_gpu_memory_unaccounted_bytes{" in text  # the lint below sees those series
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    problems = set((out.stdout + out.stderr).decode().splitlines()) - DCGM_CAMEL_CASE
    assert problems == set(), problems
    assert out.returncode in (0, 3)  # 3: lint findings, all of them the DCGM names above


def test_openmetrics_exposition_parses() -> None:
    """The OpenMetrics format (what Prometheus asks for) passes the strict parser."""
    text = openmetrics_latest(_everything().registry).decode()
    families = {f.name for f in parse_openmetrics(text)}
    assert {"perfd_gpu", "perfd_cache_hits", "perfd_provider_latency_seconds"} <= families


def test_server_serves_and_stops() -> None:
    """The HTTP thread answers /metrics on 127.0.0.1 and frees the port on stop()."""
    monitor, _, _, _ = two_gpu_monitor()
    monitor.sample_once()
    server = MetricsServer("127.0.0.1:0", Sources(monitor))
    server.start()
    port = server.port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            s = parse(reply.read().decode())
        assert value(s, "perfd_host_memory_total_bytes") == 64 * GiB
    finally:
        server.stop()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


# -- config -----------------------------------------------------------------------------


def test_listen_beyond_loopback_needs_allow_remote() -> None:
    """0.0.0.0 is refused unless allow_remote = true; loopback needs nothing."""
    with pytest.raises(ConfigError, match="allow_remote"):
        config.parse({"metrics": {"listen": "0.0.0.0:9464"}})
    assert config.parse({"metrics": {"listen": "0.0.0.0:9464", "allow_remote": True}})
    assert config.parse({"metrics": {"listen": "[::1]:9464"}}).metrics.listen == "[::1]:9464"


# -- inside perfd ---------------------------------------------------------------------------


def test_metrics_off_imports_no_prometheus_client(short_dir: Path) -> None:
    """An (embedded) perfd without [metrics] listen never imports prometheus_client."""
    code = (
        "import sys, perfd\n"
        "from perfd import config\n"
        f"with perfd.embed(config.Config(), serve=False, runtime_dir={str(short_dir)!r}):\n"
        "    pass\n"
        "print('prometheus_client loaded:', 'prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # perfd's own log lines share stdout (written by its log thread, in any order)
    answer = [line for line in out.stdout.splitlines() if line.startswith("prometheus_client")]
    assert answer == ["prometheus_client loaded: False"], out.stdout


def test_embedded_cache_feeds_the_load_histogram(short_dir: Path) -> None:
    """The daemon wires the cache's on_load hook; close() stops the server."""
    port = closed_port()
    cfg = config.parse(
        {
            "monitor": {"interval": "1h", "trend_window": "1h"},
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "models": {"echo": {"target": "tests.models.toy:make_echo"}},
        }
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with perfd.embed(cfg, serve=False, runtime_dir=short_dir / "run") as pd:
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert 'perfd_cache_model_loaded{model="echo"} 0.0' in reply.read().decode()
        pd.cache.get("echo")
        with urllib.request.urlopen(url, timeout=5) as reply:
            s = parse(reply.read().decode())
    assert value(s, "perfd_cache_load_seconds_count", model="echo") == 1
    assert value(s, "perfd_cache_loads_total", model="echo") == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_real_perfd_serves_metrics(start_perfd: StartPerfd) -> None:
    """perfd with [metrics] listen serves /metrics; host memory is /proc/meminfo's MemTotal."""
    port = closed_port()
    perfd_ = start_perfd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        s = parse(reply.read().decode())
    assert value(s, "perfd_host_memory_total_bytes") == meminfo_total()
    assert value(s, "perfd_up") == 1
    assert "process_cpu_seconds_total" in names(s)
    status = json.loads(perfd_.ctl("status", "--json").stdout)
    assert status["components"]["metrics"] == "started"
    assert perfd_.stop() == 0


def test_metrics_are_off_by_default(start_perfd: StartPerfd) -> None:
    """Without [metrics] listen, nothing listens and status says metrics are off."""
    perfd_ = start_perfd("")
    status = json.loads(perfd_.ctl("status", "--json").stdout)
    assert status["components"]["metrics"] == "off"


def test_port_in_use_is_a_clear_startup_error(start_perfd: StartPerfd) -> None:
    """A taken port: perfd exits 1 saying which address and what to do."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        perfd_ = start_perfd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n', wait_ready=False)
        assert perfd_.proc.wait(30) == 1
    output = perfd_.log_path.read_text()
    assert f"perfd: cannot serve metrics on 127.0.0.1:{port}: Address already in use" in output
    assert "[metrics] listen" in output
    assert "Traceback" not in output


# -- the real Prometheus ----------------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return found


@pytest.fixture
def prometheus(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start a real Prometheus scraping 127.0.0.1:PORT every second; its URL once ready."""
    with contextlib.ExitStack() as running:

        def start(target_port: int) -> str:
            port = closed_port()
            conf = tmp_path / "prometheus.yml"
            conf.write_text(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: perfd\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{target_port}']\n"
            )
            argv = [
                prometheus_binary,
                f"--config.file={conf}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ]
            return running.enter_context(ready_server(argv, port, tmp_path / "prometheus.log"))

        yield start


def test_real_prometheus_scrapes_perfd(
    start_perfd: StartPerfd, prometheus: Callable[[int], str]
) -> None:
    """A real Prometheus scrapes a running perfd; its query API returns MemTotal and up == 1."""
    port = closed_port()
    perfd_ = start_perfd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        url = prometheus(port)
        found: dict[str, list[dict[str, Any]]] = {}

        def query(expr: str) -> bool:
            q = urllib.parse.urlencode({"query": expr})
            body = _get_json(f"{url}/api/v1/query?{q}")
            assert body["status"] == "success", body
            found[expr] = body["data"]["result"]
            return bool(found[expr])

        wait_until(lambda: query("perfd_host_memory_total_bytes"), timeout=60)
        (series,) = found["perfd_host_memory_total_bytes"]
        assert series["metric"]["job"] == "perfd"
        assert series["metric"]["instance"] == f"127.0.0.1:{port}"
        assert float(series["value"][1]) == meminfo_total()
        wait_until(lambda: query('up{job="perfd"}'), timeout=30)
        (up,) = found['up{job="perfd"}']
        assert up["value"][1] == "1"
        assert query("sum(perfd_gpu_state)")  # exactly one state at a time
        assert found["sum(perfd_gpu_state)"][0]["value"][1] == "1"
    finally:
        assert perfd_.stop() == 0


def test_counters_of_a_model_evicted_between_scrapes_are_not_lost() -> None:
    """A model loaded, used and evicted between two scrapes still shows its counters."""
    monitor, _, _, _ = two_gpu_monitor()
    monitor.sample_once()
    cache, server = _cache(Sources(monitor))
    cache.load("big")
    cache.get("big")
    cache.get("big")
    cache.evict("big")  # never scraped while loaded
    s = scrape(server)
    assert value(s, "perfd_cache_model_loaded", model="big") == 0
    assert value(s, "perfd_cache_hits_total", model="big") == 2
    assert value(s, "perfd_cache_loads_total", model="big") == 1
