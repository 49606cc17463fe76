"""Faults in perfd's parts, each against a real perfd subprocess: loaders that raise, hang or
leak; NVML failing mid-run with each error kind; log and alert files on a full disk or an
unwritable path; alert sinks that are down or hang."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import perfctl
from tests import fakenvml
from tests.conftest import Perfd, StartPerfd
from tests.daemons import wait_until
from tests.httpservers import Reply, ScriptedServer, closed_port

ROOT = str(Path(__file__).resolve().parent.parent)
GiB = 1 << 30
FAST = '[monitor]\ninterval = "100ms"\ntrend_window = "5s"\nnvml_timeout = "300ms"\n'


def call(perfd: Perfd, cmd: str, **args: Any) -> dict[str, Any]:
    with perfctl.Client(runtime_dir=perfd.runtime_dir, timeout=20) as client:
        return client.call(cmd, **args)


def wait_samples(perfd: Perfd, n: int = 3) -> dict[str, Any]:
    """Wait until the monitor has taken ``n`` more samples; return the latest stats."""
    seen = {call(perfd, "stats")["sampled_at_unix"]}
    latest: dict[str, Any] = {}

    def sampled() -> bool:
        nonlocal latest
        latest = call(perfd, "stats")
        seen.add(latest["sampled_at_unix"])
        return len(seen) > n

    wait_until(sampled)
    return latest


def stats_until(perfd: Perfd, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll ``stats`` until ``check`` holds; return those stats."""
    latest: dict[str, Any] = {}

    def holds() -> bool:
        nonlocal latest
        latest = call(perfd, "stats")
        return check(latest)

    wait_until(holds)
    return latest


def events(perfd: Perfd, name: str, **fields: Any) -> list[dict[str, Any]]:
    """perfd's log entries ``name`` whose fields include ``fields``."""
    return [
        e
        for e in perfd.logs()
        if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
    ]


# --- NVML failing mid-run -------------------------------------------------------------------

TWO_GPUS = [{"used": 40 * GiB}, {"used": 40 * GiB}]  # 50 % used: over gpu_memory's warn
GPU_ALERTS = "[alerts.gpu_memory]\nwarn = 1\ncrit = 90\nfor = 0\nclear = 1\n"

# kind: (control script while failing, stats gpu_state, failing GPU or None for NVML as a
# whole, the error perfd names)
NVML_FAULTS: dict[str, tuple[dict[str, Any], str, int | None, str]] = {
    "gpu_is_lost": ({"lost": [1]}, "lost", 1, "NVML_ERROR_GPU_IS_LOST"),
    "driver_not_loaded": (
        {"fail": {"nvmlInit": 9, "nvmlDeviceGetCount": 9}},
        "driver_not_loaded",
        None,
        "NVML_ERROR_DRIVER_NOT_LOADED",
    ),
    "uninitialized": (
        {"fail": {"nvmlDeviceGetCount": 1}},
        "error",
        None,
        "NVML_ERROR_UNINITIALIZED",
    ),
    "timeout_code": ({"fail": {"nvmlDeviceGetCount": 10}}, "error", None, "NVML_ERROR_TIMEOUT"),
    "unknown": ({"fail": {"nvmlDeviceGetCount": 999}}, "error", None, "NVML_ERROR_UNKNOWN"),
    "no_permission": (
        {"fail": {"nvmlDeviceGetMemoryInfo@1": 4}},
        "error",
        1,
        "NVML_ERROR_NO_PERMISSION",
    ),
    "not_supported": (
        {"fail": {"nvmlDeviceGetUUID@1": 3}},
        "error",
        1,
        "NVML_ERROR_NOT_SUPPORTED",
    ),
    "insufficient_power": (
        {"fail": {"nvmlDeviceGetName@0": 8}},
        "error",
        0,
        "NVML_ERROR_INSUFFICIENT_POWER",
    ),
    "hang": ({"hang": True}, "error", None, "timeout"),
}


