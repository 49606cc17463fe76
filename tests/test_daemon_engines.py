"""Engines inside a real perfd: an [engines.NAME] table of kind sglang read from a real HTTP
server on 127.0.0.1, shown by perfctl engines, stats and /metrics; the server stopped (down,
an engine_down alert) and started again (up); ping stays fast throughout.

The server here is minimal (SGLang's /metrics, names from sgl-project/sglang
python/sglang/srt/metrics/collector.py), read by perfd's own fetcher and SGLang reader.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import perfctl
from tests.conftest import Perfd, StartPerfd, clean_env, command
from tests.daemons import wait_until
from tests.fakenvml import control_file

GiB = 1 << 30


def sglang_metrics(f: dict[str, float], model: str) -> str:
    """SGLang's /metrics as its collector writes it (gauges labelled model_name)."""
    lines = []
    for name, value in f.items():
        lines.append(f"# HELP sglang:{name} {name}")
        lines.append(f"# TYPE sglang:{name} gauge")
        lines.append(f'sglang:{name}{{model_name="{model}"}} {value}')
    return "\n".join(lines) + "\n"


class SglangServer:
    """SGLang's /metrics, /v1/models and /health on a fixed 127.0.0.1 port; stop() and start()
    again."""

    def __init__(self, figures: dict[str, float], model: str = "Qwen/Qwen3-0.6B") -> None:
        self.figures, self.model = figures, model
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body = sglang_metrics(owner.figures, owner.model).encode()
                elif self.path == "/health":
                    body = b""
                elif self.path == "/v1/models":  # srt/entrypoints/openai/protocol.py ModelCard
                    card = {"id": owner.model, "object": "model", "max_model_len": 32768}
                    body = json.dumps({"object": "list", "data": [card]}).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def sglang() -> Iterator[SglangServer]:
    server = SglangServer(
        {
            "num_running_reqs": 3,
            "num_queue_reqs": 2,
            "num_used_tokens": 1000,
            "max_total_num_tokens": 4000,
            "cache_hit_rate": 0.25,
        }
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hung() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung engine)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def config(server: SglangServer, metrics_port: int, hung_port: int) -> str:
    return f"""
[monitor]
interval = "200ms"
trend_window = "5s"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[discovery]
enabled = false
read_interval = "300ms"
timeout = "250ms"
[alerts.engine_down]
for = "0s"
[engines.sg]
kind = "sglang"
url = "{server.url}"
pid = {os.getpid()}
[engines.stuck]
kind = "sglang"
url = "http://127.0.0.1:{hung_port}"
"""


def ctl_json(perfd: Perfd, *args: str) -> dict[str, Any]:
    done = perfd.ctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def engine(perfd: Perfd, name: str = "sg") -> dict[str, Any]:
    engines = {e["name"]: e for e in ctl_json(perfd, "engines")["engines"]}
    assert sorted(engines) == ["sg", "stuck"]
    return engines[name]


