"""Each engine against perfd's plan: pure, over a record, the GPUs (values) and the model's
architecture.

``check(record, gpus, arch)`` puts side by side what the engine reports and what perfd
predicts for the engine's own settings and GPU:

- **KV capacity** in tokens and the error in percent. For vLLM and SGLang the capacity follows
  from memory (``gpu_memory_utilization`` of the GPU, less weights and overhead): perfd's
  figure is the recommender's (``vllm.gpu_kv_cache_tokens``, else ``max_tokens``). For
  llama.cpp and Ollama the capacity follows from the context asked for: perfd's figure is the
  cells llama.cpp allocates for it (``GGML_PAD(n_ctx_slot, 256)`` per slot stream).
- **KV bytes** for that capacity: for a GGUF the exact llama.cpp figure
  (perfd.recommend.llama_memory, the number llama.cpp logs as ``llama_kv_cache: size``),
  else tokens x the recommender's KV bytes per token.
- **Served context and concurrency** (slots, ``max_num_seqs``) against the recommender's
  ``recommended`` point for the same GPU.

Flags (``Flag``: code, message, hint): ``kv_near_full_with_preemptions``,
``context_unreachable``, ``engine_over_plan``; ``check_gpus(records, gpus)`` adds
``gpu_oversubscribed`` per GPU whose engines' memory claims add up to more than the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Final, Protocol

from perfd.engines.record import LLAMACPP, OLLAMA, EngineRecord, Reading
from perfd.probes.samples import GpuSample
from perfd.recommend.hardware import Gpu, Hardware
from perfd.recommend.llama_memory import GgufFacts, kv_bytes, kv_cells
from perfd.recommend.report import recommend
from perfd.recommend.request import Query, RecommendError

KV_NEAR_FULL: Final = 0.95  # KV usage at or above this counts as full
OVER_PLAN_RATIO: Final = 1.25  # GPU memory above plan x this is "far more" ...
OVER_PLAN_SLACK: Final = 512 << 20  # ... and above it by at least this much
CONTEXT_SIZED: Final = (LLAMACPP, OLLAMA)  # their KV capacity is the context asked for


@dataclass(frozen=True)
class Flag:
    code: str
    message: str
    hint: str
    gpu: int | None = None  # the GPU a gpu_oversubscribed flag is about


class HeldMemory(Protocol):
    """A GPU process as NVML lists it (probes.samples.GpuProcess, the snapshot's use)."""

    @property
    def pid(self) -> int: ...
    @property
    def used_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class GpuFacts:
    """What the plan check needs of one GPU: the probes' sample and the monitor's snapshot
    both give it (``of`` for a sample; the monitor builds it from its own ``Gpu``)."""

    index: int
    name: str
    total_bytes: int
    processes: tuple[HeldMemory, ...] = ()

    @classmethod
    def of(cls, sample: GpuSample) -> GpuFacts:
        return cls(sample.index, sample.name, sample.mem_total_bytes, sample.processes)


@dataclass(frozen=True)
class Arch:
    """How the recommender finds the engine's model: ``query`` names it (``weights_path`` a
    GGUF, ``config`` a config.json's contents or ``config_json`` its path); ``gguf`` the GGUF
    header's facts, for llama.cpp's exact KV bytes."""

    query: Query
    gguf: GgufFacts | None = None


@dataclass(frozen=True)
class PlanCheck:
    engine_kv_tokens: int | None = None
    predicted_kv_tokens: int | None = None
    kv_error_percent: float | None = None
    predicted_kv_bytes: int | None = None  # perfd's KV bytes for the engine's capacity
    served_context: int | None = None
    recommended_context: int | None = None
    concurrency: int | None = None  # slots, max_num_seqs
    recommended_concurrency: int | None = None
    plan_bytes: int | None = None  # what perfd expects the engine to hold on its GPU
    gpu_memory_bytes: int | None = None
    gpus: tuple[int, ...] = ()  # the GPUs the engine's processes are on
    flags: tuple[Flag, ...] = ()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpus"] = list(self.gpus)
        out["flags"] = [asdict(flag) for flag in self.flags]
        out["notes"] = list(self.notes)
        return out


def engine_gpus(record: EngineRecord, gpus: Sequence[GpuFacts]) -> list[GpuFacts]:
    """The GPUs on which one of the engine's processes holds memory."""
    pids = set(record.target.pids)
    return [gpu for gpu in gpus if any(proc.pid in pids for proc in gpu.processes)]


def check(
    record: EngineRecord,
    gpus: Sequence[GpuFacts],
    arch: Arch,
    *,
    ram_bytes: int = 0,
    cpu_count: int = 1,
) -> PlanCheck:
    """The engine's figures against perfd's plan for its settings and GPU (module docstring)."""
    reading = record.reading
    if reading is None:
        return PlanCheck(notes=("no reading of the engine yet",))
    kind = record.target.kind
    model = reading.models[0] if reading.models else None
    served = model.context if model else None
    on = engine_gpus(record, gpus)
    concurrency = reading.slots_total or _int(reading.settings.get("max_num_seqs"))
    result = PlanCheck(
        engine_kv_tokens=reading.kv_capacity_tokens,
        served_context=served,
        concurrency=concurrency,
        gpu_memory_bytes=record.gpu_memory_bytes,
        gpus=tuple(gpu.index for gpu in on),
    )
    notes: list[str] = []
    plan = _recommend(
        kind, arch, reading, on, ram_bytes=ram_bytes, cpu_count=cpu_count, notes=notes
    )
    predicted = _predicted_tokens(kind, arch, reading, plan)
    per_token = plan.get("kv_bytes_per_token") if plan else None
    if predicted is not None and arch.gguf is not None:
        kv_size = kv_bytes(arch.gguf, predicted)
    elif predicted is not None and isinstance(per_token, int):
        kv_size = predicted * per_token
    else:
        kv_size = None
    engine_tokens = reading.kv_capacity_tokens
    error = (
        round(100.0 * (predicted - engine_tokens) / engine_tokens, 2)
        if predicted is not None and engine_tokens
        else None
    )
    recommended = plan.get("recommended") if plan else None
    result = replace(
        result,
        predicted_kv_tokens=predicted,
        kv_error_percent=error,
        predicted_kv_bytes=kv_size,
        recommended_context=recommended["context"] if recommended else None,
        recommended_concurrency=recommended["max_sequences"] if recommended else None,
        plan_bytes=_plan_bytes(kind, reading, plan, kv_size, on),
    )
    flags = _flags(record, reading, result, arch, plan)
    return replace(result, flags=tuple(flags), notes=tuple(notes))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _recommend(
    kind: str,
    arch: Arch,
    reading: Reading,
    on: list[GpuFacts],
    *,
    ram_bytes: int,
    cpu_count: int,
    notes: list[str],
) -> dict[str, Any] | None:
    """The recommender's plan for the engine's settings on the engine's GPU (the first, whole:
    an engine plans on an empty GPU), or None with a note saying why not."""
    gpus = tuple(
        Gpu(index=g.index, name=g.name, total_bytes=g.total_bytes, free_bytes=g.total_bytes)
        for g in on[:1]
    )
    hardware = Hardware(gpus, ram_bytes, ram_bytes, None, cpu_count, "live")
    utilization = reading.settings.get("gpu_memory_utilization")
    engine = {"llamacpp": "llama.cpp"}.get(kind, kind if kind in ("vllm", "ollama") else "vllm")
    query = replace(
        arch.query,
        engine=engine,
        utilization=utilization if isinstance(utilization, float) and 0 < utilization <= 1 else 0.9,
    )
    try:
        return recommend(query, hardware)
    except RecommendError as exc:
        notes.append(f"no plan: {exc}")
        return None


def _predicted_tokens(
    kind: str, arch: Arch, reading: Reading, plan: dict[str, Any] | None
) -> int | None:
    """perfd's KV capacity in tokens for the engine's own settings."""
    if kind in CONTEXT_SIZED:
        slot_ctx = _int(reading.settings.get("n_ctx_slot"))
        if slot_ctx is None and reading.models:
            slot_ctx = reading.models[0].context
        if not slot_ctx:
            return None
        train = arch.gguf.n_ctx_train if arch.gguf else 0
        return kv_cells(slot_ctx, train) * (reading.slots_total or 1)
    if plan is None:
        return None
    vllm = plan.get("vllm")
    tokens = vllm.get("gpu_kv_cache_tokens") if isinstance(vllm, dict) else None
    return _int(tokens) if tokens is not None else _int(plan.get("max_tokens"))


def _plan_bytes(
    kind: str,
    reading: Reading,
    plan: dict[str, Any] | None,
    kv_size: int | None,
    on: list[GpuFacts],
) -> int | None:
    """What perfd expects the engine to hold on its GPU(s): vLLM and SGLang claim their
    utilization of the GPU; llama.cpp and Ollama hold weights, KV cache and overhead."""
    if not on or plan is None:
        return None
    budget = plan.get("budget", {})
    if kind not in CONTEXT_SIZED:
        return int(budget.get("total_bytes", 0) * budget.get("utilization", 0.9))
    weights = _int(budget.get("weights_bytes")) or 0
    overhead = _int(budget.get("overhead_bytes")) or 0
    return weights + overhead + (kv_size or 0)


def _flags(
    record: EngineRecord,
    reading: Reading,
    result: PlanCheck,
    arch: Arch,
    plan: dict[str, Any] | None,
) -> list[Flag]:
    flags = []
    name = record.target.name
    ratio = reading.kv_usage_ratio
    preempting = (record.preemptions_per_min or 0) > 0
    if ratio is not None and ratio >= KV_NEAR_FULL and (preempting or reading.requests_waiting):
        tips = plan.get("tips", []) if plan else []
        hint = (
            f"perfd's tips: {'; '.join(str(tip.get('change')) for tip in tips[:2])}"
            if tips
            else "give the KV cache more memory or serve fewer sequences at once"
        )
        pressure = (
            f"{record.preemptions_per_min:.1f} preemptions/min"
            if preempting
            else f"{reading.requests_waiting} requests waiting"
        )
        flags.append(
            Flag(
                "kv_near_full_with_preemptions",
                f"{name}: KV cache {100 * ratio:.0f}% full with {pressure}",
                hint,
            )
        )
    flags += _context_flags(name, result, arch, plan)
    used, planned = result.gpu_memory_bytes, result.plan_bytes
    if used and planned and used > planned * OVER_PLAN_RATIO and used - planned > OVER_PLAN_SLACK:
        flags.append(
            Flag(
                "engine_over_plan",
                f"{name} holds {_gib(used)} of GPU memory; its plan is {_gib(planned)}",
                "look for a leak, a larger context or batch than configured, or another "
                "model loaded in the same process",
            )
        )
    return flags


def _context_flags(
    name: str, result: PlanCheck, arch: Arch, plan: dict[str, Any] | None
) -> list[Flag]:
    served = result.served_context
    if not served:
        return []
    model = plan.get("model", {}) if plan else {}
    trained = _int(model.get("max_position_embeddings")) or (
        arch.gguf.n_ctx_train if arch.gguf else None
    )
    if trained and served > trained:
        return [
            Flag(
                "context_unreachable",
                f"{name} serves a context of {served} tokens; the model was trained for {trained}",
                f"serve at most {trained} tokens of context",
            )
        ]
    capacity = result.engine_kv_tokens
    if capacity and served > capacity:
        return [
            Flag(
                "context_unreachable",
                f"{name} serves a context of {served} tokens; its whole KV cache holds {capacity}",
                f"serve at most {capacity} tokens of context, or give the KV cache more memory",
            )
        ]
    wanted, slots = result.recommended_context or trained, result.concurrency or 1
    if wanted and trained and served < min(wanted, trained) and slots > 1:
        # llama.cpp splits n_ctx among the slots: -c 8192 with 4 slots serves 2048 a request
        return [
            Flag(
                "context_unreachable",
                f"{name} serves {served} tokens per slot ({slots} slots share the context); "
                f"the model takes {trained} and perfd recommends {wanted}",
                f"raise the context to {wanted * slots} for {slots} slots, or serve fewer slots",
            )
        ]
    return []


def gpu_claims(
    records: Sequence[EngineRecord], gpus: Sequence[GpuFacts]
) -> dict[int, list[tuple[str, int]]]:
    """Each GPU's engine memory claims, (engine, bytes): a vLLM or SGLang claims its
    ``gpu_memory_utilization`` (``mem_fraction_static``) of the GPU, another engine what NVML
    shows its processes holding there. GPUs no engine holds memory on are left out."""
    out: dict[int, list[tuple[str, int]]] = {}
    for gpu in gpus:
        claims: list[tuple[str, int]] = []
        for record in records:
            pids = set(record.target.pids)
            if not any(p.pid in pids for p in gpu.processes):
                continue
            held = sum(p.used_bytes or 0 for p in gpu.processes if p.pid in pids)
            claims.append((record.target.name, _claim(record, gpu, held)))
        if claims:
            out[gpu.index] = claims
    return out


def check_gpus(records: Sequence[EngineRecord], gpus: Sequence[GpuFacts]) -> list[Flag]:
    """A flag per GPU whose engines' memory claims (``gpu_claims``) add up to more than the
    GPU."""
    flags = []
    every = gpu_claims(records, gpus)
    for gpu in gpus:
        claims = every.get(gpu.index, [])
        total = sum(claim for _, claim in claims)
        if len(claims) > 1 and total > gpu.total_bytes:
            shown = ", ".join(f"{name} {_gib(claim)}" for name, claim in claims)
            flags.append(
                Flag(
                    "gpu_oversubscribed",
                    f"GPU {gpu.index}: engines claim {_gib(total)} of {_gib(gpu.total_bytes)}"
                    f" ({shown})",
                    "lower each engine's gpu_memory_utilization so they add up to less than "
                    "1.0, or move one to another GPU",
                    gpu.index,
                )
            )
    return flags


def _claim(record: EngineRecord, gpu: GpuFacts, held: int) -> int:
    settings = record.reading.settings if record.reading else {}
    fraction = settings.get("gpu_memory_utilization", settings.get("mem_fraction_static"))
    if isinstance(fraction, int | float) and not isinstance(fraction, bool) and 0 < fraction <= 1:
        return int(gpu.total_bytes * fraction)
    return held


def _gib(size: float) -> str:
    return f"{size / (1 << 30):.1f} GiB"


__all__ = [
    "Arch",
    "Flag",
    "GpuFacts",
    "PlanCheck",
    "check",
    "check_gpus",
    "engine_gpus",
    "gpu_claims",
]
