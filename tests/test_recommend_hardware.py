"""The machine to plan for: perfd's stats snapshot (MIG-aware), --gpu/--gpus/--memory, and
the built-in GPU table."""

from __future__ import annotations

from typing import Any

import pytest

from perfd.recommend import (
    Gpu,
    Hardware,
    Query,
    RecommendError,
    hardware_from_stats,
    list_gpus,
    parse_size,
    plan_hardware,
    recommend,
)
from perfd.recommend.request import MAX_GPUS

GiB = 1 << 30
MiB = 1 << 20


def _gpu(index: int, *, total: int, free: int, **extra: Any) -> dict[str, Any]:
    gpu = {
        "index": index,
        "uuid": f"GPU-{index}",
        "name": "NVIDIA H100 80GB HBM3",
        "state": "ok",
        "memory": {"total_bytes": total, "used_bytes": total - free, "free_bytes": free},
        "compute_capability": "9.0",
        "mig": {"enabled": False, "instances": []},
    }
    return gpu | extra


def snapshot(*gpus: dict[str, Any], cgroup: int | None = None) -> dict[str, Any]:
    return {
        "host": {
            "memory": {"total_bytes": 256 * GiB, "available_bytes": 200 * GiB},
            "cgroup": None if cgroup is None else {"limit_bytes": cgroup, "current_bytes": 0},
            "cpu_count": 32,
        },
        "gpus": list(gpus),
    }


def test_snapshot_reads_host_and_gpus() -> None:
    """Host RAM, the cgroup limit, CPUs and each ok GPU's total, free and capability."""
    hw = hardware_from_stats(
        snapshot(
            _gpu(0, total=80 * GiB, free=70 * GiB),
            _gpu(1, total=80 * GiB, free=80 * GiB, state="lost"),
            cgroup=64 * GiB,
        )
    )
    assert hw.source == "live"
    assert (hw.ram_total_bytes, hw.ram_available_bytes) == (256 * GiB, 200 * GiB)
    assert (hw.cgroup_limit_bytes, hw.ram_usable_bytes, hw.cpu_count) == (64 * GiB, 64 * GiB, 32)
    assert hw.gpus == (Gpu(0, "NVIDIA H100 80GB HBM3", 80 * GiB, 70 * GiB, "9.0"),)


def test_snapshot_mig_instances_are_the_devices() -> None:
    """A MIG-enabled GPU contributes its instances, free = instance total - used."""
    mig = {
        "enabled": True,
        "instances": [
            {"index": 1, "uuid": "MIG-1", "total_bytes": 20 * GiB, "used_bytes": 1 * GiB},
            {"index": 2, "uuid": "MIG-2", "total_bytes": 40 * GiB, "used_bytes": 0},
        ],
    }
    hw = hardware_from_stats(snapshot(_gpu(0, total=80 * GiB, free=79 * GiB, mig=mig)))
    assert [(g.name, g.total_bytes, g.free_bytes, g.mig) for g in hw.gpus] == [
        ("NVIDIA H100 80GB HBM3 MIG 1", 20 * GiB, 19 * GiB, True),
        ("NVIDIA H100 80GB HBM3 MIG 2", 40 * GiB, 40 * GiB, True),
    ]
    result = recommend(Query(model="llama-3.1-8b"), hw)
    assert result["budget"]["total_bytes"] == 40 * GiB  # one instance, the roomiest
    assert result["hardware"]["tensor_parallel"] == 1
    assert any("MIG" in note for note in result["notes"])


def test_no_live_hardware_and_no_flags_is_an_error() -> None:
    """Offline without --gpu or --memory: the error asks for them."""
    with pytest.raises(RecommendError, match=r"--gpu NAME.*--memory SIZE"):
        plan_hardware(Query(model="gpt2"), None)


def test_gpu_name_plans_with_all_memory_free() -> None:
    """--gpu NAME uses the GPU table's total as free; --gpus repeats it."""
    hw = plan_hardware(Query(model="gpt2", gpu="h100", gpus=4), None)
    assert hw.source == "planned"
    assert [g.index for g in hw.gpus] == [0, 1, 2, 3]
    assert all(g.free_bytes == g.total_bytes == 81559 * MiB for g in hw.gpus)
    assert hw.gpus[0].compute_capability == "9.0"