@pytest.mark.parametrize("kind", list(NVML_FAULTS))
def test_nvml_failing_mid_run(start_perfd: StartPerfd, tmp_path: Path, kind: str) -> None:
    """NVML failing mid-run: stats shows the state, one log line says so, GPU alerts stay
    firing while unknown, and NVML working again is reported once and ends the state."""
    script, state, gpu, error = NVML_FAULTS[kind]
    control = fakenvml.control_file(tmp_path, gpus=TWO_GPUS)
    perfd = start_perfd(FAST + GPU_ALERTS, nvml=control)
    firing = {a["id"] for a in call(perfd, "alerts")["firing"]}
    assert {"gpu_memory/gpu0", "gpu_memory/gpu1"} <= firing

    control.set(gpus=TWO_GPUS, **script)
    failed = stats_until(perfd, lambda s: s["gpu_state"] == state)
    if gpu is None:
        assert (failed["gpu_error"], failed["gpus"]) == (error, [])
    else:
        states = {g["index"]: (g["state"], g["error"]) for g in failed["gpus"]}
        assert states[gpu] == (state, error)
        assert states[1 - gpu] == ("ok", None)
    wait_samples(perfd, 3)  # several failing samples...
    where = {} if gpu is None else {"gpu": gpu}
    (logged,) = events(perfd, "gpu.state_changed", state=state, error=error, **where)  # ...one line
    assert logged["level"] == ("error" if state == "lost" else "warning")
    assert logged["hint"]
    assert {a["id"] for a in call(perfd, "alerts")["firing"]} >= firing  # unknown: kept

    control.set(gpus=TWO_GPUS)
    healed = stats_until(perfd, lambda s: s["gpu_state"] == "ok")
    assert [g["state"] for g in healed["gpus"]] == ["ok", "ok"]
    wait_samples(perfd, 2)
    assert len(events(perfd, "gpu.recovered", was=state, **where)) == 1
    assert {a["id"] for a in call(perfd, "alerts")["firing"]} >= firing
    gpu_alerts = [e for e in perfd.logs() if e.get("rule") == "gpu_memory"]
    assert [e["event"] for e in gpu_alerts] == ["alert.firing", "alert.firing"]  # no resolve
    assert perfd.stop() == 0


# --- loaders that raise, hang or leak -------------------------------------------------------

MODELS = """
[models.echo]
target = "tests.models.toy:make_echo"
[models.broken]
target = "tests.models.toy:make_failing"
options = { message = "weights are corrupt" }
[models.leaky]
target = "tests.models.toy:make_leaky"
options = { size_mb = 96 }
"""


def start_with_models(start_perfd: StartPerfd, extra: str = "") -> Perfd:
    return start_perfd(MODELS + extra, env={"PYTHONPATH": ROOT})


def test_loader_that_raises(start_perfd: StartPerfd) -> None:
    """A factory that raises: load_failed naming the error, logged, nothing left loaded; the
    next load of a good model works, a retry of the bad one loads afresh, perfd serves on."""
    perfd = start_with_models(start_perfd)
    out = perfd.ctl("load", "broken")
    assert out.returncode == 1
    assert "ToyLoadError: weights are corrupt" in out.stderr
    with pytest.raises(perfctl.CommandFailed) as caught:
        call(perfd, "infer", model="broken", inputs=1)
    assert caught.value.code == "load_failed"
    assert "ToyLoadError: weights are corrupt" in caught.value.message
    assert call(perfd, "ps")["models"] == []
    assert len(events(perfd, "cache.load_failed", model="broken")) == 2  # each try is logged
    assert call(perfd, "infer", model="echo", inputs=[1, 2])["outputs"] == [1, 2]
    assert [m["name"] for m in call(perfd, "ps")["models"]] == ["echo"]
    counters = call(perfd, "stats")["cache"]["counters"]
    assert (counters["broken"]["loads"], counters["echo"]["loads"]) == (0, 1)
    assert call(perfd, "ping")["pong"] is True
    assert perfd.stop() == 0


