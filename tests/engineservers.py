"""Real HTTP servers on 127.0.0.1 playing vLLM, SGLang and Ollama, in two generations each,
well or badly.

    server = start("vllm", "current", "normal")              # threads; .url, .figures
    server.figures.cores[0].preemptions += 5                 # the next read sees it
    server.set_mode("hung")                                  # from now on: every endpoint
    server.set_mode("http503", paths=("/metrics",))          # only /metrics
    server.stop()                                            # also on leaving ``with``

    python -m tests.engineservers vllm previous normal [--port N] [--api-key KEY]
        the same in its own process: prints the URL on one line, serves until killed

Payloads (and the figures behind them): tests/enginepayloads.py. Modes:

normal       the engine's answers
slow         answers after ``delay`` seconds (default 3)
hung         reads the request and never answers (until stop())
stall        sends the status line and headers, then never the body
trickle      sends the body a byte every 0.2 s
truncated    announces Content-Length larger than the body, sends part, closes
cut          a correct Content-Length, but the body cut inside a line (a partial payload)
close        reads the request and closes the connection without answering
garbage      200 with random bytes (seeded)
html         200 with a proxy's HTML error page
wrongjson    200 with JSON of the wrong shape ({"error": ...} where a list is due...)
http500      500 with an error body; http503 likewise

With ``api_key`` set, a request without ``Authorization: Bearer KEY`` gets 401
{"error": "Unauthorized"} (vLLM's --api-key). Every request is recorded (method, path,
headers with lower-case names, body) in ``.requests``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import random
import socketserver
import sys
import threading
from dataclasses import dataclass
from typing import Any

from tests.enginepayloads import (
    GENERATIONS,
    OllamaFigures,
    SglangFigures,
    VllmFigures,
    answer,
)

MODES = (
    "normal",
    "slow",
    "hung",
    "stall",
    "trickle",
    "truncated",
    "cut",
    "close",
    "garbage",
    "html",
    "wrongjson",
    "http500",
    "http503",
)
HTML = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr>"
    b"<center>nginx/1.24.0</center></body></html>\n"
)
WRONG = {
    "/metrics": b'{"error": "metrics moved"}\n',
    "/v1/models": b'{"object": "list", "data": {"id": 7}}',
    "/api/ps": b'{"models": {"name": 3}}',
    "/api/show": b"[1, 2, 3]",
    "/get_server_info": b'{"max_total_num_tokens": "lots"}',
    "/get_model_info": b'"model"',
}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def default_figures(kind: str) -> Any:
    return {"vllm": VllmFigures, "sglang": SglangFigures, "ollama": OllamaFigures}[kind]()


class EngineServer:
    """One engine on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        generation: str = "current",
        mode: str = "normal",
        *,
        figures: Any = None,
        api_key: str | None = None,
        delay: float = 3.0,
        port: int = 0,
    ) -> None:
        if generation not in GENERATIONS[kind]:
            raise ValueError(f"{kind} generations: {GENERATIONS[kind]}")
        self.kind, self.generation, self.api_key, self.delay = kind, generation, api_key, delay
        self.figures = figures if figures is not None else default_figures(kind)
        self.lock = threading.Lock()
        self.requests: list[Seen] = []
        self.stopping = threading.Event()
        self._modes: dict[str | None, str] = {}
        self.set_mode(mode)
        self._random = random.Random(16)
        self._server = _Server(self, port)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"engine-{kind}",
            daemon=True,
        )
        self._thread.start()

    def set_mode(self, mode: str, paths: tuple[str, ...] | None = None) -> None:
        """``mode`` for ``paths`` (every endpoint when None; that clears per-path modes)."""
        if mode not in MODES:
            raise ValueError(f"modes: {MODES}")
        with self.lock:
            if paths is None:
                self._modes = {None: mode}
            else:
                self._modes.update(dict.fromkeys(paths, mode))

    def mode_for(self, path: str) -> str:
        with self.lock:
            return self._modes.get(path.split("?", 1)[0], self._modes[None])

    def payload(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            return answer(
                self.kind, self.generation, self.figures, method=method, path=path, body=body
            )

    def garbage(self, size: int = 4096) -> bytes:
        with self.lock:
            return bytes(self._random.getrandbits(8) for _ in range(size))

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> EngineServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    kind: str, generation: str = "current", mode: str = "normal", **options: Any
) -> EngineServer:
    """An EngineServer started on a free port (``options``: figures, api_key, delay, port)."""
    return EngineServer(kind, generation, mode, **options)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        with owner.lock:
            owner.requests.append(Seen(self.command, self.path, headers, body))
        mode = owner.mode_for(self.path)
        if mode == "hung":
            owner.stopping.wait(60)
            self.close_connection = True
            return
        if mode == "close":
            self.close_connection = True
            return
        if mode == "slow":
            owner.stopping.wait(owner.delay)
        if owner.api_key and headers.get("authorization") != f"Bearer {owner.api_key}":
            self._send(401, "application/json", b'{"error": "Unauthorized"}')
            return
        status, content_type, data = owner.payload(self.command, self.path, body)
        if mode == "garbage":
            data = owner.garbage()
        elif mode == "html":
            content_type, data = "text/html", HTML
        elif mode == "wrongjson":
            content_type, data = "application/json", WRONG.get(self.path.split("?")[0], b"{}")
        elif mode in ("http500", "http503"):
            status = int(mode[4:])
            content_type, data = (
                "application/json",
                json.dumps(
                    {
                        "object": "error",
                        "message": "Internal Server Error"
                        if status == 500
                        else "Service Unavailable",
                        "code": status,
                    }
                ).encode(),
            )
        elif mode == "cut":
            data = _cut(data)
        self._send(status, content_type, data, mode)

    do_POST = do_GET

    def _send(self, status: int, content_type: str, data: bytes, mode: str = "normal") -> None:
        owner = self.server.owner
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) + (4096 if mode == "truncated" else 0)))
        self.end_headers()
        self.wfile.flush()
        if mode == "stall":
            owner.stopping.wait(60)
            self.close_connection = True
            return
        if mode == "trickle":
            for index in range(len(data)):
                if owner.stopping.wait(0.2):
                    break
                self.wfile.write(data[index : index + 1])
                self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)
        if mode == "truncated":
            self.wfile.flush()
            self.close_connection = True


def _cut(data: bytes) -> bytes:
    """``data`` cut inside a line: inside a label set (Prometheus) or a string (JSON)."""
    half = len(data) // 2
    for mark in (b"{", b'"'):
        where = data.find(mark, half)
        if where >= 0:
            return data[: where + 1]
    return data[:half]


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False  # hung handlers end on stopping; stop() must not wait for them

    def __init__(self, owner: EngineServer, port: int) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no getfqdn(): no DNS in tests
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and closed: a broken pipe here is expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.engineservers")
    parser.add_argument("kind", choices=sorted(GENERATIONS))
    parser.add_argument("generation")
    parser.add_argument("mode", nargs="?", default="normal", choices=MODES)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    server = start(args.kind, args.generation, args.mode, port=args.port, api_key=args.api_key)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
