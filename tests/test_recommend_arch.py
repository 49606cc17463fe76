"""Model shapes: the catalog's parameter counts against published totals, config.json parsing
(explicit head_dim, MLA, MoE, tied embeddings, OPT), and KV elements per token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from perfd.recommend import RecommendError, list_models
from perfd.recommend.arch import (
    active_params,
    kv_elements_per_layer,
    param_groups,
    spec_from_config,
)
from perfd.recommend.catalog import MODELS, model_spec

# The published figures the catalog is held to: each model's config shapes and parameter count,
# with the sources of each entry (docs/recommend.md cites this file).
FACTS = Path(__file__).resolve().parent / "data" / "model_gpu_facts.json"
FIGURES = (
    "name",
    "total_params",
    "num_hidden_layers",
    "head_dim",
    "max_position_embeddings",
    "tie_word_embeddings",
    "num_key_value_heads",
    "kv_cache_bytes_per_token_fp16",
)


def _facts() -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = json.loads(FACTS.read_text())["models"]
    return models


def test_the_facts_file_names_its_sources() -> None:
    """The facts file ships with perfd: every model has the figures tested here and sources."""
    for fact in _facts():
        assert set(FIGURES) <= set(fact), fact["name"]
        assert fact["sources"], fact["name"]


def test_catalog_params_equal_published_totals() -> None:
    """Every model in the facts file is in the catalog, with exactly its total_params."""
    facts = _facts()
    assert len(facts) == 14
    for fact in facts:
        spec = model_spec(fact["name"])
        assert param_groups(spec).total == fact["total_params"], fact["name"]


def test_catalog_shapes_match_the_facts() -> None:
    """Layers, KV heads, head_dim, context and tying agree with the facts file."""
    for fact in _facts():
        spec = model_spec(fact["name"])
        assert spec.layers == fact["num_hidden_layers"], fact["name"]
        assert spec.head_dim == fact["head_dim"], fact["name"]
        assert spec.max_position == fact["max_position_embeddings"], fact["name"]
        assert spec.tied == fact["tie_word_embeddings"], fact["name"]
        if spec.mla is None:
            assert spec.kv_heads == fact["num_key_value_heads"], fact["name"]


def test_fp16_kv_per_token_matches_the_facts() -> None:
    """2 x layers x kv_heads x head_dim x 2 bytes (MLA: the latent) equals the facts' figure."""
    for fact in _facts():
        spec = model_spec(fact["name"])
        assert (
            spec.layers * kv_elements_per_layer(spec) * 2 == (fact["kv_cache_bytes_per_token_fp16"])
        ), fact["name"]


def test_extra_catalog_models() -> None:
    """Qwen1.5-7B is MHA with 32 KV heads; Qwen3-30B-A3B is a 128-expert MoE with 4 KV heads."""
    qwen15 = model_spec("qwen1.5-7b")
    assert (qwen15.layers, qwen15.kv_heads, qwen15.head_dim) == (32, 32, 128)
    assert qwen15.max_position == 32768
    assert qwen15.sliding_window is None
    qwen3 = model_spec("Qwen3-30B-A3B")
    assert (qwen3.layers, qwen3.kv_heads, qwen3.head_dim) == (48, 4, 128)
    assert qwen3.moe is not None
    assert qwen3.moe.experts == 128
    groups = param_groups(qwen3)
    assert 30.4e9 < groups.total < 30.6e9  # published: 30.5B total
    assert 3.2e9 < active_params(qwen3, groups) < 3.5e9  # published: 3.3B activated


def test_aliases_and_case() -> None:
    """Short aliases, Hugging Face ids and any case or punctuation find the same model."""
    for name in ("llama-3.1-8b", "LLAMA 3.1 8B", "meta-llama/Llama-3.1-8B", "llama3.1-8b"):
        assert model_spec(name).name == "Llama-3.1-8B"
    assert model_spec("qwen2.5-7b").name == "Qwen2.5-7B"
    assert model_spec("mixtral-8x7b").name == "Mixtral-8x7B-v0.1"
    assert model_spec("gpt2").name == "GPT-2"


def test_unknown_model_lists_close_matches() -> None:
    """An unknown name raises RecommendError with close matches and the list command."""
    with pytest.raises(RecommendError) as info:
        model_spec("llama-3.1-9b")
    assert "--list-models" in str(info.value)
    assert "Llama-3.1-8B" in info.value.allowed
    assert info.value.option == "model"


