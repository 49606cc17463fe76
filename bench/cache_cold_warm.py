"""Benchmark 7: an inference on a cold model (load + infer) against one on a warm model (cache
hit + infer), for an ONNX model of a realistic size (about 100 MB of float32 weights).

The model is built in a temp directory with ``onnx.helper`` (nothing is downloaded): ``LAYERS``
layers of ``MatMul`` (a [WIDTH, WIDTH] float32 weight), ``Add`` (a bias) and ``Relu``, input and
output [1, WIDTH]. One inference reads every weight once, so it is cheap but not trivial.

In-process (the primary figure): a real ``perfd.cache.core.ModelCache`` with the real loader
registry (``perfd.loaders.Registry().get``) and the host's RAM as capacity. After one untimed
load (onnxruntime's import lands in that one), each round evicts the model (timed apart: the
unload), times lease + infer (cold: the lease loads it), runs ``SETTLE`` untimed inferences
(onnxruntime's first runs on a new session are slower), then times lease + infer again (warm).
The cache's measured size of each load (``ps()``'s ``measured_bytes``, an RSS delta) is set
against its estimate (the initializers' bytes, from the file's headers), and each eviction's
``freed_rss_bytes`` is shown.

Over the socket (unless left out): the same rounds against a real perfd, with ``perfctl.Client``
sending ``evict`` then ``infer`` (cold) and ``infer`` (warm); inputs and outputs as JSON lists.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Check,
    PerfdProcess,
    captured_log,
    median,
    percentile,
    print_table,
    short_tempdir,
)

WIDTH = 1024
LAYERS = 24  # 24 x (1024 x 1024 + 1024) float32 = 25.2M parameters, 100.8 MB
SETTLE = 2  # untimed inferences between a cold run and the warm one
TARGET = 10.0  # cold / warm >= this
MODEL = "big"
MiB = 1 << 20


@dataclass(frozen=True)
class Options:
    runs: int = 20  # in-process rounds (one cold and one warm run each)
    socket_runs: int = 10  # rounds through a real perfd; 0 leaves that part out


def build_model(path: Path) -> int:
    """Write the model to ``path``; its parameter count."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    nodes, initializers = [], []
    previous = "X"
    for i in range(LAYERS):
        # Scaled so activations stay in range through the layers (He-like initialisation).
        weight = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * np.float32(
            (2 / WIDTH) ** 0.5
        )
        bias = np.full(WIDTH, 0.01, dtype=np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"W{i}"),
            numpy_helper.from_array(bias, f"B{i}"),
        ]
        out = "Y" if i == LAYERS - 1 else f"H{i}"
        nodes += [
            helper.make_node("MatMul", [previous, f"W{i}"], [f"M{i}"]),
            helper.make_node("Add", [f"M{i}", f"B{i}"], [f"A{i}"]),
            helper.make_node("Relu", [f"A{i}"], [out]),
        ]
        previous = out
    graph = helper.make_graph(
        nodes,
        "bench_big",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, WIDTH])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for every onnxruntime >= 1.17
    onnx.save(model, str(path))
    return LAYERS * (WIDTH * WIDTH + WIDTH)


