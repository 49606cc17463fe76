"""Who holds each GPU byte, pure: an owner for every GPU process, and what no process
accounts for on each GPU.

The owner of a GPU process, first match wins:

1. an engine: its pids hold the process or one of its ancestors (kind, name, model);
2. perfd itself (``self_pid``, or a process under it): the model cache;
3. a Kubernetes pod: the pod UID in its cgroup path (with the container id when there);
4. a container: docker, podman, containerd or cri-o's id in its cgroup path;
5. its systemd unit (a service, or a named scope; login sessions do not count);
6. else the process name.

A pod's or container's cgroup is itself a systemd scope (``docker-<id>.scope``), so they
come before the unit: a unit is what is left, e.g. ``vllm.service``.

``unaccounted_bytes`` per GPU: the GPU's used memory minus the sum of its processes'; never
negative, None (with the reason) when a process's figure is unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from perfd.engines.record import EngineRecord, Target
from perfd.probes.samples import ProcessEntry

ENGINE, PERFD, POD, CONTAINER, UNIT, PROCESS = (
    "engine",
    "perfd",
    "pod",
    "container",
    "unit",
    "process",
)
OWNER_KINDS = (ENGINE, PERFD, POD, CONTAINER, UNIT, PROCESS)
MAX_DEPTH = 64

Lookup = Callable[[int], ProcessEntry | None]


class GpuProcessLike(Protocol):
    """A GPU process as NVML gives it (probes.samples.GpuProcess, the snapshot's
    GpuProcessUse)."""

    @property
    def pid(self) -> int: ...
    @property
    def used_bytes(self) -> int | None: ...
    @property
    def name(self) -> str | None: ...


class GpuLike(Protocol):
    """What attribution reads of a GPU (probes.samples.GpuSample has exactly these)."""

    @property
    def index(self) -> int: ...
    @property
    def uuid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def mem_used_bytes(self) -> int: ...
    @property
    def processes(self) -> Sequence[GpuProcessLike]: ...


# Pod UIDs (kubelet's cgroup names): the systemd driver writes the UID with "_" for "-"
# (kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice), the cgroupfs
# driver keeps it (/kubepods/burstable/pod<uid>/<container id>). Guaranteed pods sit right
# under kubepods. Static pods have a 32-hex config hash for a UID.
_POD = (
    re.compile(r"kubepods(?:-burstable|-besteffort)?-pod([0-9a-f_]{32,36})\.slice"),
    re.compile(r"/kubepods/(?:burstable/|besteffort/)?pod([0-9a-f-]{32,36})(?=/|$)"),
)
# Container ids: the systemd drivers' scopes and the cgroupfs drivers' folders.
_CONTAINER = (
    ("docker", re.compile(r"docker-([0-9a-f]{64})\.scope")),
    ("docker", re.compile(r"/docker/([0-9a-f]{64})(?=/|$)")),
    ("podman", re.compile(r"libpod-([0-9a-f]{64})(?:\.scope)?(?=/|$)")),
    ("containerd", re.compile(r"cri-containerd-([0-9a-f]{64})\.scope")),
    ("cri-o", re.compile(r"crio-([0-9a-f]{64})\.scope")),
    (None, re.compile(r"/kubepods/(?:[a-z]+/)?pod[0-9a-f-]{32,36}/([0-9a-f]{64})(?=/|$)")),
)
_LOW_INFO_SCOPES = ("session-", "init.scope", "run-", "vte-spawn-")


@dataclass(frozen=True)
class Container:
    id: str
    runtime: str | None  # docker, podman, containerd, cri-o; None: not said by the path


@dataclass(frozen=True)
class Owner:
    kind: str  # one of OWNER_KINDS
    name: str  # what to show: the engine's name, "perfd", the pod UID, the unit...
    engine: str | None = None  # the engine's name
    engine_kind: str | None = None  # vllm, llamacpp, ollama, sglang
    model: str | None = None  # the engine's first served model, when read
    unit: str | None = None
    container: str | None = None  # the runtime's container id
    runtime: str | None = None
    pod_uid: str | None = None


@dataclass(frozen=True)
class ProcessOwner:
    pid: int
    name: str  # the process's name
    used_bytes: int | None
    owner: Owner


@dataclass(frozen=True)
class GpuAccount:
    """One GPU: its processes with their owners, and what none of them accounts for."""

    index: int
    uuid: str
    model_name: str
    used_bytes: int
    processes: tuple[ProcessOwner, ...]
    processes_bytes: int | None  # the processes' sum; None when one is unknown
    unaccounted_bytes: int | None
    unaccounted_reason: str | None = None  # why unaccounted_bytes is None


def pod_uid(cgroup: str | None) -> str | None:
    """The Kubernetes pod UID in a cgroup path (dashes restored), or None."""
    for pattern in _POD:
        found = pattern.findall(cgroup or "")
        if found:
            return str(found[-1]).replace("_", "-")
    return None


def container(cgroup: str | None) -> Container | None:
    """The innermost container id in a cgroup path, with its runtime where the path says."""
    best: tuple[int, Container] | None = None
    for runtime, pattern in _CONTAINER:
        for hit in pattern.finditer(cgroup or ""):
            if best is None or hit.start() > best[0]:
                best = (hit.start(), Container(id=hit.group(1), runtime=runtime))
    return best[1] if best else None


def service_unit(cgroup: str | None) -> str | None:
    """The systemd unit that says who runs a process: the last ``.service`` of the path, or
    a ``.scope`` someone named (``systemd-run --scope --unit=NAME``); not a login session."""
    for part in reversed((cgroup or "").split("/")):
        if part.endswith(".service"):
            return part
        if part.endswith(".scope") and not part.startswith(_LOW_INFO_SCOPES):
            return part
    return None


def _chain(pid: int, lookup: Lookup) -> list[ProcessEntry]:
    """The process and its ancestors, as far as they can be read."""
    out: list[ProcessEntry] = []
    seen: set[int] = set()
    entry = lookup(pid)
    while entry is not None and entry.pid not in seen and len(out) < MAX_DEPTH:
        out.append(entry)
        seen.add(entry.pid)
        entry = lookup(entry.ppid) if entry.ppid > 0 else None
    return out


def _engines(engines: Sequence[Target | EngineRecord]) -> list[tuple[Target, str | None]]:
    out: list[tuple[Target, str | None]] = []
    for item in engines:
        if isinstance(item, EngineRecord):
            models = item.reading.models if item.reading else ()
            out.append((item.target, models[0].name if models else None))
        else:
            out.append((item, None))
    return out


def owner_of(
    pid: int,
    name: str | None,
    engines: Sequence[Target | EngineRecord],
    lookup: Lookup,
    self_pid: int,
) -> tuple[str, Owner]:
    """(the process's name, its owner): see the module's docstring for the order."""
    chain = _chain(pid, lookup)
    pids = [pid, *(e.pid for e in chain[1:])]
    shown = name or (chain[0].name if chain else None) or f"pid {pid}"
    for target, model in _engines(engines):
        if set(pids) & set(target.pids):
            return shown, Owner(
                kind=ENGINE,
                name=target.name,
                engine=target.name,
                engine_kind=target.kind,
                model=model,
                unit=target.unit,
            )
    if pid == self_pid or (self_pid != 1 and self_pid in pids):  # as pid 1 all is under perfd
        return shown, Owner(kind=PERFD, name="perfd")
    cgroup = chain[0].cgroup if chain else None
    unit = service_unit(cgroup)
    box = container(cgroup)
    uid = pod_uid(cgroup)
    ids = {"container": box.id if box else None, "runtime": box.runtime if box else None}
    if uid is not None:
        return shown, Owner(kind=POD, name=uid, pod_uid=uid, **ids)
    if box is not None:
        label = f"{box.runtime} {box.id[:12]}" if box.runtime else box.id[:12]
        return shown, Owner(kind=CONTAINER, name=label, **ids)
    if unit is not None:
        return shown, Owner(kind=UNIT, name=unit, unit=unit)
    return shown, Owner(kind=PROCESS, name=shown)


def attribute(
    gpus: Sequence[GpuLike],
    engines: Sequence[Target | EngineRecord],
    lookup: Lookup,
    self_pid: int,
) -> tuple[GpuAccount, ...]:
    """Every GPU's processes with their owners, and its unaccounted bytes."""
    out = []
    for gpu in gpus:
        rows = []
        unknown: list[int] = []
        for process in gpu.processes:
            shown, owner = owner_of(process.pid, process.name, engines, lookup, self_pid)
            rows.append(ProcessOwner(process.pid, shown, process.used_bytes, owner))
            if process.used_bytes is None:
                unknown.append(process.pid)
        total = None if unknown else sum(p.used_bytes or 0 for p in gpu.processes)
        reason = None
        if unknown:
            reason = (
                f"NVML gives no memory figure for pid {', '.join(map(str, unknown))} "
                "(a MIG instance or a process of another container): the rest cannot be known"
            )
        out.append(
            GpuAccount(
                index=gpu.index,
                uuid=gpu.uuid,
                model_name=gpu.name,
                used_bytes=gpu.mem_used_bytes,
                processes=tuple(rows),
                processes_bytes=total,
                unaccounted_bytes=None if total is None else max(0, gpu.mem_used_bytes - total),
                unaccounted_reason=reason,
            )
        )
    return tuple(out)


# --- /metrics labels ---------------------------------------------------------------------------

# DCGM exporter's names where they mean the same: gpu (the index), UUID, modelName (its
# const.go and the metrics it serves). Its `pod`, `namespace` and `container` are Kubernetes
# *names* from the kubelet's pod-resources API, which perfd does not query: perfd's pod UID and
# container id (from the cgroup path) go in `pod_uid` and `container_id`, never under DCGM's
# names with another meaning.
GPU_LABELS = ("gpu", "UUID", "modelName")
OWNER_LABELS = (
    "pid",
    "process",
    "owner_kind",
    "owner",
    "engine",
    "engine_kind",
    "model",
    "unit",
    "container_id",
    "container_runtime",
    "pod_uid",
)


def gpu_labels(account: GpuAccount) -> dict[str, str]:
    return {"gpu": str(account.index), "UUID": account.uuid, "modelName": account.model_name}


def owner_labels(process: ProcessOwner) -> dict[str, str]:
    """Every name of OWNER_LABELS (empty where unknown: one label set per metric family)."""
    owner = process.owner
    return {
        "pid": str(process.pid),
        "process": process.name,
        "owner_kind": owner.kind,
        "owner": owner.name,
        "engine": owner.engine or "",
        "engine_kind": owner.engine_kind or "",
        "model": owner.model or "",
        "unit": owner.unit or "",
        "container_id": owner.container or "",
        "container_runtime": owner.runtime or "",
        "pod_uid": owner.pod_uid or "",
    }
