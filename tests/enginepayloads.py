"""What vLLM, SGLang and Ollama answer, in two generations each, built from figures a test
sets (the independent source a reading is compared with).

    figures = VllmFigures(cores=[VllmCore(running=3, usage=0.5), VllmCore(running=1)])
    status, content_type, body = answer(
        "vllm", "current", figures, method="GET", path="/metrics", body=b""
    )

Prometheus text is written by prometheus_client itself (the engines use it too), so HELP and
TYPE lines, counters' ``_total`` and ``_created`` samples and label quoting are as the engines
write them. Each payload cites the engine's source it follows. Generations:

- vllm "current": the V1 engine, 0.10+ (vllm/v1/metrics/loggers.py): kv_cache_usage_perc,
  prefix_cache_queries/hits, num_preemptions, cache_config_info, labels model_name + engine.
  "transition": V1 0.8 (same file, then): gpu_cache_usage_perc and gpu_prefix_cache_*.
  "previous": the V0 engine, 0.6/0.7 (vllm/engine/metrics.py): gpu_cache_usage_perc,
  num_preemptions_total, gpu_prefix_cache_hit_rate, label model_name only.
- sglang "current": python/sglang/srt/metrics/collector.py with max_total_num_tokens and the
  rank labels; /v1/models with max_model_len. "previous": the 0.4 collector (model_name
  only, no max_total_num_tokens; the pool in /get_server_info) and /v1/models without
  max_model_len (the context from /get_server_info's context_length).
- ollama "current": api/types.go ProcessModelResponse with context_length (newer servers,
  docs.ollama.com/api/ps). "previous": api/types.go before it (no context_length).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

GENERATIONS = {
    "vllm": ("current", "transition", "previous"),
    "sglang": ("current", "previous"),
    "ollama": ("current", "previous"),
}
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"


# A Llama-shaped config.json, as a vLLM or SGLang model root holds it (the plan check reads it;
# Ollama's /api/show facts come to the same architecture).
LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}


@dataclass
class VllmCore:
    """One engine core (data parallel: several per server)."""

    running: int = 2
    waiting: int = 1
    usage: float = 0.25  # 0..1
    preemptions: float = 0.0
    queries: float = 1000.0  # prefix cache, tokens
    hits: float = 400.0
    num_gpu_blocks: int = 2048
    block_size: int = 16


@dataclass
class VllmFigures:
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    root: str = "/models/Llama-3.1-8B-Instruct"
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.9
    cache_dtype: str = "auto"
    cores: list[VllmCore] = field(default_factory=lambda: [VllmCore()])
    kv_cache_size_tokens: int | None = None  # a cache_config_info label, when a build adds it


@dataclass
class SglangRank:
    """One data-parallel rank's scheduler."""

    running: int = 3
    queued: int = 2
    used_tokens: int = 12000
    max_total_tokens: int = 48000
    cache_hit_rate: float = 0.35


@dataclass
class SglangFigures:
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    path: str = "/models/Llama-3.1-8B-Instruct"
    context: int = 131072
    tp_size: int = 1  # tensor parallel ranks other than 0 repeat rank 0's series
    ranks: list[SglangRank] = field(default_factory=lambda: [SglangRank()])


@dataclass
class OllamaModel:
    name: str = "llama3.2:1b"
    size: int = 2_200_000_000
    size_vram: int = 2_200_000_000
    context_length: int = 4096
    expires_at: str = "2026-12-04T22:45:00.123456789Z"
    architecture: str = "llama"
    block_count: int = 16
    head_count: int = 32
    head_count_kv: int = 8
    key_length: int = 64
    value_length: int = 64
    embedding_length: int = 2048
    trained_context: int = 131072


@dataclass
class OllamaFigures:
    models: list[OllamaModel] = field(default_factory=lambda: [OllamaModel()])


Answer = tuple[int, str, bytes]


def answer(
    kind: str, generation: str, figures: Any, *, method: str, path: str, body: bytes
) -> Answer:
    """The engine's answer to one request: (status, content type, body)."""
    route = path.split("?", 1)[0]
    if kind == "vllm":
        return _vllm(generation, figures, route)
    if kind == "sglang":
        return _sglang(generation, figures, route)
    return _ollama(generation, figures, method, route, body)


