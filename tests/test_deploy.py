"""The Prometheus and Grafana files in deploy/: promtool, a real Prometheus, the dashboard."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perfd.config import AlertsConfig, ThresholdRule
from tests.conftest import StartPerfd
from tests.daemons import ready_server, wait_until
from tests.httpservers import closed_port

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "perfd.rules.yml"
RULES_TEST = PROMETHEUS_DIR / "perfd.rules.test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "perfd-dashboard.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)"
)

# Every metric perfd's /metrics serves (docs/prometheus.md lists them with their meaning).
PERFD_METRICS = frozenset(
    {
        # perfd itself
        "perfd_build_info",
        "perfd_up",
        "perfd_monitor_samples_total",
        "perfd_monitor_sample_seconds_total",
        # the host
        "perfd_host_memory_total_bytes",
        "perfd_host_memory_available_bytes",
        "perfd_host_memory_used_ratio",
        "perfd_host_memory_verdict",
        "perfd_host_memory_trend_bytes_per_second",
        "perfd_host_memory_time_to_full_seconds",
        "perfd_host_swap_total_bytes",
        "perfd_host_swap_used_bytes",
        "perfd_host_psi_memory_some_ratio",
        "perfd_host_psi_memory_full_ratio",
        "perfd_host_cpu_ratio",
        "perfd_host_load1",
        "perfd_cgroup_memory_limit_bytes",
        "perfd_cgroup_memory_current_bytes",
        # the GPUs
        "perfd_gpu_state",
        "perfd_gpu_info",
        "perfd_gpu_up",
        "perfd_gpu_memory_total_bytes",
        "perfd_gpu_memory_used_bytes",
        "perfd_gpu_memory_free_bytes",
        "perfd_gpu_memory_reserved_bytes",
        "perfd_gpu_memory_used_ratio",
        "perfd_gpu_engine_claims_ratio",
        "perfd_gpu_utilization_ratio",
        "perfd_gpu_temperature_celsius",
        "perfd_gpu_power_watts",
        "perfd_gpu_memory_time_to_full_seconds",
        # perfd's own alerts and their sinks
        "perfd_alerts_firing",
        "perfd_alert_firing",
        "perfd_alert_sink_sent_total",
        "perfd_alert_sink_failed_total",
        "perfd_alert_sink_dropped_total",
        # the model cache (perfd_cache_load_seconds is a histogram)
        "perfd_cache_model_estimated_bytes",
        "perfd_cache_model_measured_bytes",
        "perfd_cache_model_loaded",
        "perfd_cache_hits_total",
        "perfd_cache_misses_total",
        "perfd_cache_loads_total",
        "perfd_cache_load_seconds_bucket",
        "perfd_cache_load_seconds_sum",
        "perfd_cache_load_seconds_count",
        "perfd_cache_evictions_total",
        "perfd_cache_models_loaded",
        "perfd_cache_budget_bytes",
        "perfd_cache_requests_total",
        # remote providers
        "perfd_provider_requests_total",
        "perfd_provider_retries_total",
        "perfd_provider_failures_total",
        "perfd_provider_latency_seconds",
        "perfd_provider_connections_opened_total",
        # the engines, and each GPU process's owner
        "perfd_engine_up",
        "perfd_engine_kv_usage_ratio",
        "perfd_engine_kv_capacity_tokens",
        "perfd_engine_requests_running",
        "perfd_engine_requests_waiting",
        "perfd_engine_preemptions_total",
        "perfd_engine_gpu_memory_bytes",
        "perfd_gpu_process_memory_used_bytes",
        "perfd_gpu_memory_unaccounted_bytes",
    }
)
# prometheus_client's ProcessCollector, and Prometheus' own scrape health.
OTHER_METRICS = frozenset(
    {
        "up",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    }
)
PERFD_NAME = re.compile(r"\bperfd_[a-z0-9_]+")
RECORDING_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
# Grafana's variables, replaced by what they stand for so that promtool can parse the expr.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${instance}": ".*",
    "$instance": ".*",
}
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# alert name -> (perfd's rule, the metric compared, what one unit of the rule is in the metric)
THRESHOLD_ALERTS = {
    "PerfdHostMemoryHigh": ("host_memory", "perfd_host_memory_used_ratio", 0.01),
    "PerfdSwapHigh": ("swap", "instance:perfd_host_swap_used:ratio", 0.01),
    "PerfdMemoryPressure": ("psi", "perfd_host_psi_memory_some_ratio", 0.01),
    "PerfdGpuMemoryHigh": ("gpu_memory", "perfd_gpu_memory_used_ratio", 0.01),
    "PerfdGpuTemperatureHigh": ("gpu_temperature", "perfd_gpu_temperature_celsius", 1.0),
    "PerfdEngineKvCacheHigh": ("kv_cache_usage", "perfd_engine_kv_usage_ratio", 0.01),
    "PerfdEngineQueueHigh": ("engine_waiting", "perfd_engine_requests_waiting", 1.0),
    "PerfdEnginePreempting": (
        "engine_preemptions",
        "instance_engine:perfd_engine_preemptions:rate5m_per_minute",
        1.0,
    ),
}
EXHAUSTION_ALERTS = {
    "PerfdHostMemoryExhaustion": "perfd_host_memory",
    "PerfdGpuMemoryExhaustion": "perfd_gpu_memory",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool (its skip mark guarantees it is there)."""
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, check=False)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def graph_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard()["panels"]) if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def dashboard_exprs() -> list[str]:
    return [expr for panel in graph_panels() for expr in exprs(panel)]


