"""The host probe: the only module that imports psutil.

``HostProbe.sample()`` reads memory, CPU, memory pressure (PSI), perfd's cgroup v2 limit and,
when asked, the biggest processes with their systemd units. It never raises from
``sample()``; it returns the plain values of perfd.probes.samples.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable

import psutil

from perfd import log
from perfd.probes.samples import (
    Cgroup,
    HostSample,
    ProcessInfo,
    Psi,
)

_log = log.get("perfd.probes")

_log = log.get("perfd.probes")

Clock = Callable[[], float]


def _read_text(path: str) -> str | None:
    """The file's text, or None when it is missing or unreadable (no log: that is normal)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def parse_psi(text: str) -> Psi | None:
    """Parse /proc/pressure/memory (``some avg10=0.12 avg60=0.05 avg300=0.01 total=1234``)."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        rows[kind] = dict(field.split("=", 1) for field in fields if "=" in field)
    if "some" not in rows:
        return None
    some, full = rows["some"], rows.get("full", {})
    try:
        return Psi(
            some_total_us=int(some["total"]),
            full_total_us=int(full.get("total", 0)),
            some_avg10=float(some["avg10"]),
            some_avg60=float(some["avg60"]),
            full_avg10=float(full.get("avg10", 0.0)),
            full_avg60=float(full.get("avg60", 0.0)),
        )
    except (KeyError, ValueError):
        return None


def _cgroup_paths(text: str) -> tuple[str | None, str | None]:
    """The cgroup v2 path (``0::``) and the v1 ``name=systemd`` path of a /proc/PID/cgroup."""
    unified = systemd = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            unified = path.strip()
        elif controllers == "name=systemd":
            systemd = path.strip()
    return unified, systemd


def _unit_in(path: str | None) -> str | None:
    for part in reversed((path or "").split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return None


def parse_unit(cgroup_text: str) -> str | None:
    """The systemd unit of a /proc/PID/cgroup: the last ``.service``/``.scope`` in its path.

    ``0::/system.slice/vllm.service`` gives "vllm.service"; a process in a user session
    (``.../user@1000.service/app.slice/foo.scope``) gives "foo.scope". On a cgroup v1 host
    the ``name=systemd`` hierarchy carries the same path.
    """
    unified, systemd = _cgroup_paths(cgroup_text)
    return _unit_in(unified) or _unit_in(systemd)


def _to_int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


class HostProbe:
    """Reads the host's memory, CPU, PSI, perfd's cgroup and, on request, the top processes."""

    def __init__(
        self,
        *,
        proc: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        top_n: int = 5,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self._proc = proc.rstrip("/")
        self._cgroup_root = cgroup_root.rstrip("/")
        self._top_n = top_n
        self._clock = clock
        self._wall = wall
        self._self = psutil.Process()
        psutil.cpu_percent(interval=None)  # the first call only sets the baseline

    def sample(self, with_processes: bool) -> HostSample:
        """One reading; ``with_processes`` adds the top processes by RSS (the costly part)."""
        t, wall = self._clock(), self._wall()
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        with self._self.oneshot():
            rss = self._self.memory_info().rss
            cpu = self._self.cpu_times()
        load = os.getloadavg()
        psi_text = _read_text(f"{self._proc}/pressure/memory")
        return HostSample(
            t=t,
            wall=wall,
            mem_total_bytes=memory.total,
            mem_available_bytes=memory.available,
            swap_total_bytes=swap.total,
            swap_used_bytes=swap.used,
            cpu_percent=psutil.cpu_percent(interval=None),
            load_avg=(load[0], load[1], load[2]),
            cpu_count=os.cpu_count() or 1,
            psi=parse_psi(psi_text) if psi_text is not None else None,
            cgroup=self._cgroup(),
            self_rss_bytes=rss,
            self_cpu_seconds=cpu.user + cpu.system,
            processes=self._top_processes() if with_processes else None,
        )

    def _cgroup(self) -> Cgroup | None:
        """perfd's cgroup v2 memory figures; None without cgroup v2 or its memory controller."""
        text = _read_text(f"{self._proc}/self/cgroup")
        path = _cgroup_paths(text)[0] if text is not None else None
        if path is None:
            return None
        base = self._cgroup_root + path.rstrip("/")
        limit = _read_text(f"{base}/memory.max")
        if limit is None:
            return None
        return Cgroup(
            path=path,
            memory_max_bytes=None if limit.strip() == "max" else _to_int(limit),
            memory_current_bytes=_to_int(_read_text(f"{base}/memory.current")),
        )

    def _top_processes(self) -> tuple[ProcessInfo, ...]:
        # RSS of every process (one read of /proc/PID/statm each); name and unit for the top N
        # alone. Calling memory_info() directly costs a third less than process_iter(attrs).
        sizes: list[tuple[int, psutil.Process]] = []
        for process in psutil.process_iter():
            try:
                sizes.append((process.memory_info().rss, process))
            except psutil.Error:  # exited, a zombie, or access denied
                continue
        top = []
        for rss, process in heapq.nlargest(self._top_n, sizes, key=lambda pair: pair[0]):
            try:
                name = process.name()
            except psutil.Error:  # exited since: it no longer holds that memory
                continue
            cgroup = _read_text(f"{self._proc}/{process.pid}/cgroup")
            unit = parse_unit(cgroup) if cgroup is not None else None
            top.append(ProcessInfo(pid=process.pid, name=name, rss_bytes=rss, unit=unit))
        return tuple(top)


# --- GPU -----------------------------------------------------------------------------------


def process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return None
