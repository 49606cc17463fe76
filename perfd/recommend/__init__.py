"""How much context and concurrency a model gets on a machine: pure memory math.

Standard library only, and cheap to import: ``perfctl recommend --offline`` imports it.
The daemon command passes live hardware (read from the monitor's snapshot); perfctl
offline plans for ``--gpu NAME`` / ``--gpus N`` / ``--memory SIZE`` (``plan_hardware``)::

    from perfd.recommend import Query, plan_hardware, recommend
    request = Query(model="llama-3.1-8b", gpu="H100")
    result = recommend(request, plan_hardware(request, None))
    result["recommended"]  # {'context': 32768, 'max_sequences': 13, 'rule': ...}
    result["flags"]["vllm"]  # '--max-model-len 32768 --max-num-seqs 13 ...'

Modules: ``request`` (Query, RecommendError, check_limits: every field bounded; build_request,
the one way a caller's words become a Query),
``bounds`` (the range of every config.json number), ``catalog`` (built-in models and GPUs),
``arch`` (config.json -> shape, parameter counts, KV elements), ``precision`` (bits per weight
and per KV element), ``weights`` (safetensors and GGUF headers), ``llama_memory`` (what a
GGUF costs llama.cpp: weights per device and the KV cache it allocates), ``resolve`` (request
-> model), ``hardware`` (live and planned machines), ``plan`` (the memory math and its
constants, with sources), ``advice`` (settings, tips, smallest change), ``report``.

The result (``recommend``), every size in bytes and every device figure per device:

- ``fits``; ``model`` (name, params, layers, kv_heads, head_dim, attention kind,
  max_position_embeddings, source...); ``hardware`` (what was planned for); ``precision``.
- ``weights_bytes`` (the whole model); ``kv_bytes_per_token`` (every layer attending to the
  full context); ``kv_bytes_per_sequence`` ({context, bytes}, sliding windows applied).
- ``budget``: total, free, utilization, margin, usable, weights, overhead (itemised),
  kv_budget (what is left), kv_usable (after vLLM's null block), KV bytes per token.
- ``max_tokens`` (KV tokens that fit: kv_budget // bytes per token); ``max_model_len`` (the
  longest single sequence that fits, up to max_position_embeddings).
- ``table``: ``{"context", "max_sequences", "kv_bytes"}`` for powers of two from 512 up to the
  model's maximum, the maximum itself and the requested context.
- ``recommended``: ``{"context", "max_sequences", "rule"}``. The rule: the largest context in
  the table that is at least min(4096, the model's maximum) and holds at least 8 sequences;
  when the minimum context itself holds fewer than 8, the largest context that holds as many
  as it does (so a sliding window's flat cost buys the full context); with ``context`` given,
  that context with as many as fit. Sequences are capped at vLLM's max_num_seqs default (256;
  1024 on GPUs of 70 GiB or more that are not A100s) or 16 for llama.cpp and Ollama.
  None when nothing fits.
- ``binding_limit`` (gpu_memory, ram, cgroup, kv_budget, max_position_embeddings or
  max_num_seqs) and ``binding_detail``.
- ``tips``: ``{"kind", "change", "bytes_saved", "settings", "result", "flags"}``, largest
  saving first (fp8 KV, shorter context, 8/4-bit weights, tensor parallel, CPU offload).
- ``flags``: ``vllm``, ``llama.cpp``, ``ollama`` (environment), ``ollama_modelfile``.
- ``vllm`` (engine vllm): block_size, num_gpu_blocks, usable_blocks, gpu_kv_cache_tokens,
  max_num_batched_tokens, max_num_seqs; ``notes``.
- When it does not fit: ``shortfall_bytes``, ``reason`` and ``smallest_change``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfd.recommend.hardware import (
        Gpu,
        Hardware,
        hardware_from_stats,
        list_gpus,
        plan_hardware,
    )
    from perfd.recommend.report import recommend
    from perfd.recommend.request import (
        UNUSABLE,
        Query,
        RecommendError,
        build_request,
        check_limits,
        unusable,
    )
    from perfd.recommend.resolve import list_models
    from perfd.wire.units import MAX_TEXT as MAX_SIZE_TEXT
    from perfd.wire.units import parse_size

_HOMES = {
    "Gpu": "hardware",
    "Hardware": "hardware",
    "hardware_from_stats": "hardware",
    "list_gpus": "hardware",
    "plan_hardware": "hardware",
    "recommend": "report",
    "RecommendError": "request",
    "Query": "request",
    "check_limits": "request",
    "build_request": "request",
    "UNUSABLE": "request",
    "unusable": "request",
    "list_models": "resolve",
}

__all__ = [
    "MAX_SIZE_TEXT",
    "UNUSABLE",
    "Gpu",
    "Hardware",
    "Query",
    "RecommendError",
    "build_request",
    "check_limits",
    "hardware_from_stats",
    "list_gpus",
    "list_models",
    "parse_size",
    "plan_hardware",
    "recommend",
    "unusable",
]


def __getattr__(name: str) -> Any:
    """The public names, each imported on first use: ``import perfd.recommend`` is free."""
    import importlib

    if name in ("parse_size", "MAX_SIZE_TEXT"):
        from perfd.wire import units

        return units.parse_size if name == "parse_size" else units.MAX_TEXT
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'perfd.recommend' has no attribute {name!r}")
    return getattr(importlib.import_module(f"perfd.recommend.{home}"), name)
