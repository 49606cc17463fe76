"""Benchmark 13: the mixed load, perfd against a bare pyzmq ROUTER echo server.

The load of tests/test_load.py (``bench.mixedload``): 32 clients, each its own DEALER socket
with two requests in flight, sending a seeded mix of ``stats``, ``ps``, ``recommend`` and
``infer`` (a python-loader echo model); the even clients on the admin socket, the odd ones on
the read-only socket (without ``infer``). The clients run in two processes. Every reply is
checked as in the test: a lost, doubled, mismatched or error reply fails the benchmark.

One perfd and one echo server (``bench.echo``) run for the whole benchmark. Each round runs the
same load (the same requests, the same seeds) against both, in alternating order; the echo
server sends every request back, so its line is the floor of this client code and ZeroMQ. In a
full run the rounds add up to the test's 10,000 requests per client. Latencies (send to
reply, per command and all together) are pooled over rounds for p50/p99; throughput (timed
requests / first send to last reply over all clients) is the median over rounds, and the
perfd/echo ratio the median of per-round ratios. The server's CPU time per request (all its
threads, from /proc around each run, warm-up included) is shown too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import mixedload
from bench.common import (
    ROOT,
    Check,
    PerfdProcess,
    cpu_seconds,
    median,
    percentile,
    print_table,
    short_tempdir,
    start_echo,
    stop_process,
)

LINES = ("all", *mixedload.WEIGHTS)  # all commands together, then each


@dataclass(frozen=True)
class Options:
    requests: int  # timed requests per client and round
    rounds: int
    warmup: int = 20  # untimed (but checked) requests per client and round
    clients: int = 32
    depth: int = 2
    processes: int = 2


@dataclass
class Series:
    """One server's rounds: per-round throughput and CPU, latencies pooled per command."""

    throughput: list[float] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, outcome: mixedload.Outcome, cpu: float) -> float:
        throughput = sum(outcome.answered.values()) / outcome.elapsed_s
        self.throughput.append(throughput)
        self.cpu_us_per_request.append(cpu * 1e6 / outcome.requests)
        for cmd, values in outcome.latencies_ns.items():
            ms = [ns / 1e6 for ns in values]
            self.latencies_ms.setdefault(cmd, []).extend(ms)
            self.latencies_ms.setdefault("all", []).extend(ms)
        return throughput

    def summary(self) -> dict[str, Any]:
        return {
            "throughput_rps": median(self.throughput),
            "cpu_us_per_request": median(self.cpu_us_per_request),
            "latency_ms": {
                line: {
                    "count": len(values),
                    "p50": percentile(values, 50),
                    "p99": percentile(values, 99),
                }
                for line, values in self.latencies_ms.items()
            },
        }


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    series = {"perfd": Series(), "echo": Series()}
    ratios: list[float] = []
    with short_tempdir() as tmp:
        perfd_dir = tmp / "perfd"
        perfd_dir.mkdir()
        echo_endpoint = f"ipc://{tmp / 'echo.sock'}"
        echo = start_echo(echo_endpoint, tmp)
        try:
            with PerfdProcess(
                perfd_dir, config=mixedload.MODEL_CONFIG, env={"PYTHONPATH": str(ROOT)}
            ) as perfd:
                readonly = perfd.runtime_dir / "perfd-ro.sock"
                targets = {
                    "perfd": (f"ipc://{perfd.admin_socket}", f"ipc://{readonly}", perfd.pid),
                    "echo": (echo_endpoint, echo_endpoint, echo.pid),
                }
                for index in range(options.rounds):
                    order = ["perfd", "echo"] if index % 2 == 0 else ["echo", "perfd"]
                    throughput = {}
                    for name in order:
                        admin, ro, pid = targets[name]
                        load = mixedload.Load(
                            admin=admin,
                            readonly=ro,
                            clients=options.clients,
                            requests=options.requests,
                            warmup=options.warmup,
                            depth=options.depth,
                            processes=options.processes,
                            expect=name,
                        )
                        before = cpu_seconds(pid)
                        outcome = mixedload.run(load, tmp)
                        cpu = cpu_seconds(pid) - before
                        if outcome.faults:
                            raise RuntimeError(f"{name} under load: {outcome.summary()}")
                        throughput[name] = series[name].add(outcome, cpu)
                    ratios.append(throughput["perfd"] / throughput["echo"])
                counts = _perfd_counts(perfd.admin_socket)
        finally:
            stop_process(echo)

    if counts["errors"] or counts["dropped"]:
        raise RuntimeError(f"perfd counted errors or dropped replies under load: {counts}")
    results = {
        "options": vars(options),
        "perfd": series["perfd"].summary(),
        "echo": series["echo"].summary(),
        "throughput_ratio": median(ratios),
        "round_ratios": ratios,
        "perfd_requests": counts,
    }
    _print(options, results)
    return results, _checks(results)


def _perfd_counts(socket: Path) -> dict[str, int]:
    """perfd's own request counters (total, errors, dropped)."""
    import perfctl

    with perfctl.Client(socket, timeout=30, retries=0) as client:
        counts: dict[str, int] = client.call("status")["requests"]
    return counts


def _print(options: Options, results: dict[str, Any]) -> None:
    ours, echo = results["perfd"], results["echo"]
    rows = []
    for line in LINES:
        mine, base = ours["latency_ms"][line], echo["latency_ms"][line]
        rows.append(
            (
                line,
                mine["count"],
                mine["p50"],
                mine["p99"],
                base["p50"],
                base["p99"],
                mine["p50"] / base["p50"],
                mine["p99"] / base["p99"],
            )
        )
    print_table(
        f"13. mixed load: {options.clients} clients x {options.requests} requests x "
        f"{options.rounds} rounds, {options.depth} in flight per client (latency ms)",
        ["command", "requests", "perfd p50", "perfd p99", "echo p50", "echo p99", "p50 x", "p99 x"],
        rows,
    )
    print(
        f"throughput: perfd {ours['throughput_rps']:,.0f} req/s, echo "
        f"{echo['throughput_rps']:,.0f} req/s, ratio {results['throughput_ratio']:.2f} "
        f"(per round: {', '.join(f'{r:.2f}' for r in results['round_ratios'])}); server CPU "
        f"per request: perfd {ours['cpu_us_per_request']:.0f} µs, echo "
        f"{echo['cpu_us_per_request']:.0f} µs. perfd's counters: {results['perfd_requests']}"
    )


def _checks(results: dict[str, Any]) -> list[Check]:
    ours, echo = results["perfd"], results["echo"]
    checks = [
        Check(
            "13 load",
            "throughput",
            "req/s",
            ours["throughput_rps"],
            "echo",
            echo["throughput_rps"],
            paired_ratio=results["throughput_ratio"],
        ),
        Check(
            "13 load",
            "server CPU per request",
            "µs",
            ours["cpu_us_per_request"],
            "echo",
            echo["cpu_us_per_request"],
        ),
    ]
    for line in LINES:
        for pct in ("p50", "p99"):
            checks.append(
                Check(
                    "13 load",
                    f"{line} {pct}",
                    "ms",
                    ours["latency_ms"][line][pct],
                    "echo",
                    echo["latency_ms"][line][pct],
                )
            )
    return checks
