"""``recommend()``: one request on one machine, as a JSON-able dict (see ``perfd.recommend``)."""

from __future__ import annotations

from typing import Any

from perfd.recommend.advice import flags, smallest_change, tips
from perfd.recommend.hardware import Hardware
from perfd.recommend.plan import MIN_CONTEXT, TARGET_SEQUENCES, GiB, Options, Plan, make_plan
from perfd.recommend.precision import KV_FORMATS, kv_format, weight_format
from perfd.recommend.request import Query, RecommendError, check
from perfd.recommend.resolve import kv_bytes, model_summary, resolve_model

RULE = (
    f"the largest context in the table, at least min({MIN_CONTEXT}, the model's maximum), "
    f"that holds {TARGET_SEQUENCES} sequences (or, when that minimum holds fewer, as many as it "
    "does); with --context, that context. Sequences are capped at the engine's max_num_seqs."
)


def _gib(size: float) -> str:
    return f"{size / GiB:.2f} GiB"


def recommend(request: Query, hardware: Hardware) -> dict[str, Any]:
    """Plan ``request`` on ``hardware``: budget, context table, recommended point, settings,
    tips and, when it does not fit, the numbers and the smallest change that would."""
    engine = check(request)
    model = resolve_model(request)
    spec = model.spec
    if request.context is not None and request.context > spec.max_position:
        raise RecommendError(
            f"context {request.context} is longer than {spec.name}'s max_position_embeddings "
            f"({spec.max_position})",
            option="context",
            value=request.context,
        )
    kv = kv_format(request.kv_dtype) if request.kv_dtype else KV_FORMATS[spec.dtype]
    if engine == "vllm" and kv.name in ("q8_0", "q4_0"):
        # vLLM has no llama.cpp block formats: its flag becomes --kv-cache-dtype fp8, so plan
        # for what vLLM will really hold (8 bits), not the 4.5 or 8.5 of q4_0 / q8_0.
        kv = KV_FORMATS["fp8"]
    opts = Options(
        engine=engine,
        weights=weight_format(request.quant) if request.quant else None,
        kv=kv,
        utilization=request.utilization,
        context=request.context,
        kv_budget=request.kv_budget,
    )
    plan = make_plan(model, hardware, opts)
    point = plan.recommended()
    shown = request.context or (point[0] if point else plan.required_context)
    fmt = opts.weights or model.native
    result: dict[str, Any] = {
        "fits": plan.fits,
        "engine": engine,
        "model": model_summary(model),
        "hardware": {**hardware.as_dict(), "tensor_parallel": plan.shards},
        "precision": {
            "weights": fmt.name,
            "weights_bits_per_param": round(8 * plan.weights_bytes / max(1, model.groups.total), 3),
            "kv_cache": kv.name,
            "kv_bits": kv.bits,
        },
        "weights_bytes": plan.weights_bytes,
        "kv_bytes_per_token": kv_bytes(spec, 1, kv),
        "kv_bytes_per_sequence": {"context": shown, "bytes": kv_bytes(spec, shown, kv)},
        "max_tokens": plan.max_tokens,
        "max_model_len": plan.max_model_len,
        "budget": _budget(plan),
        "table": [
            {"context": c, "max_sequences": plan.sequences(c), "kv_bytes": kv_bytes(spec, c, kv)}
            for c in plan.contexts()
        ],
        "recommended": None
        if point is None
        else {"context": point[0], "max_sequences": point[1], "rule": RULE},
        "tips": tips(model, hardware, opts, plan),
        "flags": flags(plan, point),
        "notes": list(plan.notes),
    }
    result["binding_limit"], result["binding_detail"] = _binding(plan, point)
    if plan.vllm is not None:
        result["vllm"] = plan.vllm
    if not plan.fits:
        result["shortfall_bytes"], result["reason"] = _shortfall(plan)
        result["smallest_change"] = smallest_change(model, hardware, opts, plan)
    return result


def _budget(plan: Plan) -> dict[str, Any]:
    margin = (
        plan.total_bytes if plan.options.engine == "vllm" else plan.free_bytes
    ) - plan.usable_bytes
    return {
        "device": plan.device,
        "devices": plan.shards,
        "per_device": True,
        "total_bytes": plan.total_bytes,
        "free_bytes": plan.free_bytes,
        "utilization": plan.utilization,
        "margin_bytes": max(0, margin) if plan.device != "kv_budget" else 0,
        "usable_bytes": plan.usable_bytes,
        "weights_bytes": plan.weights_device_bytes,
        "ram_weights_bytes": plan.ram_weights_bytes,
        "overhead_bytes": sum(plan.overhead.values()),
        "overhead": dict(plan.overhead),
        "kv_budget_bytes": plan.kv_budget_bytes,
        "kv_usable_bytes": plan.kv_usable_bytes,
        "kv_bytes_per_token": plan.kv_token_bytes,
    }


def _binding(plan: Plan, point: tuple[int, int] | None) -> tuple[str, str]:
    spec = plan.model.spec
    if point is None:
        return plan.resource, _shortfall(plan)[1]
    context, sequences = point
    fit = plan.sequences(context)
    if fit > plan.cap:
        return "max_num_seqs", (
            f"{fit} sequences of {context} tokens fit; capped at {plan.cap} "
            f"({plan.options.engine}'s max_num_seqs default)"
        )
    if context >= spec.max_position:
        return "max_position_embeddings", (
            f"the model's {spec.max_position}-token maximum context; memory holds "
            f"{sequences} such sequences"
        )
    return plan.resource, (
        f"{_gib(plan.kv_usable_bytes)} of KV cache holds {sequences} sequences of {context} "
        f"tokens ({plan.max_tokens} tokens in all)"
    )


def _shortfall(plan: Plan) -> tuple[int, str]:
    """(bytes short, why) for the required context."""
    spec, required = plan.model.spec, plan.required_context
    where = (
        plan.devices[0].name if plan.devices else {"cpu": "RAM"}.get(plan.device, "the KV budget")
    )
    if plan.ram_short_bytes:
        return plan.ram_short_bytes, (
            f"weights kept in RAM need {_gib(plan.ram_weights_bytes)}, more than the "
            f"{_gib(plan.ram_weights_bytes - plan.ram_short_bytes)} available"
        )
    sequence = plan.cost(required)
    if plan.kv_budget_bytes <= 0:
        overhead = sum(plan.overhead.values())
        vllm = plan.options.engine == "vllm" and plan.device == "gpu"
        base, basis = (plan.total_bytes, "total") if vllm else (plan.free_bytes, "free")
        per = " per GPU" if plan.shards > 1 else ""
        return sequence - plan.kv_budget_bytes, (
            f"{spec.name} needs {_gib(plan.weights_device_bytes)} of weights{per} + "
            f"{_gib(overhead)} overhead, but {where} allows {_gib(plan.usable_bytes)} "
            f"({_gib(base)} {basis} x {plan.utilization:g}): short by "
            f"{_gib(sequence - plan.kv_budget_bytes)} with one {required}-token sequence"
        )
    return plan.need_bytes(required), (
        f"one {required}-token sequence needs {_gib(sequence)} of KV cache, but only "
        f"{_gib(plan.kv_usable_bytes)} is left on {where} after weights and overhead"
    )
