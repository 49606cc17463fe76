"""perfctl's human output: pure functions of the reply's result."""

from __future__ import annotations

import copy
import re
from typing import Any

from perfctl.format import alerts as fmt_alerts
from perfctl.format import base, catalog
from perfctl.format import cache as fmt_cache
from perfctl.format import recommend as fmt_rec
from perfctl.format import stats as fmt_stats
from perfctl.format import status as fmt_status

STATUS = {
    "version": "0.1.0",
    "pid": 4242,
    "uptime_s": 3725.2,
    "config_path": "/etc/perfd/perfd.toml",
    "config_file_present": False,
    "runtime_dir": "/run/perfd",
    "components": {"server": "started", "workers": "not_started"},
    "requests": {"total": 12, "errors": 1, "dropped": 0},
}


def test_duration() -> None:
    """Durations read as 45s, 3m 12s, 2h 05m, 3d 4h."""
    assert [base.duration(s) for s in (45, 192, 7500, 273600)] == [
        "45s",
        "3m 12s",
        "2h 05m",
        "3d 4h",
    ]


def test_status_is_aligned_text() -> None:
    """The status screen is a headline plus aligned rows, without colour by default."""
    text = fmt_status.format_status(STATUS)
    lines = text.splitlines()
    assert lines[0] == "perfd 0.1.0 · running · pid 4242 · up 1h 02m"
    values = [line.index("/") for line in lines[1:3]]
    assert values[0] == values[1]
    assert "(no file: defaults)" in text
    assert "\033[" not in text


def test_colour_only_when_asked() -> None:
    """Colour codes appear only with a colour Style."""
    assert "\033[32m" in fmt_status.format_status(STATUS, base.Style(colour=True))


def test_config_is_toml() -> None:
    """The config output parses back as TOML with the same values."""
    import tomllib

    result = {
        "path": "/etc/perfd/perfd.toml",
        "file_present": True,
        "config": {"runtime_dir": "", "log": {"level": "info"}, "server": {"workers": 4}},
    }
    assert tomllib.loads(fmt_status.format_config(result)) == result["config"]


def test_reload_mentions_restart() -> None:
    """Reload output lists changed keys and those that need a restart."""
    text = fmt_status.format_reload(
        {
            "path": "/p",
            "changed": ["log.level", "server.workers"],
            "restart_required": ["server.workers"],
        }
    )
    assert "log.level, server.workers" in text
    assert "restart perfd to apply: server.workers" in text
    assert "nothing changed" in fmt_status.format_reload(
        {"path": "/p", "changed": [], "restart_required": []}
    )


def test_ping() -> None:
    """Ping shows the version, pid and round trip."""
    assert fmt_status.format_ping({"version": "0.1.0", "pid": 7}, elapsed_ms=0.5) == (
        "pong from perfd 0.1.0 (pid 7) in 0.50 ms"
    )


# -- stats and alerts -----------------------------------------------------------------------

# The real `stats` and `alerts` results of a 2-GPU host (docs/protocol.md shows the fields).
STATS: dict[str, Any] = {
    "sampled_at": "2027-01-15T08:02:40Z",
    "sampled_at_unix": 1800000160.0,
    "interval_s": 5.0,
    "host": {
        "memory": {
            "total_bytes": 68719476736,
            "available_bytes": 25288767438,
            "used_bytes": 43430709298,
            "used_percent": 63.2,
            "verdict": "healthy",
        },
        "swap": {"total_bytes": 8589934592, "used_bytes": 0, "used_percent": 0.0},
        "psi": {
            "available": True,
            "some_percent": 0.4,
            "full_percent": 0.0,
            "some_avg10": 0.3,
            "some_avg60": 0.0,
            "full_avg10": 0.0,
            "full_avg60": 0.0,
        },
        "cgroup": None,
        "cpu_percent": 12.5,
        "load_avg": [0.5, 0.4, 0.3],
        "cpu_count": 16,
        "top_processes": [],
        "top_processes_at": None,
    },
    "gpu_state": "ok",
    "gpu_error": None,
    "driver_version": "550.54",
    "gpus": [
        {
            "index": 0,
            "uuid": "GPU-00000000",
            "name": "NVIDIA H100 80GB HBM3",
            "state": "ok",
            "error": None,
            "memory": {
                "total_bytes": 85899345920,
                "used_bytes": 62706522521,
                "free_bytes": 23192823399,
                "reserved_bytes": 0,
                "used_percent": 73.0,
            },
            "utilization_percent": 30.0,
            "memory_utilization_percent": 10.0,
            "temperature_c": 50.0,
            "power_watts": 200.0,
            "power_limit_watts": 700.0,
            "persistence_mode": True,
            "compute_capability": "9.0",
            "processes": [],
            "mig": {"enabled": False, "instances": []},
            "verdict": "healthy",
            "trend": {
                "direction": "increasing",
                "rate_bytes_per_s": 515396075.518,
                "r2": 1.0,
                "time_to_full_s": 45.0,
                "points": 12,
                "span_s": 55.0,
            },
        },
        {
            "index": 1,
            "uuid": "GPU-00000001",
            "name": "NVIDIA H100 80GB HBM3",
            "state": "ok",
            "error": None,
            "memory": {
                "total_bytes": 85899345920,
                "used_bytes": 79886391705,
                "free_bytes": 6012954215,
                "reserved_bytes": 0,
                "used_percent": 93.0,
            },
            "utilization_percent": 30.0,
            "memory_utilization_percent": 10.0,
            "temperature_c": 71,
            "power_watts": 200.0,
            "power_limit_watts": 700.0,
            "persistence_mode": True,
            "compute_capability": "9.0",
            "processes": [],
            "mig": {"enabled": False, "instances": []},
            "verdict": "pressure",
            "trend": {
                "direction": "stable",
                "rate_bytes_per_s": 0.0,
                "r2": 1.0,
                "time_to_full_s": None,
                "points": 12,
                "span_s": 55.0,
            },
        },
    ],
    "trends": {
        "host_memory": {
            "direction": "increasing",
            "rate_bytes_per_s": 27487790.702,
            "r2": 1.0,
            "time_to_full_s": 920.0,
            "points": 12,
            "span_s": 55.0,
        }
    },
    "perfd": {"rss_bytes": 31457280, "cpu_percent": 0.0},
    "alerts": {"firing": 1, "critical": 0},
}

