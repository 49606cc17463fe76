"""Benchmark 3: control round trips, perfd against a bare pyzmq ROUTER echo server.

One perfd and one echo server (``bench.echo``, its own process) run for the whole benchmark.
For each command (ping, status) and each concurrency (1, 4, 16 clients), every round runs one
load-generator process (``bench.loadgen``) against perfd and one against the echo server, in
alternating order, with the same number of requests. Latencies are pooled over rounds for
p50/p99; throughput is the median over rounds; the perfd/echo throughput ratio is the median
of the per-round (paired) ratios. The server's CPU time per request (all its threads, read
from /proc around each load-generator run, warm-up requests included) is reported too: on a
shared machine it is steadier than throughput and shows where the time goes.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    Check,
    PerfdProcess,
    clean_env,
    console_script,
    cpu_seconds,
    helper_env,
    median,
    percentile,
    print_table,
    short_tempdir,
    start_echo,
    stop_process,
)

THROUGHPUT_TARGET = 0.5
P99_TARGET_US = 1000.0
COMMANDS = ("ping", "status")
CONCURRENCY = (1, 4, 16)


@dataclass(frozen=True)
class Options:
    requests: int  # timed requests per point and round, split over the clients
    rounds: int
    warmup: int  # untimed requests per client and run


@dataclass(frozen=True)
class Server:
    name: str  # "perfd" or "echo": also what the load generator checks replies against
    endpoint: str
    pid: int


@dataclass
class Series:
    """One server's runs at one point: per-round throughput and CPU, pooled latencies."""

    throughput: list[float] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)
    latencies_us: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {
            "p50_us": percentile(self.latencies_us, 50),
            "p99_us": percentile(self.latencies_us, 99),
            "throughput_rps": median(self.throughput),
            "cpu_us_per_request": median(self.cpu_us_per_request),
        }


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    points: list[dict[str, Any]] = []
    with short_tempdir() as tmp:
        perfd_dir = tmp / "perfd"
        perfd_dir.mkdir()
        echo_endpoint = f"ipc://{tmp / 'echo.sock'}"
        echo = start_echo(echo_endpoint, tmp)
        try:
            with PerfdProcess(perfd_dir) as perfd:
                servers = (
                    Server("perfd", f"ipc://{perfd.admin_socket}", perfd.pid),
                    Server("echo", echo_endpoint, echo.pid),
                )
                for cmd in COMMANDS:
                    for clients in CONCURRENCY:
                        points.append(_point(options, servers, cmd, clients, tmp))
                errors = _perfd_errors(perfd.admin_socket)
        finally:
            stop_process(echo)

    _print(options, points, errors)
    if errors:
        raise RuntimeError(f"perfd counted {errors} errors; the benchmark measured error replies")
    return {"options": vars(options), "points": points, "perfd_errors": errors}, _checks(points)


