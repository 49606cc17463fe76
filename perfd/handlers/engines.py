"""engines: the engines perfd watches, their latest records, and (for one engine) the plan
check; the owner of each GPU process for ``stats``. Read-only: everyone may run them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from perfd import log
from perfd.errors import CommandError
from perfd.handlers.view import EnginesView
from perfd.wire import protocol

if TYPE_CHECKING:
    from perfd.engines.record import EngineRecord
    from perfd.monitor.snapshot import Snapshot

_log = log.get("perfd.handlers")
_failed: set[str] = set()  # advisory failures already logged (plan check, owners), by text


def _logged_once(event: str, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if f"{event} {text}" not in _failed:
        _failed.add(f"{event} {text}")
        _log.warning(event, error=text)
    return text


def plan(record: EngineRecord, snapshot: Snapshot | None) -> object:
    """The plan check of one engine (perfd.engines.plancheck), or a dict saying why not."""
    try:
        from perfd.engines import plancheck  # type: ignore[attr-defined,unused-ignore]

        gpus = list(snapshot.gpus) if snapshot is not None else []
        return plancheck.check(record, gpus, None)
    except Exception as exc:  # advisory: the record is shown without it
        return {"error": _logged_once("engines.plan_failed", exc)}


def engines(view: EnginesView, args: dict[str, Any]) -> dict[str, Any]:
    from perfd.engines.report import record_dict

    watcher = view.engines
    if watcher is None:
        raise CommandError(protocol.BUSY, "the engines have not started yet; retry shortly")
    records = watcher.records()
    name = args.get("name")
    if name is not None:
        chosen = [r for r in records if r.target.name == name]
        if not chosen:
            known = ", ".join(r.target.name for r in records) or "none"
            raise CommandError(protocol.NOT_FOUND, f"no engine {name!r} (known: {known})")
        snapshot = view.monitor.snapshot() if view.monitor is not None else None
        shown = [record_dict(chosen[0], plan(chosen[0], snapshot))]
    else:
        shown = [record_dict(r) for r in records]
    return {"engines": shown, "discovery": watcher.discovery()}


def section(records: tuple[EngineRecord, ...]) -> list[dict[str, Any]]:
    """The engines section of ``stats``: the records the sample read."""
    from perfd.engines.report import record_dict

    return [record_dict(r) for r in records]


def owners(reply: dict[str, Any], snapshot: Snapshot) -> None:
    """Each GPU process in a ``stats`` reply gets its ``owner`` ({"kind", "name", ...}) and
    each GPU its ``unaccounted_bytes`` (perfd.engines.owners.attribute); where attribution
    fails, the process shows ``owner: null`` and the failure is logged once."""
    try:
        from perfd.engines import owners as attribution  # type: ignore[attr-defined,unused-ignore]

        result = attribution.attribute(snapshot.gpus, snapshot.engines)
    except Exception as exc:  # advisory: the figures stay without their owners
        _logged_once("stats.owners_failed", exc)
        result = None
    by_pid: dict[int, Any] = dict(getattr(result, "owners", None) or {})
    unaccounted: dict[int, Any] = dict(getattr(result, "unaccounted_bytes", None) or {})
    engine_of = {pid: r for r in snapshot.engines for pid in r.target.pids}
    for gpu in reply.get("gpus", []):
        processes = gpu.get("processes", [])
        if gpu.get("index") in unaccounted:
            gpu["unaccounted_bytes"] = unaccounted[gpu.get("index")]
        elif gpu.get("memory", {}).get("used_bytes") is not None:
            held = sum(p.get("used_bytes") or 0 for p in processes)
            gpu["unaccounted_bytes"] = max(0, gpu["memory"]["used_bytes"] - held)
        else:
            gpu["unaccounted_bytes"] = None
        for process in processes:
            pid = process.get("pid")
            owner = _owner_dict(by_pid.get(pid)) if result is not None else None
            process["owner"] = owner or _fallback(pid, process.get("name"), engine_of)


def _fallback(pid: Any, name: Any, engine_of: dict[int, EngineRecord]) -> dict[str, Any]:
    """The owner perfd knows without attribution: an engine's pid, perfd itself, else the
    process's name."""
    record = engine_of.get(pid) if isinstance(pid, int) else None
    if record is not None:
        models = record.reading.models if record.reading is not None else ()
        out = {"kind": "engine", "name": record.target.name, "engine": record.target.kind}
        if models:
            out["model"] = models[0].name
        return out
    if pid == os.getpid():
        return {"kind": "perfd", "name": "perfd"}
    return {"kind": "process", "name": name or f"pid {pid}"}


def _owner_dict(owner: object) -> dict[str, Any] | None:
    if owner is None:
        return None
    if isinstance(owner, dict):
        return {str(k): v for k, v in owner.items() if v is not None}
    fields = ("kind", "name", "engine", "model", "unit", "container", "pod_uid")
    return {f: getattr(owner, f) for f in fields if getattr(owner, f, None) is not None}
