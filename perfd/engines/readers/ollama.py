"""Ollama: /api/ps (the loaded models) and /api/show (each one's architecture).

Shapes from ollama/ollama api/types.go and docs/api.md:

- ``GET /api/ps`` -> ``ProcessResponse{models: [ProcessModelResponse]}``: ``name``, ``model``,
  ``size`` (bytes in memory), ``size_vram`` (of them on the GPU), ``digest``, ``details``,
  ``expires_at`` (RFC 3339) and, in newer servers, ``context_length`` (the runner's
  context, in tokens). Older servers lack ``context_length``.
- ``POST /api/show {"model": NAME}`` -> ``ShowResponse``: ``model_info`` holds the GGUF
  metadata: ``general.architecture`` (say "llama") and ``<arch>.block_count``,
  ``<arch>.attention.head_count``, ``<arch>.attention.head_count_kv``,
  ``<arch>.attention.key_length`` / ``value_length``, ``<arch>.embedding_length``,
  ``<arch>.context_length`` (the trained context).

KV capacity: the sum of the loaded models' ``context_length`` where every one reports it
(each runner holds a KV cache of its context). Ollama reports no KV use, queue or
preemptions. A model whose /api/show fails keeps ``architecture`` None; the reason is kept in
``settings["architecture_errors"]``.
"""

from __future__ import annotations

import json
from typing import Any

from perfd.engines.errors import PayloadError
from perfd.engines.readers import Get
from perfd.engines.readers.payload import MAX_TEXT, field, json_object
from perfd.engines.record import Reading, ServedModel, Target

PS = "/api/ps"
SHOW = "/api/show"
MAX_MODELS = 64

# model_info keys (after "<arch>.") -> the architecture dict's keys
FACTS = {
    "block_count": "block_count",
    "attention.head_count": "head_count",
    "attention.head_count_kv": "head_count_kv",
    "attention.key_length": "key_length",
    "attention.value_length": "value_length",
    "embedding_length": "embedding_length",
    "context_length": "context_length",
    "feed_forward_length": "feed_forward_length",  # the weights, for the plan check
    "vocab_size": "vocab_size",
}


def read(target: Target, get: Get) -> Reading:
    doc = json_object(get(PS), PS)
    entries = field(doc, "models", list, PS)
    if entries is None:
        raise PayloadError(f"{PS}: no 'models' list")
    models: list[ServedModel] = []
    errors: list[str] = []
    for entry in entries[:MAX_MODELS]:
        if not isinstance(entry, dict):
            raise PayloadError(f"{PS}: a model entry is {type(entry).__name__}, not an object")
        name = field(entry, "name", str, PS) or field(entry, "model", str, PS)
        if not name:
            raise PayloadError(f"{PS}: a model entry without a 'name'")
        architecture = None
        try:
            architecture = _architecture(get(SHOW, json.dumps({"model": name}).encode()))
        except PayloadError as exc:
            errors.append(str(exc)[:MAX_TEXT])
        models.append(
            ServedModel(
                name=name,
                context=_natural(entry, "context_length"),
                size_bytes=_natural(entry, "size"),
                vram_bytes=_natural(entry, "size_vram"),
                expires_at=field(entry, "expires_at", str, PS),
                architecture=architecture,
            )
        )
    contexts = [model.context for model in models if model.context is not None]
    capacity = sum(contexts) if models and len(contexts) == len(models) else None
    settings: dict[str, Any] = {"architecture_errors": errors} if errors else {}
    return Reading(models=tuple(models), kv_capacity_tokens=capacity, settings=settings)


def _natural(entry: dict[str, Any], key: str) -> int | None:
    value = field(entry, key, int, PS)
    if value is not None and value < 0:
        raise PayloadError(f"{PS}: {key!r} is negative ({value})")
    return value


def _architecture(data: bytes) -> dict[str, Any]:
    doc = json_object(data, SHOW)
    info = field(doc, "model_info", dict, SHOW)
    if info is None:
        raise PayloadError(f"{SHOW}: no 'model_info' object")
    arch = field(info, "general.architecture", str, SHOW)
    if not arch:
        raise PayloadError(f"{SHOW}: model_info has no 'general.architecture'")
    facts: dict[str, Any] = {"architecture": arch}
    for key, name in FACTS.items():
        value = info.get(f"{arch}.{key}")
        if isinstance(value, bool):
            raise PayloadError(f"{SHOW}: '{arch}.{key}' should be an integer, got bool")
        if isinstance(value, int):
            facts[name] = value
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            facts[name] = value[:4096]  # per-layer values (some models vary head_count_kv)
        elif value is not None:
            raise PayloadError(
                f"{SHOW}: '{arch}.{key}' should be an integer, got {type(value).__name__}"
            )
    return facts
