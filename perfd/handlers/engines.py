"""engines: the engines perfd watches, their latest records, and (for one engine) the plan
check; the owner of each GPU process for ``stats``. Read-only: everyone may run them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfd import log
from perfd.errors import CommandError
from perfd.handlers.view import EnginesView
from perfd.wire import protocol

if TYPE_CHECKING:
    from perfd.engines.owners import Lookup
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


def plan(record: EngineRecord, snapshot: Snapshot | None) -> tuple[object, str | None]:
    """The plan check of one engine (perfd.engines.plancheck) and None, or None and why there
    is none (the model's architecture cannot be read here, the check failed)."""
    try:
        from perfd.engines import archs, plancheck
        from perfd.monitor.engine_alerts import plan_gpus

        arch = archs.resolve(record)
        if isinstance(arch, str):
            return None, arch
        gpus = plan_gpus(snapshot.gpus) if snapshot is not None else []
        host = snapshot.host if snapshot is not None else None
        return plancheck.check(
            record,
            gpus,
            arch,
            ram_bytes=host.memory.total_bytes if host is not None else 0,
            cpu_count=host.cpu_count if host is not None else 1,
        ), None
    except Exception as exc:  # advisory: the record is shown without it
        return None, f"the plan check failed: {_logged_once('engines.plan_failed', exc)}"


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
        checked, why = plan(chosen[0], snapshot)
        shown = [record_dict(chosen[0], checked, why)]
    else:
        shown = [record_dict(r) for r in records]
    return {"engines": shown, "discovery": watcher.discovery()}


def section(records: tuple[EngineRecord, ...]) -> list[dict[str, Any]]:
    """The engines section of ``stats``: the records the sample read."""
    from perfd.engines.report import record_dict

    return [record_dict(r) for r in records]


def owners(reply: dict[str, Any], snapshot: Snapshot, lookup: Lookup | None) -> None:
    """Each GPU process in a ``stats`` reply gets its ``owner`` ({"kind", "name", ...}) and
    each GPU its ``unaccounted_bytes`` (perfd.engines.attribution; ``lookup``: the process
    probe's, through the monitor)."""
    from perfd.engines.attribution import attribute

    found = attribute(snapshot.gpus, snapshot.engines, lookup)
    for gpu in reply.get("gpus", []):
        gpu["unaccounted_bytes"] = found.unaccounted_bytes.get(gpu.get("index"))
        gpu["unaccounted_reason"] = found.unaccounted_reason.get(gpu.get("index"))
        for process in gpu.get("processes", []):
            process["owner"] = found.owners.get(process.get("pid"))