def _json(doc: Any, status: int = 200) -> Answer:
    return status, JSON, json.dumps(doc).encode()


NOT_FOUND = (404, JSON, b'{"detail":"Not Found"}')


# vLLM -------------------------------------------------------------------------------------


def _vllm(generation: str, f: VllmFigures, route: str) -> Answer:
    if route == "/health":
        return 200, JSON, b""
    if route == "/metrics":
        return 200, PROMETHEUS, vllm_metrics(generation, f)
    if route == "/v1/models":  # vllm/entrypoints/openai/protocol.py ModelCard / ModelList
        card = {
            "id": f.model,
            "object": "model",
            "created": 1764884000,
            "owned_by": "vllm",
            "root": f.root,
            "parent": None,
            "max_model_len": f.max_model_len,
            "permission": [
                {
                    "id": "modelperm-1",
                    "object": "model_permission",
                    "allow_sampling": True,
                    "allow_logprobs": True,
                }
            ],
        }
        lora = {**card, "id": "sql-lora", "root": "/adapters/sql", "parent": f.model}
        return _json({"object": "list", "data": [card, lora]})
    if route == "/version":
        return _json(
            {
                "version": {"current": "0.11.0", "transition": "0.8.5", "previous": "0.6.6"}[
                    generation
                ]
            }
        )
    return NOT_FOUND