def test_gpu_size_plans_a_custom_gpu() -> None:
    """--gpu 48GiB plans for a GPU of that size not in the table."""
    hw = plan_hardware(Query(model="gpt2", gpu="48GiB"), None)
    assert hw.gpus[0].total_bytes == 48 * GiB


def test_gpu_index_selects_live_gpus() -> None:
    """--gpu 1 picks live GPU 1; an index that is not there lists the live ones."""
    live = hardware_from_stats(
        snapshot(_gpu(0, total=80 * GiB, free=10 * GiB), _gpu(1, total=80 * GiB, free=75 * GiB))
    )
    hw = plan_hardware(Query(model="gpt2", gpu="1"), live)
    assert [g.index for g in hw.gpus] == [1]
    assert hw.source == "live"
    with pytest.raises(RecommendError, match=r"index 7 \(live GPUs: 0, 1\)"):
        plan_hardware(Query(model="gpt2", gpu="7"), live)
    both = plan_hardware(Query(model="gpt2", gpu="0,1"), live)
    assert len(both.gpus) == 2


def test_memory_flag_sets_the_ram() -> None:
    """--memory alone plans a CPU-only host; with live hardware it replaces the RAM."""
    hw = plan_hardware(Query(model="gpt2", memory=32 * GiB), None)
    assert (hw.gpus, hw.ram_available_bytes, hw.source) == ((), 32 * GiB, "planned")
    live = hardware_from_stats(snapshot(_gpu(0, total=80 * GiB, free=80 * GiB)))
    mixed = plan_hardware(Query(model="gpt2", memory=16 * GiB), live)
    assert (len(mixed.gpus), mixed.ram_usable_bytes, mixed.source) == (1, 16 * GiB, "live+planned")


def test_gpus_zero_plans_cpu_only() -> None:
    """--gpus 0 drops the GPUs: the plan is for RAM."""
    live = hardware_from_stats(snapshot(_gpu(0, total=80 * GiB, free=80 * GiB)))
    hw = plan_hardware(Query(model="gpt2", gpus=0), live)
    assert hw.gpus == ()
    assert recommend(Query(model="gpt2"), hw)["budget"]["device"] == "cpu"


def test_gpus_are_bounded_before_planning() -> None:
    """--gpus past MAX_GPUS (or below 0) is refused before the GPU is repeated that often: a
    huge count once took perfd minutes and gigabytes."""
    assert len(plan_hardware(Query(model="gpt2", gpu="h100", gpus=MAX_GPUS), None).gpus) == 64
    for gpus in (MAX_GPUS + 1, 10**30, -1):
        with pytest.raises(RecommendError, match="gpus must be an integer from 0 to 64") as info:
            plan_hardware(Query(model="gpt2", gpu="h100", gpus=gpus), None)
        assert info.value.option == "gpus"


def test_kv_budget_needs_no_hardware() -> None:
    """A KV budget alone plans without a machine."""
    hw = plan_hardware(Query(model="gpt2", kv_budget=GiB), None)
    assert hw.source == "kv_budget"


def test_ambiguous_gpu_name_lists_candidates() -> None:
    """'A100' matches two table entries: the error names both."""
    with pytest.raises(RecommendError) as info:
        plan_hardware(Query(model="gpt2", gpu="A100"), None)
    assert set(info.value.allowed) == {"A100-SXM4-40GB", "A100-SXM4-80GB"}
    assert "--list-gpus" in str(info.value)


def test_gpu_table() -> None:
    """The table has the facts file's GPUs with NVML totals."""
    table = {row["name"]: row for row in list_gpus()}
    assert table["RTX 4090"]["total_bytes"] == 25757220864
    assert table["H100-80GB"]["total_mib"] == 81559
    assert table["H200-141GB"]["total_mib"] == 143771
    assert len(table) >= 12


def test_parse_size_is_reexported() -> None:
    """parse_size reads --memory and --kv-budget values."""
    assert parse_size("12GiB") == 12 * GiB
    assert parse_size("512MiB") == 512 * MiB


def test_hardware_as_dict() -> None:
    """The hardware section of a result lists what was planned for."""
    hw = Hardware((Gpu(0, "x", GiB, GiB),), 2 * GiB, GiB, None, 4, "planned")
    data = hw.as_dict()
    assert data["device"] == "gpu"
    assert data["gpus"][0]["name"] == "x"