def firing(perfd: Perfd) -> set[str]:
    return {a["id"] for a in ctl_json(perfd, "alerts")["firing"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(check: Callable[[], bool], pings: list[float], perfd: Perfd) -> None:
    """Wait for ``check``, timing a ping between tries."""

    def checked() -> bool:
        with perfctl.Client(None, runtime_dir=perfd.runtime_dir) as client:
            started = time.monotonic()
            assert client.call("ping")["pong"] is True
            pings.append(time.monotonic() - started)
        return check()

    wait_until(checked, timeout=30.0, every=0.1)


def test_an_sglang_engine_read_down_and_up(
    start_perfd: StartPerfd, sglang: SglangServer, hung: int, tmp_path: Path
) -> None:
    """perfctl engines shows the server's own figures and the NVML memory of its pid, while a
    hung engine beside it is timeout; stopping the server makes it down with an engine_down
    alert, logged once; starting it again makes it up and resolves the alert; a reload adds
    an engine and drops one; ping answers throughout."""
    nvml = control_file(
        tmp_path, gpus=[{"used": 30 * GiB, "compute_processes": [[os.getpid(), 7 * GiB]]}]
    )
    port = free_port()
    perfd = start_perfd(config(sglang, port, hung), nvml=nvml)
    pings: list[float] = []
    until(lambda: engine(perfd)["state"] == "up", pings, perfd)
    until(lambda: engine(perfd, "stuck")["state"] == "timeout", pings, perfd)
    until(lambda: engine(perfd)["gpu_memory_bytes"] is not None, pings, perfd)
    e = engine(perfd)
    f = sglang.figures
    assert e["kind"] == "sglang"
    assert e["url"] == sglang.url
    assert e["source"] == "config"
    assert e["models"][0]["name"] == sglang.model
    assert e["requests_running"] == f["num_running_reqs"]
    assert e["requests_waiting"] == f["num_queue_reqs"]
    assert e["kv_used_tokens"] == f["num_used_tokens"]
    assert e["kv_capacity_tokens"] == f["max_total_num_tokens"]
    assert e["kv_usage_ratio"] == pytest.approx(f["num_used_tokens"] / f["max_total_num_tokens"])
    assert e["prefix_cache_hit_ratio"] == pytest.approx(f["cache_hit_rate"])
    assert e["gpu_memory_bytes"] == 7 * GiB  # the fake NVML's figure for the engine's pid
    table = perfd.ctl("engines").stdout
    row = next(line for line in table.splitlines() if line.startswith("sg "))
    assert "stuck: timeout:" in table
    assert row.split()[:2] == ["sg", "sglang"]
    assert "25.0" in row
    assert "3/2" in row
    assert "7.0 GiB" in row
    assert row.rstrip().endswith("up")
    watch = subprocess.Popen(
        [*command("perfctl"), "engines", "--watch", "0.2", "--json"],
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    redraws = [json.loads(watch.stdout.readline()) for _ in range(2)]  # one a redraw
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=10)
    assert watch.returncode == 0, err
    assert all(r["schema"] == 1 and len(r["engines"]) == 2 for r in redraws)
    detail = perfd.ctl("engines", "sg").stdout
    assert "1000 / 4000 tokens" in detail
    assert "3 running, 2 waiting" in detail

    stats = ctl_json(perfd, "stats")
    assert [x["name"] for x in stats["engines"]] == ["sg", "stuck"]
    owner = stats["gpus"][0]["processes"][0]["owner"]
    assert owner["kind"] == "engine"
    assert owner["name"] == "sg"
    assert stats["gpus"][0]["unaccounted_bytes"] == 30 * GiB - 7 * GiB
    assert "engine sg" in perfd.ctl("stats").stdout

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    labels = f'engine="sg",kind="sglang",model="{sglang.model}"'
    assert f"perfd_engine_up{{{labels}}} 1.0" in body
    assert f"perfd_engine_requests_waiting{{{labels}}} 2.0" in body
    assert f"perfd_engine_kv_capacity_tokens{{{labels}}} 4000.0" in body

    sglang.stop()
    until(lambda: engine(perfd)["state"] == "down", pings, perfd)
    down = engine(perfd)
    assert down["reason"]
    assert down["models"][0]["name"] == sglang.model
    until(lambda: "engine_down/sg" in firing(perfd), pings, perfd)

    sglang.start()
    until(lambda: engine(perfd)["state"] == "up", pings, perfd)
    until(lambda: "engine_down/sg" not in firing(perfd), pings, perfd)
    # a reload adds an engine and drops one
    text = perfd.config_path.read_text()
    stuck = text.index("[engines.stuck]")
    perfd.config_path.write_text(
        text[:stuck] + f'[engines.again]\nkind = "sglang"\nurl = "{sglang.url}"\n'
    )
    reloaded = perfd.ctl("reload")
    assert reloaded.returncode == 0, reloaded.stderr

    def names() -> list[str]:
        return [e["name"] for e in ctl_json(perfd, "engines")["engines"]]

    until(lambda: names() == ["again", "sg"], pings, perfd)
    events = perfd.events()
    assert events.count("engine.timeout") == 1, events  # the hung one, once
    assert events.count("engine.down") == 1, events
    assert events.count("engine.up") >= 2, events  # sg twice (again may be up by now)
    ups = [e for e in perfd.logs() if e["event"] == "engine.up" and e["engine"] == "sg"]
    assert len(ups) == 2, ups
    assert max(pings) < 1.0, pings
