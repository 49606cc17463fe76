"""recommend(): published KV and weight figures, vLLM's block arithmetic, the recommended
point, settings, tips, and what happens when a model does not fit. Pure: no daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perfd.recommend import Gpu, Hardware, Query, RecommendError, plan_hardware, recommend

GiB = 1 << 30
MiB = 1 << 20
H100 = Gpu(0, "H100-80GB", 81559 * MiB, 81559 * MiB, "9.0")


def host(*gpus: Gpu, ram: int = 0) -> Hardware:
    return Hardware(gpus, ram, ram, None, 16, "planned")


def run(hardware: Hardware | None = None, **fields: Any) -> dict[str, Any]:
    request = Query(**fields)
    return recommend(request, hardware or plan_hardware(request, None))


# -- published figures -------------------------------------------------------------------------


def test_qwen15_7b_32k_needs_16_gib_of_kv() -> None:
    """vLLM: Qwen1.5-7B at max seq len 32768 needs 16.00 GiB of KV cache (bf16)."""
    result = run(model="Qwen1.5-7B", context=32768, gpu="H100")
    assert result["kv_bytes_per_sequence"] == {"context": 32768, "bytes": 16 * GiB}
    assert result["kv_bytes_per_token"] == 512 * 1024


def test_llamacpp_llama2_7b_512_ctx_is_256_mib() -> None:
    """llama.cpp: Llama-2-7B at n_ctx 512 has a 256.00 MiB f16 KV cache."""
    result = run(model="llama-2-7b", context=512, engine="llama.cpp", gpu="RTX 4090")
    assert result["kv_bytes_per_sequence"]["bytes"] == 256 * MiB
    assert result["budget"]["overhead"]["compute_buffer_bytes"] / MiB == pytest.approx(70.5)


def test_opt_13b_is_800_kb_per_token(tmp_path: Path) -> None:
    """vLLM paper: OPT-13B's KV for one token is 2 x 5120 x 40 x 2 bytes = 800 KiB."""
    config = {
        "model_type": "opt",
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "hidden_size": 5120,
        "ffn_dim": 20480,
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run(config_json=str(tmp_path / "config.json"), gpu="A100-SXM4-40GB")
    assert result["kv_bytes_per_token"] == 2 * 5120 * 40 * 2 == 800 * 1024
    assert result["model"]["attention"] == "mha"
    assert result["table"][-1]["kv_bytes"] / 1e9 == pytest.approx(1.68, rel=0.01)  # ~1.6 GB


def test_qwen3_30b_a3b_256k_needs_24_gib() -> None:
    """Qwen3-30B-A3B: 262144 tokens need 24.0 GiB of KV (48 layers x 4 KV heads x 128)."""
    result = run(model="qwen3-30b-a3b", context=262144, gpu="H200")
    assert result["kv_bytes_per_sequence"]["bytes"] == 24 * GiB
    assert result["kv_bytes_per_token"] == 98304


def test_llama2_7b_fp16_weights_are_12852_mib() -> None:
    """llama.cpp: F16 Llama-2-7B weights are 12603.02 + 250.00 = 12852.5 MiB."""
    result = run(model="llama-2-7b", gpu="RTX 4090", engine="llama.cpp")
    assert result["weights_bytes"] / MiB == pytest.approx(12852.5)
    assert result["budget"]["ram_weights_bytes"] == 250 * MiB  # token_embd stays on the CPU
    assert result["budget"]["weights_bytes"] / MiB == pytest.approx(12602.5)


def test_gemma2_9b_kv_per_token_and_window() -> None:
    """Gemma-2-9B: 344064 B/token at full attention; beyond 4096 the local layers stop growing."""
    result = run(model="gemma-2-9b", context=8192, gpu="H100")
    assert result["kv_bytes_per_token"] == 344064
    per_layer_token = 2 * 8 * 256 * 2
    assert result["kv_bytes_per_sequence"]["bytes"] == 21 * per_layer_token * (8192 + 4096)
    table = {row["context"]: row["kv_bytes"] for row in result["table"]}
    assert table[4096] == 344064 * 4096
    assert table[8192] < 344064 * 8192


def test_deepseek_v2_lite_is_31104_bytes_per_token() -> None:
    """DeepSeek-V2-Lite (MLA): (512 + 64) x 27 layers x 2 bytes, not naive MHA's 331776."""
    result = run(model="DeepSeek-V2-Lite", gpu="H100")
    assert result["kv_bytes_per_token"] == 31104
    assert result["model"]["attention"] == "mla"


def test_llama31_8b_gqa_is_a_quarter_of_naive_mha() -> None:
    """Llama-3.1-8B: 131072 B/token with 8 KV heads; naive MHA (32 heads) would be 4x."""
    result = run(model="llama-3.1-8b", gpu="H100")
    model = result["model"]
    naive = 2 * model["layers"] * model["attention_heads"] * model["head_dim"] * 2
    assert result["kv_bytes_per_token"] == 131072
    assert naive == 4 * result["kv_bytes_per_token"]


# -- vLLM block arithmetic -----------------------------------------------------------------------


def test_vllm_blocks_llama31_8b_on_h100_by_hand() -> None:
    """total x 0.9 - weights - activation, in 16-token blocks of 2 MiB, less the null block."""
    result = run(hardware=host(H100), model="llama-3.1-8b")
    usable = int(81559 * MiB * 0.9)  # 76968728985
    weights = 8030261248 * 2  # bf16
    activation = 8192 * 4 * 14336 * 2 + 1024 * 128256 * 4  # 8192 tokens; 1024 seqs of logits
    kv_budget = usable - weights - activation
    blocks = kv_budget // (16 * 131072)
    assert (usable, weights, activation) == (76968728985, 16060522496, 1464860672)
    assert (kv_budget, blocks) == (59443345817, 28344)
    assert result["budget"]["usable_bytes"] == usable
    assert result["budget"]["kv_budget_bytes"] == kv_budget
    assert result["vllm"]["num_gpu_blocks"] == blocks
    assert result["vllm"]["usable_blocks"] == blocks - 1
    assert result["max_tokens"] == kv_budget // 131072
    assert result["max_model_len"] == 131072  # 28343 x 16 tokens >= the model's maximum
    rows = {row["context"]: row["max_sequences"] for row in result["table"]}
    assert rows[131072] == (blocks - 1) // (131072 // 16) == 3
    assert rows[32768] == (blocks - 1) // 2048 == 13
    assert rows[4096] == (blocks - 1) // 256 == 110
    assert result["recommended"]["context"] == 32768  # the largest with >= 8 sequences
    assert result["recommended"]["max_sequences"] == 13
    assert result["binding_limit"] == "gpu_memory"


def test_vllm_max_model_len_is_capped_by_blocks() -> None:
    """When memory holds fewer tokens than the model's maximum, max_model_len = usable x 16."""
    blocks = 1001
    result = run(model="llama-3.1-8b", kv_budget=blocks * 16 * 131072)
    assert result["vllm"]["usable_blocks"] == blocks - 1
    assert result["max_model_len"] == (blocks - 1) * 16
    assert result["table"][-1]["max_sequences"] == 0


def test_kv_budget_tokens() -> None:
    """vLLM's 'Available KV cache memory: 12.35 GiB' for Qwen3-30B-A3B holds budget/98304 tokens."""
    budget = int(12.35 * GiB)
    result = run(model="qwen3-30b-a3b", kv_budget=budget)
    assert result["max_tokens"] == budget // 98304 == 134894
    assert result["vllm"]["gpu_kv_cache_tokens"] == budget // (16 * 98304) * 16
    assert result["binding_limit"] == "kv_budget"
    assert result["fits"] is True


def test_vllm_flags_exact() -> None:
    """Ready-to-paste vLLM flags, for a budget of exactly 16 sequences of 32768 tokens + null."""
    budget = (16 * 2048 + 1) * 16 * 131072
    result = run(model="llama-3.1-8b", context=32768, kv_budget=budget)
    assert result["flags"]["vllm"] == (
        "--max-model-len 32768 --max-num-seqs 16 --gpu-memory-utilization 0.9 "
        "--tensor-parallel-size 1"
    )
    assert result["flags"]["llama.cpp"] == "-c 524288 -np 16 -ngl 999"
    assert result["flags"]["ollama"] == "OLLAMA_NUM_PARALLEL=16"
    assert result["flags"]["ollama_modelfile"] == "PARAMETER num_ctx 32768"
    one_less = run(model="llama-3.1-8b", context=32768, kv_budget=budget - 1)
    assert one_less["recommended"]["max_sequences"] == 15


def test_fp8_kv_flags_and_halved_kv() -> None:
    """An fp8 KV cache halves bytes per token and adds the engines' KV settings."""
    result = run(model="llama-3.1-8b", kv_dtype="fp8", gpu="H100")
    assert result["kv_bytes_per_token"] == 65536
    assert result["flags"]["vllm"].endswith("--kv-cache-dtype fp8")
    assert "-ctk q8_0 -ctv q8_0" in result["flags"]["llama.cpp"]
    q4 = run(model="llama-3.1-8b", kv_dtype="q4_0", gpu="H100", engine="llama.cpp")
    assert q4["kv_bytes_per_token"] == 32 * 2 * 8 * 128 * 18 // 32  # 18 bytes per 32


# -- does it fit ---------------------------------------------------------------------------------


def test_70b_bf16_on_a_4090_does_not_fit() -> None:
    """Llama-3.1-70B bf16 on one RTX 4090: the numbers, and the smallest change that fits."""
    result = run(model="llama-3.1-70b", gpu="RTX 4090")
    assert result["fits"] is False
    assert result["recommended"] is None
    assert result["flags"] == {}
    assert result["weights_bytes"] == 70553706496 * 2
    assert result["shortfall_bytes"] > 100 * GiB
    assert "131.42 GiB of weights" in result["reason"]
    assert "RTX 4090" in result["reason"]
    change = result["smallest_change"]
    assert change["kind"] == "weights+tensor_parallel"
    assert change["settings"] == {"quant": "awq", "gpus": 2}
    assert change["result"]["fits"] is True
    assert "--tensor-parallel-size 2" in change["flags"]["vllm"]


def test_shorter_context_is_the_smallest_change() -> None:
    """When weights fit but 4096 tokens do not, a shorter context is the first remedy."""
    gpu = Gpu(0, "small", 17 * GiB + 512 * MiB, 17 * GiB + 512 * MiB)
    result = run(hardware=host(gpu), model="llama-3.1-8b")
    assert result["fits"] is False
    assert result["smallest_change"]["kind"] == "shorter_context"
    assert result["smallest_change"]["settings"]["context"] < 4096
    assert "4096-token sequence needs" in result["reason"]


def test_cpu_only_host_plans_for_ram() -> None:
    """No GPUs: the plan uses available RAM, or the cgroup limit when that is lower."""
    hardware = Hardware((), 64 * GiB, 48 * GiB, 24 * GiB, 8, "live")
    result = recommend(Query(model="llama-3.1-8b", engine="llama.cpp"), hardware)
    assert result["budget"]["device"] == "cpu"
    assert result["budget"]["free_bytes"] == 24 * GiB
    assert result["budget"]["usable_bytes"] == 24 * GiB - int(24 * GiB * 0.1)
    assert result["binding_limit"] == "cgroup"
    assert result["flags"]["llama.cpp"].endswith("-ngl 0")
    assert "cuda_context_bytes" not in result["budget"]["overhead"]
    roomy = recommend(
        Query(model="llama-3.1-8b"), Hardware((), 64 * GiB, 48 * GiB, None, 8, "live")
    )
    assert roomy["budget"]["free_bytes"] == 48 * GiB
    assert roomy["binding_limit"] == "ram"


def test_mistral_window_lets_the_full_context_fit() -> None:
    """Mistral-7B-v0.1's 4096-token window caps each sequence's KV, so 32768 tokens fit."""
    window_bytes = 32 * 2 * 8 * 128 * 2 * 4096  # 512 MiB: 4096 tokens on every layer
    result = run(model="mistral-7b", kv_budget=2 * window_bytes)
    assert result["max_model_len"] == 32768
    assert result["kv_bytes_per_sequence"]["bytes"] == window_bytes
    assert result["table"][-1]["max_sequences"] == 1  # two windows, less vLLM's null block
    assert result["binding_limit"] == "max_position_embeddings"


def test_requested_context_is_the_recommendation() -> None:
    """With a context given, the recommendation is that context with as many as fit."""
    result = run(model="llama-3.1-8b", context=100000, gpu="H100")
    assert result["recommended"]["context"] == 100000
    assert 100000 in {row["context"] for row in result["table"]}
    assert result["recommended"]["max_sequences"] == 28343 // (100000 // 16)


def test_max_num_seqs_caps_small_models() -> None:
    """A small model's sequences are capped at vLLM's max_num_seqs default."""
    result = run(model="gpt2", gpu="H100")
    assert result["recommended"] == {
        **result["recommended"],
        "context": 1024,
        "max_sequences": 1024,
    }
    assert result["binding_limit"] == "max_num_seqs"


def test_context_beyond_the_model_is_an_error() -> None:
    """A context past max_position_embeddings is refused with both numbers."""
    with pytest.raises(RecommendError, match=r"200000.*131072"):
        run(model="llama-3.1-8b", context=200000, gpu="H100")


def test_bad_options_are_errors() -> None:
    """Unknown quant, KV dtype and engine names list what is allowed."""
    with pytest.raises(RecommendError, match="Q4_K_M") as info:
        run(model="llama-3.1-8b", gpu="H100", quant="q9")
    assert info.value.option == "quant"
    with pytest.raises(RecommendError, match="q8_0"):
        run(model="llama-3.1-8b", gpu="H100", kv_dtype="int3")
    with pytest.raises(RecommendError, match=r"llama\.cpp"):
        run(model="llama-3.1-8b", gpu="H100", engine="tgi")
    with pytest.raises(RecommendError, match="utilization"):
        run(model="llama-3.1-8b", gpu="H100", utilization=1.5)


# -- precision, tips, live GPUs ------------------------------------------------------------------


def test_weight_formats() -> None:
    """int4 and AWQ quantize linear layers only; GGUF types apply their bits to everything."""
    params, embed, norms = 8030261248, 2 * 128256 * 4096, 65 * 4096
    linear = params - embed - norms
    awq = run(model="llama-3.1-8b", gpu="H100", quant="awq")
    assert awq["weights_bytes"] == -(-(linear * 17 + (embed + norms) * 64) // 32)  # 4.25 bits
    q8 = run(model="llama-3.1-8b", gpu="H100", quant="Q8_0", engine="llama.cpp")
    assert q8["weights_bytes"] == params * 34 // 32
    assert awq["flags"]["note"].startswith("use a pre-quantized AWQ")


def test_tips_are_ranked_by_bytes_saved() -> None:
    """Tips come largest saving first, each with its settings and re-planned result."""
    tips = run(model="llama-3.1-8b", gpu="H100")["tips"]
    saved = [tip["bytes_saved"] for tip in tips]
    assert saved == sorted(saved, reverse=True)
    assert all(s > 0 for s in saved)
    kinds = {tip["kind"] for tip in tips}
    assert {"kv_cache_dtype", "weights", "tensor_parallel", "shorter_context"} <= kinds
    fp8 = next(tip for tip in tips if tip["kind"] == "kv_cache_dtype")
    assert fp8["bytes_saved"] == 8 * 32768 * 65536  # 8 sequences x 32768 tokens x half
    assert fp8["result"]["recommended"]["context"] == 65536


def test_live_gpu_with_little_free_memory_lowers_utilization() -> None:
    """vLLM needs free >= total x utilization: a busy GPU gets a lower, noted, utilization."""
    busy = Gpu(0, "H100-80GB", 80 * GiB, 50 * GiB, "9.0")
    result = run(hardware=host(busy), model="llama-3.1-8b")
    assert result["budget"]["utilization"] == 0.62
    assert "--gpu-memory-utilization 0.62" in result["flags"]["vllm"]
    assert any("vLLM starts only" in note for note in result["notes"])


def test_tensor_parallel_over_planned_gpus() -> None:
    """Two GPUs split weights and KV heads: per-GPU weights and KV per token halve."""
    one = run(model="llama-3.1-70b", gpu="H100")
    two = run(model="llama-3.1-70b", gpu="H100", gpus=2)
    assert two["budget"]["weights_bytes"] == one["budget"]["weights_bytes"] // 2
    assert two["budget"]["kv_bytes_per_token"] == one["budget"]["kv_bytes_per_token"] // 2
    assert "--tensor-parallel-size 2" in two["flags"]["vllm"]
    assert two["hardware"]["tensor_parallel"] == 2


def test_result_is_json_serialisable() -> None:
    """The whole result survives json.dumps (the daemon sends it as is)."""
    for model in ("llama-3.1-70b", "gemma-2-9b", "deepseek-v2-lite"):
        json.dumps(run(model=model, gpu="L4"))


def _top_level_modules(code: str) -> set[str]:
    """The top-level names in sys.modules after ``code`` runs in a fresh interpreter."""
    listing = "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    script = f"{code}\nimport sys\n{listing}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_imports_only_the_standard_library() -> None:
    """perfctl can import and run it: no numpy, psutil, zmq or structlog, nothing outside stdlib.

    What the interpreter loads on its own (Debian's sitecustomize and its apport hook, a
    .pth file's imports) is measured in the same way and left out: only what recommend adds
    counts.
    """
    baseline = _top_level_modules("pass")
    loaded = _top_level_modules(
        "from perfd.recommend import Query, plan_hardware, recommend\n"
        "r = Query(model='llama-3.1-8b', gpu='H100')\n"
        "recommend(r, plan_hardware(r, None))"
    )
    assert not loaded & {"numpy", "psutil", "zmq", "structlog", "pynvml", "requests"}
    added = loaded - baseline - set(sys.stdlib_module_names)
    others = {m for m in added if not m.startswith("_")}
    assert others <= {"perfd"}, others  # "_" names: interpreter internals, editable finders
