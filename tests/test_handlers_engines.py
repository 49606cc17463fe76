"""The engines command and the engines parts of stats and /metrics, in process over a fake
watcher: the wire shape, one engine by name, not_found and busy; each GPU process's owner and
each GPU's unaccounted memory; perfctl's table, detail and stats lines; the metric series."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from perfctl.format import engines as fmt
from perfctl.format import stats as fmt_stats
from perfd.engines.owners import OWNER_LABELS
from perfd.engines.record import EngineRecord, Reading, ServedModel, Target
from perfd.errors import CommandError
from perfd.handlers import table
from perfd.metrics.engines import engine_families, process_families
from perfd.probes.samples import GpuProcess
from perfd.wire import protocol
from tests.fakeprobes import gpu_sample, host_sample, make_snapshot
from tests.fakeview import FakeView

GiB = 1 << 30
VLLM = EngineRecord(
    Target(
        "vllm-8000",
        "vllm",
        "http://127.0.0.1:8000",
        (4242, 4243),
        "vllm.service",
        source="discovered",
    ),
    "up",
    reading=Reading(
        models=(ServedModel("Qwen/Qwen3-8B", context=32768, path="/models/qwen"),),
        kv_capacity_tokens=200_000,
        kv_used_tokens=50_000,
        kv_usage_ratio=0.25,
        requests_running=3,
        requests_waiting=1,
        preemptions_total=7.0,
        settings={"block_size": 16, "cache_dtype": "auto"},
        fallbacks=("vllm:gpu_cache_usage_perc",),
    ),
    preemptions_per_min=1.5,
    prefix_cache_hit_ratio=0.4,
    gpu_memory_bytes=60 * GiB,
    read_at=1_700_000_000.0,
    since=1_699_999_000.0,
)
OLLAMA = EngineRecord(
    Target("ollama-11434", "ollama", "http://127.0.0.1:11434"),
    "down",
    reason="/api/ps: connection refused",
    read_at=1_700_000_000.0,
    since=1_700_000_000.0,
)


class FakeWatcher:
    def __init__(self, *records: EngineRecord) -> None:
        self._records = list(records)

    def records(self) -> list[EngineRecord]:
        return self._records

    def discovery(self) -> dict[str, Any]:
        return {"enabled": True, "interval_s": 30.0, "last_run": "2023-11-14T22:13:20Z"}


def run(view: Any, cmd: str, **args: Any) -> Any:
    return table.build(view)[cmd].handler(args)


def test_engines_reply_has_the_wire_shape() -> None:
    """Every record field of the contract, the URL redacted, times as RFC 3339; the
    discovery facts; plan null in the list."""
    view = FakeView(snapshot=make_snapshot(), engines=FakeWatcher(VLLM, OLLAMA))
    reply = run(view, "engines")
    assert reply["discovery"] == FakeWatcher().discovery()
    first, second = reply["engines"]
    assert set(first) == {
        "name",
        "kind",
        "url",
        "source",
        "pids",
        "unit",
        "state",
        "reason",
        "since",
        "read_at",
        "models",
        "kv_capacity_tokens",
        "kv_used_tokens",
        "kv_usage_ratio",
        "requests_running",
        "requests_waiting",
        "preemptions_total",
        "preemptions_per_min",
        "prefix_cache_hit_ratio",
        "slots_total",
        "slots_busy",
        "gpu_memory_bytes",
        "settings",
        "fallbacks",
        "plan",
        "plan_reason",
    }
    assert first["pids"] == [4242, 4243]
    assert first["read_at"] == "2023-11-14T22:13:20Z"
    assert first["models"] == [
        {
            "name": "Qwen/Qwen3-8B",
            "context": 32768,
            "path": "/models/qwen",
            "size_bytes": None,
            "vram_bytes": None,
            "expires_at": None,
        }
    ]
    assert first["plan"] is None
    assert (second["state"], second["reason"]) == ("down", "/api/ps: connection refused")


def test_one_engine_by_name_with_its_plan_or_why_not() -> None:
    """name: that engine alone; its model root is not on this host, so no plan, and the reason
    says where perfd looked; an unknown name is not_found listing the known."""
    view = FakeView(snapshot=make_snapshot(), engines=FakeWatcher(VLLM, OLLAMA))
    reply = run(view, "engines", name="vllm-8000")
    assert [e["name"] for e in reply["engines"]] == ["vllm-8000"]
    shown = reply["engines"][0]
    assert shown["plan"] is None
    assert shown["plan_reason"].startswith("/models/qwen/config.json: no such file on this host")
    assert "plan      not checked: /models/qwen/config.json" in fmt.format_engine(reply)
    with pytest.raises(CommandError) as caught:
        run(view, "engines", name="nope")
    assert caught.value.code == protocol.NOT_FOUND
    assert "vllm-8000, ollama-11434" in caught.value.message


def test_engines_is_busy_before_the_watcher_starts() -> None:
    with pytest.raises(CommandError) as caught:
        run(FakeView(snapshot=make_snapshot()), "engines")
    assert caught.value.code == protocol.BUSY


def snapshot_with_processes() -> Any:
    gpu = gpu_sample(0, total=80 * GiB, used_percent=90.0)
    gpu = dataclasses.replace(
        gpu,
        processes=(
            GpuProcess(4242, 60 * GiB, "python3"),
            GpuProcess(os.getpid(), 2 * GiB, "perfd"),
            GpuProcess(999, 1 * GiB, "Xorg"),
        ),
    )
    snap = make_snapshot(host_sample(), gpu)
    return dataclasses.replace(snap, engines=(VLLM, OLLAMA))


def test_stats_gives_each_gpu_process_its_owner() -> None:
    """The engine's pid is the engine (kind, name, model), perfd's own pid perfd, another its
    process; unaccounted is used minus the processes' sum; the engines section is there."""
    snap = snapshot_with_processes()
    reply = run(FakeView(snapshot=snap), "stats")
    gpu = reply["gpus"][0]
    owners = [p["owner"] for p in gpu["processes"]]
    assert owners[0]["kind"] == "engine"
    assert owners[0]["name"] == "vllm-8000"
    assert owners[0]["model"] == "Qwen/Qwen3-8B"
    assert owners[1] == {"kind": "perfd", "name": "perfd"}
    assert owners[2] == {"kind": "process", "name": "Xorg"}
    used = snap.gpus[0].memory.used_bytes
    assert gpu["unaccounted_bytes"] == used - 63 * GiB
    assert [e["name"] for e in reply["engines"]] == ["vllm-8000", "ollama-11434"]
    screen = fmt_stats.format_stats(reply)
    assert "engine vllm-8000 (Qwen/Qwen3-8B)" in screen
    assert "unaccounted" in screen
    assert "vllm-8000 up kv 25% 3/1" in screen
    assert "ollama-11434 down" in screen


