"""Discovery, pure: which processes of the table (perfd.probes.processes) are engines, grouped
into one ``Target`` each, with the port they serve on.

What is matched (the program is argv[0]'s basename, or, under a Python interpreter, the
script's basename or the ``-m`` module; ``.exe`` is dropped):

- vLLM: ``vllm serve ...``, ``python -m vllm.entrypoints.openai.api_server``,
  ``python -m vllm.entrypoints.cli.main serve``;
- llama.cpp: ``llama-server`` at any path (``./build/bin/llama-server``, ``llama-server.exe``);
- Ollama: ``ollama serve``; its runners (``ollama runner ...``, older ``ollama_llama_server``)
  join the ``ollama serve`` they run under and are never an engine of their own;
- SGLang: ``python -m sglang.launch_server``.

A process that merely mentions an engine in an argument (``python tool.py vllm serve``,
``grep llama-server``) is not matched. An engine is the matched process and every process
under it (vLLM's engine core and workers, Ollama's runners), down to another engine.

Its port: the ``--port`` flag, else the kind's default (8000, 8080, 11434, 30000), when the
group listens there; else the ports the server process itself listens on, in order. When
perfd may not see a process's sockets (``ports`` is None) the flag or default port is tried.
Each candidate is confirmed by ``probe(kind, url)`` (the kind's health endpoint): a process
whose health check fails (still loading, or not an engine at all) is not listed yet; the next
discovery run lists it once it answers.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from perfd.engines.record import LLAMACPP, OLLAMA, SGLANG, VLLM, Target
from perfd.probes.samples import Listen, ProcessEntry

Probe = Callable[[str, str], bool]

DEFAULT_PORTS = {VLLM: 8000, LLAMACPP: 8080, OLLAMA: 11434, SGLANG: 30000}
SERVER = "server"
RUNNER = "runner"  # a helper process that belongs to the server above it (Ollama's runners)
MAX_CANDIDATES = 4  # ports probed per engine, at most
MAX_DEPTH = 64  # ancestors walked, at most (a pid loop in a torn table ends here)
ALL_V4 = {"0.0.0.0", "127.0.0.1", "localhost", ""}
ALL_V6 = {"::", "::1"}

_MODULES = {
    "vllm.entrypoints.openai.api_server": VLLM,
    "sglang.launch_server": SGLANG,
}
_PY_OPTIONS_WITH_VALUE = {"-W", "-X", "-Q"}


def _base(path: str) -> str:
    name = os.path.basename(path.replace("\\", "/")).lower()
    return name[:-4] if name.endswith(".exe") else name


def _is_python(name: str) -> bool:
    rest = name.removeprefix("python")
    return rest != name and all(c.isdigit() or c == "." for c in rest)


def program(argv: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(the program, its arguments): ``-m MODULE`` gives "-m MODULE"; a script under an
    interpreter gives the script's basename; an inline ``-c`` program gives "-c"."""
    if len(argv) == 1 and " " in argv[0]:  # a title set over argv (setproctitle)
        argv = argv[0].split()
    if not argv:
        return "", ()
    first = _base(argv[0])
    if not _is_python(first):
        return first, tuple(argv[1:])
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return f"-m {argv[i + 1]}", tuple(argv[i + 2 :])
        if arg.startswith("-m") and len(arg) > 2:
            return f"-m {arg[2:]}", tuple(argv[i + 1 :])
        if arg == "-c" or arg.startswith("-c"):
            return "-c", ()
        if arg in _PY_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return _base(arg), tuple(argv[i + 1 :])
    return first, ()


def match(argv: Sequence[str]) -> tuple[str, str] | None:
    """(kind, SERVER or RUNNER) when ``argv`` is an engine's command line, else None."""
    name, args = program(argv)
    first = args[0] if args else ""
    if name.startswith("-m "):
        module = name[3:]
        if module == "vllm.entrypoints.cli.main" and first == "serve":
            return VLLM, SERVER
        kind = _MODULES.get(module)
        return (kind, SERVER) if kind else None
    if name == "vllm" and first == "serve":
        return VLLM, SERVER
    if name == "llama-server":
        return LLAMACPP, SERVER
    if name == "ollama" and first == "serve":
        return OLLAMA, SERVER
    if (name == "ollama" and first == "runner") or name == "ollama_llama_server":
        return OLLAMA, RUNNER
    return None


def is_engine(argv: tuple[str, ...]) -> bool:
    """Whether a process's ports are worth reading (``ProcessProbe.scan(wants_ports=...)``)."""
    return match(argv) is not None


