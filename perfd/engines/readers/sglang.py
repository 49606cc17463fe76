"""SGLang: /metrics, /v1/models, and /get_model_info and /get_server_info where those lack a
figure.

Metric names from sgl-project/sglang python/sglang/srt/metrics/collector.py
(``SchedulerMetricsCollector``; served with ``--enable-metrics``), gauges labelled
``model_name`` (plus ``tp_rank``, ``pp_rank``, ``dp_rank``, ``moe_ep_rank``... in newer
servers): ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:num_used_tokens``,
``sglang:token_usage`` (used / pool, 0..1), ``sglang:cache_hit_rate`` (the prefix cache's,
0..1) and, in newer servers, ``sglang:max_total_num_tokens`` (the KV pool, in tokens). Older
collectors (0.4) lack ``max_total_num_tokens``: the pool then comes from /get_server_info's
``max_total_num_tokens`` (the scheduler's info merged into the server args).

Series are summed over data-parallel ranks; series of a tensor, pipeline or expert parallel
rank other than 0 repeat rank 0's figures and are skipped.

/v1/models (python/sglang/srt/entrypoints/openai/protocol.py ``ModelCard``): ``data[]`` with
``id``, ``root`` and, in newer servers, ``max_model_len``; where it lacks the context,
/get_server_info's ``context_length`` (a server arg, null unless set); where it lacks the
path, /get_model_info's ``model_path``. Those two are read only for a figure the others lack;
when they fail (an HTTP error, a bad payload) that figure stays unknown. A /v1/models that
fails leaves the models unknown, noted in ``settings["unavailable"]``; the metrics stand.
"""

from __future__ import annotations

from typing import Any

from perfd.engines.errors import PayloadError
from perfd.engines.readers import Get
from perfd.engines.readers.payload import (
    Labels,
    count,
    field,
    json_object,
    openai_models,
    prometheus,
)
from perfd.engines.record import Reading, ServedModel, Target

METRICS = "/metrics"
MODELS = "/v1/models"
MODEL_INFO = "/get_model_info"
SERVER_INFO = "/get_server_info"

RUNNING = "sglang:num_running_reqs"
WAITING = "sglang:num_queue_reqs"
USED = "sglang:num_used_tokens"
USAGE = "sglang:token_usage"
POOL = "sglang:max_total_num_tokens"
HIT_RATE = "sglang:cache_hit_rate"
REPEATED_RANKS = ("tp_rank", "pp_rank", "moe_ep_rank", "attn_tp_rank")


def _rank_zero(labels: Labels) -> bool:
    return all(labels.get(rank, "0") == "0" for rank in REPEATED_RANKS)


def read(target: Target, get: Get) -> Reading:
    samples = prometheus(get(METRICS), METRICS)
    if not any(name.startswith("sglang:") for name in samples.names()):
        raise PayloadError(
            f"{METRICS}: no sglang: series (not an SGLang server, or no --enable-metrics)"
        )
    fallbacks: list[str] = []
    unavailable: dict[str, str] = {}
    try:  # the metrics are the engine's figures; its model list is their label
        models = openai_models(get(MODELS), MODELS)
    except PayloadError as exc:
        unavailable[MODELS] = str(exc)
        models = []
    used = count(samples.total(USED, _rank_zero))
    capacity = count(samples.total(POOL, _rank_zero))
    server: dict[str, Any] | None = None
    if capacity is None or any(model.context is None for model in models):
        server = _optional(get, SERVER_INFO)
    if capacity is None and server is not None:
        capacity = _pool(server)
        if capacity is not None:
            fallbacks.append(f"{SERVER_INFO}:max_total_num_tokens")
    if server is not None and any(model.context is None for model in models):
        context = field(server, "context_length", int, SERVER_INFO)
        if context is not None:
            fallbacks.append(f"{SERVER_INFO}:context_length")
            models = [_with(model, context=context) for model in models]
    if models and any(model.path is None for model in models):
        info = _optional(get, MODEL_INFO)
        path = field(info, "model_path", str, MODEL_INFO) if info is not None else None
        models = [_with(model, path=model.path or path) for model in models]
    ratio = used / capacity if used is not None and capacity else None
    if ratio is None and (usage := samples.rows(USAGE, _rank_zero)):
        fallbacks.append(USAGE)
        ratio = sum(value for _, value in usage) / len(usage)
    hits = samples.rows(HIT_RATE, _rank_zero)
    return Reading(
        models=tuple(models),
        kv_capacity_tokens=capacity,
        kv_used_tokens=used,
        kv_usage_ratio=ratio,
        requests_running=count(samples.total(RUNNING, _rank_zero)),
        requests_waiting=count(samples.total(WAITING, _rank_zero)),
        prefix_cache_hit_ratio=sum(v for _, v in hits) / len(hits) if hits else None,
        settings={
            **({"max_total_num_tokens": capacity} if capacity is not None else {}),
            **({"unavailable": unavailable} if unavailable else {}),
        },
        fallbacks=tuple(fallbacks),
    )


def _optional(get: Get, path: str) -> dict[str, Any] | None:
    """An endpoint read only for a figure the others lack: its failure leaves the figure
    unknown rather than failing the read (EngineDown and EngineTimeout still do)."""
    try:
        return json_object(get(path), path)
    except PayloadError:
        return None


def _pool(server: dict[str, Any]) -> int | None:
    pool = field(server, "max_total_num_tokens", int, SERVER_INFO)
    states = server.get("internal_states")
    if pool is None and isinstance(states, list):
        pools = [
            field(s, "max_total_num_tokens", int, SERVER_INFO)
            for s in states
            if isinstance(s, dict)
        ]
        known = [p for p in pools if p is not None]
        pool = sum(known) if known else None
    return pool


def _with(model: ServedModel, **changes: Any) -> ServedModel:
    from dataclasses import replace

    return replace(model, **changes)