ALERTS: dict[str, Any] = {
    "firing": [
        {
            "id": "gpu_memory/gpu1",
            "rule": "gpu_memory",
            "resource": "gpu1",
            "severity": "warning",
            "value": 93.0,
            "threshold": 90.0,
            "unit": "%",
            "since": "2027-01-15T08:01:45Z",
            "uuid": "GPU-00000001",
        }
    ],
    "history": [
        {
            "event": "alert.firing",
            "at": "2027-01-15T08:01:45Z",
            "id": "gpu_memory/gpu1",
            "rule": "gpu_memory",
            "resource": "gpu1",
            "severity": "warning",
            "value": 93.0,
            "threshold": 90.0,
            "unit": "%",
            "since": "2027-01-15T08:01:45Z",
            "uuid": "GPU-00000001",
        }
    ],
}

ALERTS_SINCE = "2027-01-15T08:01:45Z"
ANSI = re.compile(r"\033\[[0-9;]*m")


def stats(**changes: Any) -> dict[str, Any]:
    """A deep copy of STATS with top-level keys replaced."""
    return {**copy.deepcopy(STATS), **changes}


def line(text: str, start: str) -> str:
    """The one line of ``text`` that starts with ``start``."""
    found = [row for row in text.splitlines() if row.startswith(start)]
    assert len(found) == 1, (start, text)
    return found[0]


def test_sizes_are_binary_with_one_decimal() -> None:
    """Sizes read 512 B, 1.5 KiB, 40.4 GiB, 2.0 TiB; pairs use the total's unit."""
    assert [base.size(n) for n in (512, 1536, 43430709298, 2 << 40)] == [
        "512 B",
        "1.5 KiB",
        "40.4 GiB",
        "2.0 TiB",
    ]
    assert base.size(1024**2 - 1) == "1.0 MiB"  # never "1024.0 KiB"
    assert base.size_pair(43430709298, 64 << 30) == "40.4/64.0 GiB"
    assert base.size_pair(0, 8 << 30) == "0.0/8.0 GiB"
    assert base.size_pair(1 << 39, 1 << 40) == "0.5/1.0 TiB"


def test_until_is_short_and_rounds_down() -> None:
    """Times to full read 45s, 15m, 2.5h, 3.1d, never more than the truth."""
    assert [base.until(s) for s in (45.9, 920, 9000, 267840)] == ["45s", "15m", "2.5h", "3.1d"]


def test_bar_rounds_and_clamps() -> None:
    """A bar has a fixed width; out-of-range or missing percentages clamp."""
    assert base.bar(62.5, 10) == "[██████░░░░]"
    assert base.bar(150, 4) == "[████]"
    assert base.bar(None, 4) == "[░░░░]"
    assert base.bar(62.5, 10, base.Style(unicode=False)) == "[######....]"


