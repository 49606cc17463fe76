"""The plan check (perfd.engines.plancheck) in process, with values: each engine kind's
figures against perfd's recommender, every flag, and GPUs whose engines claim more than they
hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from perfd.engines import plancheck
from perfd.engines.record import (
    LLAMACPP,
    OLLAMA,
    UP,
    VLLM,
    EngineRecord,
    Reading,
    ServedModel,
    Target,
)
from perfd.probes.samples import GpuProcess, GpuSample
from perfd.recommend.hardware import Gpu, Hardware
from perfd.recommend.llama_memory import read_facts
from perfd.recommend.report import recommend
from perfd.recommend.request import Query
from tests.enginepayloads import LLAMA_CONFIG
from tests.ggufmodel import TinyLlama, write_tiny_llama

GiB = 1 << 30
# K and V, every layer, 16-bit: the textbook bytes per token for LLAMA_CONFIG
CONFIG_KV_PER_TOKEN = 32 * 2 * 8 * (4096 // 32) * 2


def gpu(
    index: int = 0, total: int = 80 * GiB, procs: dict[int, int] | None = None
) -> plancheck.GpuFacts:
    processes = tuple(GpuProcess(pid, used, "python3") for pid, used in (procs or {}).items())
    used = sum(p.used_bytes or 0 for p in processes)
    return plancheck.GpuFacts.of(
        GpuSample(
            index=index,
            uuid=f"GPU-{index}",
            name="NVIDIA H100 80GB HBM3",
            mem_total_bytes=total,
            mem_used_bytes=used,
            mem_free_bytes=total - used,
            mem_reserved_bytes=0,
            utilization_percent=None,
            memory_utilization_percent=None,
            temperature_c=None,
            power_watts=None,
            power_limit_watts=None,
            persistence_mode=None,
            compute_capability=(9, 0),
            processes=processes,
            mig_enabled=False,
            mig=(),
        )
    )


def record(
    kind: str,
    pid: int,
    reading: Reading,
    *,
    name: str | None = None,
    gpu_memory: int | None = None,
    preemptions_per_min: float | None = None,
) -> EngineRecord:
    target = Target(name=name or f"{kind}-{pid}", kind=kind, url="http://127.0.0.1:1", pids=(pid,))
    return EngineRecord(
        target=target,
        state=UP,
        reading=reading,
        gpu_memory_bytes=gpu_memory,
        preemptions_per_min=preemptions_per_min,
    )


def vllm_reading(capacity: int, context: int = 8192, **more: Any) -> Reading:
    settings = {"gpu_memory_utilization": 0.9, "max_num_seqs": 256}
    settings.update(more.pop("settings", {}))
    return Reading(
        models=(ServedModel("llama", context=context, path="/models/llama"),),
        kv_capacity_tokens=capacity,
        settings=settings,
        **more,
    )


def test_vllm_capacity_against_perfds_prediction() -> None:
    """perfd's KV tokens for vLLM at 0.9 of an 80 GiB GPU: the recommender's own figure for
    the same GPU, and the error against what the engine reports, in percent."""
    on = gpu(procs={100: 70 * GiB})
    engine_tokens = 400_000
    check = plancheck.check(
        record(VLLM, 100, vllm_reading(engine_tokens), gpu_memory=70 * GiB),
        [on],
        plancheck.Arch(Query(config=LLAMA_CONFIG)),
    )
    planned = recommend(
        Query(config=LLAMA_CONFIG, engine="vllm", utilization=0.9),
        Hardware((Gpu(0, on.name, 80 * GiB, 80 * GiB),), 0, 0, None, 1, "live"),
    )
    predicted = planned["vllm"]["gpu_kv_cache_tokens"]
    assert check.predicted_kv_tokens == predicted
    assert check.kv_error_percent == round(100 * (predicted - engine_tokens) / engine_tokens, 2)
    assert check.predicted_kv_bytes == predicted * CONFIG_KV_PER_TOKEN
    assert check.recommended_context == planned["recommended"]["context"]
    assert check.concurrency == 256
    assert check.gpus == (0,)
    assert check.plan_bytes == int(80 * GiB * 0.9)
    assert check.flags == ()
    assert check.as_dict()["flags"] == []


def test_ollama_from_its_architecture_facts() -> None:
    """Ollama's capacity is the context it loaded the model with: perfd's KV bytes for it are
    the context (padded to 256 cells) times the model's bytes per token."""
    reading = Reading(models=(ServedModel("llama3", context=8000),), kv_capacity_tokens=8000)
    check = plancheck.check(
        record(OLLAMA, 7, reading),
        [gpu(procs={7: 20 * GiB})],
        plancheck.Arch(Query(config=LLAMA_CONFIG)),
    )
    assert check.predicted_kv_tokens == 8192
    assert check.predicted_kv_bytes == 8192 * CONFIG_KV_PER_TOKEN
    assert check.kv_error_percent == pytest.approx(100 * 192 / 8000, abs=0.01)


@pytest.mark.parametrize(("preemptions", "waiting", "flagged"), [(12.0, 0, True), (0.0, 3, True)])
def test_a_full_kv_cache_with_preemptions_is_flagged_with_perfds_tips(
    preemptions: float, waiting: int, flagged: bool
) -> None:
    reading = vllm_reading(400_000, kv_usage_ratio=0.97, requests_waiting=waiting)
    check = plancheck.check(
        record(VLLM, 100, reading, preemptions_per_min=preemptions),
        [gpu(procs={100: 70 * GiB})],
        plancheck.Arch(Query(config=LLAMA_CONFIG)),
    )
    codes = [flag.code for flag in check.flags]
    assert codes == ["kv_near_full_with_preemptions"]
    flag = check.flags[0]
    assert "97% full" in flag.message
    assert flag.hint.startswith("perfd's tips: ")


