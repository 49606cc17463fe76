"""Estimates from file headers and an ONNX model's tensor bytes, in a real perfd driven by the
real perfctl: every figure checked against the onnx package's reading of the file, or against
the arrays the test wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.conftest import Perfd, StartPerfd
from tests.daemons import wait_until
from tests.models import onnx_toy
from tests.test_loader_estimates import arrays, write_safetensors

ROOT = str(Path(__file__).resolve().parent.parent)


def models_config(tmp_path: Path) -> tuple[str, dict[str, int]]:
    """Four models and the true bytes of each: the ONNX toy, a linear ONNX model with external
    data, a python model whose weights are a safetensors file, one whose path is not weights."""
    toy = onnx_toy.write_toy(tmp_path / "toy.onnx")
    linear = onnx_toy.write_linear(tmp_path / "linear.onnx", width=128, layers=2, external=True)
    weights = write_safetensors(tmp_path / "model.safetensors", arrays())
    (tmp_path / "notes.bin").write_bytes(b"these are not weights")
    config = f"""
[models.toy]
loader = "onnx"
path = "{toy}"
[models.linear]
loader = "onnx"
path = "{linear}"
[models.weights]
target = "tests.models.toy:make_echo"
path = "{weights}"
[models.notes]
target = "tests.models.toy:make_echo"
path = "{tmp_path / "notes.bin"}"
"""
    truth = {
        "toy": onnx_toy.initializer_bytes(toy),
        "linear": onnx_toy.initializer_bytes(linear),
        "weights": sum(a.nbytes for a in arrays().values()),
    }
    return config, truth


def ps_reply(perfd: Perfd) -> dict[str, Any]:
    """``perfctl ps --json``, the real CLI."""
    done = perfd.ctl("ps", "--json")
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def ps(perfd: Perfd) -> dict[str, dict[str, Any]]:
    """``ps``' models: name -> entry."""
    return {m["name"]: m for m in ps_reply(perfd)["models"]}


def rss(pid: int) -> int:
    """A process's resident set from the kernel (/proc/PID/status VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def load(perfd: Perfd, name: str) -> None:
    done = perfd.ctl("load", name, timeout=60)
    assert done.returncode == 0, done.stderr


def test_ps_shows_estimates_read_from_the_files_headers(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """ONNX models: the initializers' bytes (external data too), not the file's size; a python
    model with a safetensors path: its tensors' bytes; a path that is not weights: no estimate,
    a loader.estimate_failed warning, and the model still loads and answers."""
    config, truth = models_config(tmp_path)
    assert (tmp_path / "linear.onnx").stat().st_size < truth["linear"] / 50
    perfd = start_perfd(config, env={"PYTHONPATH": ROOT})
    for name in ("toy", "linear", "weights", "notes"):
        load(perfd, name)
    entries = ps(perfd)
    for name, true_bytes in truth.items():
        assert entries[name]["state"] == "ready", name
        assert entries[name]["estimated_bytes"] == true_bytes, name
    assert entries["notes"]["state"] == "ready"
    assert entries["notes"]["estimated_bytes"] is None
    done = perfd.ctl("infer", "notes", "--input", '"hi"', "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == "hi"
    wait_until(lambda: "loader.estimate_failed" in perfd.events())
    warning = perfd.log_entry("loader.estimate_failed")
    assert warning["model"] == "notes"
    assert "not a .gguf or .safetensors file" in warning["error"]
    x = np.ones((1, 128), dtype=np.float32).tolist()
    done = perfd.ctl("infer", "linear", "--input", json.dumps(x), "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["outputs"]["Y"][0]) == 128


# -- needs the cache's memory-truth fields (branch issue15-core): ps' tensor_bytes & co. -------


def test_core_fields_onnx_tensor_bytes_are_the_initializers(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """NEEDS THE CORE BRANCH'S ps FIELDS (tensor_bytes, bytes, bytes_source...): an ONNX
    model's tensor bytes in ps are its initializers' bytes as the onnx package reads them, on
    the first load and on a reload after an eviction, reported by the loader; the eviction
    record carries freed_bytes; once both are evicted, ps' runtime line shows what stayed
    (onnxruntime's import), as the kernel's RSS figures for perfd show it."""
    config, truth = models_config(tmp_path)
    perfd = start_perfd(config, env={"PYTHONPATH": ROOT})
    wait_until(lambda: "daemon.started" in perfd.events())  # perfd's log thread may lag
    pid = perfd.log_entry("daemon.started")["pid"]
    before = rss(pid)
    for round_ in ("first load", "reload"):
        for name in ("toy", "linear"):
            load(perfd, name)
            entry = ps(perfd)[name]
            where = f"{name}, {round_}"
            assert entry["estimated_bytes"] == truth[name], where
            assert entry["tensor_bytes"] == truth[name], where
            assert entry["tensor_bytes_by_device"] == {"cpu": truth[name]}, where
            assert entry["tensor_parts"] == {"initializers": truth[name]}, where
            assert entry["tensor_counted_by"] == "loader", where
            assert (entry["bytes"], entry["bytes_source"]) == (truth[name], "tensors"), where
            assert entry["estimate_error_percent"] == 0.0, where
            done = perfd.ctl("evict", name, "--json")
            assert done.returncode == 0, done.stderr
            (record,) = json.loads(done.stdout)["records"]
            assert record["bytes"] == truth[name], where
            assert "freed_bytes" in record, where
    residue = rss(pid) - before
    (runtime,) = [r for r in ps_reply(perfd)["runtime"] if r["device"] == "cpu"]
    assert residue > 8 << 20  # onnxruntime stays imported
    assert abs(runtime["runtime_overhead_bytes"] - residue) <= max(residue // 4, 4 << 20)