def test_gpu_names_are_shortened() -> None:
    """Vendor and memory-type words go; long names are cut to 14 characters."""
    assert fmt_stats.short_gpu_name("NVIDIA H100 80GB HBM3") == "H100 80GB"
    assert fmt_stats.short_gpu_name("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert fmt_stats.short_gpu_name("NVIDIA RTX 6000 Ada Generation") == "RTX 6000 Ada"
    assert fmt_stats.short_gpu_name("Tesla V100-SXM2-32GB-LS") == "V100-SXM2-32GB"
    assert fmt_stats.short_gpu_name("") == "?"


def test_trend_text() -> None:
    """Arrows for direction, the rate unless stable, the time to full only when known."""
    up = {"direction": "increasing", "rate_bytes_per_s": 1258291.2, "time_to_full_s": 2520.0}
    down = {"direction": "decreasing", "rate_bytes_per_s": -1048576.0, "time_to_full_s": None}
    flat = {"direction": "stable", "rate_bytes_per_s": 3.0, "time_to_full_s": None}
    assert fmt_stats.trend_text(up) == "↑ 1.2 MiB/s  42m to full"
    assert fmt_stats.trend_text(up, rate=False) == "↑ 42m to full"
    assert fmt_stats.trend_text(down) == "↓ 1.0 MiB/s"
    assert fmt_stats.trend_text(flat) == "→"
    assert fmt_stats.trend_text(None) == ""
    assert fmt_stats.trend_text(up, base.Style(unicode=False)) == "^ 1.2 MiB/s  42m to full"


def test_stats_screen_from_real_example() -> None:
    """The example host: headline, memory bar and trend, swap, PSI, CPU, one line per GPU."""
    text = fmt_stats.format_stats(STATS)
    assert text.splitlines()[0] == (
        "perfd stats · 2027-01-15T08:02:40Z · every 5s · 1 alert firing"
    )
    assert line(text, "mem ") == (
        "mem    [██████░░░░]  63.2%  40.4/64.0 GiB  healthy  ↑ 26.2 MiB/s  15m to full"
    )
    assert line(text, "swap ") == "swap   [░░░░░░░░░░]   0.0%  0.0/8.0 GiB"
    assert line(text, "psi ") == "psi    some 0.4%  full 0.0%"
    assert line(text, "cpu ") == "cpu    12.5%  load 0.50 0.40 0.30  (16 cpus)"
    assert line(text, "GPU ").split() == [
        "GPU",
        "MEMORY",
        "UTIL",
        "TEMP",
        "PWR",
        "VERDICT",
        "TREND",
    ]
    assert line(text, "0 ") == (
        "0 H100 80GB [██████░░] 73.0% 58.4/80.0 GiB  30% 50°C 200W healthy  ↑ 45s to full"
    )
    assert line(text, "1 ") == (
        "1 H100 80GB [███████░] 93.0% 74.4/80.0 GiB  30% 71°C 200W pressure →"
    )
    assert line(text, "procs") == "procs  none listed"
    assert line(text, "perfd  ") == "perfd  rss 30.0 MiB  cpu 0.0%"
    assert "gpu ok" not in text  # the GPU state shows only when it is not ok
    assert "cgroup" not in text


def test_stats_fits_80_columns_for_two_gpus() -> None:
    """No line passes 80 columns, even with long names, big GPUs and the widest verdict."""
    wide = stats()
    memory = wide["host"]["memory"]
    memory["verdict"] = "full_but_healthy"
    wide["host"]["top_processes"] = [
        {"pid": 4194304, "name": "x" * 40, "rss_bytes": 1 << 40, "unit": "u" * 90 + ".service"}
    ]
    wide["host"]["cgroup"] = {
        "path": "/" + "deep/" * 30 + "perfd.service",
        "limit_bytes": 32 << 30,
        "current_bytes": 20 << 30,
        "used_percent": 62.5,
    }
    for gpu in wide["gpus"]:
        gpu["name"] = "NVIDIA A100-SXM4-80GB"
        gpu["memory"].update(total_bytes=151397597184, used_bytes=151397597184, used_percent=100.0)
        gpu["power_watts"] = 1000.0
        gpu["trend"] = {"direction": "increasing", "rate_bytes_per_s": 1e9, "time_to_full_s": 9e4}
    for style in (base.PLAIN, base.Style(colour=True), base.Style(unicode=False)):
        text = ANSI.sub("", fmt_stats.format_stats(wide, style))
        assert max(len(row) for row in text.splitlines()) <= base.WIDTH, text
    text = fmt_stats.format_stats(wide)
    assert "full_but_healthy" in line(text, "mem ")
    assert "15m to full" in line(text, "mem ")  # the rate gave way, the time to full stayed
    cgroup = line(text, "cgroup ")
    assert "  …" in cgroup
    assert cgroup.endswith("/deep/perfd.service")
    assert "1000W" in line(text, "0 A100")
    assert "1.0d to full" in line(text, "0 A100")


def test_stats_ascii_fallback() -> None:
    """Without unicode the screen is plain ASCII: # and . bars, ^ v -> arrows, C for °C."""
    text = fmt_stats.format_stats(STATS, base.Style(unicode=False))
    assert text.isascii()
    assert "[######....]" in line(text, "mem ")
    assert "^ 26.2 MiB/s" in line(text, "mem ")
    assert "[######..]" in line(text, "0 ")
    assert " 50C " in line(text, "0 ")
    assert line(text, "1 ").endswith("pressure ->")
    assert text.splitlines()[0].startswith("perfd stats | 2027-01-15T08:02:40Z | ")


def test_stats_colour_only_with_colour_on() -> None:
    """Verdict words are green, yellow or red with colour on, and no escape appears without."""
    assert "\033[" not in fmt_stats.format_stats(STATS)
    text = fmt_stats.format_stats(STATS, base.Style(colour=True))
    assert "\033[32mhealthy\033[0m" in line(text, "mem ")
    assert "\033[33mpressure\033[0m" in line(text, "1 ")
    critical = stats()
    critical["gpus"][1]["verdict"] = "critical"
    assert "\033[31mcritical\033[0m" in fmt_stats.format_stats(critical, base.Style(colour=True))
    # Colour does not shift the columns: the lines match the plain ones once escapes are gone.
    assert ANSI.sub("", text) == fmt_stats.format_stats(STATS)


def test_stats_without_psi() -> None:
    """A host without /proc/pressure says so instead of showing percentages."""
    snap = stats()
    snap["host"]["psi"] = {"available": False}
    assert line(fmt_stats.format_stats(snap), "psi ") == "psi    absent"


def test_stats_without_gpus() -> None:
    """gpu_state absent with no GPUs: the headline and a gpu line say why, no GPU table."""
    snap = stats(gpu_state="absent", gpu_error="NVML_ERROR_LIBRARY_NOT_FOUND", gpus=[])
    text = fmt_stats.format_stats(snap)
    assert " · gpu absent · " in text.splitlines()[0]
    assert line(text, "gpu ") == "gpu    absent  NVML_ERROR_LIBRARY_NOT_FOUND"
    assert "GPU " not in text
    disabled = fmt_stats.format_stats(stats(gpu_state="disabled", gpu_error=None, gpus=[]))
    assert line(disabled, "gpu ") == "gpu    disabled"


def test_stats_lost_gpu() -> None:
    """A lost GPU shows its state and error in red; the other GPU keeps its full line."""
    snap = stats(gpu_state="lost", gpu_error="NVML_ERROR_GPU_IS_LOST")
    lost = snap["gpus"][1]
    lost.update(state="lost", error="NVML_ERROR_GPU_IS_LOST", verdict=None, trend=None)
    lost.update(temperature_c=None, power_watts=None, utilization_percent=None)
    lost["memory"].update(total_bytes=0, used_bytes=0, free_bytes=0, used_percent=0.0)
    text = fmt_stats.format_stats(snap)
    assert " · gpu lost · " in text.splitlines()[0]
    assert line(text, "1 ") == "1 H100 80GB lost: NVML_ERROR_GPU_IS_LOST"
    assert "73.0%" in line(text, "0 ")
    coloured = fmt_stats.format_stats(snap, base.Style(colour=True))
    assert "\033[31mlost: NVML_ERROR_GPU_IS_LOST\033[0m" in coloured


def test_stats_missing_gpu_readings() -> None:
    """Null temperature, power and utilization show as '-', never 'None'."""
    snap = stats()
    snap["gpus"][0].update(temperature_c=None, power_watts=None, utilization_percent=None)
    row = line(fmt_stats.format_stats(snap), "0 ")
    assert "None" not in row
    assert row.split()[7:11] == ["-", "-", "-", "healthy"]


def test_stats_top_processes() -> None:
    """Top processes are a PID, NAME, RSS, UNIT table; a missing unit is '-'."""
    snap = stats()
    snap["host"]["top_processes"] = [
        {"pid": 2101, "name": "vllm", "rss_bytes": 12 << 30, "unit": "vllm.service"},
        {"pid": 77, "name": "python3", "rss_bytes": 300 << 20, "unit": None},
    ]
    text = fmt_stats.format_stats(snap)
    assert line(text, " PID ").split() == ["PID", "NAME", "RSS", "UNIT"]
    assert line(text, "2101 ").split() == ["2101", "vllm", "12.0", "GiB", "vllm.service"]
    assert line(text, "  77 ").split() == ["77", "python3", "300.0", "MiB", "-"]
    assert "none listed" not in text


def test_stats_cgroup_limit() -> None:
    """A cgroup limit below RAM gets its own bar; without a current reading, just the limit."""
    snap = stats()
    snap["host"]["cgroup"] = {
        "path": "/system.slice/perfd.service",
        "limit_bytes": 32 << 30,
        "current_bytes": 20 << 30,
        "used_percent": 62.5,
    }
    assert line(fmt_stats.format_stats(snap), "cgroup ") == (
        "cgroup [██████░░░░]  62.5%  20.0/32.0 GiB  /system.slice/perfd.service"
    )
    snap["host"]["cgroup"].update(current_bytes=None, used_percent=None)
    assert line(fmt_stats.format_stats(snap), "cgroup ") == (
        "cgroup limit 32.0 GiB  /system.slice/perfd.service"
    )


def test_stats_first_sample_and_critical_alerts() -> None:
    """perfd's CPU before a second sample is '-'; critical alerts are counted in red."""
    snap = stats(perfd={"rss_bytes": 31457280, "cpu_percent": None})
    snap["alerts"] = {"firing": 3, "critical": 2}
    text = fmt_stats.format_stats(snap, base.Style(colour=True))
    assert line(text, "perfd  ") == "perfd  rss 30.0 MiB  cpu -"
    assert "\033[31m3 alerts firing (2 critical)\033[0m" in text.splitlines()[0]
    quiet = stats(alerts={"firing": 0, "critical": 0})
    assert fmt_stats.format_stats(quiet).splitlines()[0].endswith(" · no alerts firing")


def test_alerts_table_and_history() -> None:
    """Firing alerts are an aligned table with units; the history lists each event."""
    text = fmt_alerts.format_alerts(ALERTS)
    lines = text.splitlines()
    assert lines[0].split() == ["SEVERITY", "ID", "VALUE", "THRESHOLD", "SINCE"]
    assert lines[1].split() == ["warning", "gpu_memory/gpu1", "93.0%", "90.0%", ALERTS_SINCE]
    assert lines[0].index("SINCE") == lines[1].index(ALERTS_SINCE)
    assert lines[3] == "history, newest first:"
    assert lines[4].split() == ["TIME", "EVENT", "ID", "SEVERITY", "VALUE"]
    assert lines[5].split() == [ALERTS_SINCE, "firing", "gpu_memory/gpu1", "warning", "93.0%"]
    assert "\033[" not in text
    assert "\033[33mwarning\033[0m" in fmt_alerts.format_alerts(ALERTS, base.Style(colour=True))


def test_alerts_none_firing() -> None:
    """No alerts: says so, and says there is no history."""
    assert fmt_alerts.format_alerts({"firing": [], "history": []}) == (
        "no alerts firing\n\nno alert history"
    )


def test_alerts_history_events_and_limit() -> None:
    """History shows each event kind, repeats and units; only the newest 10 unless asked."""
    base = {"id": "gpu_temperature/gpu0", "severity": "critical", "unit": "C", "value": 91.0}
    events = [
        {**base, "event": "alert.resolved", "at": "T13", "value": 70.0},
        {**base, "event": "alert.deescalated", "at": "T12", "severity": "warning"},
        {**base, "event": "alert.firing", "at": "T11", "repeat": 2},
        {**base, "event": "alert.escalated", "at": "T10"},
        {
            "id": "exhaustion/host",
            "severity": "warning",
            "unit": "s",
            "value": 920.0,
            "event": "alert.firing",
            "at": "T09",
        },
    ] + [{**base, "event": "alert.firing", "at": f"T0{i}"} for i in range(8, 0, -1)]
    text = fmt_alerts.format_alerts({"firing": [], "history": events})
    rows = text.splitlines()[4:]
    assert rows[0].split() == ["T13", "resolved", "gpu_temperature/gpu0", "critical", "70°C"]
    assert rows[1].split()[1] == "deescalated"
    assert rows[2].split()[1:4] == ["firing", "(repeat", "2)"]
    assert rows[3].split()[1] == "escalated"
    assert rows[4].split() == ["T09", "firing", "exhaustion/host", "warning", "15m"]
    assert rows[9].startswith("T04")
    assert rows[10] == "3 older; perfctl alerts --all shows them"
    everything = fmt_alerts.format_alerts({"firing": [], "history": events}, history_limit=None)
    assert everything.splitlines()[-1].startswith("T01")
    assert "older" not in everything


# -- the model cache ------------------------------------------------------------------------


def model(name: str = "ballast", **changes: Any) -> dict[str, Any]:
    """A ps entry as perfd sends it (a ready, idle, expiring CPU model), with changes."""
    entry: dict[str, Any] = {
        "name": name,
        "state": "ready",
        "loader": "python",
        "device": "cpu",
        "estimated_bytes": 64 << 20,
        "tensor_bytes": 60 << 20,
        "tensor_bytes_by_device": {"cpu": 60 << 20},
        "tensor_parts": None,
        "tensor_counted_by": "torch",
        "measured_bytes": 67200000,
        "measured_by": "rss",
        "measured_torch_bytes": None,
        "resident_delta": {"anon_bytes": 67100000, "file_bytes": 100000},
        "bytes": 60 << 20,
        "bytes_source": "tensors",
        "estimate_error_percent": 6.7,
        "hits": 12,
        "misses": 1,
        "loads": 1,
        "load_seconds": {"last": 0.0412, "p50": 0.0412, "p95": 0.0412},
        "last_used": "2027-01-15T08:02:40Z",
        "keep_alive_s": 300.0,
        "expires_at": "2027-01-15T08:07:40Z",
        "leases": 0,
        "pinned": False,
    }
    entry.update(changes)
    return entry


# A ps entry whose tensors were not counted: its bytes are the measured delta.
UNCOUNTED: dict[str, Any] = {
    "tensor_bytes": None,
    "tensor_bytes_by_device": None,
    "tensor_counted_by": None,
    "bytes": 67200000,
    "bytes_source": "measured",
    "estimate_error_percent": None,
}

PS: dict[str, Any] = {
    "models": [
        model(),
        model("embedder", pinned=True, expires_at=None, device="cuda:0", measured_by="nvml"),
        model("chat", leases=2, expires_at=None, hits=3),
        model("echo", keep_alive_s=-1.0, expires_at=None, estimated_bytes=None, **UNCOUNTED),
        model(
            "big",
            state="loading",
            measured_bytes=None,
            measured_by=None,
            expires_at=None,
            **{**UNCOUNTED, "bytes": 64 << 20, "bytes_source": "estimate"},
        ),
    ],
    "configured": ["ballast", "big", "broken", "chat", "echo", "embedder", "huge"],
    "runtime": [
        {"device": "cpu", "runtime_overhead_bytes": 327 << 20},
        {"device": "cuda:0", "runtime_overhead_bytes": 546 << 20},
    ],
}

CACHE: dict[str, Any] = {
    "started": True,
    "models": PS["models"],
    "loaded": 4,
    "hits": 12,
    "misses": 3,
    "hit_ratio": 0.8,
    "devices": {
        "cuda:0": {
            "estimated_bytes": 64 << 20,
            "measured_bytes": 67200000,
            "tensor_bytes": 60 << 20,
            "model_bytes": 60 << 20,
            "runtime_overhead_bytes": 546 << 20,
            "budget_bytes": 72 << 30,
        },
        "cpu": {
            "estimated_bytes": 192 << 20,
            "measured_bytes": 201600000,
            "tensor_bytes": 120 << 20,
            "model_bytes": (184 << 20) + 67200000,
            "runtime_overhead_bytes": 327 << 20,
            "budget_bytes": 32 << 30,
        },
    },
    "evictions": {"lru": 1, "pressure": 0, "ttl": 2, "manual": 0, "budget": 0},
    "recent_evictions": [],
    "configured": PS["configured"],
}


def test_ps_table_until_column() -> None:
    """ps is a NAME STATE ESTIMATE TENSORS MEASURED ERR% DEVICE UNTIL table (expiry time,
    PINNED, IN USE, FOREVER), then perfd's own line per device: its runtime overhead."""
    text = fmt_cache.format_ps(PS)
    lines = text.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "ESTIMATE",
        "TENSORS",
        "MEASURED",
        "ERR%",
        "DEVICE",
        "UNTIL",
    ]
    assert line(text, "ballast ") == (
        "ballast   ready    64.0 MiB  60.0 MiB  64.1 MiB   +6.7  cpu     08:07:40 UTC"
    )
    assert line(text, "embedder ").split()[-2:] == ["cuda:0", "PINNED"]
    assert "64.1 MiB " in line(text, "embedder ")  # nvml: a GPU's own figure, not named
    assert line(text, "chat ").endswith("  IN USE")
    assert line(text, "echo ").split()[2:6] == ["-", "-", "64.1", "MiB"]
    assert line(text, "echo ").endswith("FOREVER")
    assert line(text, "big ").split()[1:6] == ["loading", "64.0", "MiB", "-", "-"]
    assert line(text, "big ").endswith("  -")
    assert lines[0].index("ERR%") + 4 == lines[1].index("+6.7") + 4  # right-aligned
    assert max(len(row) for row in lines) <= base.WIDTH
    runtime = [row for row in lines if row.startswith("perfd ")]
    assert [row.split() for row in runtime] == [
        ["perfd", "runtime", "-", "-", "327.0", "MiB", "-", "cpu", "-"],
        ["perfd", "runtime", "-", "-", "546.0", "MiB", "-", "cuda:0", "-"],
    ]
    assert "\033[" not in text


