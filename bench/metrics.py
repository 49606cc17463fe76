"""Benchmark 12: what a Prometheus scrape of perfd's /metrics costs, on a big host and a small one.

In-process, no perfd: a real ``perfd.monitor.sampler.Monitor`` over the tests' fake probes
(``tests.fakeprobes``: values, no NVML), a real ``perfd.cache.core.ModelCache`` with a trivial
loader (benchmark 9's) holding N loaded models, and the real
``perfd.metrics.exporter.MetricsServer`` (perfd's registry, perfd's bounded HTTP server) on
127.0.0.1, a free port. Two scenarios:

    A  8 fake GPUs, 200 cached models (each loaded once: 200 load-time histograms)
    B  1 fake GPU,    1 cached model

Each round scrapes both servers, lines in a shuffled order, with ``http.client`` (one
HTTPConnection per server, kept: perfd's server answers one request and closes, so the
client reconnects for each scrape, as Prometheus does with such a target). Lines per scenario:

    prometheus  the request Prometheus 2.x sends: OpenMetrics preferred, gzip accepted
    text        text format 0.0.4, no compression (curl, promtool)
    collect     generate_latest(registry) in-process: the collection alone, no HTTP

Each call is timed with perf_counter (wall) and process_time (CPU of the whole process: the
client, the server thread and the collection). Sizes are the body as sent and as text.
"""

from __future__ import annotations

import gzip
import http.client
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.cache_bookkeeping import TrivialLoader
from bench.common import ROOT, Check, captured_log, median, percentile, print_table

# What Prometheus 2.42 (Debian 12's) sends when it scrapes.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
}
TEXT_HEADERS = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"}
PROM, TEXT, COLLECT = "prometheus", "text", "collect"
SCRAPE_INTERVAL = 15.0  # seconds: Prometheus' usual global scrape_interval
WARMUP = 10


@dataclass(frozen=True)
class Options:
    scrapes: int = 200  # timed rounds per line


@dataclass(frozen=True)
class Scenario:
    name: str
    gpus: int
    models: int


SCENARIOS = (Scenario("A", gpus=8, models=200), Scenario("B", gpus=1, models=1))


@dataclass
class Subject:
    scenario: Scenario
    server: Any  # perfd.metrics.exporter.MetricsServer
    conn: http.client.HTTPConnection
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes as sent
    text_bytes: dict[str, int] = field(default_factory=dict)  # bytes as text
    series: int = 0
    histogram_series: int = 0  # of them, perfd_cache_load_seconds_*

    def get(self, headers: dict[str, str]) -> tuple[bytes, str]:
        self.conn.request("GET", "/metrics", headers=headers)
        reply = self.conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"scenario {self.scenario.name}: /metrics answered {reply.status}")
        return body, reply.getheader("Content-Encoding") or ""

    def calls(self) -> dict[str, Any]:
        return {
            PROM: lambda: self.get(PROMETHEUS_HEADERS),
            TEXT: lambda: self.get(TEXT_HEADERS),
            COLLECT: lambda: (self.server.exposition(), ""),
        }


