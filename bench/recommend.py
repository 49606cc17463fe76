"""Benchmark: what a batch/context recommendation costs (``perfd.recommend``), in-process.

    python bench/recommend.py            # full run, a few seconds
    python bench/recommend.py --quick    # smoke run

Three figures, each beside a baseline timed in the same rounds, interleaved with it:

- one recommendation: ``recommend()`` for Llama-3.1-8B on one H100 (it fits: the table and the
  tips' re-plans), and for Llama-3.1-70B on one RTX 4090 (it does not: the search for the
  smallest change as well). Baseline: ``json.dumps`` of the same result, the least any caller
  does with it. Target: median < 5 ms each.
- the whole catalog on every GPU of the table (16 models x 12 GPUs), one pass. Baseline:
  ``json.dumps`` of all those results. Target: < 1 s.
- start-up: ``python -c "from perfd.recommend import recommend"`` from spawn to exit, beside
  ``python -c "import zmq"`` (perfctl's floor, as in benchmark 1). Informational.

``run(quick)`` returns the summary rows (``Check.as_dict()``); ``measure(quick)`` returns the
``(data, checks)`` pair that bench/run.py's steps return.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``perfd`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    ROOT,
    Check,
    clean_env,
    median,
    print_summary,
    print_table,
    run_timed,
)

BENCHMARK = "recommend"
ONE_TARGET_MS = 5.0
CATALOG_TARGET_S = 1.0


def _pair(
    subject: Callable[[], Any], baseline: Callable[[Any], Any], rounds: int
) -> tuple[list[float], list[float]]:
    """Seconds of ``subject()`` and of ``baseline(its result)``, alternating, per round."""
    ours: list[float] = []
    base: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = subject()
        middle = time.perf_counter()
        baseline(result)
        ours.append(middle - started)
        base.append(time.perf_counter() - middle)
    return ours, base


def measure(quick: bool) -> tuple[dict[str, Any], list[Check]]:
    """Time the figures (see the module docstring); print a table; the data and checks."""
    from perfd.recommend import Query, list_gpus, list_models, plan_hardware, recommend

    def one(model: str, gpu: str) -> Callable[[], dict[str, Any]]:
        request = Query(model=model, gpu=gpu)
        hardware = plan_hardware(request, None)
        return lambda: recommend(request, hardware)

    def catalog() -> list[dict[str, Any]]:
        out = []
        for model in list_models():
            for gpu in list_gpus():
                request = Query(model=model["name"], gpu=gpu["name"])
                out.append(recommend(request, plan_hardware(request, None)))
        return out

    rounds, passes, runs = (50, 3, 5) if quick else (300, 9, 15)
    fits, no_fit = one("llama-3.1-8b", "H100"), one("llama-3.1-70b", "RTX 4090")
    fits(), no_fit(), catalog()  # warm up: imports, the catalog's cached specs
    timings: dict[str, tuple[list[float], list[float]]] = {
        "fits": _pair(fits, json.dumps, rounds),
        "no_fit": _pair(no_fit, json.dumps, rounds),
        "catalog": _pair(catalog, json.dumps, passes),
    }
    env = clean_env(PYTHONPATH=str(ROOT))
    cold: dict[str, list[float]] = {"recommend": [], "zmq": []}
    code = {"recommend": "from perfd.recommend import recommend", "zmq": "import zmq"}
    for _ in range(runs):
        for name in ("recommend", "zmq"):
            cold[name].append(run_timed([PYTHON, "-c", code[name]], env=env, cwd=ROOT)[0])
    pairs = len(catalog())
    ms = {key: (1000 * median(a), 1000 * median(b)) for key, (a, b) in timings.items()}
    start = {key: 1000 * median(values) for key, values in cold.items()}
    one_target, catalog_target = f"< {ONE_TARGET_MS:g} ms", f"< {CATALOG_TARGET_S:g} s"
    print_table(
        f"recommend: in-process, median of {rounds} rounds ({passes} catalog passes)",
        ["figure", "ms", "baseline ms", "baseline", "target"],
        [
            ("Llama-3.1-8B on H100 (fits)", *ms["fits"], "json.dumps", one_target),
            ("Llama-3.1-70B on RTX 4090 (no fit)", *ms["no_fit"], "json.dumps", one_target),
            (f"catalog x GPUs ({pairs})", *ms["catalog"], "json.dumps", catalog_target),
            ("start-up to import", start["recommend"], start["zmq"], "import zmq", "info"),
        ],
    )

    def check(figure: str, key: str, unit: str = "ms", limit: float = ONE_TARGET_MS) -> Check:
        scale = 1000 if unit == "s" else 1
        value, base = (ms[key][0] / scale, ms[key][1] / scale)
        return Check(BENCHMARK, figure, unit, value, "json.dumps", base, "value", "<", limit)

    checks = [
        check("one recommendation (fits)", "fits"),
        check("one recommendation (no fit)", "no_fit"),
        check(f"catalog x GPUs ({pairs})", "catalog", "s", CATALOG_TARGET_S),
        Check(
            BENCHMARK, "start-up to import", "ms", start["recommend"], "import zmq", start["zmq"]
        ),
    ]
    data = {
        "rounds": rounds,
        "catalog_passes": passes,
        "catalog_pairs": pairs,
        "median_ms": {key: {"subject": a, "baseline": b} for key, (a, b) in ms.items()},
        "startup_ms": start,
        "samples_s": {key: {"subject": a, "baseline": b} for key, (a, b) in timings.items()},
    }
    return data, checks


def run(quick: bool) -> list[dict[str, Any]]:
    """The summary rows (``Check.as_dict()``) of one run."""
    return [check.as_dict() for check in measure(quick)[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/recommend.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    _, checks = measure(args.quick)
    print_summary(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