def flag(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` (the last one wins, as argparse does)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def url_host(hosts: Iterable[str]) -> str:
    """The host to reach a listener at: loopback for an all-interfaces bind."""
    found = set(hosts)
    if found & ALL_V4 or not found:
        return "127.0.0.1"
    if found & ALL_V6:
        return "[::1]"
    host = sorted(found)[0]
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:  # a name given with --host
        return host


def _ancestors(entry: ProcessEntry, by_pid: dict[int, ProcessEntry]) -> Iterable[ProcessEntry]:
    seen = {entry.pid}
    parent = by_pid.get(entry.ppid)
    for _ in range(MAX_DEPTH):
        if parent is None or parent.pid in seen:
            return
        yield parent
        seen.add(parent.pid)
        parent = by_pid.get(parent.ppid)


def groups(processes: Iterable[ProcessEntry]) -> list[tuple[str, list[ProcessEntry]]]:
    """(kind, [server process, its descendants...]) for each engine in the table."""
    by_pid = {entry.pid: entry for entry in processes}
    kinds = {pid: hit for pid, e in by_pid.items() if (hit := match(e.cmdline))}
    roots = [
        e
        for pid, e in sorted(by_pid.items())
        if kinds.get(pid, ("", ""))[1] == SERVER
        and not any(kinds.get(a.pid, ("", ""))[0] == kinds[pid][0] for a in _ancestors(e, by_pid))
    ]
    root_pids = {e.pid for e in roots}
    children: dict[int, list[ProcessEntry]] = {}
    for e in by_pid.values():
        children.setdefault(e.ppid, []).append(e)
    found: list[tuple[str, list[ProcessEntry]]] = []
    for root in roots:
        members, todo = [root], list(children.get(root.pid, ()))
        while todo:
            e = todo.pop()
            if e.pid in root_pids or e.pid == root.pid or len(members) > 4096:
                continue
            members.append(e)
            todo.extend(children.get(e.pid, ()))
        found.append((kinds[root.pid][0], members))
    return found


def candidates(kind: str, members: Sequence[ProcessEntry]) -> list[tuple[str, int]]:
    """The (url host, port) pairs to probe for one engine, most likely first."""
    root = members[0]
    given = flag(root.cmdline, "--port")
    expected = int(given) if given and given.isdigit() else DEFAULT_PORTS[kind]
    host_flag = flag(root.cmdline, "--host")
    listens: list[Listen] = [x for e in members for x in (e.ports or ())]
    out: list[tuple[str, int]] = []
    at_expected = [x.host for x in listens if x.port == expected]
    if at_expected:
        out.append((url_host(at_expected), expected))
    elif root.ports is None:
        out.append((url_host([host_flag or ""]), expected))
    own = list(root.ports or ()) or listens  # the server's own ports, else its children's
    for port in sorted({x.port for x in own} - {expected}):
        out.append((url_host(x.host for x in own if x.port == port), port))
    return out[:MAX_CANDIDATES]


def discover(processes: Iterable[ProcessEntry], probe: Probe) -> list[Target]:
    """The engines in the process table whose health endpoint answers, sorted by name."""
    found: list[Target] = []
    for kind, members in groups(processes):
        for host, port in candidates(kind, members):
            url = f"http://{host}:{port}"
            if probe(kind, url):
                found.append(
                    Target(
                        name=f"{kind}-{port}",
                        kind=kind,
                        url=url,
                        pids=tuple(sorted(e.pid for e in members)),
                        unit=members[0].unit,
                        source="discovered",
                    )
                )
                break
    return sorted(found, key=lambda t: (t.name, t.url))


def _same_url(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.rstrip("/").lower().replace("//localhost:", "//127.0.0.1:")

    return norm(a) == norm(b)


def merge(configured: Sequence[Target], discovered: Sequence[Target]) -> list[Target]:
    """Config-given engines win over a discovered one on the same url (or holding its pid
    hint, or its unit): the configured target stays, taking the discovered pids and unit it
    lacks; the discovered duplicate is dropped. Other discovered targets follow, renamed with
    a suffix if a configured engine already has their name."""
    taken: set[int] = set()
    out: list[Target] = []
    for given in configured:
        target = given
        for i, d in enumerate(discovered):
            if i in taken or d.kind != given.kind:
                continue
            if (
                _same_url(d.url, given.url)
                or set(given.pids) & set(d.pids)
                or (given.unit is not None and given.unit == d.unit)
            ):
                taken.add(i)
                target = replace(
                    given,
                    pids=tuple(sorted(set(given.pids) | set(d.pids))),
                    unit=given.unit or d.unit,
                )
                break
        out.append(target)
    names = {t.name for t in out}
    for i, d in enumerate(discovered):
        if i in taken:
            continue
        name, n = d.name, 1
        while name in names:
            n += 1
            name = f"{d.name}-{n}"
        names.add(name)
        out.append(replace(d, name=name))
    return out
