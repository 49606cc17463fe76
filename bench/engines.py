"""Benchmark 15: what watching engines costs perfd.

Two parts, the engines served by a helper process (``python -m bench.engines --serve N``:
N SGLang-shaped /metrics servers on 127.0.0.1, one port each, so their CPU is not perfd's):

    read    a real ``perfd.engines.watcher.Watcher`` in this process reads N engines
            (1, 8, 32) turn after turn: the CPU of this process (the watcher's pool and its
            parsing) and the wall time per turn, i.e. per read interval; the CPU share at the
            default read_interval (5 s) is that CPU / 5 s
    stats   two real perfds started side by side, one reading 32 engines every 0.5 s and one
            with no engines and discovery off; ``stats`` sent to them in alternation: the
            latency ratio on / off, median and p95

The reads go through perfd's own fetcher (perfd.engines.fetch) and SGLang reader.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    Check,
    PerfdProcess,
    captured_log,
    helper_env,
    median,
    percentile,
    print_table,
    short_tempdir,
    stop_process,
)

COUNTS = (1, 8, 32)
READ_INTERVAL = 5.0  # [discovery] read_interval's default


@dataclass(frozen=True)
class Options:
    turns: int = 30  # read turns per engine count
    stats: int = 300  # stats requests per perfd


# SGLang's /metrics (sgl-project/sglang python/sglang/srt/metrics/collector.py): gauges
# labelled model_name, with the HELP and TYPE lines its prometheus_client writes.
FIGURES = {
    "num_running_reqs": 3,
    "num_queue_reqs": 2,
    "num_used_tokens": 1000,
    "max_total_num_tokens": 4000,
    "cache_hit_rate": 0.25,
    "token_usage": 0.25,
    "gen_throughput": 123.4,
}
BODY = "".join(
    f"# HELP sglang:{k} {k}\n# TYPE sglang:{k} gauge\n"
    f'sglang:{k}{{model_name="Qwen/Qwen3-0.6B"}} {v}\n'
    for k, v in FIGURES.items()
).encode()


def serve(count: int) -> None:
    """The helper: ``count`` servers; prints their ports as one JSON line, runs until stdin
    closes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = BODY if self.path == "/metrics" else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ports = []
    for _ in range(count):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.append(server.server_address[1])
    print(json.dumps(ports), flush=True)
    sys.stdin.read()


def _servers(count: int) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.engines", "--serve", str(count)],
        cwd=ROOT,
        env=helper_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ports: list[int] = json.loads(proc.stdout.readline())
    return proc, ports


def _engines_toml(ports: list[int]) -> dict[str, Any]:
    return {
        f"e{i:02d}": {"kind": "sglang", "url": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)
    }


def _read_point(options: Options, count: int) -> dict[str, Any]:
    from perfd import config
    from perfd.engines.watcher import Watcher

    proc, ports = _servers(count)
    try:
        cfg = config.parse(
            {"engines": _engines_toml(ports), "discovery": {"enabled": False, "timeout": "2s"}}
        )
        watcher = Watcher(cfg.discovery, cfg.engines, discover=list)
        watcher.read_once()  # warm: imports, connections, the pool's threads
        states = {r.state for r in watcher.records()}
        if states != {"up"}:
            raise RuntimeError(f"{count} engines read as {states}, not up")
        cpu, wall = [], []
        for _ in range(options.turns):
            c0, w0 = time.process_time(), time.perf_counter()
            watcher.read_once()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        watcher.stop()
    finally:
        stop_process(proc)
    cpu_ms = median(cpu) * 1000
    return {
        "engines": count,
        "cpu_ms_per_turn": cpu_ms,
        "cpu_ms_per_engine": cpu_ms / count,
        "wall_ms_per_turn": median(wall) * 1000,
        "wall_ms_p95": percentile(wall, 95) * 1000,
        "core_percent_at_5s": cpu_ms / 1000 / READ_INTERVAL * 100,
    }