def test_loader_that_hangs_past_load_timeout(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """A load past load_timeout: every waiter gets timeout within the bound while other
    commands answer; the late model is unloaded when it comes (logged), never cached."""
    gate, entered, done = (tmp_path / name for name in ("gate", "entered", "done"))
    perfd = start_with_models(
        start_perfd,
        '[cache]\nload_timeout = "500ms"\n'
        "[models.slow]\n"
        'target = "tests.models.toy:make_gated"\n'
        f"options = {{ gate = {str(gate)!r}, entered = {str(entered)!r}, done = {str(done)!r} }}\n",
    )
    outcomes: list[tuple[str, float]] = []

    def waiter() -> None:
        began = time.monotonic()
        try:
            call(perfd, "infer", model="slow", inputs=1)
            outcomes.append(("answered", time.monotonic() - began))
        except perfctl.CommandFailed as exc:
            outcomes.append((exc.code, time.monotonic() - began))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(entered.exists)
    assert call(perfd, "ping")["pong"] is True  # the loop answers while the load hangs
    assert call(perfd, "infer", model="echo", inputs="x")["outputs"] == "x"
    for thread in threads:
        thread.join(30)
    assert [code for code, _ in outcomes] == ["timeout"] * 3
    assert max(seconds for _, seconds in outcomes) < 0.5 + 10  # load_timeout + a wide margin
    assert [m["name"] for m in call(perfd, "ps")["models"]] == ["echo"]
    (logged,) = events(perfd, "cache.load_timeout", model="slow")
    assert logged["level"] == "error"

    gate.touch()  # the hung load returns at last...
    wait_until(lambda: bool(events(perfd, "cache.load_discarded", model="slow")))
    assert done.exists()
    assert [m["name"] for m in call(perfd, "ps")["models"]] == ["echo"]  # ...and is not kept
    assert call(perfd, "stats")["cache"]["counters"]["slow"]["loads"] == 0
    assert call(perfd, "infer", model="slow", inputs=2)["outputs"] == 2  # gate open: loads now
    assert perfd.stop() == 0


def test_load_ending_as_its_timeout_runs_out_is_kept_not_leaked() -> None:
    """A load that finishes just as load_timeout runs out stands: the model is cached, not
    dropped unreleased. In-process: only a hook inside the cache can force that interleaving."""
    from perfd import config
    from perfd.cache.core import ModelCache
    from perfd.loaders.python import PythonLoader

    class RacingCache(ModelCache):
        def _wait_for_load(self, entry: Any, finished: threading.Event) -> bool:
            assert entry.done.wait(10)  # the load ends, adopted as ready...
            return False  # ...while the wait reports that the time ran out

    cfg = config.parse({"models": {"echo": {"target": "tests.models.toy:make_echo"}}})
    cache = RacingCache(cfg.cache, cfg.models, lambda name: PythonLoader(), lambda d: 1 << 30)
    with cache.lease("echo") as lease:
        assert lease.infer("x") == "x"
    assert [(m["name"], m["state"], m["loads"]) for m in cache.ps()] == [("echo", "ready", 1)]


def test_loader_that_leaks(start_perfd: StartPerfd) -> None:
    """A model that keeps its memory after close(): the eviction record shows how little came
    back, perfd logs cache.unload_leak naming it, and serves on."""
    perfd = start_with_models(start_perfd)
    loaded = call(perfd, "load", model="leaky")
    assert loaded["measured_by"] == "rss"
    assert loaded["measured_bytes"] >= 80 << 20
    (record,) = call(perfd, "evict", model="leaky")["records"]
    assert record["freed_rss_bytes"] < loaded["measured_bytes"] // 2
    (leak,) = events(perfd, "cache.unload_leak", model="leaky")
    assert (leak["level"], leak["measured_bytes"]) == ("warning", loaded["measured_bytes"])
    assert (leak["bytes"], leak["bytes_source"]) == (loaded["bytes"], "measured")
    assert leak["freed_bytes"] == record["freed_bytes"] == record["freed_rss_bytes"]
    recent = call(perfd, "stats")["cache"]["recent_evictions"][0]
    assert (recent["model"], recent["freed_rss_bytes"]) == ("leaky", record["freed_rss_bytes"])
    assert call(perfd, "infer", model="echo", inputs=1)["outputs"] == 1
    assert perfd.stop() == 0


# --- the log file and the alert log on a full disk or an unwritable path --------------------

ALERT_FIRES = "[alerts.host_memory]\nwarn = 0.01\ncrit = {crit}\nfor = 0\nclear = 1\n"


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Directories a test mounted a filesystem on; unmounted when it ends."""
    mounted: list[Path] = []
    yield mounted
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def _full(path: Path, mounts: list[Path]) -> tuple[str, Callable[[], None]]:
    """``path`` is a regular file on a full filesystem (a 64 KiB tmpfs filled up: every write
    is ENOSPC); the fix frees the space. (A symlink to /dev/full is refused outright: a log
    file must be a regular file.)"""
    path.parent.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path.parent)], check=True
    )
    mounts.append(path.parent)
    filler = path.parent / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)

    def fix() -> None:
        filler.unlink()

    return "ENOSPC", fix


def _under_a_file(path: Path, mounts: list[Path]) -> tuple[str, Callable[[], None]]:
    """``path``'s directory is a regular file (ENOTDIR, even for root); the fix makes it one."""
    path.parent.write_text("not a directory")

    def fix() -> None:
        path.parent.unlink()
        path.parent.mkdir()

    return "ENOTDIR", fix


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a full tmpfs needs root (CI runs as root)"
)