def vllm_metrics(generation: str, f: VllmFigures) -> bytes:
    reg = CollectorRegistry()
    v0 = generation == "previous"
    labels = ["model_name"] if v0 else ["model_name", "engine"]

    def per_core(metric: Any, value: Any, index: int) -> None:
        child = metric.labels(f.model) if v0 else metric.labels(f.model, str(index))
        if isinstance(metric, Counter):
            child.inc(value)
        else:
            child.set(value)

    running = Gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        labels,
        registry=reg,
    )
    waiting = Gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        labels,
        registry=reg,
    )
    usage_name = (
        "vllm:kv_cache_usage_perc" if generation == "current" else "vllm:gpu_cache_usage_perc"
    )
    usage = Gauge(usage_name, "KV-cache usage. 1 means 100 percent usage.", labels, registry=reg)
    if v0:  # vllm/engine/metrics.py: the counter is declared with its _total
        preempt = Counter(
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
            labels,
            registry=reg,
        )
        hit_rate = Gauge(
            "vllm:gpu_prefix_cache_hit_rate",
            "GPU prefix cache block hit rate.",
            labels,
            registry=reg,
        )
        Gauge(
            "vllm:num_requests_swapped", "Number of requests swapped to CPU.", labels, registry=reg
        ).labels(f.model).set(0)
        Gauge(
            "vllm:cpu_cache_usage_perc",
            "CPU KV-cache usage. 1 means 100 percent usage.",
            labels,
            registry=reg,
        ).labels(f.model).set(0)
    else:
        preempt = Counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            labels,
            registry=reg,
        )
        prefix = "vllm:prefix_cache" if generation == "current" else "vllm:gpu_prefix_cache"
        queries = Counter(
            f"{prefix}_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels,
            registry=reg,
        )
        hits = Counter(
            f"{prefix}_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            labels,
            registry=reg,
        )
    prompt = Counter(
        "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=reg
    )
    ttft = Histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        labels,
        buckets=[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5],
        registry=reg,
    )
    info_keys = [
        "block_size",
        "cache_dtype",
        "calculate_kv_scales",
        "cpu_offload_gb",
        "enable_prefix_caching",
        "gpu_memory_utilization",
        "num_cpu_blocks",
        "num_gpu_blocks",
        "num_gpu_blocks_override",
        "sliding_window",
        "swap_space_bytes",
    ]
    if f.kv_cache_size_tokens is not None:
        info_keys.append("kv_cache_size_tokens")
    info = Gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        info_keys + ([] if v0 else ["engine"]),
        registry=reg,
    )
    for index, core in enumerate(f.cores[:1] if v0 else f.cores):
        per_core(running, core.running, index)
        per_core(waiting, core.waiting, index)
        per_core(usage, core.usage, index)
        per_core(preempt, core.preemptions, index)
        per_core(prompt, 12345 + index, index)
        (ttft.labels(f.model) if v0 else ttft.labels(f.model, str(index))).observe(0.07)
        if v0:
            per_core(hit_rate, core.hits / core.queries if core.queries else 0.0, index)
        else:
            per_core(queries, core.queries, index)
            per_core(hits, core.hits, index)
        values = {
            "block_size": str(core.block_size),
            "cache_dtype": f.cache_dtype,
            "calculate_kv_scales": "False",
            "cpu_offload_gb": "0",
            "enable_prefix_caching": "True",
            "gpu_memory_utilization": str(f.gpu_memory_utilization),
            "num_cpu_blocks": "0" if not v0 else "2048",
            "num_gpu_blocks": str(core.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "sliding_window": "None",
            "swap_space_bytes": str(4 << 30),
        }
        if f.kv_cache_size_tokens is not None:
            values["kv_cache_size_tokens"] = str(f.kv_cache_size_tokens)
        if not v0:
            values["engine"] = str(index)
        info.labels(**values).set(1)
    return _process_series() + generate_latest(reg)


def _process_series() -> bytes:
    """What prometheus_client's default collectors add to every Python engine's /metrics."""
    return (
        b"# HELP python_gc_objects_collected_total Objects collected during gc\n"
        b"# TYPE python_gc_objects_collected_total counter\n"
        b'python_gc_objects_collected_total{generation="0"} 13250.0\n'
        b"# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        b"# TYPE process_resident_memory_bytes gauge\n"
        b"process_resident_memory_bytes 2.5165824e+09\n"
    )


# SGLang -----------------------------------------------------------------------------------


def _sglang(generation: str, f: SglangFigures, route: str) -> Answer:
    current = generation == "current"
    if route == "/health":
        return 200, JSON, b""
    if route == "/metrics":
        return 200, PROMETHEUS, sglang_metrics(generation, f)
    if route == "/v1/models":  # srt/entrypoints/openai/protocol.py ModelCard
        card: dict[str, Any] = {
            "id": f.model,
            "object": "model",
            "created": 1764884000,
            "owned_by": "sglang",
            "root": f.path,
        }
        if current:
            card["max_model_len"] = f.context
        return _json({"object": "list", "data": [card]})
    if route == "/get_model_info":  # srt/entrypoints/http_server.py get_model_info
        return _json({"model_path": f.path, "tokenizer_path": f.path, "is_generation": True})
    if route == "/get_server_info":  # server args merged with the scheduler's info
        info: dict[str, Any] = {
            "model_path": f.path,
            "tokenizer_path": f.path,
            "host": "127.0.0.1",
            "port": 30000,
            "tp_size": f.tp_size,
            "dp_size": len(f.ranks),
            "mem_fraction_static": 0.88,
            "context_length": None if current else f.context,
            "chunked_prefill_size": 8192,
            "version": "0.5.4" if current else "0.4.3",
        }
        info["max_total_num_tokens"] = sum(r.max_total_tokens for r in f.ranks)
        if current:
            info["internal_states"] = [
                {"max_total_num_tokens": r.max_total_tokens, "last_gen_throughput": 40.2}
                for r in f.ranks
            ]
        else:
            info["max_req_input_len"] = f.context - 5
        return _json(info)
    return NOT_FOUND


def sglang_metrics(generation: str, f: SglangFigures) -> bytes:
    reg = CollectorRegistry()
    current = generation == "current"
    labels = (
        ["model_name", "engine_type", "tp_rank", "pp_rank", "dp_rank"]
        if current
        else ["model_name"]
    )
    gauges = {
        "running": Gauge(
            "sglang:num_running_reqs", "The number of running requests.", labels, registry=reg
        ),
        "used_tokens": Gauge(
            "sglang:num_used_tokens", "The number of used tokens.", labels, registry=reg
        ),
        "usage": Gauge("sglang:token_usage", "The token usage.", labels, registry=reg),
        "throughput": Gauge(
            "sglang:gen_throughput", "The generation throughput (token/s).", labels, registry=reg
        ),
        "queued": Gauge(
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            labels,
            registry=reg,
        ),
        "cache_hit_rate": Gauge(
            "sglang:cache_hit_rate", "The prefix cache hit rate.", labels, registry=reg
        ),
    }
    if current:
        gauges["max_total_tokens"] = Gauge(
            "sglang:max_total_num_tokens",
            "Maximum total number of tokens in the KV cache pool.",
            labels,
            registry=reg,
        )
    Counter(
        "sglang:prompt_tokens", "Number of prefill tokens processed.", ["model_name"], registry=reg
    ).labels(f.model).inc(8128902)
    for dp, rank in enumerate(f.ranks if current else f.ranks[:1]):
        for tp in range(f.tp_size if current else 1):
            values = [f.model, "unified", str(tp), "0", str(dp)] if current else [f.model]
            figures = {
                "running": rank.running,
                "used_tokens": rank.used_tokens,
                "queued": rank.queued,
                "usage": rank.used_tokens / rank.max_total_tokens,
                "throughput": 40.2,
                "cache_hit_rate": rank.cache_hit_rate,
                "max_total_tokens": rank.max_total_tokens,
            }
            for key, gauge in gauges.items():
                gauge.labels(*values).set(figures[key])
    return _process_series() + generate_latest(reg)


# Ollama -----------------------------------------------------------------------------------


def _ollama(generation: str, f: OllamaFigures, method: str, route: str, body: bytes) -> Answer:
    if route == "/":
        return 200, "text/plain; charset=utf-8", b"Ollama is running"
    if route == "/api/version":
        return _json({"version": "0.12.3" if generation == "current" else "0.5.7"})
    if route == "/api/ps" and method == "GET":
        return _json({"models": [_ps_entry(generation, m) for m in f.models]})
    if route == "/api/show" and method == "POST":
        try:
            request = json.loads(body)
            wanted = request.get("model") or request.get("name")
        except (ValueError, AttributeError):
            return _json({"error": "invalid request body"}, 400)
        for model in f.models:
            if model.name == wanted:
                return _json(_show(generation, model))
        return _json({"error": f"model '{wanted}' not found"}, 404)
    return 404, "text/plain; charset=utf-8", b"404 page not found"


def _ps_entry(generation: str, m: OllamaModel) -> dict[str, Any]:
    """api/types.go ProcessModelResponse."""
    entry: dict[str, Any] = {
        "name": m.name,
        "model": m.name,
        "size": m.size,
        "digest": "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": m.architecture,
            "families": [m.architecture],
            "parameter_size": "1.2B",
            "quantization_level": "Q8_0",
        },
        "expires_at": m.expires_at,
        "size_vram": m.size_vram,
    }
    if generation == "current":
        entry["context_length"] = m.context_length
    return entry


