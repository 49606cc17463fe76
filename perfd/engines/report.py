"""An engine record on the wire: the one place an ``EngineRecord`` becomes a dict (the
``engines`` reply, the engines section of ``stats``; docs/protocol.md shows it)."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from perfd.engines.record import EngineRecord, Reading, ServedModel
from perfd.redaction import redact_url
from perfd.wire.values import rfc3339


def _time(t: float | None) -> str | None:
    return None if t is None else rfc3339(t)


def _model(m: ServedModel) -> dict[str, Any]:
    return {
        "name": m.name,
        "context": m.context,
        "path": m.path,
        "size_bytes": m.size_bytes,
        "vram_bytes": m.vram_bytes,
        "expires_at": m.expires_at,
    }


def plan_dict(plan: object) -> dict[str, Any] | None:
    """A PlanCheck (perfd.engines.plancheck) as JSON values; None stays None."""
    if plan is None:
        return None
    if isinstance(plan, dict):
        return {str(k): _json(v) for k, v in plan.items()}
    if is_dataclass(plan) and not isinstance(plan, type):
        return {str(k): _json(v) for k, v in asdict(plan).items()}
    as_dict = getattr(plan, "as_dict", None)
    if callable(as_dict):
        out: dict[str, Any] = as_dict()
        return out
    return {"value": str(plan)}


def record_dict(
    record: EngineRecord, plan: object = None, plan_reason: str | None = None
) -> dict[str, Any]:
    """The record as the wire carries it; a down engine shows its last good reading. ``plan``
    is the plan check (``engines NAME`` only), ``plan_reason`` why there is none."""
    t = record.target
    r = record.reading or Reading()
    return {
        "name": t.name,
        "kind": t.kind,
        "url": redact_url(t.url),
        "source": t.source,
        "pids": list(t.pids),
        "unit": t.unit,
        "state": record.state,
        "reason": record.reason,
        "since": _time(record.since),
        "read_at": _time(record.read_at),
        "models": [_model(m) for m in r.models],
        "kv_capacity_tokens": r.kv_capacity_tokens,
        "kv_used_tokens": r.kv_used_tokens,
        "kv_usage_ratio": r.kv_usage_ratio,
        "requests_running": r.requests_running,
        "requests_waiting": r.requests_waiting,
        "preemptions_total": r.preemptions_total,
        "preemptions_per_min": record.preemptions_per_min,
        "prefix_cache_hit_ratio": record.prefix_cache_hit_ratio,
        "slots_total": r.slots_total,
        "slots_busy": r.slots_busy,
        "gpu_memory_bytes": record.gpu_memory_bytes,
        "settings": {str(k): _json(v) for k, v in r.settings.items()},
        "fallbacks": list(r.fallbacks),
        "plan": plan_dict(plan),
        "plan_reason": plan_reason,
    }


def _json(value: object) -> object:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return str(value)