@pytest.mark.parametrize(
    "fault",
    [pytest.param(_full, marks=needs_root), _under_a_file],
    ids=["disk_full", "not_a_directory"],
)
@pytest.mark.parametrize("which", ["log file", "alert log"])
def test_unwritable_log_files(
    start_perfd: StartPerfd,
    tmp_path: Path,
    which: str,
    fault: Callable[[Path, list[Path]], tuple[str, Callable[[], None]]],
    mounts: list[Path],
) -> None:
    """A [log] file or [alerts] log_file that cannot be written: perfd serves on, logs
    log.file_failed (file, error) once on stdout whatever it writes meanwhile, and logs
    log.file_writable when the file works again, where writing then resumes."""
    path = tmp_path / "logs" / "perfd.jsonl"
    code, fix = fault(path, mounts)
    key = '[log]\nfile = "{}"\n' if which == "log file" else '[alerts]\nlog_file = "{}"\n'
    base = FAST + key.format(path)
    perfd = start_perfd(base + ALERT_FIRES.format(crit=100))
    wait_until(lambda: bool(events(perfd, "alert.firing", rule="host_memory")))

    perfd.config_path.write_text(base + ALERT_FIRES.format(crit=0.02))  # more lines to write
    assert perfd.ctl("reload").returncode == 0
    wait_until(lambda: bool(events(perfd, "alert.escalated", rule="host_memory")))
    assert call(perfd, "ping")["pong"] is True
    (failed,) = events(perfd, "log.file_failed", file=str(path))
    assert (failed["what"], failed["errno"], failed["level"]) == (which, code, "error")
    assert failed["error"]

    fix()
    perfd.config_path.write_text(base + ALERT_FIRES.format(crit=100))
    assert perfd.ctl("reload").returncode == 0
    wait_until(lambda: bool(events(perfd, "alert.deescalated", rule="host_memory")))
    wait_until(lambda: bool(events(perfd, "log.file_writable", file=str(path))))
    written = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    if which == "log file":
        assert "log.file_writable" in written
    wait_until(lambda: "alert.deescalated" in path.read_text())
    assert len(events(perfd, "log.file_failed")) == 1
    assert perfd.stop() == 0


# --- alert sinks that are down or hang ------------------------------------------------------


def sink_config(sink: str, url: str, **options: str) -> str:
    """An [alerts.webhook] or [alerts.alertmanager] table sending to ``url``."""
    lines = [f"[alerts.{sink}]", f'url = "{url}"', "retries = 0"]
    lines += [f"{key} = {value}" for key, value in options.items()]
    if sink == "alertmanager":
        lines.append('resend = "1s"')
    return "\n".join(lines) + "\n"


def sink_counter(port: int, name: str, sink: str) -> float:
    """perfd_alert_sink_<name>_total for ``sink`` from perfd's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    prefix = f'perfd_alert_sink_{name}_total{{sink="{sink}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def start_with_sink(
    start_perfd: StartPerfd, tmp_path: Path, sink: str, url: str, gpus: int, **options: str
) -> tuple[Perfd, fakenvml.NvmlControl, int]:
    """perfd with ``gpus`` GPUs all over gpu_memory's warn (one alert each at the first
    sample), host alerts off, a sink to ``url`` and /metrics on a free port."""
    metrics = closed_port()
    control = fakenvml.control_file(tmp_path, gpus=[{"used": 40 * GiB}] * gpus)
    perfd = start_perfd(
        FAST
        + GPU_ALERTS
        + "[alerts.host_memory]\nenabled = false\n[alerts.exhaustion]\nenabled = false\n"
        + sink_config(sink, url, **options)
        + f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n',
        nvml=control,
    )
    return perfd, control, metrics


def firing_ids(perfd: Perfd) -> set[str]:
    """The firing alerts as `perfctl alerts --json` lists them."""
    out = perfd.ctl("alerts", "--json")
    assert out.returncode == 0, out.stderr
    return {alert["id"] for alert in json.loads(out.stdout)["firing"]}


def escalate_gpu0(control: fakenvml.NvmlControl, gpus: int) -> None:
    """GPU 0 goes over gpu_memory's crit: a new transition (alert.escalated)."""
    control.set(gpus=[{"used": 78 * GiB}] + [{"used": 40 * GiB}] * (gpus - 1))


def delivered(requests: list[Any]) -> set[tuple[str, str]]:
    """(alert id, event or severity) of every alert the sink's server received."""
    out = set()
    for request in requests:
        body = request.json()
        if isinstance(body, dict):  # a webhook POST: one transition
            out.add((body["id"], body["event"]))
        else:  # an Alertmanager POST: alerts with labels
            out.update((a["labels"]["alert_id"], a["labels"]["severity"]) for a in body)
    return out


