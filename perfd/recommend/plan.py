"""The memory math: weights + overhead + KV cache against what a device may use.

Per device (a GPU of the tensor-parallel group, or the host for a CPU-only plan)::

    usable    = vLLM:  total x gpu_memory_utilization        (vLLM's own budget)
                other: free - max(free x (1 - utilization), FIT_MARGIN_BYTES)
    kv_budget = usable - weights on the device - overhead
    vLLM:     num_blocks = floor(kv_budget / (16 x KV bytes per token)); one block is the
              null block, so usable blocks = num_blocks - 1; a sequence of L tokens needs
              ceil(L / 16) blocks (per layer kind: windowed layers hold min(L, window) tokens)
    other:    a sequence of L tokens needs its exact KV bytes

The allowance constants and their sources (/work/shared/data/model_gpu_facts.json,
``overhead_constants``):

- ``gpu_memory_utilization`` 0.9: vLLM's historical default (vllm/config/cache.py; the
  newest is 0.92). vLLM fails to start when free memory is below total x utilization, so a
  live GPU with less free memory gets a lower utilization (free / total, rounded down).
- vLLM activation peak (``vllm_activation_bytes``): vLLM measures it in a profile run of
  max_num_batched_tokens tokens plus a sampler run of max_num_seqs rows. We estimate the
  MLP's intermediates, 4 x intermediate x 2 bytes per token (MoE: top_k x expert width), plus
  fp32 logits for max_num_seqs rows. Defaults from vllm/engine/arg_utils.py: 8192 tokens and
  1024 sequences on GPUs with >= 70 GiB that are not A100s, else 2048 and 256. Calibration
  (vLLM v0 logs of Llama-3.1-8B): the MLP term at 2048 tokens is 0.22 GiB, as logged ("PyTorch
  activation peak memory takes 0.22GiB", 22 GiB GPU), and the whole allowance is 0.34 GiB;
  on an H100 (8192 tokens, 1024 sequences) it is 1.36 GiB against 1.19 GiB logged. An estimate:
  vLLM's own profile is the truth on a live host.
  CUDA graphs and the CUDA context live in the (1 - utilization) headroom, as in vLLM.
- ``CUDA_CONTEXT_BYTES`` 457 MiB per GPU for llama.cpp and Ollama: Ollama's MinimumMemory
  for CUDA (ml/device.go; gpu_poor uses 650 MiB).
- llama.cpp compute buffer: n_ubatch (512) x (vocab + hidden) x 4 bytes; 70.50 MiB for
  Llama-2-7B, as llama.cpp's log shows (flash attention keeps it flat in the context).
- ``FIT_MARGIN_BYTES`` 1 GiB: llama.cpp ``--fit`` leaves 1024 MiB free per device.
- ``MIN_CONTEXT`` 4096: llama.cpp ``--fit``'s minimum context.
- ``TARGET_SEQUENCES`` 8 and ``LLAMA_CPP_MAX_PARALLEL`` 16: our choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfd.recommend.arch import ModelShape, kv_elements_per_layer, layer_groups
from perfd.recommend.hardware import Gpu, Hardware
from perfd.recommend.precision import KvFormat, ParamGroups, WeightFormat

if TYPE_CHECKING:
    from perfd.recommend.weights import WeightsInfo

GiB = 1 << 30
MiB = 1 << 20
BLOCK_SIZE = 16  # vLLM's default KV block, in tokens
MIN_CONTEXT = 4096
TARGET_SEQUENCES = 8
CUDA_CONTEXT_BYTES = 457 * MiB
FIT_MARGIN_BYTES = 1 * GiB
LLAMA_CPP_UBATCH = 512
LLAMA_CPP_MAX_PARALLEL = 16
VLLM_BIG_GPU_BYTES = 70 * GiB


@dataclass(frozen=True)
class Model:
    spec: ModelShape
    groups: ParamGroups
    native: WeightFormat  # the format the weights come in
    file: WeightsInfo | None = None  # its bytes are used when Options.weights is None

    def weights_bytes(self, fmt: WeightFormat | None) -> int:
        if fmt is None and self.file is not None:
            return self.file.bytes
        return (fmt or self.native).bytes_for(self.groups)

    def embedding_bytes(self, fmt: WeightFormat | None) -> int:
        """The input embedding's bytes (llama.cpp keeps it in RAM unless tied)."""
        if fmt is None and self.file is not None:
            return self.file.embedding_bytes
        bits = (fmt or self.native).embed_bits
        return int(self.spec.vocab * (self.spec.embed_dim or self.spec.hidden) * bits / 8)


