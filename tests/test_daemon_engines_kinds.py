"""A real perfd reading the vLLM, Ollama and SGLang test servers (tests/engineservers.py:
payloads shaped as each project's current and previous versions) configured through
``[engines.NAME]`` tables: one perfd per kind, each generation served in turn on the same
port. Per generation: listed up with the figures the server serves and the older metric names
it fell back to, the plan check made from the model's architecture (a config.json beside the
model root; Ollama's /api/show), then the server stopped (down, an engine_down alert) and the
next generation started (up, the alert resolved). Two vLLMs at gpu_memory_utilization 0.9 on
one (fake NVML) GPU raise gpu_oversubscribed. ping answers within 1 s throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import perfctl
from tests.conftest import Perfd, StartPerfd
from tests.daemons import wait_until
from tests.enginepayloads import (
    GENERATIONS,
    LLAMA_CONFIG,
    OllamaFigures,
    OllamaModel,
    SglangFigures,
    SglangRank,
    VllmCore,
    VllmFigures,
)
from tests.engineservers import EngineServer
from tests.fakenvml import control_file
from tests.httpservers import closed_port

GiB = 1 << 30
CONFIG_KV_PER_TOKEN = 32 * 2 * 8 * (4096 // 32) * 2  # K and V, every layer, 16-bit
VLLM_FALLBACKS = {
    "current": [],
    "transition": [
        "vllm:gpu_cache_usage_perc",
        "vllm:gpu_prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_hits_total",
    ],
    "previous": ["vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_hit_rate"],
}
SGLANG_FALLBACKS = {
    "current": [],
    "previous": ["/get_server_info:max_total_num_tokens", "/get_server_info:context_length"],
}


def config(tables: dict[str, tuple[str, str, int]]) -> str:
    text = """
[monitor]
interval = "200ms"
[discovery]
enabled = false
read_interval = "300ms"
timeout = "300ms"
[alerts.engine_down]
for = "0s"
"""
    for name, (kind, url, pid) in tables.items():
        text += f'[engines.{name}]\nkind = "{kind}"\nurl = "{url}"\npid = {pid}\n'
    return text


def ctl_json(perfd: Perfd, *args: str) -> Any:
    done = perfd.ctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def until(check: Callable[[], bool], pings: list[float], perfd: Perfd) -> None:
    """Wait for ``check``, timing a ping (from here) between tries."""

    def checked() -> bool:
        with perfctl.Client(None, runtime_dir=perfd.runtime_dir) as client:
            started = time.monotonic()
            assert client.call("ping")["pong"] is True
            pings.append(time.monotonic() - started)
        return check()

    wait_until(checked, timeout=30.0, every=0.05)


def engine(perfd: Perfd, name: str) -> dict[str, Any]:
    found = {e["name"]: e for e in ctl_json(perfd, "engines")["engines"]}
    return found[name]


def refused(record: dict[str, Any]) -> bool:
    return record["state"] == "down" and "connection refused" in (record["reason"] or "")


def firing(perfd: Perfd) -> set[str]:
    return {a["id"] for a in ctl_json(perfd, "alerts")["firing"]}


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "Llama-3.1-8B-Instruct"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    return root


@pytest.fixture
def other_pid() -> Iterator[int]:
    """A real process other than this one: the second vLLM's pid on the fake GPU."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait(10)


def figures(kind: str, root: Path) -> Any:
    if kind == "vllm":
        core = VllmCore(running=5, waiting=7, usage=0.375, preemptions=11, num_gpu_blocks=4096)
        return VllmFigures(model="meta-llama/Llama-3.1-8B-Instruct", root=str(root), cores=[core])
    if kind == "sglang":
        rank = SglangRank(running=9, queued=4, used_tokens=30000, max_total_tokens=120000)
        return SglangFigures(path=str(root), context=8192, ranks=[rank])
    return OllamaFigures(models=[OllamaModel()])


def expect(kind: str, generation: str, f: Any) -> dict[str, Any]:
    """The record's figures the server's payloads say (from the figures it serves)."""
    if kind == "vllm":
        capacity = sum(c.num_gpu_blocks * c.block_size for c in f.cores)
        return {
            "models": [(f.model, f.max_model_len, f.root)],
            "requests_running": sum(c.running for c in f.cores),
            "requests_waiting": sum(c.waiting for c in f.cores),
            "kv_capacity_tokens": capacity,
            "kv_used_tokens": round(
                sum(c.usage * c.num_gpu_blocks * c.block_size for c in f.cores)
            ),
            "preemptions_total": sum(c.preemptions for c in f.cores),
            "fallbacks": VLLM_FALLBACKS[generation],
            # V0's gpu_prefix_cache_hit_rate is a ratio, shown as is; V1's counters need two
            # reads with traffic between them
            **(
                {
                    "prefix_cache_hit_ratio": sum(c.hits for c in f.cores)
                    / sum(c.queries for c in f.cores)
                }
                if generation == "previous"
                else {}
            ),
        }
    if kind == "sglang":
        return {
            "models": [(f.model, f.context, f.path)],
            "requests_running": sum(r.running for r in f.ranks),
            "requests_waiting": sum(r.queued for r in f.ranks),
            "kv_capacity_tokens": sum(r.max_total_tokens for r in f.ranks),
            "kv_used_tokens": sum(r.used_tokens for r in f.ranks),
            "prefix_cache_hit_ratio": f.ranks[0].cache_hit_rate,
            "fallbacks": SGLANG_FALLBACKS[generation],
        }
    current = generation == "current"
    m = f.models[0]
    return {
        "models": [(m.name, m.context_length if current else None, None)],
        "kv_capacity_tokens": m.context_length if current else None,
        "requests_running": None,
        "fallbacks": [],
    }