def test_ps_runtime_without_models() -> None:
    """No model loaded but perfd's runtime overhead known (after the last eviction): one
    line says what perfd itself holds per device."""
    text = fmt_cache.format_ps({"models": [], "configured": ["a"], "runtime": PS["runtime"]})
    assert text.splitlines() == [
        "no models loaded",
        "perfd runtime overhead: cpu 327.0 MiB, cuda:0 546.0 MiB",
        "not loaded: a",
    ]


def test_ps_lists_configured_models_not_loaded() -> None:
    """After the table, one line names the configured models that are not loaded."""
    assert fmt_cache.format_ps(PS).splitlines()[-1] == "not loaded: broken, huge"
    assert "not loaded" not in fmt_cache.format_ps({**PS, "configured": ["ballast"]})


def test_ps_without_loaded_models() -> None:
    """Nothing loaded: says so, then the configured names; nothing configured: how to add one."""
    assert fmt_cache.format_ps({"models": [], "configured": ["a", "b"]}) == (
        "no models loaded\nnot loaded: a, b"
    )
    text = fmt_cache.format_ps({"models": [], "configured": []})
    assert text.splitlines()[0] == "no models loaded"
    assert "[models.NAME]" in text


def test_ps_fits_80_columns_and_never_cuts_a_name_below_its_floor() -> None:
    """Short names fit 80 columns; a long name narrows NAME only down to NAME_FLOOR characters
    (a name is what the operator types next), and configured models wrap within 80."""
    short = {"models": [model("m" * 8, device="cuda:12", measured_by="torch")]}
    wide = {
        "models": [model("m" * 60, device="cuda:12", measured_by="torch")],
        "configured": [f"model-number-{i}" for i in range(20)],
    }
    for style in (base.PLAIN, base.Style(colour=True)):
        text = ANSI.sub("", fmt_cache.format_ps(short, style))
        assert max(len(row) for row in text.splitlines()) <= base.WIDTH, text
        text = ANSI.sub("", fmt_cache.format_ps(wide, style))
        assert text.splitlines()[1].startswith("m" * fmt_cache.NAME_FLOOR + "  ready"), text
        assert all(len(row) <= base.WIDTH for row in text.splitlines()[2:]), text
    text = fmt_cache.format_ps(wide)
    assert text.splitlines()[2].startswith("not loaded: model-number-0, ")
    assert text.splitlines()[3].startswith("            model-number-")
    assert text.endswith("model-number-19")