def test_a_full_kv_cache_without_pressure_is_not_flagged() -> None:
    check = plancheck.check(
        record(VLLM, 100, vllm_reading(400_000, kv_usage_ratio=0.99, requests_waiting=0)),
        [gpu(procs={100: 70 * GiB})],
        plancheck.Arch(Query(config=LLAMA_CONFIG)),
    )
    assert check.flags == ()


def test_a_context_beyond_the_model_or_the_cache_is_unreachable() -> None:
    arch = plancheck.Arch(Query(config=LLAMA_CONFIG))
    beyond_model = plancheck.check(
        record(VLLM, 1, vllm_reading(400_000, context=16384)), [gpu(procs={1: GiB})], arch
    )
    assert [f.code for f in beyond_model.flags] == ["context_unreachable"]
    assert "trained for 8192" in beyond_model.flags[0].message
    beyond_cache = plancheck.check(
        record(VLLM, 1, vllm_reading(4096, context=8192)), [gpu(procs={1: GiB})], arch
    )
    assert [f.code for f in beyond_cache.flags] == ["context_unreachable"]
    assert "whole KV cache holds 4096" in beyond_cache.flags[0].message


@pytest.fixture
def tiny(tmp_path: Path) -> plancheck.Arch:
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    return plancheck.Arch(Query(weights_path=str(path)), read_facts(str(path), "tiny"))


def llama_reading(slot_ctx: int, slots: int) -> Reading:
    return Reading(
        models=(ServedModel("tiny", context=slot_ctx),),
        kv_capacity_tokens=slot_ctx * slots,
        slots_total=slots,
        settings={"n_ctx_slot": slot_ctx, "total_slots": slots},
    )


def test_llama_cpp_holding_far_more_than_its_plan(tiny: plancheck.Arch) -> None:
    """The plan: the GGUF's weights, its KV cache for the served slots, the compute buffer.
    An engine holding 2 GiB more is over it; one holding its plan is not."""
    on = [gpu(procs={9: GiB})]
    fair = plancheck.check(record(LLAMACPP, 9, llama_reading(2048, 1)), on, tiny)
    assert fair.plan_bytes is not None
    assert fair.predicted_kv_bytes == TinyLlama().kv_bytes(2048)  # the textbook formula
    at_plan = plancheck.check(
        record(LLAMACPP, 9, llama_reading(2048, 1), gpu_memory=fair.plan_bytes), on, tiny
    )
    assert at_plan.flags == ()
    over = plancheck.check(
        record(LLAMACPP, 9, llama_reading(2048, 1), gpu_memory=fair.plan_bytes + 2 * GiB),
        on,
        tiny,
    )
    assert [f.code for f in over.flags] == ["engine_over_plan"]


def test_llama_cpp_slots_splitting_the_context(tiny: plancheck.Arch) -> None:
    """-c 1024 with 4 slots serves 256 tokens a request where the model takes 2048."""
    check = plancheck.check(record(LLAMACPP, 9, llama_reading(256, 4)), [], tiny)
    assert [f.code for f in check.flags] == ["context_unreachable"]
    assert "4 slots share the context" in check.flags[0].message
    assert check.predicted_kv_tokens == 1024


def test_no_reading_no_figures(tiny: plancheck.Arch) -> None:
    empty = EngineRecord(target=Target("x", LLAMACPP, "http://127.0.0.1:1"), state="down")
    check = plancheck.check(empty, [], tiny)
    assert check.predicted_kv_tokens is None
    assert check.notes == ("no reading of the engine yet",)


def test_two_vllms_at_0_9_on_one_gpu_oversubscribe_it() -> None:
    shared = gpu(procs={100: 40 * GiB, 200: 30 * GiB})
    first = record(VLLM, 100, vllm_reading(1000), name="a")
    second = record(VLLM, 200, vllm_reading(1000), name="b")
    flags = plancheck.check_gpus([first, second], [shared, gpu(1)])
    assert [f.code for f in flags] == ["gpu_oversubscribed"]
    assert flags[0].message.startswith("GPU 0: engines claim 144.0 GiB of 80.0 GiB")
    half = vllm_reading(1000, settings={"gpu_memory_utilization": 0.45})
    fits = [record(VLLM, 100, half, name="a"), record(VLLM, 200, half, name="b")]
    assert plancheck.check_gpus(fits, [shared]) == []
    assert plancheck.check_gpus([first], [shared]) == []


def test_an_engine_without_a_fraction_claims_what_it_holds() -> None:
    shared = gpu(total=24 * GiB, procs={100: 1 * GiB, 300: 4 * GiB})
    vllm = record(VLLM, 100, vllm_reading(1000))  # 0.9 of 24 GiB = 21.6 GiB
    llama = record(LLAMACPP, 300, llama_reading(2048, 1))  # NVML: 4 GiB
    flags = plancheck.check_gpus([vllm, llama], [shared])
    assert [f.code for f in flags] == ["gpu_oversubscribed"]
    assert "llamacpp-300 4.0 GiB" in flags[0].message
