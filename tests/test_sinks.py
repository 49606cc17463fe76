"""Alert sinks against real local HTTP servers and a real Prometheus Alertmanager."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from perfd import config, log
from perfd.config import SinkConfig
from perfd.monitor.alerts import ESCALATED, FIRING, RESOLVED, Alert, Transition
from perfd.monitor.sampler import Monitor
from perfd.monitor.sinks import AlertmanagerSink, Sinks, WebhookSink, alertmanager_alert
from perfd.redaction import redact_url
from perfd.wire.values import rfc3339
from tests.daemons import ready_server, wait_until
from tests.fakeprobes import FakeGpuProbe, FakeHostProbe, host_sample
from tests.httpservers import Reply, ScriptedServer, closed_port

TOKEN_ENV = "PERFD_TEST_SINK_TOKEN"


def transition(
    kind: str = FIRING,
    *,
    severity: str = "warning",
    value: float = 85.0,
    at: float = 1.8e9,
    since: float = 1.8e9,
    previous: str | None = None,
    resource: str = "host",
) -> dict[str, Any]:
    alert = Alert(
        id=f"host_memory/{resource}",
        rule="host_memory",
        resource=resource,
        severity=severity,
        value=value,
        threshold=80.0 if severity == "warning" else 95.0,
        unit="%",
        since=rfc3339(since),
        labels={},
    )
    return Transition(kind, alert, at, previous=previous).as_dict()


@pytest.fixture
def logs() -> io.StringIO:
    """perfd's log lines, as JSON (conftest resets the logging afterwards)."""
    out = io.StringIO()
    log.configure("debug", stream=out)
    return out