@dataclass(frozen=True)
class Options:
    engine: str
    weights: WeightFormat | None  # None: the weights file's own bytes
    kv: KvFormat
    utilization: float = 0.9
    context: int | None = None
    offload_bytes: int = 0  # weights moved to RAM, per GPU (vLLM --cpu-offload-gb)
    kv_budget: int | None = None


@dataclass(frozen=True)
class Plan:
    """Every figure is per device; ``shards`` devices hold one copy of the model."""

    model: Model
    options: Options
    device: str  # "gpu", "cpu" or "kv_budget"
    devices: tuple[Gpu, ...]
    shards: int
    resource: str  # gpu_memory, ram, cgroup or kv_budget
    total_bytes: int
    free_bytes: int
    utilization: float
    usable_bytes: int
    weights_bytes: int  # the whole model
    weights_device_bytes: int
    ram_weights_bytes: int  # all devices together
    overhead: dict[str, int]
    kv_budget_bytes: int
    kv_usable_bytes: int
    kv_token_bytes: int
    cap: int  # the most sequences we recommend (vLLM's max_num_seqs default)
    cost: Callable[[int], int] = field(repr=False)
    notes: tuple[str, ...] = ()
    ram_short_bytes: int = 0
    vllm: dict[str, int] | None = None

    @property
    def max_tokens(self) -> int:
        return max(0, self.kv_budget_bytes) // self.kv_token_bytes

    def sequences(self, context: int) -> int:
        return self.kv_usable_bytes // self.cost(context) if self.ram_short_bytes == 0 else 0

    @property
    def max_model_len(self) -> int:
        """The longest single sequence that fits, up to max_position_embeddings."""
        if self.sequences(1) < 1:
            return 0
        low, high = 1, self.model.spec.max_position
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.cost(mid) <= self.kv_usable_bytes else (low, mid - 1)
        return low

    @property
    def required_context(self) -> int:
        return self.options.context or min(MIN_CONTEXT, self.model.spec.max_position)

    @property
    def fits(self) -> bool:
        return self.sequences(self.required_context) >= 1

    def contexts(self) -> list[int]:
        """Powers of two from 512 below max_position_embeddings, it, and the request's."""
        top = self.model.spec.max_position
        found = {top}
        size = 512
        while size < top:
            found.add(size)
            size *= 2
        if self.options.context:
            found.add(self.options.context)
        return sorted(found)

    def recommended(self) -> tuple[int, int] | None:
        """(context, sequences): see ``perfd.recommend`` for the rule; None if nothing fits."""
        if not self.fits:
            return None
        if self.options.context:
            context = self.options.context
        else:
            floor = self.required_context
            wanted = min(TARGET_SEQUENCES, self.sequences(floor))
            context = max(c for c in self.contexts() if c >= floor and self.sequences(c) >= wanted)
        return context, min(self.sequences(context), self.cap)

    def need_bytes(self, context: int, sequences: int = 1) -> int:
        """Device memory short for ``sequences`` of ``context`` tokens (<= 0: they fit)."""
        return sequences * self.cost(context) - self.kv_usable_bytes


def vllm_defaults(gpu: Gpu | None) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM's API server picks for this GPU."""
    if gpu is not None and gpu.total_bytes >= VLLM_BIG_GPU_BYTES and "a100" not in gpu.name.lower():
        return 8192, 1024
    return 2048, 256