def _show(generation: str, m: OllamaModel) -> dict[str, Any]:
    """api/types.go ShowResponse; model_info is the GGUF metadata."""
    a = m.architecture
    info = {
        "general.architecture": a,
        "general.file_type": 7,
        "general.parameter_count": 1235814432,
        "general.quantization_version": 2,
        f"{a}.attention.head_count": m.head_count,
        f"{a}.attention.head_count_kv": m.head_count_kv,
        f"{a}.attention.key_length": m.key_length,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-05,
        f"{a}.attention.value_length": m.value_length,
        f"{a}.block_count": m.block_count,
        f"{a}.context_length": m.trained_context,
        f"{a}.embedding_length": m.embedding_length,
        f"{a}.feed_forward_length": 8192,
        f"{a}.rope.dimension_count": 64,
        f"{a}.rope.freq_base": 500000,
        f"{a}.vocab_size": 128256,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": None,
    }
    doc: dict[str, Any] = {
        "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
        "modelfile": f"FROM {m.name}\n",
        "parameters": 'stop "<|eot_id|>"',
        "template": "{{ .Prompt }}",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": a,
            "families": [a],
            "parameter_size": "1.2B",
            "quantization_level": "Q8_0",
        },
        "model_info": info,
        "modified_at": "2026-11-30T10:00:00.5+00:00",
    }
    if generation == "current":
        doc["capabilities"] = ["completion", "tools"]
        doc["tensors"] = []
    return doc