def test_ps_colours() -> None:
    """ready is green, PINNED bold, IN USE yellow, with colour on; columns do not shift."""
    text = fmt_cache.format_ps(PS, base.Style(colour=True))
    assert "\033[32mready\033[0m" in text
    assert "\033[1mPINNED\033[0m" in text
    assert "\033[33mIN USE\033[0m" in text
    assert ANSI.sub("", text) == fmt_cache.format_ps(PS)


def test_model_size_and_clock() -> None:
    """Sizes read estimated / measured with the measurer; expiry times read HH:MM:SS UTC."""
    assert fmt_cache.model_size(model()) == "64.0 MiB / 60.0 MiB tensors / 64.1 MiB rss"
    assert fmt_cache.model_size(model(**UNCOUNTED)) == "64.0 MiB / 64.1 MiB rss"
    assert fmt_cache.model_size(model(estimated_bytes=None, **UNCOUNTED)) == "- / 64.1 MiB rss"
    assert fmt_cache.model_size(model(measured_bytes=None, measured_by=None, **UNCOUNTED)) == (
        "64.0 MiB / -"
    )
    bare = model(estimated_bytes=None, measured_bytes=None, **UNCOUNTED)
    assert fmt_cache.model_size(bare) == "-"
    assert fmt_cache.measured_cell(model()) == "64.1 MiB"  # rss on cpu: not named
    gpu = model(device="cuda:0", measured_by="nvml")
    assert fmt_cache.measured_cell(gpu) == "64.1 MiB"
    assert fmt_cache.measured_cell({**gpu, "measured_by": "torch"}) == "64.1 MiB torch"
    assert fmt_cache.measured_cell(model(measured_by="remote", measured_bytes=0)) == "0 B remote"
    assert fmt_cache.measured_cell(model(measured_bytes=None)) == "-"
    assert fmt_cache.error_cell(model()) == "+6.7"
    assert fmt_cache.error_cell(model(estimate_error_percent=-12.04)) == "-12.0"
    assert fmt_cache.error_cell(model(**UNCOUNTED)) == "-"
    assert fmt_cache.clock("2027-01-15T08:07:40Z") == "08:07:40 UTC"
    assert fmt_cache.clock("soon") == "soon"
    assert fmt_cache.clock(None) == "-"