def test_list_models_covers_the_catalog() -> None:
    """list_models has one row per catalog model with its shape."""
    rows = {row["name"]: row for row in list_models()}
    assert len(rows) == len(MODELS) >= 16
    assert rows["Gemma-2-9B"]["head_dim"] == 256
    assert rows["DeepSeek-V2-Lite"]["attention"] == "mla"
    assert rows["Llama-3.1-8B"]["attention"] == "gqa"


GEMMA2_CONFIG = {
    "model_type": "gemma2",
    "num_hidden_layers": 42,
    "hidden_size": 3584,
    "intermediate_size": 14336,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "vocab_size": 256000,
    "max_position_embeddings": 8192,
    "sliding_window": 4096,
    "torch_dtype": "float32",
}


def test_gemma2_config_uses_the_explicit_head_dim() -> None:
    """head_dim 256 from the config, not hidden/heads = 224; alternate layers are windowed."""
    spec = spec_from_config(GEMMA2_CONFIG, name="gemma", source="test")
    assert spec.head_dim == 256
    assert spec.tied  # the Gemma2Config default
    assert (spec.sliding_window, spec.windowed_layers) == (4096, 21)
    assert spec.norms_per_layer == 4
    assert spec.dtype == "fp16"  # a float32 checkpoint runs in 16 bits
    assert param_groups(spec).total == 9_241_705_984


def test_deepseek_v2_config_is_mla() -> None:
    """DeepSeek-V2: one latent of kv_lora_rank + qk_rope_head_dim per layer, no factor 2."""
    config = {
        "model_type": "deepseek_v2",
        "num_hidden_layers": 27,
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "vocab_size": 102400,
        "max_position_embeddings": 163840,
    }
    spec = spec_from_config(config, name="dsv2", source="test")
    assert spec.attention == "mla"
    assert kv_elements_per_layer(spec) == 576
    assert kv_elements_per_layer(spec, shards=4) == 576  # the latent is not split
    assert spec.moe is not None
    assert spec.moe.moe_layers == 26
    assert param_groups(spec).total == 15_706_484_224


def test_mixtral_config_keeps_every_expert() -> None:
    """Mixtral: all 8 experts are resident; 2 of them are active per token."""
    config = {
        "model_type": "mixtral",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "sliding_window": None,
    }
    spec = spec_from_config(config, name="mixtral", source="test")
    groups = param_groups(spec)
    assert groups.total == 46_702_792_704
    assert 12.8e9 < active_params(spec, groups) < 13.0e9  # the facts' ~12.9B
    assert spec.sliding_window is None


def test_tied_embeddings_drop_the_lm_head() -> None:
    """tie_word_embeddings removes vocab x hidden parameters and nothing else."""
    base = {**GEMMA2_CONFIG, "model_type": "llama", "head_dim": None}
    untied = param_groups(spec_from_config(base, name="a", source="t"))
    tied = param_groups(
        spec_from_config({**base, "tie_word_embeddings": True}, name="b", source="t")
    )
    assert untied.lm_head == 256000 * 3584
    assert tied.lm_head == 0
    assert untied.total - tied.total == 256000 * 3584


def test_opt_config_is_mha_with_learned_positions() -> None:
    """OPT-13B: 40 layers x 40 heads x 128, MHA; learned positions of max + 2 rows."""
    config = {
        "model_type": "opt",
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "hidden_size": 5120,
        "ffn_dim": 20480,
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
    }
    spec = spec_from_config(config, name="opt", source="test")
    assert (spec.attention, spec.head_dim, spec.tied) == ("mha", 128, True)
    assert spec.learned_positions == 2050
    assert 12.8e9 < param_groups(spec).total < 12.9e9  # published: 12.85B


def test_missing_key_names_it() -> None:
    """A config without a layer count says which keys it looked for."""
    with pytest.raises(RecommendError, match="num_hidden_layers"):
        spec_from_config({"hidden_size": 64}, name="broken", source="test")


def test_qwen2_window_is_off_unless_enabled() -> None:
    """Qwen2's sliding_window is ignored when use_sliding_window is false (its default)."""
    spec = model_spec("qwen2.5-7b")
    assert spec.sliding_window is None
    assert model_spec("mistral-7b").windowed_layers == 32
