"""The machine a recommendation is for: live (perfd's ``stats`` snapshot) or planned.

``hardware_from_stats`` reads a ``stats`` reply (perfctl's side of the wire; the daemon's
handler reads the same figures from the monitor's typed snapshot,
perfd.handlers.recommend.hardware_from_snapshot): host memory, the cgroup
limit (perfd reports one only when it is below the host's memory), CPU count, and each GPU
in state "ok" with its total and live free memory. A MIG-enabled GPU contributes its MIG
instances instead (free = instance total - used), since a process sees one instance, not
the whole GPU.

``plan_hardware`` applies ``--gpu``/``--gpus``/``--memory``: a catalog GPU name (or a size
such as "48GiB") plans for that GPU with all its memory free; an index ("0" or "0,1") picks
live GPUs; ``--gpus N`` repeats the GPU N times (0: a CPU-only host); ``--memory`` sets the
host RAM. With no live hardware, one of them is required.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from perfd.recommend.catalog import GPUS, gpu_model
from perfd.recommend.request import MAX_BYTES, Query, RecommendError, check_limits


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str | None = None
    mig: bool = False


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[Gpu, ...]
    ram_total_bytes: int
    ram_available_bytes: int
    cgroup_limit_bytes: int | None
    cpu_count: int
    source: str  # "live", "planned", "live+planned", "kv_budget"

    @property
    def ram_usable_bytes(self) -> int:
        """Available RAM, or the cgroup limit when that is lower; 0 when unknown."""
        if self.cgroup_limit_bytes is not None:
            return min(self.ram_available_bytes, self.cgroup_limit_bytes)
        return self.ram_available_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "device": "gpu" if self.gpus else "cpu",
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "total_bytes": g.total_bytes,
                    "free_bytes": g.free_bytes,
                    "compute_capability": g.compute_capability,
                    "mig": g.mig,
                }
                for g in self.gpus
            ],
            "ram_total_bytes": self.ram_total_bytes,
            "ram_available_bytes": self.ram_available_bytes,
            "cgroup_limit_bytes": self.cgroup_limit_bytes,
            "cpu_count": self.cpu_count,
        }


def hardware_from_stats(snapshot: Mapping[str, Any]) -> Hardware:
    """Hardware from a ``stats`` reply as it came over the wire (perfctl's side): its
    ``host`` and ``gpus`` sections, read leniently (a field missing is a zero)."""
    host = snapshot.get("host") or {}
    memory = host.get("memory") or {}
    cgroup = host.get("cgroup") or {}
    gpus: list[Gpu] = []
    for position, gpu in enumerate(snapshot.get("gpus") or ()):
        if gpu.get("state", "ok") != "ok":
            continue
        mem = gpu.get("memory") or {}
        mig = gpu.get("mig") or {}
        capability = gpu.get("compute_capability")
        instances = mig.get("instances") or ()
        if mig.get("enabled") and instances:
            for inst in instances:
                total = int(inst.get("total_bytes") or 0)
                free = max(0, total - int(inst.get("used_bytes") or 0))
                name = f"{gpu.get('name', 'GPU')} MIG {inst.get('index', 0)}"
                gpus.append(
                    Gpu(int(gpu.get("index", position)), name, total, free, capability, True)
                )
            continue
        gpus.append(
            Gpu(
                index=int(gpu.get("index", position)),
                name=str(gpu.get("name") or "GPU"),
                total_bytes=int(mem.get("total_bytes") or 0),
                free_bytes=int(mem.get("free_bytes") or 0),
                compute_capability=capability,
            )
        )
    limit = cgroup.get("limit_bytes")
    return Hardware(
        gpus=tuple(gpus),
        ram_total_bytes=int(memory.get("total_bytes") or 0),
        ram_available_bytes=int(memory.get("available_bytes") or 0),
        cgroup_limit_bytes=None if limit is None else int(limit),
        cpu_count=int(host.get("cpu_count") or 1),
        source="live",
    )


def _planned_gpu(text: str) -> Gpu:
    from perfd.wire.units import parse_size

    try:
        size = parse_size(text)
    except ValueError:
        model = gpu_model(text)
        return Gpu(0, model.name, model.total_bytes, model.total_bytes, model.compute_capability)
    if not 1 <= size <= MAX_BYTES:
        raise RecommendError(
            f"a GPU size must be from 1 byte to 1024TiB ({MAX_BYTES} bytes), not {text!r}",
            option="gpu",
            value=text,
        )
    return Gpu(0, f"GPU ({text.strip()})", size, size)


def _live_gpus(text: str, live: Hardware | None) -> tuple[Gpu, ...]:
    parts = text.split(",")
    if not all(parts):
        raise RecommendError(
            f"--gpu {text!r}: live GPU indexes are numbers separated by commas (0,1)",
            option="gpu",
            value=text,
        )
    wanted = [int(part) for part in parts]
    have = () if live is None else live.gpus
    picked = tuple(g for g in have if g.index in wanted)
    missing = sorted(set(wanted) - {g.index for g in picked})
    if missing:
        listed = ", ".join(str(i) for i in sorted({g.index for g in have})) or "none"
        raise RecommendError(
            f"no live GPU with index {', '.join(map(str, missing))} (live GPUs: {listed}); "
            "name a GPU model with --gpu NAME to plan for one (perfctl recommend --list-gpus)",
            option="gpu",
            value=text,
        )
    return picked


def plan_hardware(request: Query, live: Hardware | None) -> Hardware:
    """The hardware to plan for: ``live`` changed by the request's --gpu/--gpus/--memory."""
    check_limits(request)  # before a text is matched or the GPU repeated that many times
    if request.kv_budget is not None and live is None and request.gpu is None:
        return Hardware((), 0, 0, None, 1, "kv_budget")
    if live is None and request.gpu is None and request.memory is None:
        raise RecommendError(
            "no live hardware to plan for: name a GPU with --gpu NAME "
            "(perfctl recommend --list-gpus) or the host RAM with --memory SIZE",
            option="gpu",
        )
    base = live or Hardware((), 0, 0, None, 1, "planned")
    gpus, planned = base.gpus, live is None
    if request.gpu is not None:
        text = request.gpu.strip()
        if text.replace(",", "").isdigit():
            gpus = _live_gpus(text, live)
        else:
            gpus, planned = (_planned_gpu(text),), True
    elif live is None:
        gpus = ()  # --memory alone: a CPU-only host
    if request.gpus is not None:
        planned = True
        if request.gpus == 0:
            gpus = ()
        elif not gpus:
            raise RecommendError(
                f"--gpus {request.gpus}: which GPU? add --gpu NAME (perfctl recommend --list-gpus)",
                option="gpus",
                value=request.gpus,
            )
        elif request.gpu is None and live is not None and request.gpus <= len(gpus):
            gpus = gpus[: request.gpus]
        else:
            gpus = tuple(replace(gpus[0], index=i) for i in range(request.gpus))
    ram_total, ram_available, cgroup = (
        base.ram_total_bytes,
        base.ram_available_bytes,
        base.cgroup_limit_bytes,
    )
    if request.memory is not None:
        ram_total = ram_available = request.memory
        cgroup, planned = None, True
    source = "live" if live is not None and not planned else ("live+planned" if live else "planned")
    return Hardware(gpus, ram_total, ram_available, cgroup, base.cpu_count, source)


def list_gpus() -> list[dict[str, Any]]:
    """The built-in GPU table: name, total memory, compute capability, aliases."""
    return [
        {
            "name": g.name,
            "total_bytes": g.total_bytes,
            "total_mib": g.total_bytes >> 20,
            "compute_capability": g.compute_capability,
            "aliases": list(g.aliases),
        }
        for g in GPUS
    ]
