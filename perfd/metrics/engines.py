"""The engines' series on /metrics, and the GPU memory of each process with its owner (pure:
records and the snapshot in, metric families out; docs/prometheus.md names them).

    perfd_engine_up{engine="vllm-8000",kind="vllm",model="Qwen/Qwen3-8B"} 1.0
    perfd_engine_kv_usage_ratio{engine="vllm-8000",kind="vllm",model="Qwen/Qwen3-8B"} 0.42
    perfd_gpu_process_memory_used_bytes{gpu="0",UUID="GPU-…",modelName="NVIDIA H100",pid="788",
        owner_kind="engine",owner="vllm-8000",pod="",pod_uid="",...} 1.1e+11

Labels are bounded: engines by name (configured ones and those discovery found), GPU processes
by pid (as DCGM exporter's per-process series are). The engine series of a down engine are
absent, apart from ``perfd_engine_up`` 0: a last good reading is not a current figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from perfd.engines.attribution import attribute
from perfd.engines.owners import GPU_LABELS, OWNER_LABELS, Lookup, owner_labels
from perfd.engines.record import UP, EngineRecord

if TYPE_CHECKING:
    from perfd.monitor.snapshot import Snapshot

ENGINE_LABELS: Final = ("engine", "kind", "model")
# DCGM exporter's label names where they mean the same (gpu, UUID, modelName), then the
# owner's (perfd.engines.owners.OWNER_LABELS: its pod UID and container id from the cgroup
# path, never under DCGM's pod/container, which are Kubernetes names perfd does not read).
PROCESS_LABELS: Final = (*GPU_LABELS, *OWNER_LABELS)


def _model(record: EngineRecord) -> str:
    models = record.reading.models if record.reading is not None else ()
    return models[0].name if models else ""


def engine_families(records: Sequence[EngineRecord]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "perfd_engine_up",
        "1: the engine answered its last read; 0: down, timeout or error.",
        labels=ENGINE_LABELS,
    )
    gauges = {
        key: GaugeMetricFamily(f"perfd_engine_{key}", doc, labels=ENGINE_LABELS)
        for key, doc in (
            ("kv_usage_ratio", "The engine's KV cache used, 0 to 1 of its capacity."),
            ("kv_capacity_tokens", "The engine's KV cache capacity, tokens."),
            ("requests_running", "Requests the engine is running."),
            ("requests_waiting", "Requests waiting in the engine's queue."),
            ("gpu_memory_bytes", "GPU memory of the engine's processes (NVML, summed)."),
        )
    }
    preemptions = CounterMetricFamily(
        "perfd_engine_preemptions",
        "Requests the engine preempted (its own counter).",
        labels=ENGINE_LABELS,
    )
    for record in records:
        labels = [record.target.name, record.target.kind, _model(record)]
        up.add_metric(labels, 1.0 if record.state == UP else 0.0)
        r = record.reading
        if record.state != UP or r is None:
            continue
        ratio = r.kv_usage_ratio
        if ratio is None and r.kv_used_tokens is not None and r.kv_capacity_tokens:
            ratio = r.kv_used_tokens / r.kv_capacity_tokens
        values = {
            "kv_usage_ratio": ratio,
            "kv_capacity_tokens": r.kv_capacity_tokens,
            "requests_running": r.requests_running,
            "requests_waiting": r.requests_waiting,
            "gpu_memory_bytes": record.gpu_memory_bytes,
        }
        for key, value in values.items():
            if value is not None:
                gauges[key].add_metric(labels, float(value))
        if r.preemptions_total is not None:
            preemptions.add_metric(labels, float(r.preemptions_total))
    if records:
        yield up
        yield from (g for g in gauges.values() if g.samples)
        if preemptions.samples:
            yield preemptions


def process_families(snapshot: Snapshot, lookup: Lookup | None = None) -> Iterator[Metric]:
    """Each GPU process's memory with its owner; each GPU's memory no process accounts for."""
    found = attribute(snapshot.gpus, snapshot.engines, lookup)
    used = GaugeMetricFamily(
        "perfd_gpu_process_memory_used_bytes",
        "GPU memory a process holds (NVML), with its owner.",
        labels=PROCESS_LABELS,
    )
    unaccounted = GaugeMetricFamily(
        "perfd_gpu_memory_unaccounted_bytes",
        "GPU memory used that no process accounts for (used minus the processes' sum).",
        labels=GPU_LABELS,
    )
    for gpu in snapshot.gpus:
        if not gpu.ok:
            continue
        gpu_labels = [str(gpu.index), gpu.uuid, gpu.name]
        for p in gpu.processes:
            process = found.processes.get(p.pid)
            if p.used_bytes is None or process is None:
                continue
            owner = owner_labels(process)
            used.add_metric([*gpu_labels, *(owner[k] for k in OWNER_LABELS)], float(p.used_bytes))
        left = found.unaccounted_bytes.get(gpu.index)
        if left is not None:
            unaccounted.add_metric(gpu_labels, float(left))
    if used.samples:
        yield used
    if unaccounted.samples:
        yield unaccounted


def claim_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Each GPU's engine memory claims as a fraction of the GPU (perfd.engines.plancheck's
    gpu_claims: what the gpu_oversubscribed alert judges), on GPUs an engine holds memory on."""
    if not snapshot.engines:
        return
    from perfd.engines import plancheck  # with the recommender: only once engines are seen
    from perfd.monitor.engine_alerts import plan_gpus

    gpus = plan_gpus(snapshot.gpus)
    totals = {gpu.index: gpu.total_bytes for gpu in gpus}
    ratio = GaugeMetricFamily(
        "perfd_gpu_engine_claims_ratio",
        "The engines' memory claims on a GPU, summed, as a fraction of its memory (above 1: "
        "oversubscribed).",
        labels=("gpu",),
    )
    for index, claims in sorted(plancheck.gpu_claims(list(snapshot.engines), gpus).items()):
        if totals.get(index):
            ratio.add_metric([str(index)], sum(claim for _, claim in claims) / totals[index])
    if ratio.samples:
        yield ratio