def vllm_activation_bytes(spec: ModelShape, shards: int, tokens: int, seqs: int) -> int:
    """Our estimate of vLLM's profiled activation peak (see the module docstring)."""
    width = spec.intermediate
    if spec.moe is not None:
        routed = spec.moe.top_k * spec.moe.expert_intermediate + spec.moe.shared_intermediate
        width = routed if spec.moe.moe_layers == spec.layers else max(width, routed)
    return tokens * 4 * -(-width // shards) * 2 + seqs * spec.vocab * 4


def tensor_parallel_size(spec: ModelShape, gpus: int) -> int:
    """The largest size <= gpus that vLLM accepts: it divides the attention heads, and the
    KV heads divide it or it divides them."""
    for size in range(max(gpus, 1), 0, -1):
        if spec.heads % size == 0 and (spec.kv_heads % size == 0 or size % spec.kv_heads == 0):
            return size
    return 1


def _cost_fn(
    spec: ModelShape, kv: KvFormat, shards: int, vllm: bool, split: int
) -> Callable[[int], int]:
    groups = [
        (layers * kv.bytes_for(kv_elements_per_layer(spec, shards)), window)
        for layers, window in layer_groups(spec)
    ]

    def cost(context: int) -> int:
        total = 0
        for token_bytes, window in groups:
            tokens = context if window is None else min(context, window)
            if vllm:
                tokens = -(-tokens // BLOCK_SIZE) * BLOCK_SIZE
            total += token_bytes * tokens
        return -(-total // split)

    return cost


def make_plan(model: Model, hardware: Hardware, opts: Options) -> Plan:
    """The budget of one configuration (see the module docstring)."""
    spec, vllm = model.spec, opts.engine == "vllm"
    devices, notes = _devices(spec, hardware, vllm, opts.kv_budget is not None)
    on_gpu, shards = bool(devices), max(1, len(devices))
    kv_shards, split = (shards, 1) if vllm else (1, shards)
    per_layer = opts.kv.bytes_for(kv_elements_per_layer(spec, kv_shards))
    token_bytes = -(-spec.layers * per_layer // split)
    weights = model.weights_bytes(opts.weights)
    in_ram = 0 if spec.tied or vllm or not on_gpu else model.embedding_bytes(opts.weights)
    weights_device, ram_weights = weights, 0
    if on_gpu:
        weights_device = -(-(weights - in_ram) // shards) - opts.offload_bytes
        ram_weights = in_ram + opts.offload_bytes * shards
    tokens, seqs = vllm_defaults(devices[0] if devices else None)
    overhead = _overhead(
        spec,
        vllm=vllm,
        on_gpu=on_gpu,
        budget_only=opts.kv_budget is not None,
        shards=shards,
        tokens=tokens,
        seqs=seqs,
    )
    device, resource, total, free, usable, utilization = _usable(hardware, devices, opts, notes)
    if opts.kv_budget is not None:
        weights_device = 0
    kv_budget = usable - weights_device - sum(overhead.values())
    vllm_info = None
    kv_usable = max(0, kv_budget)
    if vllm:
        block_bytes = BLOCK_SIZE * token_bytes
        blocks = kv_usable // block_bytes
        kv_usable = max(0, blocks - 1) * block_bytes
        vllm_info = {
            "block_size": BLOCK_SIZE,
            "num_gpu_blocks": blocks,
            "usable_blocks": max(0, blocks - 1),
            "gpu_kv_cache_tokens": blocks * BLOCK_SIZE,
            "max_num_batched_tokens": tokens,
            "max_num_seqs": seqs,
        }
    ram_short = 0
    if on_gpu and ram_weights and hardware.ram_usable_bytes:
        ram_short = max(0, ram_weights - hardware.ram_usable_bytes)
    return Plan(
        model=model,
        options=opts,
        device=device,
        devices=devices,
        shards=shards,
        resource="ram" if ram_short else resource,
        total_bytes=total,
        free_bytes=free,
        utilization=utilization,
        usable_bytes=usable,
        weights_bytes=weights,
        weights_device_bytes=weights_device,
        ram_weights_bytes=ram_weights,
        overhead=overhead,
        kv_budget_bytes=kv_budget,
        kv_usable_bytes=kv_usable,
        kv_token_bytes=token_bytes,
        cap=seqs if vllm else LLAMA_CPP_MAX_PARALLEL,
        cost=_cost_fn(spec, opts.kv, kv_shards, vllm, split),
        notes=tuple(notes),
        ram_short_bytes=ram_short,
        vllm=vllm_info,
    )


def _overhead(
    spec: ModelShape,
    *,
    vllm: bool,
    on_gpu: bool,
    budget_only: bool,
    shards: int,
    tokens: int,
    seqs: int,
) -> dict[str, int]:
    """The allowances beside weights and KV cache (none for a bare KV budget)."""
    if budget_only:
        return {}
    if vllm and on_gpu:
        return {"activation_bytes": vllm_activation_bytes(spec, shards, tokens, seqs)}
    overhead = {"compute_buffer_bytes": LLAMA_CPP_UBATCH * (spec.vocab + spec.hidden) * 4}
    if on_gpu:
        overhead["cuda_context_bytes"] = CUDA_CONTEXT_BYTES
    return overhead


def _usable(
    hardware: Hardware, devices: tuple[Gpu, ...], opts: Options, notes: list[str]
) -> tuple[str, str, int, int, int, float]:
    """(device, resource, total, free, usable, utilization) of one device."""
    utilization = opts.utilization
    if opts.kv_budget is not None:
        return "kv_budget", "kv_budget", 0, 0, opts.kv_budget, utilization
    if devices:
        device, resource = "gpu", "gpu_memory"
        total = min(g.total_bytes for g in devices)
        free = min(g.free_bytes for g in devices)
    else:
        device, total, free = "cpu", hardware.ram_total_bytes, hardware.ram_usable_bytes
        limited = hardware.cgroup_limit_bytes is not None and hardware.cgroup_limit_bytes == free
        resource = "cgroup" if limited else "ram"
    if opts.engine == "vllm" and devices:
        if free < total * utilization:
            utilization = int(100 * free / total) / 100 if total else 0.0
            notes.append(
                f"only {free / GiB:.2f} GiB of {total / GiB:.2f} GiB is free: vLLM starts only "
                f"with --gpu-memory-utilization <= {utilization:g}"
            )
        return device, resource, total, free, int(total * utilization), utilization
    usable = max(0, free - max(int(free * (1 - utilization)), FIT_MARGIN_BYTES))
    return device, resource, total, free, usable, utilization


def _devices(
    spec: ModelShape, hardware: Hardware, vllm: bool, budget_only: bool
) -> tuple[tuple[Gpu, ...], list[str]]:
    """The GPUs one model copy spans: MIG instances alone; vLLM's tensor-parallel group."""
    notes: list[str] = []
    if budget_only:
        return (), notes
    gpus = sorted(hardware.gpus, key=lambda g: -g.free_bytes)
    if any(g.mig for g in gpus):
        if len(gpus) > 1:
            notes.append("MIG: planned for the single MIG instance with the most free memory")
        return tuple(gpus[:1]), notes
    if vllm and gpus:
        size = tensor_parallel_size(spec, len(gpus))
        if size < len(gpus):
            notes.append(
                f"vLLM tensor parallel needs a size that divides {spec.heads} attention heads: "
                f"using {size} of {len(gpus)} GPUs"
            )
        gpus = gpus[:size]
    return tuple(gpus), notes


def plan_numbers(plan: Plan) -> dict[str, Any]:
    """The headline figures of a plan, as a JSON-able dict (used for tips and changes too)."""
    point = plan.recommended()
    return {
        "fits": plan.fits,
        "max_model_len": plan.max_model_len,
        "max_tokens": plan.max_tokens,
        "weights_device_bytes": plan.weights_device_bytes,
        "kv_budget_bytes": plan.kv_budget_bytes,
        "recommended": None if point is None else {"context": point[0], "max_sequences": point[1]},
    }
