"""An engine as perfd knows it: what to read (``Target``), what one read gave (``Reading``),
and the normalized record shown everywhere (``EngineRecord``).

Plain frozen data. The readers (one module per kind) turn an engine's own payloads into a
``Reading``; the watcher keeps one ``EngineRecord`` per engine and replaces it after each
read; the snapshot, ``stats``, ``perfctl engines``, /metrics and the alerts read records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

VLLM: Final = "vllm"
LLAMACPP: Final = "llamacpp"
OLLAMA: Final = "ollama"
SGLANG: Final = "sglang"
KINDS: Final = (VLLM, LLAMACPP, OLLAMA, SGLANG)

UP: Final = "up"
STARTING: Final = "starting"  # the process listens but the health endpoint says not ready
DOWN: Final = "down"  # refused, no process, or the process went away
TIMEOUT: Final = "timeout"  # no complete answer within the read timeout
ERROR: Final = "error"  # an answer perfd cannot use: the reason says what was wrong
STATES: Final = (UP, STARTING, DOWN, TIMEOUT, ERROR)


@dataclass(frozen=True)
class Target:
    """An engine to read: one ``[engines.NAME]`` table, or one found by discovery."""

    name: str
    kind: str  # one of KINDS
    url: str  # base URL, e.g. "http://127.0.0.1:8000" (no trailing slash)
    pids: tuple[int, ...] = ()  # the engine's processes (children and workers included)
    unit: str | None = None  # its systemd unit, when known
    api_key_env: str | None = None  # the environment variable holding its API key
    source: str = "config"  # "config" or "discovered"


@dataclass(frozen=True)
class ServedModel:
    """One model an engine serves, as the engine describes it."""

    name: str
    context: int | None = None  # the served context: max_model_len, n_ctx, context_length
    path: str | None = None  # local weights (vLLM's root, llama-server's model_path)
    size_bytes: int | None = None  # Ollama's size
    vram_bytes: int | None = None  # Ollama's size_vram
    expires_at: str | None = None  # Ollama's expires_at
    architecture: dict[str, Any] | None = None  # Ollama's model_info facts, when read


@dataclass(frozen=True)
class Reading:
    """What one read of an engine's endpoints gave; None: the engine does not report it."""

    models: tuple[ServedModel, ...] = ()
    kv_capacity_tokens: int | None = None
    kv_used_tokens: int | None = None
    kv_usage_ratio: float | None = None  # 0..1
    requests_running: int | None = None
    requests_waiting: int | None = None
    preemptions_total: float | None = None  # a counter: the watcher turns it into a rate
    prefix_cache_queries_total: float | None = None  # counters (tokens) where the engine has them
    prefix_cache_hits_total: float | None = None
    prefix_cache_hit_ratio: float | None = None  # where the engine reports a ratio itself
    slots_total: int | None = None  # llama-server's slots
    slots_busy: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # block_size, cache_dtype, n_ctx...
    fallbacks: tuple[str, ...] = ()  # the older metric names this read fell back to


@dataclass(frozen=True)
class EngineRecord:
    """One engine, normalized: what ``perfctl engines`` shows a row of."""

    target: Target
    state: str  # one of STATES
    reason: str | None = None  # why it is down, timeout or error
    reading: Reading | None = None  # the last good read (kept while down, for the post-mortem)
    preemptions_per_min: float | None = None  # from two reads of the counter
    prefix_cache_hit_ratio: float | None = None  # hits / queries since the previous read
    gpu_memory_bytes: int | None = None  # NVML's per-process memory of its pids, summed
    read_at: float | None = None  # wall clock of the last read attempt
    since: float | None = None  # wall clock of the last state change