def test_stats_cache_section() -> None:
    """stats shows the cache's counts, its evictions by reason, then each device's budget use
    (the models' bytes: tensors, measured sizes, the estimate of one still loading; plus
    perfd's runtime overhead there, named after the budget), before perfd's own line."""
    text = fmt_stats.format_stats(stats(cache=CACHE))
    lines = text.splitlines()
    start = lines.index(line(text, "cache "))
    assert lines[start : start + 4] == [
        "cache  4 loaded · hits 12 · misses 3 · hit ratio 80%",
        "       evictions lru 1 pressure 0 ttl 2 manual 0 budget 0",
        "       cpu     [░░░░░░░░░░]   1.8%  0.6/32.0 GiB budget · runtime 327.0 MiB",
        "       cuda:0  [░░░░░░░░░░]   0.8%  0.6/72.0 GiB budget · runtime 546.0 MiB",
    ]
    assert lines[-1].startswith("perfd  rss ")
    assert "cache" not in fmt_stats.format_stats(STATS)  # a perfd without a cache: no section


def test_stats_cache_not_started_and_no_budget() -> None:
    """A cache not started yet says so; a device without a budget shows its bytes only."""
    idle = fmt_stats.format_stats(stats(cache={"started": False, "configured": ["a"]}))
    assert line(idle, "cache ") == "cache  not started"
    cache = {**CACHE, "hit_ratio": None, "devices": {"cpu": {**CACHE["devices"]["cpu"]}}}
    cache["devices"]["cpu"]["budget_bytes"] = 0
    text = fmt_stats.format_stats(stats(cache=cache))
    assert "hit ratio -" in line(text, "cache ")
    assert "       cpu  575.1 MiB  (no budget) · runtime 327.0 MiB" in text.splitlines()


def test_stats_cache_fits_80_columns_and_ascii() -> None:
    """The cache lines fit 80 columns with big counts, and fall back to ASCII."""
    cache = {**CACHE, "hits": 10**9, "misses": 10**9, "loaded": 999}
    cache["evictions"] = dict.fromkeys(CACHE["evictions"], 10**9)
    wrapped = fmt_stats.format_stats(stats(cache=cache)).splitlines()
    assert " " * 17 + "manual 1000000000 budget 1000000000" in wrapped  # under the first reason
    for style in (base.PLAIN, base.Style(colour=True), base.Style(unicode=False)):
        text = ANSI.sub("", fmt_stats.format_stats(stats(cache=cache), style))
        assert max(len(row) for row in text.splitlines()) <= base.WIDTH, text
    ascii_text = fmt_stats.format_stats(stats(cache=cache), base.Style(unicode=False))
    assert ascii_text.isascii()
    assert line(ascii_text, "cache ").startswith("cache  999 loaded | hits ")


def test_load_output() -> None:
    """load names the model, its device, load time, sizes and how long it stays."""
    assert fmt_cache.format_load(model()) == (
        "loaded ballast on cpu in 0.04s · 64.0 MiB / 60.0 MiB tensors / 64.1 MiB rss · "
        "until 08:07:40 UTC"
    )
    pinned = fmt_cache.format_load(model(pinned=True, expires_at=None))
    assert pinned.endswith(" · stays loaded until unpinned")
    assert (
        fmt_cache.format_load({}, name="once") == "loaded once, and unloaded at once (keep_alive 0)"
    )


def test_pin_and_unpin_output() -> None:
    """pin says the model stays until unpinned; unpin says when it now expires."""
    assert fmt_cache.format_pin(model("echo", pinned=True, expires_at=None)) == (
        "pinned echo · stays loaded until unpinned"
    )
    assert fmt_cache.format_pin(model("echo")) == "unpinned echo · until 08:07:40 UTC"
    forever = model("echo", keep_alive_s=-1.0, expires_at=None)
    assert fmt_cache.format_pin(forever) == "unpinned echo · stays loaded (keep_alive forever)"


