"""The monitor inside a real perfd: READY after the first sample, STATUS=, stats, a real alert."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import perfctl
from tests.conftest import Perfd, StartPerfd

FAST = '[monitor]\ninterval = "100ms"\ntrend_window = "5s"\n'


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":")
            out[name] = int(value.split()[0]) * 1024
    return out


def _used_percent() -> float:
    info = _meminfo()
    return 100 * (info["MemTotal"] - info["MemAvailable"]) / info["MemTotal"]


def call(perfd: Perfd, cmd: str, socket: str | None = None) -> dict[str, Any]:
    with perfctl.Client(socket, runtime_dir=perfd.runtime_dir) as client:
        return client.call(cmd)


def test_ready_carries_the_first_sample(start_perfd: StartPerfd) -> None:
    """READY=1 comes with a STATUS= built from the first sample; stats answers at once."""
    perfd = start_perfd(FAST)
    ready = perfd.notify.messages[-1]
    assert ready.startswith("READY=1\nSTATUS=mem ")
    assert ready.endswith("alerts") or ready.endswith("alert")
    stats = call(perfd, "stats")
    assert stats["host"]["memory"]["total_bytes"] == _meminfo()["MemTotal"]
    assert stats["gpu_state"] in ("ok", "absent", "driver_not_loaded", "lost", "error")
    status = json.loads(perfd.ctl("status", "--json").stdout)
    assert status["components"]["monitor"] == "started"


def test_alerts_command_shape(start_perfd: StartPerfd) -> None:
    """`alerts` returns firing and history lists, over the read-only socket too."""
    perfd = start_perfd(FAST)
    body = call(perfd, "alerts", str(perfd.readonly_socket))
    assert isinstance(body["firing"], list)
    assert isinstance(body["history"], list)


def test_sigterm_stops_the_monitor_at_once(start_perfd: StartPerfd) -> None:
    """With a long interval the monitor thread still stops at once on SIGTERM."""
    perfd = start_perfd('[monitor]\ninterval = "1h"\ntrend_window = "1h"\n')
    began = time.monotonic()
    assert perfd.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 5


def test_bad_monitor_config_on_reload_keeps_the_old_one(start_perfd: StartPerfd) -> None:
    """A reload with warn above crit is refused; the monitor keeps its thresholds."""
    perfd = start_perfd(FAST)
    perfd.config_path.write_text(FAST + "[alerts.host_memory]\nwarn = 90\ncrit = 50\n")
    out = perfd.ctl("reload")
    assert out.returncode == 1
    assert "alerts.host_memory.crit" in out.stderr
    assert call(perfd, "stats")["host"]["memory"]["verdict"]


def test_real_memory_pressure_fires_and_resolves(start_perfd: StartPerfd) -> None:
    """A child touching memory past a warn threshold set just above current use fires the
    host_memory alert; when it exits, the alert resolves."""
    total = _meminfo()["MemTotal"]
    # The threshold sits well above current use (4 %, at least 1 GiB), so that the rest of
    # the host (processes of earlier tests still exiting or starting) cannot keep the alert
    # firing after the hog is gone; discovery is off: an engine found on the host would be
    # another alert.
    margin = max(4.0, 100 * (1 << 30) / total)
    warn = round(_used_percent() + margin, 2)
    crit = min(100.0, warn + 40)
    hog_bytes = int((margin / 100 + 0.02) * total) + (128 << 20)
    perfd = start_perfd(
        FAST
        + f"[alerts.host_memory]\nwarn = {warn}\ncrit = {crit}\nfor = 0\nclear = 3\n"
        + "[alerts.exhaustion]\nenabled = false\n[discovery]\nenabled = false\n"
    )
    assert "· 0 alerts" in perfd.notify.messages[-1]
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            f"b = bytearray({hog_bytes})\n"
            "b[::4096] = b'\\x01' * len(range(0, len(b), 4096))\n"  # touch every page
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as hog:
        assert hog.stdout is not None
        assert hog.stdin is not None
        try:
            assert hog.stdout.readline() == "ready\n"
            perfd.notify.wait_for("· 1 alert", timeout=30)
        finally:
            hog.stdin.close()
            hog.wait(30)
    try:
        perfd.notify.wait_for("· 0 alerts", timeout=30)
    except (AssertionError, TimeoutError):
        firing = [e for e in perfd.logs() if str(e.get("event", "")).startswith("alert.")]
        raise AssertionError(
            f"still firing after the hog exited: used {_used_percent()} % (warn {warn});"
            f" alert events {firing}; last status {perfd.notify.messages[-3:]}"
        ) from None
    events = [
        (e["event"], e.get("id"))
        for e in perfd.logs()
        if e["event"].startswith("alert.") and e.get("rule") == "host_memory"
    ]
    assert events[0] == ("alert.firing", "host_memory/host")
    assert events[-1] == ("alert.resolved", "host_memory/host")
    history = call(perfd, "alerts")["history"]
    assert next(h["event"] for h in history if h["rule"] == "host_memory") == "alert.resolved"


def test_alerts_reach_a_webhook_from_a_real_perfd(start_perfd: StartPerfd) -> None:
    """With [alerts.webhook], a real perfd POSTs its alert transitions as JSON."""
    from tests.httpservers import ScriptedServer

    with ScriptedServer() as hook:
        perfd = start_perfd(
            FAST
            + "[alerts.host_memory]\nwarn = 0.01\ncrit = 100\nfor = 0\n"  # fires at once
            + f'[alerts.webhook]\nurl = "{hook.url}/alerts"\n'
        )
        (request,) = hook.wait_for_requests(1, timeout=30)
    body = request.json()
    assert request.path == "/alerts"
    assert (body["event"], body["id"], body["source"]) == (
        "alert.firing",
        "host_memory/host",
        "perfd",
    )
    assert perfd.ctl("ping").returncode == 0


def test_a_webhook_added_by_reload_gets_the_next_alerts(start_perfd: StartPerfd) -> None:
    """perfd started without sinks: a reload that adds a webhook delivers from then on."""
    from tests.httpservers import ScriptedServer

    with ScriptedServer() as hook:
        perfd = start_perfd(FAST)
        perfd.config_path.write_text(
            FAST
            + "[alerts.host_memory]\nwarn = 0.01\ncrit = 100\nfor = 0\n"
            + f'[alerts.webhook]\nurl = "{hook.url}/late"\n'
        )
        assert perfd.ctl("reload").returncode == 0
        (request,) = hook.wait_for_requests(1, timeout=30)
    assert (request.path, request.json()["event"]) == ("/late", "alert.firing")