def _build(scenario: Scenario) -> Subject:
    if str(ROOT) not in sys.path:  # tests.fakeprobes lives in the repository, beside bench
        sys.path.insert(0, str(ROOT))
    from perfd import config
    from perfd.cache.core import ModelCache
    from perfd.metrics.exporter import MetricsServer, Sources
    from perfd.monitor.sampler import Monitor
    from perfd.probes.samples import Psi
    from tests.fakeprobes import FakeGpuProbe, FakeHostProbe, gpu_sample, host_sample

    names = [f"model-{i:03d}" for i in range(scenario.models)]
    cfg = config.parse(
        {
            "cache": {"max_models": 0, "keep_alive": "forever"},
            "models": {name: {"loader": TrivialLoader.name} for name in names},
            "alerts": {"gpu_memory": {"warn": 30, "for": 0}},  # one firing alert per GPU
        }
    )
    host = FakeHostProbe(host_sample())
    gpus = FakeGpuProbe(*(gpu_sample(i, used_percent=40.0) for i in range(scenario.gpus)))
    clock = [1000.0]
    monitor = Monitor(
        cfg.monitor, cfg.alerts, host_probe=host, gpu_probe=gpus, clock=lambda: clock[0]
    )
    for step in range(10):  # some trend history, PSI from the second sample on
        clock[0] += 5
        psi = Psi(step * 50_000, step * 10_000, 1.0, 1.0, 0.1, 0.1)
        host.next = host_sample(clock[0], used_percent=50.0 + step, psi=psi)
        monitor.sample_once()
    loader = TrivialLoader()
    server: Any = None

    def on_load(model: str, seconds: float) -> None:
        server.observe_load(model, seconds)

    cache = ModelCache(
        cfg.cache, cfg.models, lambda _: loader, lambda _: 1 << 50, measure=False, on_load=on_load
    )
    sources = Sources(
        monitor, cache=cache.stats, configured_models=lambda: cfg.models, providers=lambda: None
    )
    server = MetricsServer("127.0.0.1:0", sources)
    for name in names:
        cache.lease(name).release()
    server.start()
    subject = Subject(
        scenario, server, http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    )
    _check(subject, names)
    return subject


def _check(subject: Subject, names: list[str]) -> None:
    """The scrape holds every model and GPU of the scenario."""
    text = subject.server.exposition().decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    loaded = sum(line.startswith("perfd_cache_model_loaded{") for line in lines)
    gpus = sum(line.startswith("perfd_gpu_up{") for line in lines)
    if loaded != len(names) or gpus != subject.scenario.gpus:
        raise RuntimeError(
            f"scenario {subject.scenario.name}: {loaded} models, {gpus} GPUs in the scrape"
        )
    subject.series = len(lines)
    subject.histogram_series = sum(line.startswith("perfd_cache_load_seconds") for line in lines)


def _round(subjects: list[Subject], rng: random.Random, *, timed: bool) -> None:
    calls = [(s, name, call) for s in subjects for name, call in s.calls().items()]
    rng.shuffle(calls)
    for subject, name, call in calls:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        body, encoding = call()
        wall1, cpu1 = time.perf_counter(), time.process_time()
        if not timed:
            subject.sizes[name] = len(body)
            subject.text_bytes[name] = len(gzip.decompress(body) if encoding == "gzip" else body)
            continue
        subject.wall.setdefault(name, []).append(wall1 - wall0)
        subject.cpu.setdefault(name, []).append(cpu1 - cpu0)


def run(opts: Options) -> tuple[dict[str, Any], list[Check]]:
    rng = random.Random(12)
    subjects: list[Subject] = []
    with captured_log() as logged:
        try:
            subjects = [_build(s) for s in SCENARIOS]
            for _ in range(WARMUP):
                _round(subjects, rng, timed=False)
            for _ in range(opts.scrapes):
                _round(subjects, rng, timed=True)
        finally:
            for s in subjects:
                s.conn.close()
                s.server.stop()
    warnings = [  # the GPU alerts fire on purpose (perfd_alert_firing series)
        line
        for line in logged.getvalue().splitlines()
        if line.strip() and '"alert.firing"' not in line
    ]
    return _report(subjects, opts, warnings)


def _ms(values: list[float], pct: float | None = None) -> float:
    return 1000 * (median(values) if pct is None else percentile(values, pct))


