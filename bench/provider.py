"""Benchmark 11: the pooled provider client against a new connection per request, over HTTPS.

    python bench/provider.py            # full run, about a minute
    python bench/provider.py --quick    # smoke run

A local nginx (from the distribution: ``apt-get install nginx``) serves a canned chat completion
on ``https://127.0.0.1:PORT/v1/chat/completions`` with a self-signed certificate made by
``openssl req -x509`` in a temp directory; both clients trust it through their CA bundle (the
provider's ``ca_bundle``, requests' ``verify``). Lines, 200 calls each:

- subject: ``perfd.net.provider.Provider.chat(body)``, one Provider built once with the default
  ``[providers.NAME]`` settings (a pool of 10 kept-alive connections, the POST-safe Retry);
- baseline: ``requests.post(url, json=body, verify=CA)``, which opens (and closes) a new
  connection per call, TLS handshake included: what perfd's predecessor did.

Each is run sequentially (one call after another) and concurrently (8 threads sharing the 200
calls), in rounds that alternate which client goes first. Figures: throughput (req/s, the
median over rounds), per-call p50/p95 latency, and the connections each line opened, counted
twice: by the provider's own stats (``connections_opened``) and by nginx (``stub_status``
accepts). Target: the pooled client at least 3x the baseline's throughput (the predecessor's
pooling claimed +20%).

Skips, with the reason printed, when nginx or openssl is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``perfd`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Check,
    captured_log,
    percentile,
    print_summary,
    print_table,
    short_tempdir,
    stop_process,
)

BENCHMARK = "provider"
TARGET_RATIO = 3.0
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "bench/canned",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}
BODY = {
    "model": "bench/canned",
    "messages": [{"role": "user", "content": "Say hello."}],
    "temperature": 0,
}
NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 '{completion}';
        }}
        location = /nginx_status {{ stub_status; }}
    }}
}}
"""


@dataclass(frozen=True)
class Options:
    calls: int = 200  # per line and round
    threads: int = 8  # the concurrent lines
    rounds: int = 5
    warmup: int = 20


@dataclass
class Run:
    """One line's calls in one round."""

    seconds: float
    cpu_seconds: float  # this process's, all threads: the client's own cost
    latencies: list[float]
    connections: int | None  # nginx's count of connections accepted meanwhile
    client_connections: int | None = None  # the provider's own count (pooled lines)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds


def missing_tools() -> str | None:
    """Why this benchmark cannot run here, or None."""
    for tool in ("nginx", "openssl"):
        if _which(tool) is None:
            return f"{tool} is not installed (apt-get install {tool})"
    return None


