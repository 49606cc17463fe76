"""``python -X importtime`` reports: parse them, take medians over runs, print the heaviest.

A line of ``-X importtime`` output reads ``import time: SELF | CUMULATIVE | <indent>NAME``
(microseconds; the indent is the import depth).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import clean_env, median, print_table

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


@dataclass(frozen=True)
class Module:
    name: str
    depth: int
    self_us: float
    cumulative_us: float


def parse(stderr: str) -> list[Module]:
    """The imports of one ``-X importtime`` run, in the order Python reported them."""
    modules = []
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if match:
            self_us, cumulative_us, indent, name = match.groups()
            depth = (len(indent) - 1) // 2
            modules.append(Module(name, depth, float(self_us), float(cumulative_us)))
    return modules


def measure(args: Sequence[str], python: str, runs: int, cwd: Path) -> list[Module]:
    """Run ``python -X importtime ARGS`` ``runs`` times; per-module medians, first-seen order."""
    samples: dict[str, list[Module]] = {}
    for _ in range(runs):
        done = subprocess.run(
            [python, "-X", "importtime", *args],
            env=clean_env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for module in parse(done.stderr):
            samples.setdefault(module.name, []).append(module)
    return [
        Module(
            name,
            seen[0].depth,
            median([m.self_us for m in seen]),
            median([m.cumulative_us for m in seen]),
        )
        for name, seen in samples.items()
    ]


def total_us(modules: Sequence[Module]) -> float:
    """All import time of a run: the sum of the top-level imports' cumulative times."""
    return sum(m.cumulative_us for m in modules if m.depth == 0)


def report(
    title: str, modules: Sequence[Module], baseline: Sequence[Module], top: int
) -> dict[str, Any]:
    """Print the heaviest imports and those the baseline does not import; return the data."""
    heaviest = sorted(modules, key=lambda m: m.cumulative_us, reverse=True)[:top]
    print_table(
        f"{title}: top {top} imports by cumulative time (median of runs)",
        ["module (indent = import depth)", "self ms", "cumulative ms"],
        [("  " * m.depth + m.name, m.self_us / 1000, m.cumulative_us / 1000) for m in heaviest],
    )
    known = {m.name for m in baseline}
    extra = sorted(
        (m for m in modules if m.name not in known), key=lambda m: m.self_us, reverse=True
    )
    extra_total = sum(m.self_us for m in extra)
    print_table(
        f"{title}: modules that `import zmq` alone does not import, by self time "
        f"({len(extra)} modules, {extra_total / 1000:.1f} ms self time in all)",
        ["module", "self ms", "cumulative ms"],
        [(m.name, m.self_us / 1000, m.cumulative_us / 1000) for m in extra[:top]],
    )
    print(
        f"all imports: {total_us(modules) / 1000:.1f} ms; "
        f"`python -c 'import zmq'`: {total_us(baseline) / 1000:.1f} ms"
    )
    return {
        "total_ms": total_us(modules) / 1000,
        "baseline_total_ms": total_us(baseline) / 1000,
        "extra_self_ms": extra_total / 1000,
        "top": [_as_dict(m) for m in heaviest],
        "not_in_baseline": [_as_dict(m) for m in extra[:top]],
    }


def _as_dict(module: Module) -> dict[str, Any]:
    return {
        "module": module.name,
        "depth": module.depth,
        "self_ms": module.self_us / 1000,
        "cumulative_ms": module.cumulative_us / 1000,
    }