def events(out: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return [line for line in lines if line["event"] == name]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def test_importing_sinks_does_not_import_requests() -> None:
    """perfd.monitor.sinks (and the monitor that imports it) load requests only on the sender
    thread."""
    code = (
        "import perfd.monitor.sinks, perfd.monitor.sampler, sys; print('requests' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_logged_urls_carry_no_credentials_or_tokens() -> None:
    """Logged urls carry neither user:password@ nor a secret query value."""
    shown = redact_url("https://u:pw@example.com:8443/hook?token=x&team=ops")
    assert shown == "https://<redacted>@example.com:8443/hook?token=<redacted>&team=ops"


def test_webhook_posts_each_transition_with_host_and_source(server: ScriptedServer) -> None:
    """One JSON POST per transition: the entry plus host and source."""
    sink = WebhookSink(SinkConfig(url=f"{server.url}/hook"), hostname="gpu-host-1")
    sent = [transition(), transition(ESCALATED, severity="critical", previous="warning")]
    sent.append(transition(RESOLVED, severity="critical"))
    for entry in sent:
        sink.deliver(entry)
    got = server.wait_for_requests(3)
    assert [(r.method, r.path) for r in got] == [("POST", "/hook")] * 3
    assert got[0].headers["content-type"] == "application/json"
    assert [r.json() for r in got] == [{**e, "host": "gpu-host-1", "source": "perfd"} for e in sent]
    wait_until(lambda: sink.stats()["sent"] == 3)
    sink.stop(5)
    stats = sink.stats()
    assert (stats["failed"], stats["dropped"], stats["dropped_at_stop"]) == (0, 0, 0)
    assert stats["http"]["requests"] == 3


def test_dead_sink_never_blocks_and_stays_bounded(logs: io.StringIO) -> None:
    """Nothing listening: 10,000 deliveries return at once, the queue stays within its bound."""
    cfg = SinkConfig(url=f"http://127.0.0.1:{closed_port()}/hook", queue=50, retries=0, timeout=0.2)
    sink = WebhookSink(cfg)
    began = time.perf_counter()
    for i in range(10_000):
        sink.deliver(transition(value=i))
        if i % 1000 == 0:
            assert sink.stats()["queued"] <= 50
    assert time.perf_counter() - began < 1.0
    assert sink.stats()["dropped"] > 0
    sink.stop(5)
    stats = sink.stats()
    assert stats["queued"] == 0
    assert stats["sent"] == 0
    assert stats["failed"] + stats["dropped"] + stats["dropped_at_stop"] == 10_000
    assert stats["last_error"] == "connection refused"
    assert len(events(logs, "alert_sink.failed")) == 1


@pytest.mark.slow
def test_full_queue_drops_the_oldest(server: ScriptedServer) -> None:
    """While the sender is stuck, the newest `queue` entries are kept and sent in order."""
    server.enqueue(Reply(stall=True))
    sink = WebhookSink(SinkConfig(url=server.url, queue=10, timeout=20))
    sink.deliver(transition(value=0))
    server.wait_for_requests(1)  # the sender now waits on the stalled reply
    began = time.perf_counter()
    for i in range(1, 10_001):
        sink.deliver(transition(value=i))
    assert time.perf_counter() - began < 1.0  # a stalled server does not block deliver
    assert (sink.stats()["queued"], sink.stats()["dropped"]) == (10, 9_990)
    server.release()
    got = server.wait_for_requests(11)
    assert [r.json()["value"] for r in got] == [0, *range(9_991, 10_001)]
    sink.stop(5)


def test_stop_gives_up_on_a_stalled_server_and_counts_the_rest(
    server: ScriptedServer, logs: io.StringIO
) -> None:
    """stop(timeout) returns in time while a POST hangs; what was queued is counted and logged."""
    server.enqueue(Reply(stall=True))
    sink = WebhookSink(SinkConfig(url=server.url, timeout=20))
    sink.deliver(transition(value=0))
    server.wait_for_requests(1)
    for i in range(1, 6):
        sink.deliver(transition(value=i))
    began = time.monotonic()
    sink.stop(0.3)
    assert time.monotonic() - began < 2.0
    assert sink.stats()["dropped_at_stop"] == 5
    assert [e["count"] for e in events(logs, "alert_sink.dropped_at_stop")] == [5]
    sink.deliver(transition())  # after stop: counted, not queued
    assert sink.stats()["dropped_at_stop"] == 6
    server.release()


def test_bearer_token_from_env_reaches_the_server_and_never_the_logs(
    server: ScriptedServer, logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """token_env names the variable read at send time; the token is never logged."""
    secret = "s3cr3t-t0ken-value"
    monkeypatch.setenv(TOKEN_ENV, secret)
    server.enqueue(Reply(401, f"bad token {secret}"))  # even an echoing server cannot leak it
    sink = WebhookSink(SinkConfig(url=server.url, token_env=TOKEN_ENV, retries=0))
    sink.deliver(transition())
    sink.deliver(transition(RESOLVED))
    got = server.wait_for_requests(2)
    assert {r.headers["authorization"] for r in got} == {f"Bearer {secret}"}
    wait_until(lambda: sink.stats()["sent"] == 1)
    sink.stop(5)
    assert sink.stats()["last_error"] == "HTTP 401: bad token <redacted>"
    assert events(logs, "alert_sink.failed")
    assert secret not in logs.getvalue()
    assert secret not in json.dumps(sink.stats())


def test_outage_logged_once_then_recovery_once(server: ScriptedServer, logs: io.StringIO) -> None:
    """Failures log alert_sink.failed once per outage and alert_sink.recovered once after it."""
    server.enqueue(Reply(500, "boom"), Reply(500), Reply(500))
    sink = WebhookSink(SinkConfig(url=server.url, retries=0))
    for i in range(5):
        sink.deliver(transition(value=i))
    server.wait_for_requests(5)
    wait_until(lambda: sink.stats()["sent"] == 2)
    failed = events(logs, "alert_sink.failed")
    assert [(e["status"], e["error"], e["url"]) for e in failed] == [
        (500, "HTTP 500: boom", server.url)
    ]
    assert [e["failed"] for e in events(logs, "alert_sink.recovered")] == [3]
    server.enqueue(Reply(502))  # a second outage is logged again
    sink.deliver(transition())
    server.wait_for_requests(6)
    wait_until(lambda: sink.stats()["failed"] == 4)
    sink.stop(5)
    assert len(events(logs, "alert_sink.failed")) == 2


def test_monitor_sends_firing_then_resolved(server: ScriptedServer, tmp_path: Path) -> None:
    """A monitor with a webhook sink POSTs alert.firing, then alert.resolved; reloads follow."""
    text = (
        f'[alerts.webhook]\nurl = "{server.url}/a"\n'
        "[alerts.host_memory]\nfor = 0\nclear = 1\n[alerts.exhaustion]\nenabled = false\n"
    )
    cfg = config.parse(tomllib.loads(text))
    now = [100.0]
    hp = FakeHostProbe(host_sample())
    sinks = Sinks(cfg.alerts)
    monitor = Monitor(
        cfg.monitor,
        cfg.alerts,
        host_probe=hp,
        gpu_probe=FakeGpuProbe(),
        clock=lambda: now[0],
        wall=lambda: 1.8e9 + now[0],
        sinks=sinks,
    )

    def step(used: float) -> None:
        now[0] += 5
        hp.next = host_sample(now[0], used_percent=used)
        monitor.sample_once()

    for used in (50, 85, 50):
        step(used)
    got = server.wait_for_requests(2)
    assert [(r.path, r.json()["event"], r.json()["id"]) for r in got] == [
        ("/a", "alert.firing", "host_memory/host"),
        ("/a", "alert.resolved", "host_memory/host"),
    ]
    with ScriptedServer() as other:
        new = config.parse(tomllib.loads(text.replace(server.url, other.url)))
        monitor.reconfigure(new.monitor, new.alerts)
        step(85)
        assert other.wait_for_requests(1)[0].json()["event"] == "alert.firing"
        monitor.stop()
        assert sinks.stats() == {}  # stopped with the monitor
    assert len(server.requests) == 2


def test_alertmanager_alert_shape() -> None:
    """Labels, annotations, startsAt from since, endsAt as given; gpu alerts carry uuid."""
    entry = {**transition(since=1.8e9, at=1.8e9 + 60), "uuid": "GPU-1"}
    alert = alertmanager_alert(entry, "host-1", "2027-01-15T08:01:00Z")
    assert alert == {
        "labels": {
            "alertname": "host_memory",
            "alert_id": "host_memory/host",
            "resource": "host",
            "severity": "warning",
            "instance": "host-1",
            "job": "perfd",
            "uuid": "GPU-1",
        },
        "annotations": {
            "summary": "host_memory warning on host: value 85.0% (threshold 80.0%)",
            "value": "85.0",
            "threshold": "80.0",
        },
        "startsAt": rfc3339(1.8e9),
        "endsAt": "2027-01-15T08:01:00Z",
    }


@pytest.mark.slow
def test_alertmanager_sink_resends_firing_and_ends_resolved(server: ScriptedServer) -> None:
    """Firing alerts are re-sent every `resend`; escalation ends the old severity; resolved
    is sent once with endsAt = when it resolved."""
    sink = AlertmanagerSink(SinkConfig(url=server.url + "/", resend=1), hostname="h")
    sink.deliver(transition())
    first, again = server.wait_for_requests(2)
    assert first.path == again.path == "/api/v2/alerts"
    assert again.arrived - first.arrived >= 0.9
    assert [a["labels"] for a in again.json()] == [a["labels"] for a in first.json()]
    assert first.json()[0]["endsAt"] > rfc3339(time.time())  # firing: endsAt ahead
    up = transition(ESCALATED, severity="critical", previous="warning", at=1.8e9 + 30)
    sink.deliver(up)
    server.wait_for_requests(3)
    wait_until(lambda: any(len(r.json()) == 2 for r in server.requests))
    escalated = next(r.json() for r in server.requests if len(r.json()) == 2)
    assert [(a["labels"]["severity"], a["endsAt"] == up["at"]) for a in escalated] == [
        ("critical", False),
        ("warning", True),
    ]
    done = transition(RESOLVED, severity="critical", at=1.8e9 + 90)
    sink.deliver(done)
    wait_until(lambda: server.requests[-1].json()[0]["endsAt"] == done["at"])
    assert server.requests[-1].json()[0]["labels"]["severity"] == "critical"
    wait_until(lambda: sink.stats()["firing"] == 0)
    sink.stop(5)


def test_alertmanager_sink_resends_all_after_an_outage(server: ScriptedServer) -> None:
    """When Alertmanager answers again, every firing alert is sent at once."""
    server.enqueue(Reply(500))
    sink = AlertmanagerSink(SinkConfig(url=server.url, retries=0), hostname="h")
    sink.deliver(transition(resource="host"))
    sink.deliver(transition(resource="gpu0"))
    got = server.wait_for_requests(3)
    ids = [sorted(a["labels"]["alert_id"] for a in r.json()) for r in got]
    assert ids == [["host_memory/host"], ["host_memory/gpu0"], ids[2]]
    assert ids[2] == ["host_memory/gpu0", "host_memory/host"]
    sink.stop(5)


def test_reload_keeps_unchanged_sinks_and_hands_firing_alerts_over(
    server: ScriptedServer,
) -> None:
    """A reload rebuilds only changed sinks; a new Alertmanager gets the firing alerts."""
    base = {"alerts": {"alertmanager": {"url": server.url}, "webhook": {"url": server.url}}}
    sinks = Sinks(config.parse(base).alerts)
    sinks.deliver(transition())
    server.wait_for_requests(2)
    with ScriptedServer() as other:
        moved = {"alerts": {**base["alerts"], "alertmanager": {"url": other.url}}}
        sinks.reconfigure(config.parse(moved).alerts)
        handed = other.wait_for_requests(1)[0].json()
        assert [a["labels"]["alert_id"] for a in handed] == ["host_memory/host"]
        wait_until(lambda: sinks.stats()["webhook"]["sent"] == 1)  # the same webhook sink
        assert sinks.stats()["alertmanager"]["url"] == other.url
        sinks.stop(5)


# -- the real Alertmanager ------------------------------------------------------------------


def _alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found is None:
        pytest.skip(
            "prometheus-alertmanager not installed (apt-get install prometheus-alertmanager)"
        )
    return found


def _get_json(url: str) -> Any:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    return response.json()


def _ours(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("alert_id") == "host_memory/host"]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on 127.0.0.1 (no clustering), routing to a null receiver."""
    binary = _alertmanager_binary()
    port = closed_port()
    conf = tmp_path / "alertmanager.yml"
    conf.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    argv = [
        binary,
        f"--config.file={conf}",
        f"--storage.path={tmp_path / 'data'}",
        "--cluster.listen-address=",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with ready_server(argv, port, tmp_path / "alertmanager.log", timeout=30) as url:
        yield url


def test_real_alertmanager_shows_firing_then_resolved(alertmanager: str) -> None:
    """Alertmanager lists the alert active with our labels, then no longer once resolved."""
    now = time.time()
    sink = AlertmanagerSink(SinkConfig(url=alertmanager), hostname="perfd-test-host")
    sink.deliver(transition(since=now - 60, at=now - 60))
    found: list[dict[str, Any]] = []

    def listed() -> bool:
        found[:] = _ours(_get_json(f"{alertmanager}/api/v2/alerts"))
        return bool(found)

    wait_until(listed, timeout=15)
    (alert,) = found
    labels = alert["labels"]
    assert (labels["alertname"], labels["severity"], labels["instance"]) == (
        "host_memory",
        "warning",
        "perfd-test-host",
    )
    assert labels["job"] == "perfd"
    assert alert["status"]["state"] == "active"
    assert alert["annotations"]["summary"].startswith("host_memory warning on host")
    sink.deliver(transition(RESOLVED, since=now - 60, at=now))
    wait_until(lambda: not _ours(_get_json(f"{alertmanager}/api/v2/alerts?active=true")), 15)
    wait_until(lambda: sink.stats()["sent"] == 2)
    sink.stop(5)
    assert sink.stats()["failed"] == 0
