"""Run every perfd benchmark and print a summary (see bench/README.md).

    python bench/run.py                      # full run, a few minutes
    python bench/run.py --quick              # smoke run, under a minute
    python bench/run.py --json results.json  # also write the results as JSON

Every figure is compared with a baseline measured in the same run, interleaved with it; a
MISS against a target is reported, not an error: the exit status is 0 unless a benchmark
could not run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCHMARKS = (
    "startup",
    "ready",
    "roundtrip",
    "idle",
    "monitor_idle",
    "sample_cost",
    "cache_cold_warm",
    "infer_overhead",
    "cache_bookkeeping",
    "recommend",
    "provider",
    "metrics",
    "load",
    "memory_truth",
    "engines",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 60 s)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write results here")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        metavar="N",
        help="idle and monitor_idle window (default 60, 5 with --quick)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help="sample_cost rounds per scenario (default 200, 50 with --quick)",
    )
    parser.add_argument(
        "--runs", type=int, metavar="N", help="process runs per command (default 30, 15 quick)"
    )
    parser.add_argument(
        "--only",
        choices=BENCHMARKS,
        action="append",
        help="run only this benchmark (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench import (
        cache_bookkeeping,
        cache_cold_warm,
        engines,
        idle,
        infer_overhead,
        load,
        memory_truth,
        metrics,
        monitor_idle,
        provider,
        ready,
        recommend,
        roundtrip,
        sample_cost,
        startup,
    )
    from bench.common import PYTHON, Check, print_summary

    quick = args.quick
    runs = args.runs or (15 if quick else 30)
    idle_seconds = args.idle_seconds if args.idle_seconds is not None else (5 if quick else 60)
    import_runs = 3 if quick else 7
    samples = args.samples or (50 if quick else 200)
    steps: dict[str, Callable[[], tuple[dict[str, Any], list[Check]]]] = {
        "startup": lambda: startup.run(startup.Options(runs=runs, import_runs=import_runs)),
        "ready": lambda: ready.run(ready.Options(runs=runs, import_runs=import_runs)),
        "roundtrip": lambda: roundtrip.run(
            roundtrip.Options(
                requests=400 if quick else 2000,
                rounds=3 if quick else 9,
                warmup=10 if quick else 50,
            )
        ),
        "idle": lambda: idle.run(idle_seconds),
        "monitor_idle": lambda: monitor_idle.run(idle_seconds),
        "sample_cost": lambda: sample_cost.run(
            sample_cost.Options(samples=samples, blocks=2 if quick else 5, one_second=not quick)
        ),
        "cache_cold_warm": lambda: cache_cold_warm.run(
            cache_cold_warm.Options(runs=5 if quick else 20, socket_runs=3 if quick else 10)
        ),
        "infer_overhead": lambda: infer_overhead.run(
            infer_overhead.Options(requests=500 if quick else 3000)
        ),
        "cache_bookkeeping": lambda: cache_bookkeeping.run(
            cache_bookkeeping.Options(
                rounds=8 if quick else 30,
                batch=1000 if quick else 2000,
                sizes=cache_bookkeeping.QUICK_SIZES if quick else cache_bookkeeping.SIZES,
            )
        ),
        "recommend": lambda: recommend.measure(quick),
        "provider": lambda: provider.run(provider.Options(rounds=2 if quick else 5)),
        "metrics": lambda: metrics.run(metrics.Options(scrapes=50 if quick else 200)),
        "load": lambda: load.run(
            load.Options(requests=250 if quick else 2500, rounds=2 if quick else 4)
        ),
        "engines": lambda: engines.run(
            engines.Options(turns=10 if quick else 30, stats=100 if quick else 300)
        ),
        "memory_truth": lambda: memory_truth.run(
            memory_truth.Options(layers=4 if quick else 16, rounds=2 if quick else 3)
        ),
    }
    selected = args.only or list(BENCHMARKS)
    print(
        f"perfd benchmarks ({'quick' if quick else 'full'}): {PYTHON}, "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    started = time.monotonic()
    results: dict[str, Any] = {}
    checks: list[Check] = []
    for name in selected:
        step_started = time.monotonic()
        data, step_checks = steps[name]()
        data["seconds"] = time.monotonic() - step_started
        results[name] = data
        checks += step_checks
    print_summary(checks)
    elapsed = time.monotonic() - started
    print(f"\n{sum(c.passed is False for c in checks)} MISS; took {elapsed:.0f} s")

    if args.json:
        document = {
            "meta": {
                "python": PYTHON,
                "python_version": platform.python_version(),
                "machine": platform.machine(),
                "quick": quick,
                "runs": runs,
                "idle_seconds": idle_seconds,
                "samples": samples,
                "started": stamp,
                "seconds": elapsed,
            },
            "benchmarks": results,
            "summary": [c.as_dict() for c in checks],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
        print(f"results written to {args.json}")
    return 0


def _jsonable(value: object) -> object:
    if hasattr(value, "__dict__"):
        return vars(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main())