def _point(
    options: Options, servers: tuple[Server, Server], cmd: str, clients: int, tmp: Path
) -> dict[str, Any]:
    per_client = max(1, options.requests // clients)
    handled = clients * (per_client + options.warmup)
    series = {server.name: Series() for server in servers}
    ratios = []
    for index in range(options.rounds):
        order = servers if index % 2 == 0 else servers[::-1]
        throughput: dict[str, float] = {}
        for server in order:
            cpu_before = cpu_seconds(server.pid)
            result = _loadgen(
                server,
                cmd=cmd,
                clients=clients,
                per_client=per_client,
                warmup=options.warmup,
                cwd=tmp,
            )
            cpu = cpu_seconds(server.pid) - cpu_before
            latencies = result["latencies_ns"]
            throughput[server.name] = len(latencies) / result["elapsed_s"]
            s = series[server.name]
            s.throughput.append(throughput[server.name])
            s.cpu_us_per_request.append(cpu * 1e6 / handled)
            s.latencies_us.extend(ns / 1000 for ns in latencies)
        ratios.append(throughput["perfd"] / throughput["echo"])
    return {
        "cmd": cmd,
        "clients": clients,
        "requests_per_client": per_client,
        "perfd": series["perfd"].summary(),
        "echo": series["echo"].summary(),
        "throughput_ratio": median(ratios),
        "round_ratios": ratios,
    }


def _loadgen(
    server: Server, *, cmd: str, clients: int, per_client: int, warmup: int, cwd: Path
) -> dict[str, Any]:
    """One load-generator process against ``server``; its JSON result."""
    argv = [
        PYTHON,
        "-m",
        "bench.loadgen",
        f"--endpoint={server.endpoint}",
        f"--clients={clients}",
        f"--requests={per_client}",
        f"--warmup={warmup}",
        f"--cmd={cmd}",  # the echo server gets the same perfd request, and sends it back
        f"--expect={server.name}",
    ]
    done = subprocess.run(
        argv, env=helper_env(), cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        result = {"error": f"exit {done.returncode}: {done.stdout[-500:]}{done.stderr[-2000:]}"}
    if "error" in result:
        raise RuntimeError(f"load generator against {server.name} failed: {result['error']}")
    return result


def _perfd_errors(socket: Path) -> int:
    """perfd's own count of error replies, asked with ``perfctl status --json``."""
    cmd = [*console_script("perfctl"), "status", "--json", "--socket", str(socket)]
    done = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"perfctl status failed ({done.returncode}): {done.stderr.strip()}")
    return int(json.loads(done.stdout)["requests"]["errors"])


def _print(options: Options, points: list[dict[str, Any]], errors: int) -> None:
    rows = []
    for p in points:
        ours, echo = p["perfd"], p["echo"]
        rows.append(
            (
                f"{p['cmd']} x{p['clients']}",
                *(ours[k] for k in ("p50_us", "p99_us", "throughput_rps", "cpu_us_per_request")),
                *(echo[k] for k in ("p50_us", "p99_us", "throughput_rps", "cpu_us_per_request")),
                p["throughput_ratio"],
                ours["cpu_us_per_request"] / echo["cpu_us_per_request"],
            )
        )
    headers = ["cmd x clients"]
    for name in ("perfd", "echo"):
        headers += [f"{name} p50", f"{name} p99", f"{name} req/s", f"{name} CPU/req"]
    print_table(
        f"3. control round trip: {options.requests} requests per point and round, "
        f"{options.rounds} rounds (latency and CPU µs, throughput req/s)",
        [*headers, "req/s ratio", "CPU ratio"],
        rows,
    )
    print(
        f"targets: throughput perfd/echo >= {THROUGHPUT_TARGET:g}; "
        f"p99 with one client < {P99_TARGET_US:g} µs. perfd error replies: {errors}"
    )


def _checks(points: list[dict[str, Any]]) -> list[Check]:
    checks = [
        Check(
            "3 round trip",
            f"{p['cmd']} x{p['clients']} throughput",
            "req/s",
            p["perfd"]["throughput_rps"],
            "echo",
            p["echo"]["throughput_rps"],
            op=">=",
            limit=THROUGHPUT_TARGET,
            paired_ratio=p["throughput_ratio"],
        )
        for p in points
    ]
    for p in points:
        if p["clients"] != 1:
            continue
        ours, echo = p["perfd"], p["echo"]
        checks.append(
            Check(
                "3 round trip",
                f"{p['cmd']} x1 p99",
                "µs",
                ours["p99_us"],
                "echo",
                echo["p99_us"],
                on="value",
                op="<",
                limit=P99_TARGET_US,
            )
        )
        checks.append(
            Check(
                "3 round trip",
                f"{p['cmd']} x1 server CPU per request",
                "µs",
                ours["cpu_us_per_request"],
                "echo",
                echo["cpu_us_per_request"],
            )
        )
    return checks