def test_the_table_and_the_detail() -> None:
    """perfctl engines: one row per engine with its figures; the reason of a down one;
    perfctl engines NAME: the facts, settings and fallbacks."""
    view = FakeView(snapshot=make_snapshot(), engines=FakeWatcher(VLLM, OLLAMA))
    text = fmt.format_engines(run(view, "engines"))
    lines = text.splitlines()
    assert lines[0].split() == list(fmt.HEADER)
    assert lines[1].split() == [
        "vllm-8000",
        "vllm",
        "Qwen/Qwen3-8B",
        "32768",
        "25.0",
        "3/1",
        "1.5",
        "60.0",
        "GiB",
        "up",
    ]
    assert lines[2].split()[:2] == ["ollama-11434", "ollama"]
    assert lines[2].split()[-1] == "down"
    assert "ollama-11434: down: /api/ps: connection refused" in text
    detail = fmt.format_engine(run(view, "engines", name="vllm-8000"))
    assert "50000 / 200000 tokens" in detail
    assert "vllm:gpu_cache_usage_perc" in detail
    assert "block_size" in detail
    assert "4242 4243" in detail


def test_no_engines_says_how_to_add_one() -> None:
    text = fmt.format_engines({"engines": [], "discovery": {"enabled": False}})
    assert "discovery is off" in text
    assert "[engines.NAME]" in text


def samples(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_engine_series_are_the_records_figures() -> None:
    """perfd_engine_* carry the record's figures labelled engine, kind, model; a down engine
    has only perfd_engine_up 0."""
    got = samples(engine_families([VLLM, OLLAMA]))
    labels = (("engine", "vllm-8000"), ("kind", "vllm"), ("model", "Qwen/Qwen3-8B"))
    assert got[("perfd_engine_up", labels)] == 1.0
    assert got[("perfd_engine_kv_usage_ratio", labels)] == 0.25
    assert got[("perfd_engine_kv_capacity_tokens", labels)] == 200_000
    assert got[("perfd_engine_requests_running", labels)] == 3
    assert got[("perfd_engine_requests_waiting", labels)] == 1
    assert got[("perfd_engine_preemptions_total", labels)] == 7.0
    down = (("engine", "ollama-11434"), ("kind", "ollama"), ("model", ""))
    assert got[("perfd_engine_up", down)] == 0.0
    assert [k for k in got if k[1] == down] == [("perfd_engine_up", down)]


def test_process_series_carry_the_owner_with_dcgm_label_names() -> None:
    """Each GPU process's memory with gpu, UUID, modelName (DCGM exporter's names), pid and
    owner labels; the unaccounted memory per GPU."""
    snap = snapshot_with_processes()
    got = samples(process_families(snap))
    gpu = snap.gpus[0]
    engine = [
        (dict(lab), value)
        for (name, lab), value in got.items()
        if name == "perfd_gpu_process_memory_used_bytes" and dict(lab)["pid"] == "4242"
    ]
    assert len(engine) == 1
    labels, value = engine[0]
    assert value == 60 * GiB
    assert labels["gpu"] == "0"
    assert labels["UUID"] == gpu.uuid
    assert labels["modelName"] == gpu.name
    assert (labels["owner_kind"], labels["owner"]) == ("engine", "vllm-8000")
    assert (labels["engine"], labels["engine_kind"]) == ("vllm-8000", "vllm")
    assert set(labels) == {"gpu", "UUID", "modelName", *OWNER_LABELS}
    gpu_key = (("UUID", gpu.uuid), ("gpu", "0"), ("modelName", gpu.name))
    unaccounted = got[("perfd_gpu_memory_unaccounted_bytes", gpu_key)]
    assert unaccounted == gpu.memory.used_bytes - 63 * GiB
