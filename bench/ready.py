"""Benchmark 2: perfd from spawn to READY=1, against ``python -c "import zmq"``.

Plays systemd: binds an AF_UNIX datagram socket, starts perfd with $NOTIFY_SOCKET naming it
(a fresh temp runtime directory and an empty ``--config`` file each time) and times spawn to
the READY=1 datagram; then SIGTERMs perfd and times its exit (reported, no target). Rounds
alternate perfd and the baseline. ``python -X importtime -m perfd --version`` follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench import imports
from bench.common import (
    PYTHON,
    Check,
    PerfdProcess,
    clean_env,
    median,
    percentile,
    print_table,
    run_timed,
    short_tempdir,
)

TARGET = 3.0
WARMUP_RUNS = 1


@dataclass(frozen=True)
class Options:
    runs: int
    import_runs: int
    top: int = 20


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    ready_ms: list[float] = []
    stop_ms: list[float] = []
    zmq_ms: list[float] = []
    with short_tempdir() as tmp:
        env = clean_env()

        def perfd_once(index: int) -> None:
            workdir = tmp / f"p{index}"
            workdir.mkdir()
            perfd = PerfdProcess(workdir)
            ready = perfd.start()  # reaps perfd itself if it fails
            stopped = perfd.stop()
            if index >= 0:
                ready_ms.append(ready * 1000)
                stop_ms.append(stopped * 1000)

        def zmq_once(index: int) -> None:
            elapsed, _ = run_timed([PYTHON, "-c", "import zmq"], env=env, cwd=tmp)
            if index >= 0:
                zmq_ms.append(elapsed * 1000)

        for warmup in range(WARMUP_RUNS):
            perfd_once(-1 - warmup)
            zmq_once(-1 - warmup)
        for index in range(options.runs):
            pair = (perfd_once, zmq_once) if index % 2 == 0 else (zmq_once, perfd_once)
            for measure in pair:
                measure(index)
        perfd_imports = imports.measure(
            ["-m", "perfd", "--version"], PYTHON, options.import_runs, tmp
        )
        zmq_imports = imports.measure(["-c", "import zmq"], PYTHON, options.import_runs, tmp)

    base = median(zmq_ms)
    rows = []
    for name, samples in (
        ("perfd spawn -> READY=1", ready_ms),
        ("python -c 'import zmq' (spawn -> exit)", zmq_ms),
        ("perfd SIGTERM -> exit (info)", stop_ms),
    ):
        paired = median([a / b for a, b in zip(samples, zmq_ms, strict=True)])
        mid = median(samples)
        rows.append(
            (name, mid, min(samples), percentile(samples, 90), max(samples), mid / base, paired)
        )
    print_table(
        f"2. perfd start to READY=1: {options.runs} interleaved runs each (ms)",
        ["what", "median", "min", "p90", "max", "ratio", "paired ratio"],
        rows,
    )
    print(
        f"target: ratio of medians, READY=1 to `python -c 'import zmq'`, <= {TARGET:g}. "
        "paired ratio: median of the per-round ratios."
    )
    imports_data = imports.report(
        "python -X importtime -m perfd --version", perfd_imports, zmq_imports, options.top
    )
    checks = [
        Check(
            "2 perfd", "spawn -> READY=1", "ms", median(ready_ms), "import zmq", base, limit=TARGET
        ),
        Check("2 perfd", "SIGTERM -> exit", "ms", median(stop_ms), "", None),
    ]
    data = {
        "runs": options.runs,
        "ready_ms": ready_ms,
        "stop_ms": stop_ms,
        "zmq_ms": zmq_ms,
        "median_ms": {"ready": median(ready_ms), "stop": median(stop_ms), "zmq": base},
        "imports": imports_data,
    }
    return data, checks