@pytest.mark.parametrize("sink", ["webhook", "alertmanager"])
def test_alert_sink_that_is_down(start_perfd: StartPerfd, tmp_path: Path, sink: str) -> None:
    """A sink refusing connections: alerts still reach the log and `perfctl alerts`, the
    outage is logged once however many POSTs fail, and delivery resumes once it is up."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}/hook" if sink == "webhook" else f"http://127.0.0.1:{port}"
    perfd, control, metrics = start_with_sink(start_perfd, tmp_path, sink, url, gpus=3)
    wait_until(lambda: sink_counter(metrics, "failed", sink) >= 3)
    ids = {f"gpu_memory/gpu{index}" for index in range(3)}
    assert firing_ids(perfd) == ids
    assert {e["id"] for e in events(perfd, "alert.firing")} == ids
    (failed,) = events(perfd, "alert_sink.failed", sink=sink)
    assert (failed["url"], failed["error"]) == (url, "connection refused")
    assert call(perfd, "ping")["pong"] is True

    with ScriptedServer(port=port) as server:
        escalate_gpu0(control, 3)
        if sink == "webhook":  # new transitions are sent; those of the outage were dropped
            wanted = {("gpu_memory/gpu0", "alert.escalated")}
        else:  # Alertmanager gets every firing alert again, at once
            others = ids - {"gpu_memory/gpu0"}
            wanted = {("gpu_memory/gpu0", "critical")} | {(i, "warning") for i in others}
        wait_until(lambda: wanted <= delivered(server.requests))
        wait_until(lambda: bool(events(perfd, "alert_sink.recovered", sink=sink)))
        assert len(events(perfd, "alert_sink.failed")) == 1
        assert perfd.stop() == 0


@pytest.mark.parametrize("sink", ["webhook", "alertmanager"])
def test_alert_sink_that_hangs(start_perfd: StartPerfd, tmp_path: Path, sink: str) -> None:
    """A sink that never answers: perfd serves on, the queue stays within its bound (the rest
    dropped and counted), the outage is logged once, and delivery resumes when it answers."""
    with ScriptedServer(default=Reply(stall=True)) as server:
        url = f"{server.url}/hook" if sink == "webhook" else server.url
        perfd, control, metrics = start_with_sink(
            start_perfd, tmp_path, sink, url, gpus=6, queue="2", timeout='"1s"'
        )
        server.wait_for_requests(1)
        assert call(perfd, "ping")["pong"] is True
        assert len(firing_ids(perfd)) == 6
        # six transitions at once: one in flight, two queued, the rest pushed out
        wait_until(lambda: sink_counter(metrics, "dropped", sink) >= 6 - 2 - 1)
        wait_until(lambda: sink_counter(metrics, "failed", sink) >= 2, timeout=20)
        (failed,) = events(perfd, "alert_sink.failed", sink=sink)
        assert failed["error"] == "read timeout"
        assert len(events(perfd, "alert_sink.queue_full", sink=sink)) == 1

        server.default = Reply(200, {})
        server.release()
        escalate_gpu0(control, 6)
        wanted = ("gpu_memory/gpu0", "alert.escalated" if sink == "webhook" else "critical")
        wait_until(lambda: wanted in delivered(server.requests), timeout=20)
        wait_until(lambda: bool(events(perfd, "alert_sink.recovered", sink=sink)))
        assert len(events(perfd, "alert_sink.failed")) == 1
        assert perfd.stop() == 0


@pytest.mark.parametrize("sink", ["webhook", "alertmanager"])
def test_sigterm_is_not_held_by_a_hung_sink(
    start_perfd: StartPerfd, tmp_path: Path, sink: str
) -> None:
    """SIGTERM while a sink's POST hangs (its timeout 60 s): perfd exits 0 well within the
    sink timeout and logs the alerts it did not send."""
    with ScriptedServer(default=Reply(stall=True)) as server:
        url = f"{server.url}/hook" if sink == "webhook" else server.url
        perfd, _, _ = start_with_sink(start_perfd, tmp_path, sink, url, gpus=3, timeout='"60s"')
        server.wait_for_requests(1)
        assert perfd.stop(timeout=30) == 0  # the sink's timeout is 60 s
    (dropped,) = events(perfd, "alert_sink.dropped_at_stop", sink=sink)
    assert dropped["count"] >= 1