def test_evict_output() -> None:
    """evict shows each model with what it freed; a dry run lists names; nothing says so."""
    record = {
        "model": "ballast",
        "reason": "manual",
        "at": "2027-01-15T08:03:00Z",
        "device": "cpu",
        "bytes": 67112960,
        "freed_rss_bytes": 67166208,
    }
    done = {"evicted": ["ballast"], "records": [record], "dry_run": False}  # an older perfd
    assert (
        fmt_cache.format_evict(done) == "evicted ballast from cpu · 64.0 MiB · 64.1 MiB rss freed"
    )
    assert fmt_cache.format_evict({"evicted": ["a", "b"], "dry_run": True}) == "would evict: a, b"
    assert fmt_cache.format_evict({"evicted": [], "dry_run": True}) == "nothing to evict"
    assert fmt_cache.format_evict({"evicted": [], "records": [], "dry_run": False}) == (
        "nothing to evict"
    )
    gpu = {**record, "device": "cuda:0", "freed_rss_bytes": -4096}
    assert fmt_cache.format_evict({"evicted": ["ballast"], "records": [gpu], "dry_run": False}) == (
        "evicted ballast from cuda:0 · 64.0 MiB · 0 B rss freed"
    )
    measured = {**record, "model": "b", "device": "cuda:0", "freed_bytes": 57 << 20}
    assert fmt_cache.format_evict({"evicted": ["b"], "records": [measured], "dry_run": False}) == (
        "evicted b from cuda:0 · 64.0 MiB · 57.0 MiB nvml freed"
    )
    batch = {**record, "model": "b", "freed_bytes": None, "freed_rss_bytes": None}
    assert fmt_cache.format_evict({"evicted": ["b"], "records": [batch], "dry_run": False}) == (
        "evicted b from cpu · 64.0 MiB · freed not measured"
    )


def test_evict_all_says_what_it_skipped() -> None:
    """evict --all / --idle: a last line names each model left and why, wrapped at 80."""
    skipped = [{"model": "upper", "why": "pinned"}, {"model": "r", "why": "in use by 2 requests"}]
    assert fmt_cache.format_evict({"evicted": [], "skipped": skipped, "dry_run": True}) == (
        "nothing to evict\nskipped: upper (pinned), r (in use by 2 requests)"
    )
    many = [{"model": f"model-{i:02d}", "why": "pinned"} for i in range(12)]
    lines = fmt_cache.format_evict({"evicted": ["a"], "skipped": many, "dry_run": True})
    assert lines.splitlines()[0] == "would evict: a"
    assert all(len(line) <= base.WIDTH for line in lines.splitlines())
    assert lines.count("(pinned)") == 12


def test_infer_output_is_json() -> None:
    """infer prints the outputs as JSON: one line, or indented for a TTY; escapes without
    unicode."""
    result = {"model": "echo", "outputs": {"a": 1, "text": "é"}}
    assert fmt_cache.format_infer(result) == '{"a": 1, "text": "é"}'
    assert fmt_cache.format_infer(result, pretty=True) == '{\n  "a": 1,\n  "text": "é"\n}'
    assert (
        fmt_cache.format_infer(result, base.Style(unicode=False)) == '{"a": 1, "text": "\\u00e9"}'
    )


# -- recommend ------------------------------------------------------------------------------


def _recommend(**fields: Any) -> dict[str, Any]:
    """A real recommend() result, planned for the hardware ``fields`` name."""
    from perfd.recommend import Query, plan_hardware, recommend

    request = Query(**fields)
    return recommend(request, plan_hardware(request, None))


FITS = {"model": "llama-3.1-8b", "gpu": "H100"}
SHORT = {"model": "llama-3.1-70b", "gpu": "RTX 4090"}
CPU = {"model": "tinyllama-1.1b", "memory": 16 << 30, "engine": "llama.cpp"}
BUDGET = {"model": "llama-3.1-8b", "kv_budget": 16 << 30}
ANSI = re.compile(r"\033\[[0-9;]*m")


def _settings(flags: dict[str, Any]) -> list[str]:
    return [
        flags[k]
        for k in ("vllm", "vllm_env", "llama.cpp", "ollama", "ollama_modelfile")
        if k in flags
    ]


def test_recommend_model_hardware_and_budget_lines() -> None:
    """Llama-3.1-8B on an H100: the model's shape, the GPU, and free -> usable -> weights ->
    overhead -> KV cache in GiB, in that order."""
    lines = fmt_rec.format_recommend(_recommend(**FITS)).splitlines()
    model = " ".join(line.strip() for line in lines[:2])
    for words in (
        "Llama-3.1-8B",
        "8.03B params",
        "32 layers",
        "8 KV heads",
        "head_dim 128",
        "gqa",
        "bf16 weights",
    ):
        assert words in model
    assert lines[2].startswith("hardware  1 x H100-80GB, 79.65 GiB")
    budget = [line.split()[0] for line in lines[4:9]]
    assert budget == ["free", "usable", "weights", "overhead", "KV"]
    assert lines[8].split()[:3] == ["KV", "cache", "55.36"]
    assert lines[9] == "fits      32768 tokens x 13 sequences (up to 131072 tokens for one)"
    assert lines[10].startswith("limit     gpu_memory: 55.36 GiB of KV cache holds 13 sequences")


def test_recommend_table_is_aligned_with_the_point_marked() -> None:
    """Contexts and sequence counts are right-aligned; only the recommended row is marked."""
    result = _recommend(**FITS)
    text = fmt_rec.format_recommend(result)
    rows = [line for line in text.splitlines() if re.search(r"\d+ +\d+ +[\d.]+ [KMG]iB", line)]
    assert len(rows) == len(result["table"])
    assert {row.index(" MiB") if "MiB" in row else row.index(" GiB") for row in rows} == {
        rows[0].index(" MiB")
    }
    (marked,) = [row for row in rows if row.startswith("→")]
    assert marked.split()[1:3] == ["32768", "13"]
    assert marked.endswith("recommended")
    assert fmt_rec.format_recommend(result, base.Style(unicode=False)).count("\n->") == 1


def test_recommend_tips_are_ranked_with_bytes_saved() -> None:
    """Each tip shows its saving in GiB and its change, largest first, then what it gives."""
    result = _recommend(**FITS)
    lines = fmt_rec.format_recommend(result).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tips"))
    heads = [line for line in lines[start + 1 :] if re.match(r"^ +\d+\.\d\d GiB  ", line)]
    assert len(heads) == len(result["tips"])
    saved = [float(line.split()[0]) for line in heads]
    assert saved == sorted(saved, reverse=True)
    for line, tip in zip(heads, result["tips"], strict=True):
        assert line.split("GiB  ", 1)[1].startswith(tip["change"][:20])
    assert "tensor parallel over 2 x H100-80GB → 65536 tokens x 15 sequences" in lines[start + 1]


