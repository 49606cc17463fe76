"""What to change: ready-to-paste engine settings, tips ranked by bytes saved, and the
smallest change that makes a model fit.

A tip's ``bytes_saved`` is per device, for the same workload before and after: ``TARGET_
SEQUENCES`` sequences of the recommended context (or of the required one when nothing fits),
counting weights, overhead and KV cache. Its ``result`` is the plan re-run with the change.

The smallest change is the first of these that fits, in this order (cheapest first: same
hardware before more hardware, quality before speed): a shorter context; an fp8 KV cache;
8-bit weights; 4-bit weights; 4-bit weights and an fp8 KV cache; CPU offload of at most a
quarter of the weights; tensor parallel over 2 GPUs, 4-bit weights over 2, 4 GPUs, 4-bit
over 4, 8 GPUs, 4-bit over 8; then CPU offload of any size, alone or with 4-bit weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

from perfd.recommend.hardware import Hardware
from perfd.recommend.plan import (
    LLAMA_CPP_MAX_PARALLEL,
    TARGET_SEQUENCES,
    GiB,
    Model,
    Options,
    Plan,
    make_plan,
    plan_numbers,
    tensor_parallel_size,
)
from perfd.recommend.precision import KV_FORMATS, KvFormat, WeightFormat, weight_format

_VLLM_QUANT = {"fp8": "fp8", "int8": "bitsandbytes", "int4": "bitsandbytes"}
_VLLM_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def flags(plan: Plan, point: tuple[int, int] | None) -> dict[str, str]:
    """vLLM, llama.cpp and Ollama settings for ``point`` (context, sequences); {} for None."""
    if point is None:
        return {}
    context, sequences = point
    opts, spec = plan.options, plan.model.spec
    vllm = [f"--max-model-len {context}", f"--max-num-seqs {sequences}"]
    if plan.device != "cpu":
        vllm += [f"--gpu-memory-utilization {plan.utilization:g}"]
        vllm += [f"--tensor-parallel-size {plan.shards}"]
    quantized_kv = opts.kv.bits <= 8.5
    if quantized_kv:
        vllm.append("--kv-cache-dtype fp8")
    fmt = opts.weights
    if fmt is not None and fmt.name != plan.model.native.name:
        if fmt.name in _VLLM_QUANT:
            vllm.append(f"--quantization {_VLLM_QUANT[fmt.name]}")
        elif fmt.name in _VLLM_DTYPE:
            vllm.append(f"--dtype {_VLLM_DTYPE[fmt.name]}")
    if opts.offload_bytes:
        vllm.append(f"--cpu-offload-gb {-(-opts.offload_bytes // GiB)}")
    parallel = min(sequences, LLAMA_CPP_MAX_PARALLEL)
    llama = [f"-c {context * parallel}", f"-np {parallel}", f"-ngl {_gpu_layers(plan)}"]
    ollama = f"OLLAMA_NUM_PARALLEL={parallel}"
    if quantized_kv:
        cache = "q4_0" if opts.kv.name == "q4_0" else "q8_0"
        llama.append(f"-ctk {cache} -ctv {cache} -fa on")
        ollama += f" OLLAMA_FLASH_ATTENTION=1 OLLAMA_KV_CACHE_TYPE={cache}"
    result = {
        "vllm": " ".join(vllm),
        "llama.cpp": " ".join(llama),
        "ollama": ollama,
        "ollama_modelfile": f"PARAMETER num_ctx {context}",
    }
    if plan.device == "cpu":
        result["vllm_env"] = f"VLLM_CPU_KVCACHE_SPACE={max(1, plan.kv_budget_bytes // GiB)}"
    if fmt is not None and fmt.name in ("awq", "gptq"):
        result["note"] = f"use a pre-quantized {fmt.name.upper()} checkpoint of {spec.name}"
    return result


def _gpu_layers(plan: Plan) -> int:
    """llama.cpp -ngl: 999 (every layer), 0 on a CPU host, fewer with offload."""
    if plan.device == "cpu":
        return 0
    if not plan.options.offload_bytes:
        return 999
    on_gpu = plan.weights_device_bytes + plan.options.offload_bytes
    keep = plan.weights_device_bytes / on_gpu if on_gpu else 0.0
    return int(plan.model.spec.layers * keep)


class _Variants:
    """Re-plans of one request with one thing changed."""

    def __init__(self, model: Model, hardware: Hardware, opts: Options, plan: Plan) -> None:
        self.model, self.hardware, self.opts, self.plan = model, hardware, opts, plan
        self.vllm = opts.engine == "vllm"
        bits = 8 * plan.weights_bytes / max(1, model.groups.total)
        self.bits = bits
        self.gpu = plan.device == "gpu"

    def run(self, hardware: Hardware | None = None, **changes: Any) -> Plan:
        return make_plan(
            self.model, hardware or self.hardware, dataclasses.replace(self.opts, **changes)
        )

    def eight_bit(self) -> WeightFormat | None:
        if self.bits <= 9:
            return None
        if not self.vllm:
            return weight_format("Q8_0")
        capability = self.plan.devices[0].compute_capability if self.plan.devices else None
        fp8 = capability is None or tuple(map(int, capability.split("."))) >= (8, 9)
        return weight_format("fp8" if fp8 else "int8")

    def four_bit(self) -> WeightFormat | None:
        if self.bits <= 5.5:
            return None
        return weight_format("awq" if self.vllm else "Q4_K_M")

    def kv8(self) -> KvFormat | None:
        if self.opts.kv.bits <= 8.5:
            return None
        return KV_FORMATS["fp8" if self.vllm else "q8_0"]

    def gpus(self, count: int) -> Hardware | None:
        """This plan's GPU ``count`` times, if the engine can split the model that way."""
        if not self.gpu or count <= self.plan.shards:
            return None
        if self.vllm and tensor_parallel_size(self.model.spec, count) != count:
            return None
        first = self.plan.devices[0]
        gpus = tuple(dataclasses.replace(first, index=i, mig=False) for i in range(count))
        return dataclasses.replace(self.hardware, gpus=gpus, source="planned")

    def tensor_parallel(self, need_fit: bool) -> Plan | None:
        """The plan over twice the GPUs (or, with ``need_fit``, the fewest, up to 8, that fit)."""
        count = self.plan.shards * 2
        while count <= 8:
            more = self.gpus(count)
            if more is not None:
                wider = self.run(hardware=more)
                if wider.fits or not need_fit:
                    return wider
            count *= 2
        return None

    def offload(
        self, fmt: WeightFormat | None, most: float, target: tuple[int, int]
    ) -> Plan | None:
        """The least CPU offload, in whole GiB up to ``most`` of the device weights, that
        serves ``target`` (context, sequences); None if none does or RAM is short."""
        if not self.gpu:
            return None
        base = self.run(weights=fmt or self.opts.weights)
        limit = int(base.weights_device_bytes * most) // GiB
        ram = self.hardware.ram_usable_bytes
        if ram:
            limit = min(limit, max(0, ram - base.ram_weights_bytes) // GiB // base.shards)
        context, sequences = target
        low, high, found = 1, limit, None
        while low <= high:
            mid = (low + high) // 2
            trial = self.run(weights=fmt or self.opts.weights, offload_bytes=mid * GiB)
            if trial.sequences(context) >= sequences:
                found, high = trial, mid - 1
            else:
                low = mid + 1
        return found


def workload_bytes(plan: Plan, context: int, sequences: int = TARGET_SEQUENCES) -> int:
    """Device bytes for weights, overhead and ``sequences`` of ``context`` tokens."""
    weights = plan.weights_device_bytes
    return weights + sum(plan.overhead.values()) + sequences * plan.cost(context)


def _entry(kind: str, change: str, settings: dict[str, Any], variant: Plan) -> dict[str, Any]:
    return {
        "kind": kind,
        "change": change,
        "settings": settings,
        "result": plan_numbers(variant),
        "flags": flags(variant, variant.recommended()),
    }


def _offload_change(variant: Plan, quant: str | None) -> tuple[str, dict[str, Any]]:
    gib = variant.options.offload_bytes // GiB
    prefix = f"{quant} weights and " if quant else ""
    settings: dict[str, Any] = {"offload_gib": gib, "ram_needed_bytes": variant.ram_weights_bytes}
    if quant:
        settings["quant"] = quant
    return f"{prefix}offload {gib} GiB of weights per GPU to RAM (slower decoding)", settings


def tips(model: Model, hardware: Hardware, opts: Options, plan: Plan) -> list[dict[str, Any]]:
    """Changes that free device memory, largest saving first (see the module docstring)."""
    v = _Variants(model, hardware, opts, plan)
    point = plan.recommended()
    context = point[0] if point else plan.required_context
    before = workload_bytes(plan, context)
    found: list[tuple[int, dict[str, Any]]] = []

    def add(kind: str, change: str, settings: dict[str, Any], variant: Plan, at: int) -> None:
        saved = before - workload_bytes(variant, at)
        if saved > 0:
            found.append((saved, {**_entry(kind, change, settings, variant), "bytes_saved": saved}))

    if (kv := v.kv8()) is not None:
        add("kv_cache_dtype", f"{kv.name} KV cache", {"kv_dtype": kv.name}, v.run(kv=kv), context)
    if context // 2 >= 512:
        shorter = context // 2
        change = f"max context {shorter} instead of {context}"
        add("shorter_context", change, {"context": shorter}, v.run(context=shorter), shorter)
    for fmt in (v.eight_bit(), v.four_bit()):
        if fmt is not None:
            change = f"{fmt.name} weights ({fmt.note or 'all tensors'})"
            add("weights", change, {"quant": fmt.name}, v.run(weights=fmt), context)
    wider = v.tensor_parallel(need_fit=not plan.fits)
    if wider is not None:
        change = f"tensor parallel over {wider.shards} x {plan.devices[0].name}"
        add("tensor_parallel", change, {"gpus": wider.shards}, wider, context)
    if plan.fits and point is not None and point[0] < model.spec.max_position:
        target = (min(2 * point[0], model.spec.max_position), TARGET_SEQUENCES)
    else:
        target = (plan.required_context, 1)
    offloaded = v.offload(None, 1.0, target) if not (plan.fits and opts.context) else None
    if offloaded is not None:
        change, settings = _offload_change(offloaded, None)
        add("cpu_offload", change, settings, offloaded, context)
    found.sort(key=lambda item: -item[0])
    return [entry for _, entry in found]


def smallest_change(model: Model, hardware: Hardware, opts: Options, plan: Plan) -> dict[str, Any]:
    """The first change (in the module docstring's order) that makes the model fit."""
    v = _Variants(model, hardware, opts, plan)
    required = plan.required_context
    target = (required, 1)
    kv, eight, four = v.kv8(), v.eight_bit(), v.four_bit()
    steps: list[tuple[str, str, dict[str, Any], Callable[[], Plan | None]]] = []
    shorter = [c for c in plan.contexts() if c < required and plan.sequences(c) >= 1]
    if shorter:
        c = max(shorter)
        steps.append(
            ("shorter_context", f"max context {c}", {"context": c}, lambda: v.run(context=c))
        )
    if kv is not None:
        steps.append(
            ("kv_cache_dtype", f"{kv.name} KV cache", {"kv_dtype": kv.name}, lambda: v.run(kv=kv))
        )
    for fmt in (eight, four):
        if fmt is not None:
            steps.append(
                ("weights", f"{fmt.name} weights", {"quant": fmt.name}, partial(v.run, weights=fmt))
            )
    if four is not None and kv is not None:
        both = {"quant": four.name, "kv_dtype": kv.name}
        steps.append(
            (
                "weights+kv",
                f"{four.name} weights and {kv.name} KV cache",
                both,
                lambda: v.run(weights=four, kv=kv),
            )
        )
    steps.append(("cpu_offload", "", {}, lambda: v.offload(None, 0.25, target)))
    for count in (2, 4, 8):
        more = v.gpus(count)
        if more is None:
            continue
        where = f"tensor parallel over {count} x {plan.devices[0].name}"
        steps.append(("tensor_parallel", where, {"gpus": count}, partial(v.run, hardware=more)))
        if four is not None:
            settings = {"quant": four.name, "gpus": count}
            change = f"{four.name} weights and {where}"
            steps.append(
                (
                    "weights+tensor_parallel",
                    change,
                    settings,
                    partial(v.run, hardware=more, weights=four),
                )
            )
    steps.append(("cpu_offload", "", {}, lambda: v.offload(None, 1.0, target)))
    if four is not None:
        steps.append(("weights+cpu_offload", "", {}, lambda: v.offload(four, 1.0, target)))
    for kind, text, options, attempt in steps:
        variant = attempt()
        if variant is None or not variant.fits:
            continue
        if kind.endswith("cpu_offload"):
            quant = four.name if four is not None and kind.startswith("weights") else None
            return _entry(kind, *_offload_change(variant, quant), variant)
        return _entry(kind, text, options, variant)
    tried = "4-bit weights over 8 GPUs, nor CPU offload" if v.gpu else "4-bit weights"
    return {
        "kind": "none",
        "change": f"nothing tried fits: not a shorter context, a smaller KV cache, {tried}",
        "settings": {},
        "result": None,
        "flags": {},
    }
