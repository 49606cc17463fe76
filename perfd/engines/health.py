"""Discovery's probe: is the engine of this kind answering its health endpoint at ``url``?

One plain GET with a short timeout; True only for a 200. The paths, from each project's own
sources:

- vLLM: ``GET /health`` (vllm/entrypoints/openai/api_server.py: 200 with an empty body,
  503 when the engine is dead);
- llama-server: ``GET /health`` (ggml-org/llama.cpp tools/server/server.cpp and its
  README: 200 ``{"status": "ok"}``, 503 while the model loads);
- Ollama: ``GET /api/version`` (ollama/ollama docs/api.md "Version": 200
  ``{"version": "0.5.1"}``; ``GET /`` only says "Ollama is running");
- SGLang: ``GET /health`` (sgl-project/sglang python/sglang/srt/entrypoints/http_server.py).

Never raises; nothing is logged here (discovery runs every interval: the watcher logs what
it finds). The readers' own HTTP, with the API key and size caps, is perfd/engines/fetch.py.
"""

from __future__ import annotations

import http.client
import urllib.parse

from perfd.engines.record import LLAMACPP, OLLAMA, SGLANG, VLLM

HEALTH_PATHS = {VLLM: "/health", LLAMACPP: "/health", OLLAMA: "/api/version", SGLANG: "/health"}
MAX_BODY = 64 * 1024


def probe(kind: str, url: str, timeout_s: float = 1.0) -> bool:
    """Whether ``url`` answers the health endpoint of ``kind`` with a 200 within
    ``timeout_s`` (connect and read each)."""
    path = HEALTH_PATHS.get(kind)
    parts = urllib.parse.urlsplit(url)
    if path is None or parts.scheme != "http" or parts.hostname is None:
        return False
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            reply = conn.getresponse()
            reply.read(MAX_BODY)
            return reply.status == 200
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError):
        return False