def _total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _in_process(path: Path, runs: int) -> dict[str, Any]:
    import numpy as np

    from perfd import config
    from perfd.cache.core import ModelCache
    from perfd.loaders import Registry

    cfg = config.parse({"models": {MODEL: {"loader": "onnx", "path": str(path)}}})
    ram = _total_ram()
    cache = ModelCache(cfg.cache, cfg.models, Registry().get, lambda d: ram if d == "cpu" else None)
    x = np.full((1, WIDTH), 0.5, dtype=np.float32)
    out: dict[str, Any] = {
        "cold_ms": [],
        "warm_ms": [],
        "evict_ms": [],
        "load_ms": [],
        "measured_bytes": [],
        "freed_bytes": [],
    }

    def infer() -> float:
        started = time.perf_counter()
        with cache.lease(MODEL) as lease:
            result = lease.infer(x)
        elapsed = time.perf_counter() - started
        if result["Y"].shape != (1, WIDTH):
            raise RuntimeError(f"unexpected output {result['Y'].shape}")
        return elapsed * 1000

    def entry() -> dict[str, Any]:
        (described,) = [m for m in cache.ps() if m["name"] == MODEL]
        return described

    with captured_log() as logged:
        try:
            first_ms = infer()  # the first load: onnxruntime is imported here
            first = entry()
            for _ in range(SETTLE):
                infer()
            for _ in range(runs):
                started = time.perf_counter()
                record = cache.evict(MODEL)
                out["evict_ms"].append((time.perf_counter() - started) * 1000)
                out["freed_bytes"].append(record["freed_rss_bytes"])
                out["cold_ms"].append(infer())
                described = entry()
                out["load_ms"].append(described["load_seconds"]["last"] * 1000)
                out["measured_bytes"].append(described["measured_bytes"] or 0)
                for _ in range(SETTLE):
                    infer()
                out["warm_ms"].append(infer())
        finally:
            cache.close()
    out["first_ms"] = first_ms
    out["first_measured_bytes"] = first["measured_bytes"]
    out["estimated_bytes"] = first["estimated_bytes"]
    out["warnings"] = [line for line in logged.getvalue().splitlines() if line.strip()]
    return out


def _over_socket(path: Path, runs: int) -> dict[str, Any]:
    import perfctl

    config = f'[models.{MODEL}]\nloader = "onnx"\npath = "{path}"\n'
    x = [[0.5] * WIDTH]
    out: dict[str, Any] = {"cold_ms": [], "warm_ms": [], "evict_ms": [], "measured_bytes": []}
    with short_tempdir() as workdir, PerfdProcess(workdir, config=config) as perfd:
        with perfctl.Client(runtime_dir=perfd.runtime_dir, timeout=120, retries=0) as client:

            def infer() -> float:
                started = time.perf_counter()
                reply = client.call("infer", model=MODEL, inputs=x)
                elapsed = time.perf_counter() - started
                if len(reply["outputs"]["Y"][0]) != WIDTH:
                    raise RuntimeError("unexpected output from perfd")
                return elapsed * 1000

            out["first_ms"] = infer()
            for _ in range(SETTLE):
                infer()
            for _ in range(runs):
                started = time.perf_counter()
                client.call("evict", model=MODEL)
                out["evict_ms"].append((time.perf_counter() - started) * 1000)
                out["cold_ms"].append(infer())
                (described,) = [m for m in client.call("ps")["models"] if m["name"] == MODEL]
                out["measured_bytes"].append(described["measured_bytes"] or 0)
                for _ in range(SETTLE):
                    infer()
                out["warm_ms"].append(infer())
            counts = client.status()["requests"]
        out["errors"] = counts.get("errors", 0)
    if out["errors"]:
        raise RuntimeError(f"perfd answered {out['errors']} error replies; its log:\n{perfd.log()}")
    return out


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    with short_tempdir() as tmp:
        path = tmp / "big.onnx"
        started = time.perf_counter()
        params = build_model(path)
        built = Built(params, path.stat().st_size, time.perf_counter() - started)
        local = _in_process(path, options.runs)
        remote = _over_socket(path, options.socket_runs) if options.socket_runs else None
    return _report(options, built, local, remote)


def _row(name: str, values: list[float], base: list[float] | None = None) -> tuple[Any, ...]:
    paired = (
        median([v / b for v, b in zip(values, base, strict=True)]) if base is not None else None
    )
    return (name, median(values), min(values), percentile(values, 90), max(values), paired)


@dataclass(frozen=True)
class Built:
    """The model the benchmark built."""

    parameters: int
    file_bytes: int
    build_seconds: float