def selected_names(expr: str) -> set[str]:
    """The metrics (and recording rules) a PromQL expr selects: not functions or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)  # label matchers, ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text)
    return {name for name, call in found if not call and name not in PROMQL_KEYWORDS}


def check_names(expr: str, recorded: frozenset[str] = frozenset()) -> None:
    """``expr`` selects only perfd's metrics, `up`, process_* and the ``recorded`` rules."""
    perfd = set(PERFD_NAME.findall(RECORDING_NAME.sub("", expr)))
    assert perfd <= PERFD_METRICS, (expr, sorted(perfd - PERFD_METRICS))
    unknown = selected_names(expr) - PERFD_METRICS - OTHER_METRICS - recorded
    assert not unknown, (expr, sorted(unknown))


# -- promtool -------------------------------------------------------------------------------


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts perfd.rules.yml."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rules_pass_their_unit_tests() -> None:
    """`promtool test rules` passes perfd.rules.test.yml (warn then crit, exhaustion, ...)."""
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_example_config_passes_promtool_check() -> None:
    """`promtool check config` accepts prometheus.yml and the rule file it names."""
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses as PromQL (promtool checks them as recording rules)."""
    rules = []
    for n, query in enumerate(dashboard_exprs()):
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, query
        rules.append({"record": f"dashboard:query_{n}:check", "expr": expr})
    check = tmp_path / "dashboard.rules.yml"  # JSON is YAML
    check.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(check))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the rules in a real Prometheus ---------------------------------------------------------


@contextlib.contextmanager
def running_prometheus(config: Path) -> Iterator[str]:
    """A real Prometheus with ``config`` (its data and log beside it); its URL once ready."""
    assert PROMETHEUS is not None
    port = closed_port()
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={config.parent / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with ready_server(argv, port, config.parent / "prometheus.log") as url:
        yield url


def api(url: str, path: str, **params: str) -> Any:
    """GET a Prometheus API path; its ``data`` (the status must be success)."""
    body = get_json(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    assert body["status"] == "success", body
    return body["data"]


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result: its series."""
    result: list[dict[str, Any]] = api(url, "query", query=expr)["result"]
    return result


def rules_of(url: str) -> list[dict[str, Any]]:
    return [rule for group in api(url, "rules")["groups"] for rule in group["rules"]]


