"""Benchmark 14: what each model costs, four ways, side by side, in a real perfd.

One perfd is configured with models of known size: a torch model (``Linear`` layers built by
``bench/memory_models.py`` from a safetensors file), a numpy model (the same kind of weights as
plain arrays), the tests' ONNX toy model and a linear ONNX model of the same size as the others,
and, when llama-cpp-python is importable and a tiny GGUF writer is at hand, a GGUF model through
the ``llama_cpp`` loader. Each round loads every model in turn (``load``), reads its ``ps``
entry, and evicts it (``evict``, whose record says what came back); the first round pays the
one-time costs (torch's and onnxruntime's imports), the later ones are reloads.

Per model and round it prints: the true bytes (computed here: the arrays' ``nbytes``, the onnx
package's reading of the ONNX file), perfd's ``estimated_bytes`` (from the file's header, before
the load), ``tensor_bytes`` (the model's own tensors, counted after the load), the process delta
(``measured_bytes``, with ``measured_by``), what the budget charges (``bytes``, with
``bytes_source``), ``estimate_error_percent``, and the eviction record's ``freed_bytes`` and
``freed_anon_bytes``; then perfd's runtime overhead per device (``ps``' ``runtime`` line and
``stats``' cache devices) and perfd's RSS from /proc. A field the running perfd does not report
prints as ``-``.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import memory_models
from bench.common import ROOT, Check, PerfdProcess, print_table, short_tempdir

MiB = 1 << 20
TARGET_PERCENT = 2.0  # tensor bytes within 2% of the true bytes (issue 15's "done when")
# The tiny-GGUF writer the llama_cpp loader's tests bring ("module:function(path) -> Path").
GGUF_WRITER = "tests.ggufmodel:write_tiny_llama"


@dataclass(frozen=True)
class Options:
    width: int = 1024  # each model's layers are float32 [width, width] + [width]
    layers: int = 16  # 16 x 1024 x 1025 x 4 bytes: 64 MiB per model
    rounds: int = 3  # the first load, then reloads


@dataclass(frozen=True)
class Model:
    name: str
    table: str  # its [models.NAME] body
    true_bytes: int | None  # None: not known independently


def _build(tmp: Path, options: Options, notes: list[str]) -> list[Model]:
    from tests.models import onnx_toy

    arrays = memory_models.linear_arrays(options.width, options.layers)
    linear_bytes = sum(a.nbytes for a in arrays.values())
    weights = tmp / "linears.safetensors"
    memory_models.write_safetensors(weights, arrays)
    del arrays
    toy = onnx_toy.write_toy(tmp / "toy.onnx")
    linear = onnx_toy.write_linear(tmp / "linear.onnx", width=options.width, layers=options.layers)
    models = [
        Model(
            "torch",
            f'target = "bench.memory_models:make_torch"\npath = "{weights}"\n'
            f'options = {{ path = "{weights}" }}\n',
            linear_bytes,
        ),
        Model(
            "numpy",
            f'target = "bench.memory_models:make_numpy"\npath = "{weights}"\n'
            f'options = {{ path = "{weights}" }}\n',
            linear_bytes,
        ),
        Model("onnx-toy", f'loader = "onnx"\npath = "{toy}"\n', onnx_toy.initializer_bytes(toy)),
        Model(
            "onnx-linear",
            f'loader = "onnx"\npath = "{linear}"\n',
            onnx_toy.initializer_bytes(linear),
        ),
    ]
    gguf = _gguf(tmp, notes)
    if gguf is not None:
        models.append(gguf)
    return models


def _gguf(tmp: Path, notes: list[str]) -> Model | None:
    """The GGUF row, when llama_cpp is importable and the tests' writer exists; else a note."""
    if importlib.util.find_spec("llama_cpp") is None:
        notes.append('gguf: skipped, llama_cpp is not importable (pip install "perfd[llama]")')
        return None
    module_name, _, function = GGUF_WRITER.partition(":")
    try:
        writer = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        notes.append(f"gguf: skipped, no tiny GGUF writer {GGUF_WRITER} ({exc})")
        return None
    path = Path(writer(tmp / "tiny.gguf"))
    import gguf

    weights = sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
    notes.append("gguf: true bytes are its tensors' (the gguf package's reader); perfd's figures")
    notes.append("      also hold the KV cache for n_ctx = 256")
    table = f'loader = "llama_cpp"\npath = "{path}"\noptions = {{ n_ctx = 256 }}\n'
    return Model("gguf", table, weights)


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _measure(models: list[Model], options: Options) -> dict[str, Any]:
    import perfctl

    config = "".join(f"[models.{m.name}]\n{m.table}" for m in models)
    out: dict[str, Any] = {"rows": []}
    with short_tempdir() as workdir:
        perfd = PerfdProcess(workdir, config=config, env={"PYTHONPATH": str(ROOT)})
        with perfd:

            def call(cmd: str, **args: Any) -> Any:
                # A connection per request, as perfctl makes: perfd drops idle connections when
                # its RSS passes its start plus its models' plus [server] max_buffered_bytes,
                # which the imports' residue can do once every model is evicted.
                with perfctl.Client(runtime_dir=perfd.runtime_dir, timeout=120, retries=0) as c:
                    return c.call(cmd, **args)

            try:
                errors = _rounds(call, perfd.pid, models, options, out)
            except perfctl.PerfctlError as exc:
                raise RuntimeError(f"{exc}; perfd's log:\n{perfd.log()}") from exc
            out["sheds"] = sum('"connections.shed"' in line for line in _log_lines(perfd))
    if errors:
        raise RuntimeError(f"perfd answered {errors} error replies; its log:\n{perfd.log()}")
    return out


