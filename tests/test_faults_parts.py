"""Faults in perfd's parts, each against a real perfd subprocess: loaders that raise, hang or
leak; NVML failing mid-run with each error kind; log and alert files on a full disk or an
unwritable path; alert sinks that are down or hang."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import perfctl
from tests import fakenvml
from tests.conftest import Perfd, StartPerfd
from tests.daemons import wait_until

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
    control, env = fakenvml.subprocess_env(tmp_path, ROOT, gpus=TWO_GPUS)
    perfd = start_perfd(FAST + GPU_ALERTS, env=env)
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