def _report(
    subjects: list[Subject], opts: Options, warnings: list[str]
) -> tuple[dict[str, Any], list[Check]]:
    a, b = subjects
    stats = {
        s.scenario.name: {
            name: {
                "p50_ms": _ms(s.wall[name]),
                "p95_ms": _ms(s.wall[name], 95),
                "cpu_p50_ms": _ms(s.cpu[name]),
                "sent_kib": s.sizes[name] / 1024,
                "text_kib": s.text_bytes[name] / 1024,
            }
            for name in (PROM, TEXT, COLLECT)
        }
        for s in subjects
    }
    sa, sb = stats[a.scenario.name], stats[b.scenario.name]
    labels = {
        PROM: "GET /metrics as Prometheus (OpenMetrics, gzip)",
        TEXT: "GET /metrics, text 0.0.4, no gzip",
        COLLECT: "collection alone (generate_latest, no HTTP)",
    }
    rows = []
    for key, label in labels.items():
        x, y = sa[key], sb[key]
        rows.append(
            (
                label,
                x["p50_ms"],
                x["p95_ms"],
                x["cpu_p50_ms"],
                f"{x['sent_kib']:.1f}",
                y["p50_ms"],
                y["p95_ms"],
                f"{y['sent_kib']:.1f}",
                f"{x['p50_ms'] / y['p50_ms']:.1f}" if y["p50_ms"] else "-",
            )
        )
    print_table(
        f"12. metrics: one /metrics scrape ({opts.scrapes} per line and scenario)",
        [
            "line",
            "A p50 ms",
            "A p95 ms",
            "A CPU ms",
            "A KiB",
            "B p50 ms",
            "B p95 ms",
            "B KiB",
            "A/B",
        ],
        rows,
    )
    for s in subjects:
        st = stats[s.scenario.name]
        print(
            f"{s.scenario.name}: {s.scenario.gpus} fake GPU{'s' if s.scenario.gpus > 1 else ''}, "
            f"{s.scenario.models} cached model{'s' if s.scenario.models > 1 else ''}: "
            f"{s.series:,} series ({s.histogram_series:,} of the load-time histogram); "
            f"{st[TEXT]['text_kib']:.1f} KiB as text, "
            f"{st[PROM]['text_kib']:.1f} KiB as OpenMetrics, {st[PROM]['sent_kib']:.1f} KiB gzipped"
        )
    load = {
        name: 100 * st[PROM]["cpu_p50_ms"] / 1000 / SCRAPE_INTERVAL for name, st in stats.items()
    }
    print(
        f"At a {SCRAPE_INTERVAL:g} s scrape interval: A {load[a.scenario.name]:.4f} %, "
        f"B {load[b.scenario.name]:.4f} % of one core (CPU per Prometheus-style scrape / 15 s; "
        "client and server share this process)"
    )
    for line in warnings[:5]:
        print(f"perfd warned: {line}")

    tag = f"(A: {a.scenario.gpus} GPUs, {a.scenario.models} models)"
    base = f"B: {b.scenario.gpus} GPU, {b.scenario.models} model"
    checks = [
        Check(
            "12 metrics", f"scrape p50 {tag}", "ms", sa[PROM]["p50_ms"], base, sb[PROM]["p50_ms"]
        ),
        Check(
            "12 metrics", f"scrape p95 {tag}", "ms", sa[PROM]["p95_ms"], base, sb[PROM]["p95_ms"]
        ),
        Check(
            "12 metrics",
            f"scrape size, text {tag}",
            "KiB",
            sa[TEXT]["text_kib"],
            base,
            sb[TEXT]["text_kib"],
        ),
        Check(
            "12 metrics",
            f"scrape size, gzipped {tag}",
            "KiB",
            sa[PROM]["sent_kib"],
            base,
            sb[PROM]["sent_kib"],
        ),
        Check(
            "12 metrics",
            f"CPU at a 15 s scrape interval {tag}",
            "% of a core",
            load[a.scenario.name],
            base,
            load[b.scenario.name],
        ),
    ]
    data = {
        "scrapes": opts.scrapes,
        "scenarios": {
            s.scenario.name: {
                "gpus": s.scenario.gpus,
                "models": s.scenario.models,
                "series": s.series,
                "histogram_series": s.histogram_series,
                "stats": stats[s.scenario.name],
                "cpu_pct_at_15s": load[s.scenario.name],
                "wall_s": s.wall,
                "cpu_s": s.cpu,
            }
            for s in subjects
        },
        "warnings": warnings,
    }
    return data, checks


if __name__ == "__main__":
    run(Options())