def _log_lines(perfd: PerfdProcess) -> list[str]:
    try:
        return perfd.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _rounds(call: Any, pid: int, models: list[Model], options: Options, out: dict[str, Any]) -> int:
    """Load, read and evict every model, ``options.rounds`` times; perfd's error count."""
    rows = out["rows"]
    out["rss_start"] = _rss(pid)
    for round_ in range(options.rounds):
        for model in models:
            started = time.perf_counter()
            call("load", model=model.name)
            seconds = time.perf_counter() - started
            (entry,) = [m for m in call("ps")["models"] if m["name"] == model.name]
            evicted = call("evict", model=model.name)
            records = evicted.get("records") or [{}]
            rows.append(
                {
                    "model": model.name,
                    "round": round_,
                    "true_bytes": model.true_bytes,
                    "load_seconds": seconds,
                    "entry": entry,
                    "record": records[0],
                }
            )
        if round_ == 0:
            out["rss_after_first_round"] = _rss(pid)
    reply = call("ps")
    out["runtime"] = reply.get("runtime")
    out["devices"] = call("stats").get("cache", {}).get("devices")
    out["rss_end"] = _rss(pid)
    return int(call("status")["requests"].get("errors", 0))


def run(options: Options) -> tuple[dict[str, Any], list[Check]]:
    notes: list[str] = []
    with short_tempdir() as tmp:
        models = _build(tmp, options, notes)
        measured = _measure(models, options)
    measured["notes"] = notes
    return measured, _report(options, measured)


def _mib(value: Any) -> float | str | None:
    """MiB, or bytes with their unit under 0.1 MiB (the ONNX toy holds 20 bytes)."""
    if not isinstance(value, int):
        return None
    if abs(value) < MiB // 10:
        return f"{value / 1024:.1f} KiB" if abs(value) >= 1024 else f"{value} B"
    return value / MiB


def _error(value: Any, truth: int | None) -> float | None:
    if not isinstance(value, int) or not truth:
        return None
    return 100 * (value - truth) / truth


def _report(options: Options, out: dict[str, Any]) -> list[Check]:
    table = []
    checks: list[Check] = []
    for row in out["rows"]:
        e, r, truth = row["entry"], row["record"], row["true_bytes"]
        source = e.get("bytes_source")
        table.append(
            (
                row["model"],
                "first" if row["round"] == 0 else f"reload {row['round']}",
                _mib(truth),
                _mib(e.get("estimated_bytes")),
                _mib(e.get("tensor_bytes")),
                e.get("tensor_counted_by"),
                _mib(e.get("measured_bytes")),
                e.get("measured_by"),
                _mib(e.get("bytes")),
                source,
                e.get("estimate_error_percent"),
                _mib(r.get("freed_bytes")),
                _mib(r.get("freed_anon_bytes")),
                _mib(r.get("freed_rss_bytes")),
            )
        )
        error = _error(e.get("tensor_bytes"), truth)
        if error is not None and row["model"] != "gguf":
            checks.append(
                Check(
                    "14 memory",
                    f"{row['model']} tensor bytes vs true, "
                    + ("first load" if row["round"] == 0 else f"reload {row['round']}"),
                    "% off",
                    abs(error),
                    "",
                    None,
                    on="value",
                    op="<=",
                    limit=TARGET_PERCENT,
                )
            )
    params = options.layers * options.width * (options.width + 1)
    print_table(
        f"14. memory_truth: each model loaded, read in ps, evicted; {options.rounds} rounds "
        f"(torch, numpy, onnx-linear: {options.layers} x [{options.width}x{options.width}] + "
        f"bias float32, {params / 1e6:.1f}M parameters) (MiB unless marked)",
        [
            "model",
            "load",
            "true",
            "estimate",
            "tensors",
            "counted by",
            "delta",
            "measured by",
            "charged",
            "source",
            "est err %",
            "freed",
            "freed anon",
            "freed rss",
        ],
        table,
    )
    runtime = out.get("runtime")
    devices = out.get("devices") or {}
    shown = (
        ", ".join(f"{d['device']} {_fmt(d.get('runtime_overhead_bytes'))}" for d in runtime)
        if runtime
        else "-"
    )
    in_stats = ", ".join(
        f"{name} {_fmt(figures.get('runtime_overhead_bytes'))}" for name, figures in devices.items()
    )
    print(f"runtime overhead (ps' runtime line): {shown}; stats' cache devices: {in_stats or '-'}")
    print(
        f"perfd RSS (/proc): at start {_fmt(out.get('rss_start'))}, after the first round "
        f"{_fmt(out.get('rss_after_first_round'))}, at the end {_fmt(out.get('rss_end'))} "
        "(every model evicted)"
    )
    print(
        "columns: true = the bytes computed here; estimate = before the load, from the file's "
        "header; tensors = the model's own tensors after it; delta = the process's growth "
        "around the load; charged = what the budget counts; freed = what the eviction gave "
        "back (freed_bytes; anon = RssAnon's drop, rss = RSS's drop). '-': not reported."
    )
    for row in out["rows"]:
        parts = row["entry"].get("tensor_parts") or {}
        if row["round"] == 0 and len(parts) > 1:
            shown_parts = ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items())
            print(f"{row['model']}: tensor_parts {shown_parts}")
    if out.get("sheds"):
        print(
            f"perfd shed idle connections {out['sheds']} times (connections.shed: its RSS passed"
            " its size at start + its models' + [server] max_buffered_bytes; the runtime"
            " overhead left by the imports is not in that limit)"
        )
    for note in out.get("notes", []):
        print(note)
    if not checks:
        print("no tensor_bytes in ps: this perfd does not count tensors yet (no check lines)")
    return checks


def _fmt(value: Any) -> str:
    return "-" if not isinstance(value, int) else f"{value / MiB:.1f} MiB"
