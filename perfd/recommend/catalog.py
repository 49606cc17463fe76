"""The built-in models and GPUs, and name matching for both.

Models are stored as the Hugging Face config.json keys that matter, so one parser
(``arch.spec_from_config``) reads the catalog and users' files alike. Values come from
/work/shared/data/model_gpu_facts.json (each entry's sources are listed there); Qwen1.5-7B and
Qwen3-30B-A3B are from their published configs (Qwen3-30B-A3B: the Instruct-2507 config, whose
max_position_embeddings is 262144; the original release has 40960).

GPU totals are what NVML reports (``nvidia-smi`` MiB x 2^20), from the same facts file;
compute capabilities are NVIDIA's published ones.

Names match case-insensitively, ignoring punctuation ("llama-3.1-8b", "Llama 3.1 8B"),
on the name, the Hugging Face id or an alias; then on a unique prefix ("mixtral-8x7b").
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

from perfd.recommend.arch import ModelShape, spec_from_config
from perfd.recommend.request import RecommendError

GiB = 1 << 30
MiB = 1 << 20

_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096}
_LLAMA31 = {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 131072}
_QWEN2 = {"model_type": "qwen2", "use_sliding_window": False, "tie_word_embeddings": False}

# (name, Hugging Face id, aliases, config.json keys)
# fmt: off
MODELS: tuple[tuple[str, str, tuple[str, ...], dict[str, Any]], ...] = (
    (
        "Llama-2-7B",
        "meta-llama/Llama-2-7b-hf",
        ("llama2-7b", "llama-2-7b-chat"),
        {**_LLAMA2, "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008,
         "num_attention_heads": 32, "num_key_value_heads": 32, "torch_dtype": "float16"},
    ),
    (
        "Llama-2-13B",
        "meta-llama/Llama-2-13b-hf",
        ("llama2-13b", "llama-2-13b-chat"),
        {**_LLAMA2, "num_hidden_layers": 40, "hidden_size": 5120, "intermediate_size": 13824,
         "num_attention_heads": 40, "num_key_value_heads": 40, "torch_dtype": "float16"},
    ),
    (
        "Llama-2-70B",
        "meta-llama/Llama-2-70b-hf",
        ("llama2-70b", "llama-2-70b-chat"),
        {**_LLAMA2, "num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
         "num_attention_heads": 64, "num_key_value_heads": 8, "torch_dtype": "float16"},
    ),
    (
        "Llama-3.1-8B",
        "meta-llama/Llama-3.1-8B",
        ("llama3.1-8b", "llama-3.1-8b-instruct", "meta-llama-3.1-8b"),
        {**_LLAMA31, "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
         "num_attention_heads": 32, "num_key_value_heads": 8, "torch_dtype": "bfloat16"},
    ),
    (
        "Llama-3.1-70B",
        "meta-llama/Llama-3.1-70B",
        ("llama3.1-70b", "llama-3.1-70b-instruct", "meta-llama-3.1-70b"),
        {**_LLAMA31, "num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
         "num_attention_heads": 64, "num_key_value_heads": 8, "torch_dtype": "bfloat16"},
    ),
    (
        "Mistral-7B-v0.1",
        "mistralai/Mistral-7B-v0.1",
        ("mistral-7b",),
        {"model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096,
         "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
         "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": 4096,
         "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    ),
    (
        "Mixtral-8x7B-v0.1",
        "mistralai/Mixtral-8x7B-v0.1",
        ("mixtral", "mixtral-8x7b-instruct"),
        {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096,
         "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
         "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": None,
         "num_local_experts": 8, "num_experts_per_tok": 2, "tie_word_embeddings": False,
         "torch_dtype": "bfloat16"},
    ),
    (
        "Qwen2.5-7B",
        "Qwen/Qwen2.5-7B-Instruct",
        ("qwen2.5-7b-instruct",),
        {**_QWEN2, "num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
         "max_position_embeddings": 32768, "sliding_window": 131072, "torch_dtype": "bfloat16"},
    ),
    (
        "Qwen2.5-72B",
        "Qwen/Qwen2.5-72B-Instruct",
        ("qwen2.5-72b-instruct",),
        {**_QWEN2, "num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 29568,
         "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064,
         "max_position_embeddings": 32768, "sliding_window": 131072, "torch_dtype": "bfloat16"},
    ),
    (
        "Qwen1.5-7B",
        "Qwen/Qwen1.5-7B-Chat",
        ("qwen1.5-7b-chat",),
        {**_QWEN2, "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008,
         "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 151936,
         "max_position_embeddings": 32768, "sliding_window": 32768, "torch_dtype": "bfloat16"},
    ),
    (
        "Qwen3-30B-A3B",
        "Qwen/Qwen3-30B-A3B-Instruct-2507",
        ("qwen3-30b", "qwen3-30b-a3b-instruct-2507"),
        {"model_type": "qwen3_moe", "num_hidden_layers": 48, "hidden_size": 2048,
         "intermediate_size": 6144, "moe_intermediate_size": 768, "num_attention_heads": 32,
         "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
         "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
         "vocab_size": 151936, "max_position_embeddings": 262144, "use_sliding_window": False,
         "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    ),
    (
        "Phi-3-mini-4k",
        "microsoft/Phi-3-mini-4k-instruct",
        ("phi-3-mini", "phi3-mini", "phi-3-mini-4k-instruct"),
        {"model_type": "phi3", "num_hidden_layers": 32, "hidden_size": 3072,
         "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 32,
         "vocab_size": 32064, "max_position_embeddings": 4096, "sliding_window": 2047,
         "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    ),
    (
        "Gemma-2-9B",
        "google/gemma-2-9b",
        ("gemma2-9b", "gemma-2-9b-it"),
        {"model_type": "gemma2", "num_hidden_layers": 42, "hidden_size": 3584,
         "intermediate_size": 14336, "num_attention_heads": 16, "num_key_value_heads": 8,
         "head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192,
         "sliding_window": 4096, "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
    ),
    (
        "TinyLlama-1.1B",
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        ("tinyllama", "tinyllama-1.1b-chat"),
        {"model_type": "llama", "num_hidden_layers": 22, "hidden_size": 2048,
         "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4,
         "vocab_size": 32000, "max_position_embeddings": 2048, "tie_word_embeddings": False,
         "torch_dtype": "bfloat16"},
    ),
    (
        "GPT-2",
        "openai-community/gpt2",
        ("gpt2", "gpt2-small"),
        {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_inner": None,
         "n_positions": 1024, "vocab_size": 50257, "torch_dtype": "float32"},
    ),
    (
        "DeepSeek-V2-Lite",
        "deepseek-ai/DeepSeek-V2-Lite",
        ("deepseek-v2-lite-chat", "deepseekv2-lite"),
        {"model_type": "deepseek_v2", "num_hidden_layers": 27, "hidden_size": 2048,
         "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_attention_heads": 16,
         "num_key_value_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2,
         "num_experts_per_tok": 6, "first_k_dense_replace": 1, "moe_layer_freq": 1,
         "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
         "qk_nope_head_dim": 128, "v_head_dim": 128, "vocab_size": 102400,
         "max_position_embeddings": 163840, "tie_word_embeddings": False,
         "topk_method": "greedy", "torch_dtype": "bfloat16"},
    ),
)
# fmt: on


@dataclass(frozen=True)
class GpuModel:
    name: str
    total_bytes: int
    compute_capability: str
    aliases: tuple[str, ...]


GPUS: tuple[GpuModel, ...] = (
    GpuModel("RTX 3080 (10GB)", 10240 * MiB, "8.6", ("rtx3080-10gb", "3080-10gb")),
    GpuModel("RTX 3080 (12GB)", 12288 * MiB, "8.6", ("rtx3080-12gb", "3080-12gb")),
    GpuModel("RTX 3090", 24576 * MiB, "8.6", ("3090",)),
    GpuModel("RTX 4090", 24564 * MiB, "8.9", ("4090",)),
    GpuModel("A10G", 23028 * MiB, "8.6", ("a10g-24gb", "aws-g5")),
    GpuModel("L4", 23034 * MiB, "8.9", ("nvidia-l4",)),
    GpuModel("T4", 15360 * MiB, "7.5", ("tesla-t4",)),
    GpuModel("A100-SXM4-40GB", 40960 * MiB, "8.0", ("a100-40gb", "a100-40")),
    GpuModel("A100-SXM4-80GB", 81920 * MiB, "8.0", ("a100-80gb", "a100-80")),
    GpuModel("H100-80GB", 81559 * MiB, "9.0", ("h100", "h100-sxm", "h100-80gb-hbm3")),
    GpuModel("H200-141GB", 143771 * MiB, "9.0", ("h200",)),
    GpuModel("L40S", 46068 * MiB, "8.9", ("l40s-48gb",)),
)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _match(kind: str, option: str, name: str, index: dict[str, str], names: list[str]) -> str:
    """The canonical name ``name`` stands for: exact key, else a unique prefix."""
    key = _key(name)
    if key in index:
        return index[key]
    prefixed = sorted({canon for k, canon in index.items() if key and k.startswith(key)})
    if len(prefixed) == 1:
        return prefixed[0]
    import difflib

    close = prefixed or difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise RecommendError(
        f"unknown {kind} {name!r}{hint} (perfctl recommend --list-{kind}s lists them)",
        option=option,
        value=name,
        allowed=tuple(close),
    )


@functools.cache
def _model_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name, hf_id, aliases, _ in MODELS:
        for alias in (name, hf_id, hf_id.split("/")[-1], *aliases):
            index[_key(alias)] = name
    return index


def model_spec(name: str) -> ModelShape:
    """The catalog model ``name`` (any alias); RecommendError with close matches if unknown."""
    canon = _match("model", "model", name, _model_index(), [m[0] for m in MODELS])
    return _catalog_spec(canon)


@functools.cache  # by canonical name: one entry per catalog model, whatever names requests use
def _catalog_spec(canon: str) -> ModelShape:
    for entry_name, hf_id, _, config in MODELS:
        if entry_name == canon:
            spec = spec_from_config(config, name=entry_name, source="catalog")
            return dataclasses.replace(spec, hf_id=hf_id)
    raise AssertionError(canon)  # pragma: no cover - the index holds only catalog names


@functools.cache
def _gpu_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for gpu in GPUS:
        for alias in (gpu.name, *gpu.aliases):
            index[_key(alias)] = gpu.name
    return index


def gpu_model(name: str) -> GpuModel:
    """The catalog GPU ``name`` ("H100", "rtx-4090"...); RecommendError if unknown."""
    canon = _match("gpu", "gpu", name, _gpu_index(), [g.name for g in GPUS])
    return next(g for g in GPUS if g.name == canon)
