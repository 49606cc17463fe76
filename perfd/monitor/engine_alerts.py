"""The engines' alert observations: pure functions of the engine records a sample read.

Rules (``[alerts.*]``, perfd.settings.monitor): ``kv_cache_usage`` (percent of the engine's KV
capacity), ``engine_waiting`` (requests in its queue), ``engine_preemptions`` (per minute),
``engine_down`` (down, timeout or error) per engine, the resource being the engine's name; and
``gpu_oversubscribed`` per GPU, from the plan check's flags (perfd.engines.plancheck.check_gpus
over ``plan_gpus``: the snapshot's GPUs as the plan check takes them; a failure of it logged
once and judged "no flag").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from perfd import log
from perfd.config import AlertsConfig, StateRule, ThresholdRule
from perfd.engines.record import UP, EngineRecord
from perfd.monitor import alerts
from perfd.monitor.alerts import Observation, Policy
from perfd.monitor.snapshot import Gpu

if TYPE_CHECKING:
    from perfd.engines.plancheck import GpuFacts

_log = log.get("perfd.monitor")

RULES: Final = (
    "kv_cache_usage",
    "engine_waiting",
    "engine_preemptions",
    "engine_down",
    "gpu_oversubscribed",
)
_failed: set[str] = set()  # check_gpus failures already logged, by their text


def _policy(rule: ThresholdRule | StateRule) -> Policy:
    return Policy(rule.for_, rule.clear, rule.repeat)


def _above(  # noqa: PLR0917
    out: list[Observation],
    rule: str,
    spec: ThresholdRule,
    record: EngineRecord,
    value: float | None,
    unit: str,
) -> None:
    if not spec.enabled:
        return
    level, threshold = alerts.level_above(value, spec.warn, spec.crit)
    t = record.target
    labels: dict[str, object] = {"engine": t.name, "kind": t.kind}
    out.append(Observation(rule, t.name, level, value, threshold, unit, _policy(spec), labels))


def _state(  # noqa: PLR0917
    out: list[Observation],
    rule: str,
    spec: StateRule,
    resource: str,
    on: bool,
    labels: dict[str, object],
    value: float | None = None,
) -> None:
    if spec.enabled:
        level = spec.severity if on else None
        out.append(Observation(rule, resource, level, value, 1.0, "", _policy(spec), labels))


def observations(
    records: Sequence[EngineRecord], gpus: Sequence[Gpu], cfg: AlertsConfig
) -> list[Observation]:
    """One observation per enabled rule and engine (and per flagged GPU)."""
    out: list[Observation] = []
    for record in records:
        t = record.target
        if record.state == "starting" and record.read_at is None:
            continue  # not read yet: nothing is known
        down = record.state not in {UP, "starting"}
        labels: dict[str, object] = {"engine": t.name, "kind": t.kind, "state": record.state}
        if record.reason:
            labels["reason"] = record.reason[:200]
        _state(out, "engine_down", cfg.engine_down, t.name, down, labels)
        if down:
            continue  # the figures of a down engine are its last good read's: not judged
        r = record.reading
        if r is None:
            continue
        ratio = r.kv_usage_ratio
        if ratio is None and r.kv_used_tokens is not None and r.kv_capacity_tokens:
            ratio = r.kv_used_tokens / r.kv_capacity_tokens
        usage = None if ratio is None else round(100.0 * ratio, 2)
        _above(out, "kv_cache_usage", cfg.kv_cache_usage, record, usage, "%")
        waiting = None if r.requests_waiting is None else float(r.requests_waiting)
        _above(out, "engine_waiting", cfg.engine_waiting, record, waiting, "requests")
        rate = record.preemptions_per_min
        _above(out, "engine_preemptions", cfg.engine_preemptions, record, rate, "/min")
    if cfg.gpu_oversubscribed.enabled and records:
        flagged = _flagged_gpus(records, gpus)
        for gpu in gpus:
            if gpu.ok:
                labels = {"uuid": gpu.uuid}
                on = gpu.index in flagged
                if on:
                    labels["message"] = flagged[gpu.index][:200]
                _state(
                    out, "gpu_oversubscribed", cfg.gpu_oversubscribed, f"gpu{gpu.index}", on, labels
                )
    return out


def plan_gpus(gpus: Sequence[Gpu]) -> list[GpuFacts]:
    """The snapshot's readable GPUs as the plan check takes them."""
    from perfd.engines import plancheck  # with the recommender: only once engines are seen

    return [
        plancheck.GpuFacts(gpu.index, gpu.name, gpu.memory.total_bytes, gpu.processes)
        for gpu in gpus
        if gpu.ok
    ]


def _flagged_gpus(records: Sequence[EngineRecord], gpus: Sequence[Gpu]) -> dict[int, str]:
    """The GPUs the plan check flags as claimed beyond their memory: index -> the message."""
    try:
        from perfd.engines import plancheck

        flags = plancheck.check_gpus(list(records), plan_gpus(gpus))
    except Exception as exc:  # the plan check is advisory: its failure is no alert
        text = f"{type(exc).__name__}: {exc}"
        if text not in _failed:
            _failed.add(text)
            _log.warning("alerts.gpu_check_failed", error=text, action="gpu_oversubscribed off")
        return {}
    return {
        flag.gpu: flag.message
        for flag in flags
        if flag.code == "gpu_oversubscribed" and flag.gpu is not None
    }
