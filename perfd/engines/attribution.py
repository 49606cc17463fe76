"""Who holds each GPU byte, as ``stats`` and /metrics show it: the snapshot's GPUs through
perfd.engines.owners.attribute (an engine, perfd, a pod, a container, a systemd unit, else
the process), as JSON values.

The snapshot's GPUs are the monitor's (``memory.used_bytes``); ``GpuFacts`` gives owners what
it reads of them. ``lookup`` is the process probe's ``process`` (perfd.probes.processes, passed
in by perfd.parts through the monitor); without one, each process still gets an engine (by its
own pid), perfd, or its name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perfd.engines import owners
from perfd.engines.owners import GpuProcessLike, Lookup, ProcessOwner
from perfd.engines.record import EngineRecord

OWNER_FIELDS = (
    "kind",
    "name",
    "engine",
    "engine_kind",
    "model",
    "unit",
    "container",
    "runtime",
    "pod_uid",
)


@dataclass(frozen=True)
class GpuFacts:
    index: int
    uuid: str
    name: str
    mem_used_bytes: int
    processes: Sequence[GpuProcessLike]


@dataclass(frozen=True)
class Attribution:
    owners: dict[int, dict[str, Any]]  # pid -> {"kind", "name", ...}
    processes: dict[int, ProcessOwner]  # pid -> the owner with its process facts (labels)
    unaccounted_bytes: dict[int, int | None]  # GPU index -> used minus the processes' sum
    unaccounted_reason: dict[int, str | None]  # GPU index -> why unaccounted_bytes is None


def _unknown(_pid: int) -> None:
    return None


def attribute(
    gpus: Sequence[Any], records: Sequence[EngineRecord], lookup: Lookup | None = None
) -> Attribution:
    """The owners of the GPU processes of the snapshot's readable ``gpus`` and each GPU's
    unaccounted memory."""
    facts = [
        GpuFacts(g.index, g.uuid, g.name, g.memory.used_bytes, g.processes) for g in gpus if g.ok
    ]
    accounts = owners.attribute(facts, records, lookup or _unknown, os.getpid())
    by_pid = {p.pid: p for account in accounts for p in account.processes}
    return Attribution(
        {pid: owner_dict(p.owner) for pid, p in by_pid.items()},
        by_pid,
        {a.index: a.unaccounted_bytes for a in accounts},
        {a.index: a.unaccounted_reason for a in accounts},
    )


def owner_dict(owner: owners.Owner) -> dict[str, Any]:
    """An ``Owner`` as JSON values, its unknown fields left out."""
    return {f: getattr(owner, f) for f in OWNER_FIELDS if getattr(owner, f, None) is not None}