def check_plan(kind: str, generation: str, shown: dict[str, Any], f: Any) -> None:
    """The plan check made from the architecture perfd read on this host."""
    plan = shown["plan"]
    assert plan is not None, shown["plan_reason"]
    assert shown["plan_reason"] is None
    engine_tokens = shown["kv_capacity_tokens"]
    assert plan["engine_kv_tokens"] == engine_tokens
    assert plan["served_context"] == shown["models"][0]["context"]
    predicted = plan["predicted_kv_tokens"]
    if kind == "ollama":
        if generation == "current":
            m = f.models[0]
            cells = -(-m.context_length // 256) * 256  # GGML_PAD(context, 256)
            per_token = m.block_count * m.head_count_kv * (m.key_length + m.value_length) * 2
            assert predicted == cells
            assert plan["predicted_kv_bytes"] == cells * per_token
        else:
            assert predicted is None  # no context in /api/ps: nothing to size
        return
    assert isinstance(predicted, int)
    assert predicted > 0
    assert plan["predicted_kv_bytes"] == predicted * CONFIG_KV_PER_TOKEN
    assert plan["kv_error_percent"] == round(100 * (predicted - engine_tokens) / engine_tokens, 2)
    assert plan["gpus"] == [0]


@pytest.mark.parametrize("kind", ["vllm", "ollama", "sglang"])
def test_each_generation_read_checked_down_and_up(
    start_perfd: StartPerfd, tmp_path: Path, model_root: Path, other_pid: int, kind: str
) -> None:
    port = closed_port()
    f = figures(kind, model_root)
    pid = os.getpid()
    processes = [[pid, 20 * GiB]]
    tables = {kind: (kind, f"http://127.0.0.1:{port}", pid)}
    twin: EngineServer | None = None
    if kind == "vllm":  # a second vLLM at 0.9 of the same GPU: 1.8 GPUs claimed
        twin = EngineServer("vllm", figures=VllmFigures(root=str(model_root)))
        tables["twin"] = ("vllm", twin.url, other_pid)
        processes.append([other_pid, 20 * GiB])
    nvml = control_file(tmp_path, gpus=[{"used": 45 * GiB, "compute_processes": processes}])
    server = EngineServer(kind, GENERATIONS[kind][0], figures=f, port=port)
    perfd = start_perfd(config(tables), nvml=nvml)
    pings: list[float] = []
    try:
        for index, generation in enumerate(GENERATIONS[kind]):
            if index:
                server = EngineServer(kind, generation, figures=f, port=port)
            until(lambda: engine(perfd, kind)["state"] == "up", pings, perfd)
            until(lambda: f"engine_down/{kind}" not in firing(perfd), pings, perfd)
            shown = ctl_json(perfd, "engines", kind)["engines"][0]
            want = expect(kind, generation, f)
            models = [(m["name"], m["context"], m["path"]) for m in shown["models"]]
            assert models == want.pop("models"), generation
            for key, value in want.items():
                assert shown[key] == pytest.approx(value), (generation, key)
            assert shown["gpu_memory_bytes"] == 20 * GiB  # the fake NVML's, for its pid
            check_plan(kind, generation, shown, f)
            text = perfd.ctl("engines", kind).stdout
            assert "plan check" in text
            row = next(r for r in perfd.ctl("engines").stdout.splitlines() if r.startswith(kind))
            assert row.split()[:2] == [kind, kind]
            assert row.rstrip().endswith("up")

            server.stop()
            # down; a read in flight as it stopped may say "reset", the next ones "refused"
            until(lambda: refused(engine(perfd, kind)), pings, perfd)
            until(lambda: f"engine_down/{kind}" in firing(perfd), pings, perfd)
            stats = ctl_json(perfd, "stats")
            assert {e["name"]: e["state"] for e in stats["engines"]}[kind] == "down"
        server = EngineServer(kind, GENERATIONS[kind][0], figures=f, port=port)
        until(lambda: engine(perfd, kind)["state"] == "up", pings, perfd)
        until(lambda: f"engine_down/{kind}" not in firing(perfd), pings, perfd)
        if twin is not None:
            until(lambda: "gpu_oversubscribed/gpu0" in firing(perfd), pings, perfd)
            alert = next(
                a
                for a in ctl_json(perfd, "alerts")["firing"]
                if a["id"] == "gpu_oversubscribed/gpu0"
            )
            assert "GPU 0: engines claim 144.0 GiB of 80.0 GiB" in json.dumps(alert)
    finally:
        server.stop()
        if twin is not None:
            twin.stop()
    ups = [e for e in perfd.logs() if e.get("engine") == kind and e["event"] == "engine.up"]
    downs = [e for e in perfd.logs() if e.get("engine") == kind and e["event"] == "engine.down"]
    assert (len(ups), len(downs)) == (len(GENERATIONS[kind]) + 1, len(GENERATIONS[kind]))
    assert max(pings) < 1.0, max(pings)
    print(f"{kind}: {len(pings)} pings, max {1000 * max(pings):.1f} ms")