def test_recommend_settings_lines_are_exact_copyable_text() -> None:
    """vLLM, llama.cpp and Ollama settings each stand alone on a line, exactly as given."""
    for fields in (FITS, CPU, BUDGET):
        result = _recommend(**fields)
        lines = fmt_rec.format_recommend(result, base.Style(colour=True)).splitlines()
        for setting in _settings(result["flags"]):
            assert setting in lines
    lines = fmt_rec.format_recommend(_recommend(**FITS)).splitlines()
    vllm = lines.index(
        "--max-model-len 32768 --max-num-seqs 13 --gpu-memory-utilization 0.9 "
        "--tensor-parallel-size 1"
    )
    assert lines[vllm - 1] == "# vLLM: vllm serve MODEL with"
    assert lines[vllm + 1 : vllm + 3] == [
        "# llama.cpp: llama-server -m MODEL.gguf with",
        "-c 425984 -np 13 -ngl 999",
    ]


def test_recommend_that_does_not_fit_says_why_and_the_smallest_change() -> None:
    """Llama-3.1-70B on an RTX 4090: the shortfall, the reason, the smallest change that fits
    with its settings, and no settings for the plan itself."""
    result = _recommend(**SHORT)
    text = fmt_rec.format_recommend(result)
    assert "does not fit: short by 111.64 GiB" in text
    assert "needs 131.42 GiB of weights" in text
    assert "smallest change that fits: awq weights and tensor parallel over 2 x RTX 4090" in text
    assert "gives 4096 tokens x 3 sequences" in text
    lines = text.splitlines()
    assert result["smallest_change"]["flags"]["vllm"] in lines
    assert not any(line.startswith("fits ") for line in lines)
    assert "no context in 512..131072 holds even one sequence" in text


def test_recommend_cpu_only_and_kv_budget() -> None:
    """A CPU-only plan budgets RAM and gives vLLM's CPU KV space; a bare KV budget has no
    hardware and a one-line budget."""
    cpu = fmt_rec.format_recommend(_recommend(**CPU))
    assert "hardware  CPU only · RAM 16.00 GiB · planned · engine llama.cpp" in cpu
    assert "budget    in GiB of RAM:" in cpu
    assert "\nVLLM_CPU_KVCACHE_SPACE=12\n" in cpu
    assert "recommended: 16 (max_num_seqs cap)" in cpu
    budget = fmt_rec.format_recommend(_recommend(**BUDGET))
    assert "hardware  none: a 16.00 GiB KV cache budget · engine vllm" in budget
    assert "budget    KV cache 16.00 GiB (--kv-budget): 131072 tokens of 128.0 KiB" in budget


def test_recommend_lines_fit_80_columns() -> None:
    """Every line but the pasteable settings fits 80 columns, with and without unicode."""
    cases = [
        FITS,
        SHORT,
        CPU,
        BUDGET,
        {"model": "mixtral", "gpu": "L4", "gpus": 2},
        {"model": "gemma-2-9b", "gpu": "A10G", "engine": "ollama", "kv_dtype": "q8_0"},
        {"model": "deepseek-v2-lite", "gpu": "H200", "quant": "Q4_K_M", "context": 100000},
    ]
    for fields in cases:
        result = _recommend(**fields)
        exempt = set(_settings(result["flags"]))
        exempt |= set(_settings((result.get("smallest_change") or {}).get("flags") or {}))
        for style in (base.PLAIN, base.Style(unicode=False)):
            for line in fmt_rec.format_recommend(result, style).splitlines():
                assert line in exempt or len(line) <= 80, (fields, line)


def test_recommend_colour_changes_no_text() -> None:
    """With colour, the same text: only paint codes are added."""
    for fields in (FITS, SHORT):
        result = _recommend(**fields)
        coloured = fmt_rec.format_recommend(result, base.Style(colour=True))
        assert "\033[" in coloured
        assert ANSI.sub("", coloured) == fmt_rec.format_recommend(result)


def test_recommend_ascii_only_without_unicode() -> None:
    """Without unicode the output is plain ASCII (| for ·, -> for →)."""
    for fields in (FITS, SHORT, CPU):
        fmt_rec.format_recommend(_recommend(**fields), base.Style(unicode=False)).encode("ascii")


def test_recommend_tolerates_absent_keys() -> None:
    """A sparse result (keys absent or None) still formats."""
    assert fmt_rec.format_recommend({}).startswith("model")
    result = _recommend(**FITS)
    result.update(recommended=None, fits=False, table=[], tips=[], notes=None)
    assert "does not fit" in fmt_rec.format_recommend(result)


def test_model_list_is_an_aligned_table() -> None:
    """--list-models: name, params in billions, layers, KV heads, head_dim, max context,
    attention; aligned."""
    from perfd.recommend import list_models

    lines = catalog.format_models({"models": list_models()}).splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "NAME",
        "PARAMS(B)",
        "LAYERS",
        "KV HEADS",
        "HEAD DIM",
        "MAX CTX",
        "ATTENTION",
    ]
    (llama,) = [line for line in lines if line.startswith("Llama-3.1-8B ")]
    assert llama.split() == ["Llama-3.1-8B", "8.03", "32", "8", "128", "131072", "gqa"]
    assert len({line.rindex("  ") + 2 for line in lines[:-1]}) == 1  # ATTENTION lines up
    assert all(len(line) <= 80 for line in lines)
    assert "gqa, swa 4096" in "\n".join(lines)


def test_gpu_list_is_an_aligned_table() -> None:
    """--list-gpus: name, memory in GiB, compute capability, aliases."""
    from perfd.recommend import list_gpus

    lines = catalog.format_gpus({"gpus": list_gpus()}).splitlines()
    (h100,) = [line for line in lines if line.startswith("H100-80GB ")]
    assert h100.split() == [
        "H100-80GB",
        "79.65",
        "GiB",
        "9.0",
        "h100,",
        "h100-sxm,",
        "h100-80gb-hbm3",
    ]
    assert len({line.index("GiB") for line in lines[1:-1]}) == 1
