"""Who holds each GPU byte, as ``stats`` and /metrics show it: the owner of each GPU process
(perfd.engines.owners.attribute: an engine, perfd, a systemd unit, a container, a pod, else
the process) and each GPU's memory no process accounts for.

One adapter over ``owners.attribute`` (imported when first used); where attribution fails,
each process still gets the owner perfd knows without it (an engine's pid, perfd itself, else
the process name) and the failure is logged once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perfd import log
from perfd.engines.record import EngineRecord

_log = log.get("perfd.engines")
_failed: set[str] = set()
OWNER_FIELDS = ("kind", "name", "engine", "model", "unit", "container", "pod_uid")


@dataclass(frozen=True)
class Attribution:
    owners: dict[int, dict[str, Any]]  # pid -> {"kind", "name", ...}
    unaccounted_bytes: dict[int, int | None]  # GPU index -> used minus the processes' sum


def attribute(gpus: Sequence[Any], records: Sequence[EngineRecord]) -> Attribution:
    """The owners of the GPU processes in ``gpus`` (the snapshot's GPUs) and each GPU's
    unaccounted memory."""
    found: Any = None
    try:
        from perfd.engines import owners  # type: ignore[attr-defined,unused-ignore]

        found = owners.attribute(gpus, records)
    except Exception as exc:  # advisory: the figures stay, with the owners perfd knows
        text = f"{type(exc).__name__}: {exc}"
        if text not in _failed:
            _failed.add(text)
            _log.warning("engines.owners_failed", error=text, action="owners by pid only")
    by_pid: dict[int, Any] = dict(getattr(found, "owners", None) or {})
    given: dict[int, Any] = dict(getattr(found, "unaccounted_bytes", None) or {})
    engine_of = {pid: r for r in records for pid in r.target.pids}
    out: dict[int, dict[str, Any]] = {}
    unaccounted: dict[int, int | None] = {}
    for gpu in gpus:
        processes = getattr(gpu, "processes", ())
        if gpu.index in given:
            unaccounted[gpu.index] = given[gpu.index]
        elif getattr(gpu, "ok", True) and gpu.memory.used_bytes is not None:
            held = sum(p.used_bytes or 0 for p in processes)
            unaccounted[gpu.index] = max(0, gpu.memory.used_bytes - held)
        else:
            unaccounted[gpu.index] = None
        for p in processes:
            owner = owner_dict(by_pid.get(p.pid))
            out[p.pid] = owner or fallback(p.pid, p.name, engine_of)
    return Attribution(out, unaccounted)


def fallback(pid: int, name: str | None, engine_of: dict[int, EngineRecord]) -> dict[str, Any]:
    """The owner perfd knows without attribution: an engine's pid, perfd, else the process."""
    record = engine_of.get(pid)
    if record is not None:
        models = record.reading.models if record.reading is not None else ()
        out: dict[str, Any] = {
            "kind": "engine",
            "name": record.target.name,
            "engine": record.target.kind,
        }
        if models:
            out["model"] = models[0].name
        if record.target.unit:
            out["unit"] = record.target.unit
        return out
    if pid == os.getpid():
        return {"kind": "perfd", "name": "perfd"}
    return {"kind": "process", "name": name or f"pid {pid}"}


def owner_dict(owner: object) -> dict[str, Any] | None:
    """An ``Owner`` (or a dict) as JSON values, its unknown fields left out."""
    if owner is None:
        return None
    if isinstance(owner, dict):
        return {str(k): v for k, v in owner.items() if v is not None}
    return {f: getattr(owner, f) for f in OWNER_FIELDS if getattr(owner, f, None) is not None}
