"""A real perfd beside a real llama.cpp ``llama-server`` (tests/llamaserver.py, serving a tiny
random Llama GGUF from tests/ggufmodel.py) with no ``[engines]`` config: discovery finds the
server by its process, perfctl shows its model, slots, context and a busy slot during a
completion, the plan check's KV bytes equal the size llama.cpp logs, stopping the server
makes it down with an engine_down alert and starting it again up; ping answers throughout.

Every figure is compared with the server's own endpoints (read here with urllib) or its log.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import perfctl
from tests import llamaserver
from tests.conftest import Perfd, StartPerfd
from tests.daemons import wait_until
from tests.ggufmodel import TinyLlama, write_tiny_llama

pytestmark = pytest.mark.skipif(llamaserver.binary() is None, reason=llamaserver.MISSING)
MiB = 1 << 20
DISCOVERY_S = 1.0
CONFIG = f"""
[monitor]
interval = "200ms"
[discovery]
interval = "{DISCOVERY_S:g}s"
read_interval = "300ms"
timeout = "300ms"
[alerts.engine_down]
for = "0s"
"""


def ctl_json(perfd: Perfd, *args: str) -> Any:
    done = perfd.ctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ping(perfd: Perfd, pings: list[float]) -> None:
    """One ping, timed from here."""
    with perfctl.Client(None, runtime_dir=perfd.runtime_dir) as client:
        started = time.monotonic()
        assert client.call("ping")["pong"] is True
        pings.append(time.monotonic() - started)


def until(check: Callable[[], bool], pings: list[float], perfd: Perfd, timeout: float = 60) -> None:
    """Wait for ``check``, timing a ping between tries."""

    def checked() -> bool:
        ping(perfd, pings)
        return check()

    wait_until(checked, timeout=timeout, every=0.05)


def engines(perfd: Perfd) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in ctl_json(perfd, "engines")["engines"]}


def refused(record: dict[str, Any]) -> bool:
    return record["state"] == "down" and "connection refused" in (record["reason"] or "")


def firing(perfd: Perfd) -> set[str]:
    return {a["id"] for a in ctl_json(perfd, "alerts")["firing"]}


def test_a_llama_server_found_read_checked_down_and_up(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """perfd with no [engines] config; then a llama-server starts (its model given relative to
    its working directory): within one discovery interval perfctl lists llamacpp-PORT, then
    its figures equal the server's own; a running completion shows its busy slot; the plan
    check's KV bytes are llama.cpp's logged size; stop: down and engine_down; start: up and
    the alert resolved; every ping under 1 s."""
    write_tiny_llama(tmp_path / "tiny.gguf")
    server = llamaserver.LlamaServer(
        Path("tiny.gguf"), tmp_path / "server.log", ctx_size=4096, parallel=2, cwd=tmp_path
    )
    name = f"llamacpp-{server.port}"
    perfd = start_perfd(CONFIG)
    pings: list[float] = []
    until(lambda: ctl_json(perfd, "engines")["discovery"]["last_run"] is not None, pings, perfd)
    assert name not in engines(perfd)  # (other llama-servers on this host may be listed)

    server.start()
    healthy = time.monotonic()
    try:
        until(lambda: name in engines(perfd), pings, perfd)
        listed_s = time.monotonic() - healthy
        until(lambda: engines(perfd)[name]["state"] == "up", pings, perfd)
        up_s = time.monotonic() - healthy
        # one interval, plus the scan, the health probe and a read on a shared 2-core machine
        assert listed_s < DISCOVERY_S + 2.0, listed_s

        e = engines(perfd)[name]
        props = server.get_json("/props")
        slots = server.get_json("/slots")
        assert e["kind"] == "llamacpp"
        assert e["source"] == "discovered"
        assert e["url"] == server.url
        assert server.proc is not None
        assert server.proc.pid in e["pids"]
        model = e["models"][0]
        assert model["name"] == props["model_alias"] == "tiny-llama"
        assert model["path"] == props["model_path"] == "tiny.gguf"
        assert model["context"] == props["default_generation_settings"]["n_ctx"] == 2048
        assert e["slots_total"] == props["total_slots"] == 2
        assert e["kv_capacity_tokens"] == sum(s["n_ctx"] for s in slots) == 4096
        assert e["slots_busy"] == sum(s["is_processing"] for s in slots) == 0
        row = next(r for r in perfd.ctl("engines").stdout.splitlines() if r.startswith(name))
        assert row.split()[1:4] == ["llamacpp", "tiny-llama", "2048"]

        busy = busy_during_a_completion(perfd, server, name, pings)
        assert busy["slots_busy"] == 1
        assert busy["requests_running"] == 1
        assert busy["kv_used_tokens"] > 0

        detail = ctl_json(perfd, "engines", name)["engines"][0]
        plan = detail["plan"]
        assert plan is not None, detail["plan_reason"]
        assert detail["plan_reason"] is None
        (mib, cells, _layers, _seqs, streams) = server.kv_lines()[0]
        # llama.cpp logs "%7.2f MiB": perfd's exact bytes, shown the same way
        assert f"{plan['predicted_kv_bytes'] / MiB:.2f}" == f"{mib:.2f}"
        assert plan["predicted_kv_tokens"] == cells * streams == plan["engine_kv_tokens"] == 4096
        assert plan["kv_error_percent"] == 0
        assert plan["served_context"] == 2048
        assert plan["concurrency"] == 2
        assert plan["recommended_context"] == TinyLlama().context_length
        text = perfd.ctl("engines", name).stdout
        assert "plan check" in text
        assert f"{plan['predicted_kv_bytes']} (" in text

        server.stop()
        # down; a read in flight as it stopped may say "reset", the next ones "refused"
        until(lambda: refused(engines(perfd)[name]), pings, perfd)
        down = engines(perfd)[name]
        assert down["models"][0]["name"] == "tiny-llama"  # the last good read, kept
        until(lambda: f"engine_down/{name}" in firing(perfd), pings, perfd)
        stats = ctl_json(perfd, "stats")
        assert {x["name"]: x["state"] for x in stats["engines"]}[name] == "down"
        assert stats["alerts"]["firing"] >= 1
        assert f"{name} down" in perfd.ctl("stats").stdout

        server.start()
        until(lambda: engines(perfd)[name]["state"] == "up", pings, perfd)
        until(lambda: f"engine_down/{name}" not in firing(perfd), pings, perfd)
        assert engines(perfd)[name]["slots_total"] == 2
    finally:
        server.stop()
    events = [entry for entry in perfd.logs() if entry.get("engine") == name]
    assert [x["event"] for x in events if x["event"] in ("engine.up", "engine.down")] == [
        "engine.up",
        "engine.down",
        "engine.up",
    ]
    assert max(pings) < 1.0, max(pings)
    print(
        f"listed {listed_s:.2f}s, up {up_s:.2f}s after healthy; pings {len(pings)}, "
        f"max {1000 * max(pings):.1f} ms"
    )


def busy_during_a_completion(
    perfd: Perfd, server: llamaserver.LlamaServer, name: str, pings: list[float]
) -> dict[str, Any]:
    """perfctl's record of the engine while a long completion runs (started again if one
    ends before perfd reads it busy), checked against the server's own /slots."""
    seen: list[dict[str, Any]] = []
    for _ in range(5):
        done = threading.Event()
        replies: list[Any] = []

        def complete(done: threading.Event = done, replies: list[Any] = replies) -> None:
            try:
                replies.append(server.complete("the people of the water " * 4, n_predict=1900))
            finally:
                done.set()

        thread = threading.Thread(target=complete, daemon=True)
        thread.start()
        while not done.is_set() and not seen:
            ping(perfd, pings)
            e = engines(perfd)[name]
            if e["slots_busy"]:
                own = server.get_json("/slots")
                if sum(s["is_processing"] for s in own) == e["slots_busy"]:
                    seen.append(e)
            time.sleep(0.05)
        thread.join(300)
        assert replies, "the completion failed"
        if seen:
            return seen[0]
    raise AssertionError("perfd never read the server busy during 5 completions")
