"""vLLM: /metrics and /v1/models.

The metric names, both generations (vllm-project/vllm):

- V1 engine, vllm/v1/metrics/loggers.py (``PrometheusStatLogger``), labels ``model_name`` and
  ``engine`` (one series per engine core: data parallel runs several in one server):
  ``vllm:kv_cache_usage_perc`` (0.9+; before it ``vllm:gpu_cache_usage_perc``, deprecated in
  0.9, hidden from 0.10), ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:num_preemptions`` (a Counter: exposed as ``vllm:num_preemptions_total``),
  ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` (Counters in tokens; before 0.9
  ``vllm:gpu_prefix_cache_queries`` / ``_hits``), and ``vllm:cache_config_info`` (an info
  gauge set to 1 whose labels are CacheConfig.metrics_info(): ``num_gpu_blocks``,
  ``block_size``, ``gpu_memory_utilization``, ``cache_dtype``... plus ``engine``).
- V0 engine, vllm/engine/metrics.py (0.6, 0.7), label ``model_name`` only:
  ``vllm:gpu_cache_usage_perc``, ``vllm:num_preemptions_total``,
  ``vllm:gpu_prefix_cache_hit_rate`` (a gauge, 0..1), ``vllm:cache_config_info``.

Summed over every series (the ``engine`` label). KV capacity in tokens: the sum over engines
of ``num_gpu_blocks x block_size`` (or a ``kv_cache_size_tokens`` label where present); KV used:
each engine's usage ratio times its capacity. Each older name used is listed in ``fallbacks``.

/v1/models (vllm/entrypoints/openai/protocol.py ``ModelCard``): ``data[]`` with ``id``,
``root`` (the weights' path or repo) and ``max_model_len``; LoRA adapters (a ``parent``) are
not served models of their own and are skipped.
"""

from __future__ import annotations

from typing import Any

from perfd.engines.errors import PayloadError
from perfd.engines.readers import Get
from perfd.engines.readers.payload import (
    Samples,
    count,
    label_float,
    label_int,
    openai_models,
    prometheus,
    text,
)
from perfd.engines.record import Reading, Target

METRICS = "/metrics"
MODELS = "/v1/models"

USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
HIT_RATE = "vllm:gpu_prefix_cache_hit_rate"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
CACHE_INFO = "vllm:cache_config_info"
SETTINGS = ("block_size", "num_gpu_blocks", "gpu_memory_utilization", "cache_dtype")


def read(target: Target, get: Get) -> Reading:
    samples = prometheus(get(METRICS), METRICS)
    if not any(name.startswith("vllm:") for name in samples.names()):
        raise PayloadError(
            f"{METRICS}: no vllm: series (not a vLLM server, or its metrics are off)"
        )
    models = tuple(openai_models(get(MODELS), MODELS))
    fallbacks: list[str] = []

    def pick(names: tuple[str, ...]) -> float | None:
        name, value = samples.first_total(names)
        if name is not None and name != names[0]:
            fallbacks.append(name)
        return value

    capacity, used, ratio, settings = _kv(samples, fallbacks)
    queries, hits = pick(QUERIES), pick(HITS)
    hit_ratio = None
    if queries is None and (rate := samples.rows(HIT_RATE)):
        fallbacks.append(HIT_RATE)
        hit_ratio = sum(value for _, value in rate) / len(rate)
    return Reading(
        models=models,
        kv_capacity_tokens=capacity,
        kv_used_tokens=used,
        kv_usage_ratio=ratio,
        requests_running=count(samples.total(RUNNING)),
        requests_waiting=count(samples.total(WAITING)),
        preemptions_total=pick(PREEMPTIONS),
        prefix_cache_queries_total=queries,
        prefix_cache_hits_total=hits,
        prefix_cache_hit_ratio=hit_ratio,
        settings=settings,
        fallbacks=tuple(fallbacks),
    )


def _kv(
    samples: Samples, fallbacks: list[str]
) -> tuple[int | None, int | None, float | None, dict[str, Any]]:
    """(capacity tokens, used tokens, usage ratio, settings) over every engine."""
    capacities: dict[str, int | None] = {}
    settings: dict[str, Any] = {}
    for labels, _ in samples.rows(CACHE_INFO):
        engine = labels.get("engine", "")
        tokens = label_int(labels, "kv_cache_size_tokens")
        blocks, size = label_int(labels, "num_gpu_blocks"), label_int(labels, "block_size")
        if tokens is None and blocks is not None and size is not None:
            tokens = blocks * size
        capacities[engine] = tokens
        if not settings:
            settings = _settings(labels)
    usage_name, _ = samples.first_total(USAGE)
    if usage_name is None:
        ratios: dict[str, float] = {}
    else:
        if usage_name != USAGE[0]:
            fallbacks.append(usage_name)
        ratios = {labels.get("engine", ""): value for labels, value in samples.rows(usage_name)}
    known = [tokens for tokens in capacities.values() if tokens is not None]
    capacity = sum(known) if capacities and len(known) == len(capacities) else None
    if capacity is not None and ratios and set(ratios) <= set(capacities):
        used = sum(ratios[engine] * (capacities[engine] or 0) for engine in ratios)
        ratio = used / capacity if capacity else None
        return capacity, round(used), ratio, settings
    ratio = sum(ratios.values()) / len(ratios) if ratios else None
    return capacity, None, ratio, settings


def _settings(labels: dict[str, str] | Any) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key in SETTINGS:
        if key not in labels:
            continue
        if key == "gpu_memory_utilization":
            settings[key] = label_float(labels, key)
        elif key in ("block_size", "num_gpu_blocks"):
            settings[key] = label_int(labels, key)
        else:
            settings[key] = text(labels[key])
    if (tokens := label_int(labels, "kv_cache_size_tokens")) is not None:
        settings["kv_cache_size_tokens"] = tokens
    return settings