def _which(tool: str) -> str | None:
    """``tool`` on PATH, or in /usr/sbin (nginx's place, off a normal user's PATH)."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem); the cert is the CA bundle."""
    subprocess.run(
        [
            str(_which("openssl")),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(directory / "key.pem"),
            "-out",
            str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return directory / "cert.pem"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def nginx(directory: Path) -> Iterator[int]:
    """nginx serving the canned completion over HTTPS; yields its port, stops it after."""
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port, completion=json.dumps(COMPLETION)))
    error_log = directory / "error.log"
    cmd = [str(_which("nginx")), "-c", str(conf), "-p", str(directory), "-e", str(error_log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                errors = proc.stderr.read().decode() if proc.stderr else ""
                log = error_log.read_text() if error_log.exists() else ""
                raise RuntimeError(f"nginx did not start: {errors}{log}".strip())
            time.sleep(0.02)
        yield port
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def accepted(url: str, ca: str) -> int:
    """nginx's count of accepted connections (stub_status), this request's own included."""
    import requests

    text = requests.get(url, verify=ca, timeout=10).text
    return int(text.splitlines()[2].split()[0])


def timed(
    call: Callable[[], dict[str, Any]], calls: int, threads: int
) -> tuple[float, list[float]]:
    """Make ``calls`` calls on ``threads`` threads (1: in this one); wall seconds, latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    left = [calls]
    failures: list[BaseException] = []

    def worker() -> None:
        mine = []
        try:
            while True:
                with lock:
                    if left[0] == 0:
                        break
                    left[0] -= 1
                started = time.perf_counter()
                reply = call()
                mine.append(time.perf_counter() - started)
                if reply.get("id") != COMPLETION["id"]:
                    raise RuntimeError(f"unexpected reply: {reply!r}")
        except BaseException as exc:
            failures.append(exc)
        with lock:
            latencies.extend(mine)

    if threads == 1:
        started = time.perf_counter()
        worker()
        elapsed = time.perf_counter() - started
    else:
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        started = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"a call failed: {failures[0]!r}") from failures[0]
    return elapsed, latencies


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    """The benchmark (see the module docstring): its data and its summary lines."""
    reason = missing_tools()
    if reason is not None:
        print(f"\n== {BENCHMARK}: skipped: {reason}")
        return {"skipped": reason}, []
    with _no_proxy(), captured_log(), short_tempdir("pdp-") as directory:
        ca = str(make_certificate(directory))
        with nginx(directory) as port:
            return _measure(options, f"https://127.0.0.1:{port}", ca)


@contextlib.contextmanager
def _no_proxy() -> Iterator[None]:
    """Calls to 127.0.0.1 go direct, whatever proxy variables the shell holds."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().endswith("_proxy")}
    try:
        yield
    finally:
        os.environ.update(saved)


def _measure(options: Options, origin: str, ca: str) -> tuple[dict[str, Any], list[Check]]:
    import requests

    from perfd.config import ProviderConfig
    from perfd.net.provider import Provider

    provider = Provider("bench", ProviderConfig(base_url=f"{origin}/v1", ca_bundle=ca))
    url = f"{origin}/v1/chat/completions"
    status = f"{origin}/nginx_status"

    def pooled() -> dict[str, Any]:
        return provider.chat(BODY)

    def fresh() -> dict[str, Any]:
        response = requests.post(url, json=BODY, verify=ca, timeout=(5, 120))
        response.raise_for_status()
        reply: dict[str, Any] = response.json()
        return reply

    def opened() -> int:
        return int(provider.stats()["connections_opened"])

    lines = {
        "pooled, sequential": (pooled, 1),
        "new connection, sequential": (fresh, 1),
        "pooled, 8 threads": (pooled, options.threads),
        "new connection, 8 threads": (fresh, options.threads),
    }
    runs: dict[str, list[Run]] = {name: [] for name in lines}
    timed(pooled, options.warmup, 1)
    timed(fresh, max(1, options.warmup // 4), 1)
    try:
        for round_ in range(options.rounds):
            order = list(lines) if round_ % 2 == 0 else _swapped(list(lines))
            for name in order:
                call, threads = lines[name]
                before, client_before = accepted(status, ca), opened()
                cpu_before = _cpu()
                seconds, latencies = timed(call, options.calls, threads)
                cpu = _cpu() - cpu_before
                conns = accepted(status, ca) - before - 1  # the second status request's own
                client = opened() - client_before if call is pooled else None
                runs[name].append(Run(seconds, cpu, latencies, conns, client))
    finally:
        provider.close()
    return _report(options, runs, provider.stats())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _swapped(names: list[str]) -> list[str]:
    """The same lines with the baseline first in each pair."""
    return [names[1], names[0], names[3], names[2]]


def _report(
    options: Options, runs: dict[str, list[Run]], client_stats: dict[str, Any]
) -> tuple[dict[str, Any], list[Check]]:
    rows = []
    data: dict[str, Any] = {"options": vars(options), "lines": {}, "client_stats": client_stats}
    for name, line in runs.items():
        samples = [s for r in line for s in r.latencies]
        rate = statistics.median(r.per_second for r in line)
        p50 = percentile(samples, 50) * 1000
        p95 = percentile(samples, 95) * 1000
        conns = sum(r.connections or 0 for r in line)
        cpu_ms = statistics.median(r.cpu_seconds / len(r.latencies) for r in line) * 1000
        client = [r.client_connections for r in line if r.client_connections is not None]
        data["lines"][name] = {
            "req_per_s": rate,
            "req_per_s_rounds": [r.per_second for r in line],
            "p50_ms": p50,
            "p95_ms": p95,
            "client_cpu_ms_per_call": cpu_ms,
            "connections_per_run": [r.connections for r in line],
            "client_connections_per_run": client or None,
        }
        rows.append((name, rate, p50, p95, cpu_ms, conns, sum(client) if client else None))
    print_table(
        f"{BENCHMARK}: {options.calls} chat completions per run over HTTPS (nginx), "
        f"{options.rounds} rounds",
        [
            "line",
            "req/s",
            "p50 ms",
            "p95 ms",
            "client CPU ms/call",
            "connections (nginx)",
            "connections (client)",
        ],
        rows,
    )
    checks = []
    for mode in ("sequential", "8 threads"):
        ours, base = runs[f"pooled, {mode}"], runs[f"new connection, {mode}"]
        paired = statistics.median(
            a.per_second / b.per_second for a, b in zip(ours, base, strict=True)
        )
        data[f"ratio_{mode.replace(' ', '_')}"] = paired
        checks.append(
            Check(
                BENCHMARK,
                f"HTTPS chat, {mode}: pooled throughput",
                "req/s",
                data["lines"][f"pooled, {mode}"]["req_per_s"],
                "new connection",
                data["lines"][f"new connection, {mode}"]["req_per_s"],
                op=">=",
                limit=TARGET_RATIO,
                paired_ratio=paired,
            )
        )
        checks.append(
            Check(
                BENCHMARK,
                f"HTTPS chat, {mode}: p50 latency",
                "ms",
                data["lines"][f"pooled, {mode}"]["p50_ms"],
                "new connection",
                data["lines"][f"new connection, {mode}"]["p50_ms"],
            )
        )
        checks.append(
            Check(
                BENCHMARK,
                f"HTTPS chat, {mode}: client CPU per call",
                "ms",
                data["lines"][f"pooled, {mode}"]["client_cpu_ms_per_call"],
                "new connection",
                data["lines"][f"new connection, {mode}"]["client_cpu_ms_per_call"],
            )
        )
    pooled = [r.connections or 0 for m in ("sequential", "8 threads") for r in runs[f"pooled, {m}"]]
    fresh = [
        r.connections or 0
        for m in ("sequential", "8 threads")
        for r in runs[f"new connection, {m}"]
    ]
    checks.append(
        Check(
            BENCHMARK,
            f"connections nginx accepted per {options.calls} calls",
            "conns",
            statistics.median(pooled),
            "new connection",
            statistics.median(fresh),
        )
    )
    return data, checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/provider.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    args = parser.parse_args(argv)
    _, checks = run(Options(rounds=2 if args.quick else 5))
    if checks:
        print_summary(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