def _stats_point(options: Options) -> dict[str, Any]:
    import perfctl

    proc, ports = _servers(32)
    engines = "".join(
        f'[engines.e{i:02d}]\nkind = "sglang"\nurl = "http://127.0.0.1:{p}"\n'
        for i, p in enumerate(ports)
    )
    on_cfg = '[discovery]\nenabled = false\nread_interval = "500ms"\ntimeout = "400ms"\n' + engines
    off_cfg = "[discovery]\nenabled = false\n"
    try:
        with short_tempdir() as tmp:
            (tmp / "on").mkdir()
            (tmp / "off").mkdir()
            on = PerfdProcess(tmp / "on", config=on_cfg)
            off = PerfdProcess(tmp / "off", config=off_cfg)
            with on, off:
                times: dict[str, list[float]] = {"on": [], "off": []}
                clients = {
                    "on": perfctl.Client(str(on.admin_socket)),
                    "off": perfctl.Client(str(off.admin_socket)),
                }
                try:
                    time.sleep(1.5)  # a few read turns, then a sample with 32 records
                    if len(clients["on"].call("engines")["engines"]) != 32:
                        raise RuntimeError("the engines-on perfd does not list 32 engines")
                    for _ in range(20):  # warm
                        for c in clients.values():
                            c.call("stats")
                    for n in range(options.stats):
                        order = ("on", "off") if n % 2 == 0 else ("off", "on")
                        for name in order:
                            t0 = time.perf_counter()
                            clients[name].call("stats")
                            times[name].append(time.perf_counter() - t0)
                    up = sum(e["state"] == "up" for e in clients["on"].call("engines")["engines"])
                finally:
                    for c in clients.values():
                        c.close()
    finally:
        stop_process(proc)
    return {
        "engines_up": up,
        "on_median_ms": median(times["on"]) * 1000,
        "off_median_ms": median(times["off"]) * 1000,
        "on_p95_ms": percentile(times["on"], 95) * 1000,
        "off_p95_ms": percentile(times["off"], 95) * 1000,
    }


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    with captured_log():  # the watcher's engine.up lines
        reads = [_read_point(options, n) for n in COUNTS]
    print_table(
        f"engines: reading N SGLang engines, {options.turns} turns each",
        ["engines", "CPU ms/turn", "CPU ms/engine", "wall ms/turn", "wall p95", "% core at 5s"],
        [
            (
                p["engines"],
                f"{p['cpu_ms_per_turn']:.2f}",
                f"{p['cpu_ms_per_engine']:.3f}",
                f"{p['wall_ms_per_turn']:.1f}",
                f"{p['wall_ms_p95']:.1f}",
                f"{p['core_percent_at_5s']:.3f}",
            )
            for p in reads
        ],
    )
    stats = _stats_point(options)
    print_table(
        f"engines: stats latency, 32 engines read every 0.5 s vs none, {options.stats} each",
        ["perfd", "median ms", "p95 ms"],
        [
            ("engines on", f"{stats['on_median_ms']:.3f}", f"{stats['on_p95_ms']:.3f}"),
            ("engines off", f"{stats['off_median_ms']:.3f}", f"{stats['off_p95_ms']:.3f}"),
        ],
    )
    big = reads[-1]
    checks = [
        Check(
            "engines",
            "CPU reading 32 engines, at read_interval 5 s",
            "% of a core",
            big["core_percent_at_5s"],
            "",
            None,
            on="value",
            limit=2.0,
        ),
        Check(
            "engines",
            "stats median, 32 engines on",
            "ms",
            stats["on_median_ms"],
            "engines off",
            stats["off_median_ms"],
            limit=1.25,
        ),
        Check(
            "engines",
            "stats p95, 32 engines on",
            "ms",
            stats["on_p95_ms"],
            "engines off",
            stats["off_p95_ms"],
            limit=1.5,
        ),
    ]
    return {"options": vars(options), "reads": reads, "stats": stats}, checks


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
    else:
        data, checks = run(Options(turns=10, stats=100))
        print(json.dumps(data, indent=2))
