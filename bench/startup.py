"""Benchmark 1: ``perfctl ping`` as a whole process, against ``python -c "import zmq"``.

A perfd runs in a temp runtime directory; each round runs, in a shuffled order, the venv's
``perfctl ping`` console script, ``python -m perfctl ping`` and ``python -c "import zmq"``,
each timed from spawn to reap (wall) and by the CPU time it used. Then
``python -X importtime -m perfctl --version`` shows what perfctl imports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bench import imports
from bench.common import (
    PYTHON,
    Check,
    PerfdProcess,
    clean_env,
    console_script,
    median,
    percentile,
    print_table,
    run_timed,
    short_tempdir,
)

TARGET = 1.25
BASELINE = "python -c 'import zmq'"
WARMUP_RUNS = 2


@dataclass(frozen=True)
class Options:
    runs: int
    import_runs: int
    top: int = 20
    seed: int = 1


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    with short_tempdir() as tmp, PerfdProcess(tmp) as perfd:
        env = clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir))
        commands = {
            "perfctl ping (console script)": [*console_script("perfctl"), "ping"],
            "python -m perfctl ping": [PYTHON, "-m", "perfctl", "ping"],
            BASELINE: [PYTHON, "-c", "import zmq"],
        }
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(WARMUP_RUNS):  # page cache, .pyc files
            for cmd in commands.values():
                run_timed(cmd, env=env, cwd=tmp)
        order = list(commands)
        shuffle = random.Random(options.seed).shuffle
        for _ in range(options.runs):
            shuffle(order)
            for name in order:
                elapsed, used = run_timed(commands[name], env=env, cwd=tmp)
                wall[name].append(elapsed * 1000)
                cpu[name].append(used * 1000)
        perfctl_imports = imports.measure(
            ["-m", "perfctl", "--version"], PYTHON, options.import_runs, tmp
        )
        zmq_imports = imports.measure(["-c", "import zmq"], PYTHON, options.import_runs, tmp)

    base = median(wall[BASELINE])
    base_cpu = median(cpu[BASELINE])
    rows = []
    for name, samples in wall.items():
        paired = median([a / b for a, b in zip(samples, wall[BASELINE], strict=True)])
        rows.append(
            (
                name,
                median(samples),
                min(samples),
                percentile(samples, 90),
                median(samples) / base,
                paired,
                median(cpu[name]),
                median(cpu[name]) / base_cpu,
            )
        )
    print_table(
        f"1. perfctl ping, whole process: {options.runs} interleaved runs each (ms)",
        ["command", "median", "min", "p90", "ratio", "paired ratio", "CPU", "CPU ratio"],
        rows,
    )
    print(
        f"target: ratio of medians to `{BASELINE}` <= {TARGET}. paired ratio: median of the "
        "per-round ratios; CPU: user + system time of the process."
    )
    imports_data = imports.report(
        "python -X importtime -m perfctl --version", perfctl_imports, zmq_imports, options.top
    )

    checks = [
        Check("1 perfctl", name, "ms", median(wall[name]), "import zmq", base, limit=TARGET)
        for name in commands
        if name != BASELINE
    ]
    data = {
        "runs": options.runs,
        "wall_ms": wall,
        "cpu_ms": cpu,
        "median_wall_ms": {name: median(samples) for name, samples in wall.items()},
        "median_cpu_ms": {name: median(samples) for name, samples in cpu.items()},
        "imports": imports_data,
    }
    return data, checks
