"""Start-up weight: perfctl imports nothing heavy; perfd defers heavy modules."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = {"structlog", "psutil", "requests", "pynvml", "numpy", "onnxruntime"}


def _modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {name.split(".")[0] for name in json.loads(out.stdout)}


def test_perfctl_start_loads_nothing_heavy() -> None:
    """perfctl's CLI pulls in pyzmq at start, nothing heavy (numpy only for a reply's arrays).
    What perfctl may import at all is checked statically: tests/test_architecture.py."""
    loaded = _modules("import perfctl.__main__")
    assert not loaded & HEAVY
    assert "zmq" in loaded


def test_perfctl_start_loads_only_light_wire_modules() -> None:
    """Of perfd's own modules, perfctl's start loads the package and the light wire modules:
    not the recommender (only for recommend) nor the key files module (only for --host)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import perfctl.__main__, sys; "
            "print(sorted(m for m in sys.modules if m.startswith('perfd')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == (
        "['perfd', 'perfd.wire', 'perfd.wire.arrays', 'perfd.wire.paths', 'perfd.wire.protocol', "
        "'perfd.wire.sockprobe', 'perfd.wire.values']"
    )


def test_daemon_defers_heavy_modules() -> None:
    """Importing the daemon loads neither psutil, requests, pynvml, numpy, onnxruntime nor
    prometheus_client (imported only when [metrics] listen is set)."""
    loaded = _modules("import perfd.daemon")
    heavy = {"psutil", "requests", "pynvml", "numpy", "onnxruntime", "prometheus_client"}
    assert not loaded & heavy
