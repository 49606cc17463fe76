"""The process table probe: every process's pid, parent, name, argv, cgroup and systemd unit,
and, for the processes asked about, their listening TCP ports.

It reads /proc directly (one ``stat`` and one ``cmdline`` per process: a scan of a few hundred
processes takes milliseconds) and never raises: a process that exits mid-scan is skipped, a
file perfd may not read gives "unknown" (None), never a guess.

Listening ports: the kernel's socket tables (/proc/net/tcp and tcp6, perfd's own network
namespace) map a socket inode to its address; /proc/PID/fd maps a process to its socket
inodes. Reading another user's /proc/PID/fd needs privileges (root or CAP_SYS_PTRACE): without
them that process's ports are None. A process in another network namespace (a container
without host networking) also gets None: its sockets are not in perfd's tables, and an
address perfd cannot reach is no port of it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import replace

from perfd.probes.samples import Listen, ProcessEntry

MAX_CMDLINE_BYTES = 64 * 1024  # argv beyond this is cut (the kernel allows 2 MiB)
MAX_ARGS = 512
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column

Wants = Callable[[tuple[str, ...]], bool]


def _read(path: str, limit: int = MAX_CMDLINE_BYTES) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:  # gone, a kernel thread's empty file, or not ours to read
        return None


def parse_stat(text: str) -> tuple[str, int, int] | None:
    """(comm, ppid, start time in ticks) of a /proc/PID/stat line; the comm may hold spaces
    and parentheses, so it is what lies between the first "(" and the last ")"."""
    head, paren, tail = text.rpartition(")")
    if not paren or "(" not in head:
        return None
    comm = head.split("(", 1)[1]
    fields = tail.split()
    try:  # tail starts at field 3 (state): ppid is field 4, starttime field 22
        return comm, int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def parse_cmdline(raw: bytes) -> tuple[str, ...]:
    """argv from /proc/PID/cmdline (NUL-separated; a process may have rewritten it with
    spaces, as setproctitle does: then it is one argument)."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return tuple(part.decode("utf-8", "replace") for part in parts[:MAX_ARGS])


def parse_cgroup(text: str) -> str | None:
    """The cgroup path of a /proc/PID/cgroup: the v2 one (``0::/...``) on a unified host;
    on a v1 or hybrid host, where ``0::`` is often just "/", the ``name=systemd`` path, then
    the first controller's path that says more than "/"."""
    unified: str | None = None
    systemd: str | None = None
    others: list[str] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        path = path.strip()
        if not path:
            continue
        if hierarchy == "0" and not controllers:
            unified = path
        elif controllers == "name=systemd":
            systemd = path
        else:
            others.append(path)
    for found in (unified, systemd, *others):
        if found is not None and found != "/":
            return found
    return unified or systemd or (others[0] if others else None)


def unit_in(path: str | None) -> str | None:
    """The systemd unit of a cgroup path: its last ``.service`` or ``.scope`` part."""
    for part in reversed((path or "").split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return None


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def parse_listening(text: str) -> dict[int, Listen]:
    """Socket inode -> address of each LISTEN row of /proc/net/tcp or tcp6."""
    found: dict[int, Listen] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != LISTEN_STATE:
            continue
        host, _, port = fields[1].partition(":")
        try:
            found[int(fields[9])] = Listen(host=_address(host), port=int(port, 16))
        except ValueError:
            continue
    return found


class ProcessProbe:
    """Reads the process table under ``proc`` (tests may point it at a copy)."""

    def __init__(self, *, proc: str = "/proc", cache_size: int = 4096) -> None:
        self._proc = proc.rstrip("/")
        self._cache_size = cache_size
        self._cgroups: dict[tuple[int, int], str | None] = {}  # (pid, start) -> cgroup path
        self._netns = self._link("self/ns/net")

    def scan(self, wants_ports: Wants | None = None) -> tuple[ProcessEntry, ...]:
        """Every process; ``wants_ports(argv)`` says whose listening ports to read (the
        costly part: one readlink per open file), so discovery asks only for engines."""
        try:
            names = os.listdir(self._proc)
        except OSError:
            return ()
        entries: list[ProcessEntry] = []
        seen: set[tuple[int, int]] = set()
        listening: dict[int, Listen] | None = None
        for name in names:
            if not name.isdigit():
                continue
            entry = self._entry(int(name))
            if entry is None:
                continue
            seen.add((entry.pid, entry.start_ticks))
            if wants_ports is not None and entry.cmdline and wants_ports(entry.cmdline):
                if listening is None:
                    listening = self._listening()
                entry = _with_ports(entry, self._ports(entry.pid, listening))
            entries.append(entry)
        self._cgroups = {key: path for key, path in self._cgroups.items() if key in seen}
        return tuple(sorted(entries, key=lambda e: e.pid))

    def process(self, pid: int) -> ProcessEntry | None:
        """One process (no ports), its cgroup cached by pid and start time: cheap enough for
        every GPU process on every sample. None when it has exited."""
        if len(self._cgroups) > self._cache_size:
            self._cgroups.clear()
        return self._entry(pid)

    def ports(self, pids: Iterable[int]) -> dict[int, tuple[Listen, ...] | None]:
        """The listening sockets of ``pids`` (None: unknown, see the module's docstring)."""
        listening = self._listening()
        return {pid: self._ports(pid, listening) for pid in pids}

    # --- reading -----------------------------------------------------------------------------

    def _entry(self, pid: int) -> ProcessEntry | None:
        raw = _read(f"{self._proc}/{pid}/stat", 4096)
        stat = parse_stat(raw.decode("utf-8", "replace")) if raw else None
        if stat is None:
            return None
        comm, ppid, start = stat
        key = (pid, start)
        if key in self._cgroups:
            cgroup = self._cgroups[key]
        else:
            text = _read(f"{self._proc}/{pid}/cgroup", 16 * 1024)
            cgroup = parse_cgroup(text.decode("utf-8", "replace")) if text else None
            self._cgroups[key] = cgroup
        argv = _read(f"{self._proc}/{pid}/cmdline")
        return ProcessEntry(
            pid=pid,
            ppid=ppid,
            name=comm,
            cmdline=parse_cmdline(argv) if argv else (),
            start_ticks=start,
            cgroup=cgroup,
            unit=unit_in(cgroup),
        )

    def _listening(self) -> dict[int, Listen]:
        table: dict[int, Listen] = {}
        for name in ("tcp", "tcp6"):
            raw = _read(f"{self._proc}/net/{name}", 16 * 1024 * 1024)
            if raw:
                table.update(parse_listening(raw.decode("ascii", "replace")))
        return table

    def _link(self, path: str) -> str | None:
        try:
            return os.readlink(f"{self._proc}/{path}")
        except OSError:
            return None

    def _ports(self, pid: int, listening: dict[int, Listen]) -> tuple[Listen, ...] | None:
        netns = self._link(f"{pid}/ns/net")
        if netns is None or netns != self._netns:
            return None  # not readable, or another network namespace: unknown
        folder = f"{self._proc}/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:  # another user's process without privileges, or gone
            return None
        found: set[Listen] = set()
        for fd in fds:
            try:
                target = os.readlink(f"{folder}/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inode = int(target[8:-1]) if target[8:-1].isdigit() else -1
                if inode in listening:
                    found.add(listening[inode])
        return tuple(sorted(found, key=lambda listen: (listen.port, listen.host)))


def _with_ports(entry: ProcessEntry, ports: tuple[Listen, ...] | None) -> ProcessEntry:
    return replace(entry, ports=ports)