@pytest.fixture
def loaded_rules(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """The rules as a real Prometheus loaded them from the example config (/api/v1/rules)."""
    for path in (CONFIG, RULES):
        shutil.copy(path, tmp_path / path.name)
    with running_prometheus(tmp_path / CONFIG.name) as url:
        yield rules_of(url)


def alerts_named(rules: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The alerting rules called ``name``, by severity."""
    found = {r["labels"]["severity"]: r for r in rules if r.get("name") == name}
    assert set(found) == {"warning", "critical"}, f"{name}: {sorted(found)}"
    return found


def threshold(query: str, metric: str, op: str) -> float:
    match = re.search(rf"{re.escape(metric)} {op} ([0-9.e+-]+)", query)
    assert match, f"no `{metric} {op} N` in {query!r}"
    return float(match.group(1))


@needs_prometheus
def test_threshold_alerts_mirror_perfds_defaults(loaded_rules: list[dict[str, Any]]) -> None:
    """Each threshold alert fires at perfd's default warn and crit, after the same `for`."""
    defaults = AlertsConfig()
    for name, (rule, metric, unit) in THRESHOLD_ALERTS.items():
        spec: ThresholdRule = getattr(defaults, rule)
        alerts = alerts_named(loaded_rules, name)
        for severity, level in (("warning", spec.warn), ("critical", spec.crit)):
            alert = alerts[severity]
            assert threshold(alert["query"], metric, ">=") == pytest.approx(level * unit), name
            assert alert["duration"] == spec.for_, name


@needs_prometheus
def test_exhaustion_alerts_mirror_perfds_defaults(loaded_rules: list[dict[str, Any]]) -> None:
    """Exhaustion needs under free_below free and a time to full under warn / crit seconds."""
    spec = AlertsConfig().exhaustion
    for name, prefix in EXHAUSTION_ALERTS.items():
        alerts = alerts_named(loaded_rules, name)
        for severity, seconds in (("warning", spec.warn), ("critical", spec.crit)):
            query = alerts[severity]["query"]
            assert threshold(query, f"{prefix}_time_to_full_seconds", "<=") == seconds
            free = threshold(query, f"(1 - {prefix}_used_ratio)", "<")
            assert free == pytest.approx(spec.free_below / 100)
            assert " and " in query
            assert alerts[severity]["duration"] == spec.for_


@needs_prometheus
def test_every_alert_has_a_severity_and_says_where(loaded_rules: list[dict[str, Any]]) -> None:
    """Every alert is warning or critical, with a summary and description naming the host."""
    alerts = [r for r in loaded_rules if r["type"] == "alerting"]
    assert len(alerts) >= 20
    for alert in alerts:
        assert alert["name"].startswith("Perfd"), alert["name"]
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["name"]
        for key in ("summary", "description"):
            assert "{{ $labels.instance }}" in alert["annotations"][key], alert["name"]
    assert any(a["query"] == 'up{job="perfd"} == 0' for a in alerts)


@needs_prometheus
def test_rules_and_dashboard_run_on_a_real_perfd(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """A real Prometheus scraping a real perfd evaluates every rule and dashboard query."""
    port = closed_port()
    perfd = start_perfd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    shutil.copy(RULES, tmp_path / RULES.name)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES.name}\n"
        "scrape_configs:\n  - job_name: perfd\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    try:
        with running_prometheus(config) as url:
            instance = f"127.0.0.1:{port}"
            wait_until(lambda: bool(query(url, "perfd_host_memory_used_ratio")), 60)
            # every rule evaluated once the data is there, none with an error
            wait_until(lambda: all(r["health"] == "ok" for r in rules_of(url)), 60)
            for rule in rules_of(url):
                assert not rule.get("lastError"), rule
            assert "PerfdDown" not in {
                a["labels"]["alertname"] for a in api(url, "alerts")["alerts"]
            }
            # the dashboard: its host variable finds perfd, each query runs
            hosts = query(url, "group by (instance) (perfd_up)")  # label_values(perfd_up, ...)
            assert [h["metric"]["instance"] for h in hosts] == [instance]
            for expr in dashboard_exprs():
                query(url, expr.replace("$instance", instance))  # status success
            (used,) = query(url, f'perfd_host_memory_used_ratio{{instance="{instance}"}}')
            assert 0 < float(used["value"][1]) < 1
    finally:
        assert perfd.stop() == 0


# -- names ------------------------------------------------------------------------------------


def rule_exprs(text: str) -> list[str]:
    """The `expr:` values of a rules file: one line, or the block scalar (`|`) below it."""
    found: list[str] = []
    lines = text.splitlines()
    for n, line in enumerate(lines):
        match = re.match(r"^(\s*)expr: (.*)$", line)
        if match is None:
            continue
        indent, value = len(match.group(1)), match.group(2)
        if value not in ("|", ">", "|-", ">-"):
            found.append(value)
            continue
        block = []
        for following in lines[n + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        found.append(" ".join(block))
    return found


def test_rules_use_only_metrics_perfd_serves() -> None:
    """perfd.rules.yml's exprs name only perfd's metrics, `up`, and recording rules it defines."""
    text = RULES.read_text()
    queries = rule_exprs(text)
    assert len(queries) == text.count("expr:")
    defined = frozenset(re.findall(r"^\s*- record: (\S+)$", text, re.M))
    for query in queries:
        check_names(query, recorded=defined)
    assert selected_names(" ".join(queries)) >= {"up", "perfd_gpu_up"}


def test_dashboard_uses_only_metrics_perfd_serves() -> None:
    """Every dashboard query names only perfd's metrics, `up` and perfd's process_* ones."""
    variables = [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    assert variables == ["label_values(perfd_up, instance)"]
    for expr in dashboard_exprs():
        check_names(expr)
        assert not RECORDING_NAME.search(expr), f"needs perfd.rules.yml: {expr}"


def test_name_check_finds_foreign_metrics() -> None:
    """The name check sees a metric that perfd does not serve, wherever it hides."""
    assert selected_names('sum by (gpu) (rate(node_cpu_seconds_total{mode="idle"}[5m]))') == {
        "node_cpu_seconds_total"
    }
    assert selected_names("perfd_up and on (instance) up offset 5m > bool 1e3") == {
        "perfd_up",
        "up",
    }
    with pytest.raises(AssertionError):
        check_names("perfd_gpu_memory_used_ratio / perfd_gpu_memory_unknown_bytes")


# -- the dashboard ------------------------------------------------------------------------------


def test_dashboard_panels_are_well_formed() -> None:
    """Unique ids, a gridPos inside 24 columns, the Prometheus datasource, targets with exprs."""
    board = dashboard()
    assert board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in all_panels(board["panels"])]
    assert len(ids) == len(set(ids)), ids
    assert len(graph_panels()) >= 15
    for panel in graph_panels():
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert '"$instance"' in target["expr"], f"{panel['title']}: not filtered by host"


def test_dashboard_variables() -> None:
    """A Prometheus datasource variable and a multi-value `instance` variable with All."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"] == DATASOURCE
    assert instance["definition"] == "label_values(perfd_up, instance)"
    assert instance["query"]["query"] == instance["definition"]
    assert instance["multi"] is True
    assert instance["includeAll"] is True


# (words of the title, a piece of one of its exprs, its unit or None, its type)
REQUIRED_PANELS = [
    ("host memory used", "perfd_host_memory_used_ratio{", "percentunit", "timeseries"),
    ("host memory time to full", "perfd_host_memory_time_to_full_seconds{", "s", "timeseries"),
    ("psi", "perfd_host_psi_memory_some_ratio{", "percentunit", "timeseries"),
    ("gpu memory used", "perfd_gpu_memory_used_ratio{", "percentunit", "timeseries"),
    ("gpu temperature", "perfd_gpu_temperature_celsius{", "celsius", "timeseries"),
    ("cache hit ratio", 'result="hit"}[5m]', "percentunit", "timeseries"),
    ("evictions by reason", "rate(perfd_cache_evictions_total{", None, "timeseries"),
    ("loaded models", "perfd_cache_models_loaded{", None, "timeseries"),
    ("firing alerts by severity", "sum by (severity) (perfd_alerts_firing{", None, "stat"),
    ("provider requests", "rate(perfd_provider_requests_total{", None, "timeseries"),
    ("provider failures", "rate(perfd_provider_failures_total{", None, "timeseries"),
    ("provider latency p95", 'quantile="0.95"', "s", "timeseries"),
    ("engine kv cache used", "perfd_engine_kv_usage_ratio{", "percentunit", "timeseries"),
    ("engine requests running and waiting", "perfd_engine_requests_waiting{", None, "timeseries"),
    ("engine preemptions", "rate(perfd_engine_preemptions_total{", None, "timeseries"),
    ("engines up", "perfd_engine_up{", None, "timeseries"),
    ("gpu memory by owner", "perfd_gpu_process_memory_used_bytes{", "bytes", "timeseries"),
]


@pytest.mark.parametrize(("title", "expr", "unit", "kind"), REQUIRED_PANELS)
def test_dashboard_has_the_required_panel(
    title: str, expr: str, unit: str | None, kind: str
) -> None:
    """The fleet dashboard shows each figure the issue asks for, in the right unit."""
    matches = [
        p
        for p in graph_panels()
        if title in p["title"].lower() and p["type"] == kind and any(expr in e for e in exprs(p))
    ]
    assert matches, f"no {kind} panel titled like {title!r} querying {expr!r}"
    if unit is not None:
        assert matches[0]["fieldConfig"]["defaults"]["unit"] == unit


def test_dashboard_shows_each_gpu_of_each_host() -> None:
    """GPU panels name their series by host and GPU index, and sum nothing away."""
    for panel in graph_panels():
        for target in panel["targets"]:
            if "perfd_gpu_memory_used_ratio{" in target["expr"] and panel["type"] == "timeseries":
                assert target["legendFormat"] == "{{instance}} gpu{{gpu}}"
                assert "sum" not in target["expr"]


def test_cache_hit_ratio_is_per_host() -> None:
    """The hit ratio divides hits by all requests per host, over 5 minutes."""
    (panel,) = [p for p in graph_panels() if p["title"] == "Cache hit ratio"]
    (expr,) = exprs(panel)
    expr = " ".join(expr.split())
    hits = 'sum by (instance) (rate(perfd_cache_requests_total{instance=~"$instance", '
    hits += 'result="hit"}[5m]))'
    everything = 'sum by (instance) (rate(perfd_cache_requests_total{instance=~"$instance"}[5m]))'
    assert expr == f"{hits} / {everything}"