def _report(
    options: Options, built: Built, local: dict[str, Any], remote: dict[str, Any] | None
) -> tuple[dict[str, Any], list[Check]]:
    params, file_bytes = built.parameters, built.file_bytes
    cold, warm = local["cold_ms"], local["warm_ms"]
    rows = [
        _row("cold: evicted, lease (load) + infer", cold, warm),
        _row("warm: lease (hit) + infer", warm, warm),
        _row("  load alone (the cache's load_seconds)", local["load_ms"]),
        _row("evict (unload, gc, malloc_trim; untimed above)", local["evict_ms"]),
    ]
    if remote is not None:
        rows += [
            _row("socket cold: evict, then infer (JSON)", remote["cold_ms"], remote["warm_ms"]),
            _row("socket warm: infer (JSON)", remote["warm_ms"], remote["warm_ms"]),
            _row("socket evict", remote["evict_ms"]),
        ]
    print_table(
        f"7. cache_cold_warm: ONNX model, {params / 1e6:.1f}M float32 parameters, "
        f"{file_bytes / MiB:.1f} MiB file; {options.runs} rounds in-process"
        + (f", {options.socket_runs} through perfd" if remote is not None else "")
        + " (ms)",
        ["what", "median", "min", "p90", "max", "paired x warm"],
        rows,
    )
    measured = median(local["measured_bytes"])
    freed = median(local["freed_bytes"])
    first_measured = local["first_measured_bytes"] or 0
    ratio_local = median(cold) / median(warm)
    print(
        f"model built in {built.build_seconds:.1f} s ({LAYERS} x MatMul [{WIDTH}x{WIDTH}] + Add"
        f" + Relu, input [1, {WIDTH}]); first load (onnxruntime imported) + infer:"
        f" {local['first_ms']:.0f} ms"
    )
    print(
        f"size: estimate {local['estimated_bytes'] / MiB:.1f} MiB (initializers); measured (RSS "
        f"delta of each load, median) {measured / MiB:.1f} MiB = "
        f"{measured / local['estimated_bytes']:.2f}x the estimate "
        f"(range {min(local['measured_bytes']) / MiB:.1f}-{max(local['measured_bytes']) / MiB:.1f}"
        f"); first load {first_measured / MiB:.1f} MiB (onnxruntime's import included); "
        f"freed by each evict (median) {freed / MiB:.1f} MiB"
    )
    if remote is not None:
        print(
            f"perfd's measured size (ps, median): {median(remote['measured_bytes']) / MiB:.1f} MiB;"
            f" its first infer (import + load): {remote['first_ms']:.0f} ms"
        )
    if local["warnings"]:
        print(f"perfd warnings in-process ({len(local['warnings'])}):")
        for line in local["warnings"][:5]:
            print(f"  {line[:300]}")
    print(
        f"target: cold / warm (ratio of medians, in-process) >= {TARGET:g}; "
        f"paired x warm: median of per-round ratios to the round's warm run. "
        f"Warm runs follow {SETTLE} untimed inferences on the new session."
    )

    checks = [
        Check(
            "7 cache",
            "cold (load + infer) vs warm (hit + infer), in-process",
            "ms",
            median(cold),
            "warm",
            median(warm),
            op=">=",
            limit=TARGET,
        ),
        Check(
            "7 cache",
            "measured RSS of the loaded model",
            "MiB",
            measured / MiB,
            "estimate (initializers)",
            local["estimated_bytes"] / MiB,
        ),
        Check("7 cache", "evict (unload) in-process", "ms", median(local["evict_ms"]), "", None),
    ]
    if remote is not None:
        checks.append(
            Check(
                "7 cache",
                "cold vs warm through perfd (JSON)",
                "ms",
                median(remote["cold_ms"]),
                "warm",
                median(remote["warm_ms"]),
            )
        )
    data = {
        "runs": options.runs,
        "socket_runs": options.socket_runs,
        "parameters": params,
        "file_bytes": file_bytes,
        "build_seconds": built.build_seconds,
        "ratio_cold_warm": ratio_local,
        "in_process": local,
        "socket": remote,
    }
    return data, checks
