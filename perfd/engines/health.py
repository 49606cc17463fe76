"""Discovery's probe: is the engine of this kind answering its health endpoint at ``url``?

One GET through the readers' own HTTP (perfd/engines/fetch.py: one deadline for connect,
headers and body, no redirects, a size cap); True only for a 2xx answer. The paths, from each
project's own sources:

- vLLM: ``GET /health`` (vllm/entrypoints/openai/api_server.py: 200 with an empty body,
  503 when the engine is dead);
- llama-server: ``GET /health`` (ggml-org/llama.cpp tools/server/server.cpp and its
  README: 200 ``{"status": "ok"}``, 503 while the model loads);
- Ollama: ``GET /api/version`` (ollama/ollama docs/api.md "Version": 200
  ``{"version": "0.5.1"}``; ``GET /`` only says "Ollama is running");
- SGLang: ``GET /health`` (sgl-project/sglang python/sglang/srt/entrypoints/http_server.py).

Never raises; nothing is logged here (discovery runs every interval: the watcher logs what
it finds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from perfd.engines import discovery
from perfd.engines.errors import EngineUnavailable
from perfd.engines.fetch import fetcher
from perfd.engines.record import LLAMACPP, OLLAMA, SGLANG, VLLM, Target
from perfd.probes.samples import ProcessEntry

Scan = Callable[[Callable[[tuple[str, ...]], bool]], Iterable[ProcessEntry]]

HEALTH_PATHS = {VLLM: "/health", LLAMACPP: "/health", OLLAMA: "/api/version", SGLANG: "/health"}


def probe(kind: str, url: str, timeout_s: float = 1.0) -> bool:
    """Whether ``url`` answers the health endpoint of ``kind`` with a 2xx within
    ``timeout_s`` (the whole request)."""
    path = HEALTH_PATHS.get(kind)
    if path is None:
        return False
    try:
        get = fetcher(Target(name=kind, kind=kind, url=url.rstrip("/")), timeout_s)
        get(path)
    except (EngineUnavailable, ValueError):
        return False
    return True


def found_now(scan: Scan, timeout_s: float) -> list[Target]:
    """One discovery run: a fresh process scan (``scan``: the process probe's, which reads the
    listening ports of the processes ``discovery.is_engine`` picks), then each candidate's
    health endpoint, ``timeout_s`` each."""
    entries = scan(discovery.is_engine)
    return discovery.discover(entries, lambda kind, url: probe(kind, url, timeout_s))
