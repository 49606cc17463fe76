"""Discovery against real processes: scripts whose command lines are the engines' (a
``llama-server`` executable, ``python -m vllm.entrypoints.openai.api_server`` from a package
named vllm, ``ollama serve`` with a runner child, ``python -m sglang.launch_server``), each
serving its health endpoint; the real process probe and the real health probe find them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from perfd.engines import discovery, health
from perfd.engines.record import Target
from perfd.probes.processes import ProcessProbe, parse_listening
from perfd.probes.samples import Listen, ProcessEntry

# One fake engine: serves its health path on --port (or OLLAMA_HOST for `ollama serve`),
# 503 with --fail, optionally starts FAKE_CHILD (a JSON argv) first; prints "ready PORT".
SERVER = r"""
import http.server, json, os, subprocess, sys
args = sys.argv[1:]
def flag(name, default):
    value = default
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value
host, port = flag("--host", "127.0.0.1"), int(flag("--port", "0"))
if "serve" in args and os.environ.get("OLLAMA_HOST"):
    host, _, p = os.environ["OLLAMA_HOST"].rpartition(":")
    port = int(p)
status = 503 if "--fail" in args else 200
paths = os.environ.get("FAKE_HEALTH", "/health").split(",")
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = status if self.path in paths else 404
        body = json.dumps({"status": "ok" if code == 200 else "loading model"}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer((host, port), Handler)
child = os.environ.pop("FAKE_CHILD", None)
if child:
    subprocess.Popen(json.loads(child), stdout=subprocess.DEVNULL)
print("ready", server.server_address[1], flush=True)
server.serve_forever()
"""

# A worker that starts a grandchild, as vLLM's engine core starts its workers.
WORKER = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print('started', flush=True); time.sleep(600)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executable(folder: Path, name: str) -> Path:
    """An executable script called ``name`` (the kernel's comm and argv[1] say ``name``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{SERVER}")
    path.chmod(0o755)
    return path


def package(root: Path, module: str) -> None:
    """A package tree on ``root`` whose ``module`` is the fake server (python -m module)."""
    *packages, leaf = module.split(".")
    folder = root
    for name in packages:
        folder = folder / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
    (folder / f"{leaf}.py").write_text(SERVER)


class Engines:
    """Starts fake engine processes, each in its own session; kills them all at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], **env: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            start_new_session=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server listens (or it died)
        assert line.startswith("ready "), f"{argv} did not start: {line!r}"
        return proc, int(line.split()[1])

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def engines() -> Iterator[Engines]:
    started = Engines()
    yield started
    started.close()


def family(pid: int, expected: int) -> tuple[int, ...]:
    """The process and its descendants as psutil sees them, once ``expected`` are there."""
    deadline = time.monotonic() + 10
    while True:
        pids = (pid, *(c.pid for c in psutil.Process(pid).children(recursive=True)))
        if len(pids) >= expected or time.monotonic() > deadline:
            return tuple(sorted(pids))
        time.sleep(0.05)


def found(pid: int) -> list[Target]:
    """The engines discovery finds now (real table, real probe) that hold ``pid``."""
    table = ProcessProbe().scan(wants_ports=discovery.is_engine)
    return [t for t in discovery.discover(table, health.probe) if pid in t.pids]


def test_llama_server_executable_is_found_with_its_port(engines: Engines, tmp_path: Path) -> None:
    """An executable named llama-server under build/bin, serving /health on --port, is found
    as llamacpp with its pid, port, url and name."""
    port = free_port()
    path = executable(tmp_path / "build" / "bin", "llama-server")
    proc, listening = engines.start([str(path), "-m", "model.gguf", "--port", str(port)])
    assert listening == port
    [target] = found(proc.pid)
    assert (target.kind, target.name, target.url) == (
        "llamacpp",
        f"llamacpp-{port}",
        f"http://127.0.0.1:{port}",
    )
    assert target.pids == (proc.pid,)
    assert target.source == "discovered"


@pytest.mark.parametrize("form", ["module", "console script"])
def test_vllm_is_found_with_its_workers(engines: Engines, tmp_path: Path, form: str) -> None:
    """vLLM as ``python -m vllm.entrypoints.openai.api_server`` or ``vllm serve`` on all
    interfaces: found with its child and grandchild pids, reached on 127.0.0.1."""
    port = free_port()
    if form == "module":
        package(tmp_path, "vllm.entrypoints.openai.api_server")
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    else:
        argv = [str(executable(tmp_path, "vllm")), "serve", "some/model"]
    argv += ["--host", "0.0.0.0", f"--port={port}"]
    proc, _ = engines.start(
        argv,
        PYTHONPATH=str(tmp_path),
        FAKE_CHILD=json.dumps([sys.executable, "-c", WORKER]),
    )
    pids = family(proc.pid, expected=3)
    assert len(pids) == 3
    [target] = found(proc.pid)
    assert target.kind == "vllm"
    assert target.pids == pids
    assert (target.name, target.url) == (f"vllm-{port}", f"http://127.0.0.1:{port}")


def test_ollama_serve_is_found_on_its_own_port_with_its_runner(
    engines: Engines, tmp_path: Path
) -> None:
    """``ollama serve`` (port from OLLAMA_HOST, not a flag) with a runner child that listens
    on a port of its own: one ollama engine on the serve process's port, runner included."""
    path = executable(tmp_path, "ollama")
    runner = [str(path), "runner", "--model", "blob", "--port", str(free_port())]
    port = free_port()
    proc, _ = engines.start(
        [str(path), "serve"],
        OLLAMA_HOST=f"127.0.0.1:{port}",
        FAKE_HEALTH="/api/version",
        FAKE_CHILD=json.dumps(runner),
    )
    pids = family(proc.pid, expected=2)
    child = psutil.Process(pids[1] if pids[0] == proc.pid else pids[0])
    deadline = time.monotonic() + 10
    while not child.net_connections(kind="tcp") and time.monotonic() < deadline:
        time.sleep(0.05)  # the runner listens too: discovery must not pick its port
    [target] = found(proc.pid)
    assert target.kind == "ollama"
    assert target.pids == pids
    assert (target.name, target.url) == (f"ollama-{port}", f"http://127.0.0.1:{port}")


def test_sglang_launch_server_is_found(engines: Engines, tmp_path: Path) -> None:
    """``python -m sglang.launch_server --port N`` is found as sglang on N."""
    package(tmp_path, "sglang.launch_server")
    port = free_port()
    proc, _ = engines.start(
        [sys.executable, "-m", "sglang.launch_server", "--model-path", "m", "--port", str(port)],
        PYTHONPATH=str(tmp_path),
    )
    [target] = found(proc.pid)
    assert (target.kind, target.name, target.pids) == ("sglang", f"sglang-{port}", (proc.pid,))


def test_a_process_that_mentions_vllm_is_not_an_engine(engines: Engines, tmp_path: Path) -> None:
    """``python tool.py vllm serve --port N`` answers /health like vLLM, yet is no engine:
    the program is tool.py."""
    tool = tmp_path / "tool.py"
    tool.write_text(SERVER)
    port = free_port()
    proc, _ = engines.start([sys.executable, str(tool), "vllm", "serve", "--port", str(port)])
    assert health.probe("vllm", f"http://127.0.0.1:{port}")  # its health answers...
    assert found(proc.pid) == []  # ...but its command line is not vLLM's


def test_an_engine_whose_health_fails_is_not_listed(engines: Engines, tmp_path: Path) -> None:
    """A llama-server whose /health says 503 (still loading) is not listed: the next run
    lists it once it answers 200."""
    port = free_port()
    path = executable(tmp_path, "llama-server")
    proc, _ = engines.start([str(path), "--port", str(port), "--fail"])
    assert not health.probe("llamacpp", f"http://127.0.0.1:{port}")
    assert found(proc.pid) == []


def test_unknown_ports_fall_back_to_the_flag(engines: Engines, tmp_path: Path) -> None:
    """When perfd may not read a process's sockets (ports None), the --port flag is probed."""
    port = free_port()
    path = executable(tmp_path, "llama-server")
    proc, _ = engines.start([str(path), "--port", str(port)])
    table = [
        replace(e, ports=None) if e.pid == proc.pid else e
        for e in ProcessProbe().scan(wants_ports=discovery.is_engine)
    ]
    [target] = [t for t in discovery.discover(table, health.probe) if proc.pid in t.pids]
    assert target.url == f"http://127.0.0.1:{port}"


def test_the_probe_reads_listening_sockets_ipv4_and_ipv6(engines: Engines) -> None:
    """The probe's ports of a process equal the sockets it bound (127.0.0.1, ::1, ::), and a
    closed socket is not among them."""
    code = (
        "import socket, time\n"
        "a = socket.socket(); a.bind(('127.0.0.1', 0)); a.listen()\n"
        "b = socket.socket(socket.AF_INET6); b.bind(('::1', 0)); b.listen()\n"
        "c = socket.socket(socket.AF_INET6); c.bind(('::', 0)); c.listen()\n"
        "d = socket.socket(); d.bind(('127.0.0.1', 0))\n"  # bound, not listening
        "print('ready', a.getsockname()[1], b.getsockname()[1], c.getsockname()[1], flush=True)\n"
        "time.sleep(600)\n"
    )
    proc, _ = engines.start([sys.executable, "-c", code])
    psutil_view = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(proc.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    ports = ProcessProbe().ports([proc.pid])[proc.pid]
    assert ports is not None
    assert {(x.host, x.port) for x in ports} == psutil_view
    assert {x.host for x in ports} == {"127.0.0.1", "::1", "::"}


def test_a_scan_skips_nothing_alive_and_costs_milliseconds() -> None:
    """The scan lists this test process with its parent and argv, as /proc says."""
    probe = ProcessProbe()
    start = time.perf_counter()
    table = probe.scan()
    elapsed = time.perf_counter() - start
    me = next(e for e in table if e.pid == os.getpid())
    assert me.ppid == os.getppid()
    assert list(me.cmdline) == Path("/proc/self/cmdline").read_bytes().decode().split("\0")[:-1]
    assert me.ports is None  # not asked for
    assert elapsed < 1.0  # a few milliseconds for a few hundred processes; robust bound


# --- the pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["./build/bin/llama-server", "-m", "x.gguf"], ("llamacpp", "server")),
        (["C:\\llama\\llama-server.exe", "--port", "9"], ("llamacpp", "server")),
        (["/usr/bin/python3", "/opt/venv/bin/vllm", "serve", "m"], ("vllm", "server")),
        (["vllm", "serve", "m"], ("vllm", "server")),
        (["python3.11", "-u", "-m", "vllm.entrypoints.openai.api_server"], ("vllm", "server")),
        (["python", "-m", "vllm.entrypoints.cli.main", "serve", "m"], ("vllm", "server")),
        (["python3", "-W", "ignore", "-m", "sglang.launch_server"], ("sglang", "server")),
        (["/usr/local/bin/ollama", "serve"], ("ollama", "server")),
        (["/usr/local/bin/ollama", "runner", "--model", "b"], ("ollama", "runner")),
        (
            ["/tmp/ollama123/runners/cuda_v12/ollama_llama_server", "--model", "b"],
            ("ollama", "runner"),
        ),
        (["python", "tool.py", "vllm", "serve"], None),
        (["grep", "llama-server"], None),
        (["vllm", "--version"], None),
        (["ollama", "run", "llama3"], None),
        (["python", "-c", "import vllm"], None),
        (["tail", "-f", "/var/log/vllm.log"], None),
        ([], None),
    ],
)
def test_match(argv: list[str], expected: tuple[str, str] | None) -> None:
    """Command lines of the engines match their kind; mentions and clients do not."""
    assert discovery.match(argv) == expected


def entry(pid: int, ppid: int, argv: list[str], ports: list[Listen] | None = None) -> ProcessEntry:
    return ProcessEntry(
        pid=pid,
        ppid=ppid,
        name=argv[0][-15:] if argv else "",
        cmdline=tuple(argv),
        start_ticks=1,
        cgroup="/system.slice/x.service",
        unit="x.service",
        ports=None if ports is None else tuple(ports),
    )


def test_groups_stop_at_another_engine_and_keep_nested_ones_of_the_kind() -> None:
    """A vllm under vllm joins its parent; a llama-server under vllm is an engine of its own,
    with its own children; an unrelated process is in no group."""
    table = [
        entry(10, 1, ["vllm", "serve", "m"]),
        entry(11, 10, ["python", "-m", "vllm.entrypoints.openai.api_server"]),
        entry(12, 11, ["VLLM::EngineCore"]),
        entry(20, 10, ["llama-server", "--port", "9"]),
        entry(21, 20, ["helper"]),
        entry(30, 1, ["bash"]),
    ]
    assert {kind: sorted(e.pid for e in members) for kind, members in discovery.groups(table)} == {
        "vllm": [10, 11, 12],
        "llamacpp": [20, 21],
    }


def test_candidates_prefer_the_flag_then_the_servers_own_ports() -> None:
    """The --port flag listening wins; without it the default port; else the server's own
    listening ports; nothing when it listens nowhere (still starting)."""
    v4, v6 = Listen("0.0.0.0", 8001), Listen("::", 8001)
    flagged = [
        entry(1, 0, ["vllm", "serve", "--port", "8001"], [Listen("127.0.0.1", 5555), v4, v6])
    ]
    assert discovery.candidates("vllm", flagged)[0] == ("127.0.0.1", 8001)
    runner = entry(2, 1, ["ollama", "runner"], [Listen("127.0.0.1", 40000)])
    serve = [entry(1, 0, ["ollama", "serve"], [Listen("127.0.0.1", 11434)]), runner]
    assert discovery.candidates("ollama", serve) == [("127.0.0.1", 11434)]
    moved = [entry(1, 0, ["ollama", "serve"], [Listen("::1", 9999)]), runner]
    assert discovery.candidates("ollama", moved) == [("[::1]", 9999)]
    assert discovery.candidates("llamacpp", [entry(1, 0, ["llama-server"], [])]) == []
    bound = [entry(1, 0, ["llama-server", "--host", "10.0.0.5", "--port", "81"], None)]
    assert discovery.candidates("llamacpp", bound) == [("10.0.0.5", 81)]


def test_parse_listening_ipv4_and_ipv6_rows() -> None:
    """Rows of /proc/net/tcp6 and tcp (as the kernel writes them) give address and port;
    only LISTEN rows count."""
    tcp6 = (
        "  sl  local_address                         remote_address                        st "
        "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000001000000:BC95 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 1321242 1 0 100 0 0 10 0\n"
        "   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n"
        "   2: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 78 1 0 100 0 0 10 0\n"
    )
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 "
        "       0 1261 1 0 100 0 0 10 0\n"
        "   1: 0100007F:8871 0100007F:B596 01 00000000:00000000 03:000003F1 00000000     0 "
        "       0 0 3 0\n"
    )
    assert parse_listening(tcp6) == {
        1321242: Listen("::1", 0xBC95),
        77: Listen("::", 8080),
        78: Listen("127.0.0.1", 8081),
    }
    assert parse_listening(tcp) == {1261: Listen("0.0.0.0", 2024)}
    assert parse_listening("garbage\n1: zz:yy\n") == {}


def test_config_given_engines_win_on_the_same_url() -> None:
    """A configured engine on a discovered one's url (localhost or 127.0.0.1) stays, taking
    the discovered pids and unit; other discovered engines follow, renamed on a clash."""
    configured = [
        Target(name="main", kind="vllm", url="http://localhost:8000/"),
        Target(name="llamacpp-8080", kind="llamacpp", url="http://10.0.0.2:8080"),
    ]
    discovered = [
        Target(
            "vllm-8000", "vllm", "http://127.0.0.1:8000", (5, 6), "vllm.service", None, "discovered"
        ),
        Target(
            "llamacpp-8080", "llamacpp", "http://127.0.0.1:8080", (9,), None, None, "discovered"
        ),
    ]
    merged = discovery.merge(configured, discovered)
    assert [(t.name, t.source, t.pids, t.unit) for t in merged] == [
        ("main", "config", (5, 6), "vllm.service"),
        ("llamacpp-8080", "config", (), None),
        ("llamacpp-8080-2", "discovered", (9,), None),
    ]
