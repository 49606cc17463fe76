"""perfd.recommend.bounds and check_limits: every input bounded before any arithmetic, layer
counts in closed form, and replies of bounded size (issue 12, findings 1, 3 and 5)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from perfd.recommend import Query, RecommendError, plan_hardware, recommend
from perfd.recommend.arch import spec_from_config
from perfd.recommend.bounds import MAX_LAYERS, RANGES, config_int, multiples_below
from perfd.recommend.request import MAX_BYTES, MAX_CONTEXT, MAX_GPUS, check_limits

# The documented bound on a recommend reply (docs/recommend.md, "Limits on the input").
MAX_REPLY_BYTES = 64 << 10
# What one recommendation may take here, on a loaded machine (they take milliseconds).
SLOW_S = 5.0

LLAMA = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 8192,
}
QWEN_MOE = {**LLAMA, "model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2}
DEEPSEEK = {
    **LLAMA,
    "model_type": "deepseek_v2",
    "n_routed_experts": 16,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
}
GEMMA3 = {**LLAMA, "model_type": "gemma3_text", "sliding_window": 1024}
BASES = (LLAMA, QWEN_MOE, DEEPSEEK, GEMMA3)


def plan(config: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    request = Query(**({"model": "x", "config": config} if config is not None else {}), **fields)
    return recommend(request, plan_hardware(request, None))


# -- config values --------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(RANGES))
def test_each_key_takes_its_range_and_nothing_else(key: str) -> None:
    """Every bounded key: its ends and an integral float pass; one past either end, NaN, inf,
    1e308, a fraction, a boolean and a string are a RecommendError naming key, value, range."""
    low, high = RANGES[key]
    for good in (low, high, float(high)):
        assert config_int({key: good}, "m", key) == good
    for bad in (low - 1, high + 1, math.nan, math.inf, -math.inf, 1e308, 1.5, True, "32", [1]):
        with pytest.raises(RecommendError) as caught:
            config_int({key: bad}, "m", key)
        message = str(caught.value)
        assert f"m: {key} must be a whole number from {low} to {high}, not " in message
        assert caught.value.value == key


def test_the_moe_config_that_looped_forever_is_refused_at_once() -> None:
    """num_hidden_layers: 1e12 in an MoE config (the loop of finding 5): refused in
    milliseconds, naming the key, the value and the range."""
    for base in (QWEN_MOE, DEEPSEEK):
        started = time.perf_counter()
        with pytest.raises(RecommendError, match=r"num_hidden_layers must be a whole number "):
            plan({**base, "num_hidden_layers": 1e12}, gpu="H100")
        assert time.perf_counter() - started < SLOW_S
    with pytest.raises(RecommendError, match=r"from 1 to 4096, not 1000000000000\.0"):
        plan({**QWEN_MOE, "num_hidden_layers": 1e12}, gpu="H100")


def test_the_largest_allowed_moe_model_plans_in_bounded_time() -> None:
    """The most layers and experts allowed: planned at once, the counts in closed form."""
    config = {**DEEPSEEK, "num_hidden_layers": MAX_LAYERS, "n_routed_experts": 1 << 16}
    started = time.perf_counter()
    result = plan(config, gpu="H100")
    assert time.perf_counter() - started < SLOW_S
    assert result["fits"] is False


def _loop_deepseek(layers: int, first: int, freq: int) -> int:
    return sum(1 for i in range(layers) if i >= first and i % freq == 0)


def _loop_qwen(layers: int, step: int, dense: set[int]) -> int:
    return sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)


@settings(max_examples=300, derandomize=True)
@given(
    layers=st.integers(1, 200),
    first=st.integers(0, 250),
    freq=st.integers(0, 12),
    step=st.integers(0, 12),
    dense=st.sets(st.integers(0, 250), max_size=20),
)
def test_closed_form_layer_counts_match_the_old_loops(
    layers: int, first: int, freq: int, step: int, dense: set[int]
) -> None:
    """The MoE layer counts equal the per-layer loops they replaced (0 as a step means 1)."""
    deepseek = {**DEEPSEEK, "num_hidden_layers": layers, "first_k_dense_replace": first}
    spec = spec_from_config({**deepseek, "moe_layer_freq": freq}, name="d", source="t")
    assert spec.moe is not None
    assert spec.moe.moe_layers == _loop_deepseek(layers, first, freq or 1)
    qwen = {**QWEN_MOE, "num_hidden_layers": layers, "decoder_sparse_step": step}
    spec = spec_from_config({**qwen, "mlp_only_layers": sorted(dense)}, name="q", source="t")
    assert spec.moe is not None
    assert spec.moe.moe_layers == _loop_qwen(layers, step or 1, dense)
    assert multiples_below(layers, freq or 1) == len(range(0, layers, freq or 1))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model_type": "x" * 65}, "model_type must be a string of at most 64 characters"),
        ({"model_type": ["llama"]}, "model_type must be a string"),
        ({"text_config": [1], "num_hidden_layers": None}, "text_config must be a JSON object"),
        ({"sliding_window": 512, "layer_types": ["x"] * 4097}, "at most 4096 entries"),
        ({"mlp_only_layers": ["a"]}, "mlp_only_layers must list layer indexes"),
        ({"mlp_only_layers": {"a": 1}}, "mlp_only_layers must be a list"),
        ({"num_experts_per_tok": 9}, "9 experts per token, but only 8 experts"),
        ({"num_attention_heads": 4096, "hidden_size": 64}, "give head_dim"),
        ({"_name_or_path": "org/" + "n" * 300}, "a model name is at most 256 characters"),
    ],
)
def test_shapes_and_texts_in_a_config(change: dict[str, Any], words: str) -> None:
    """Wrong shapes, over-long texts and lists, impossible combinations: RecommendError."""
    config = {k: v for k, v in {**QWEN_MOE, **change}.items() if v is not None}
    request = Query(config=config, gpu="H100")
    with pytest.raises(RecommendError, match=words):
        recommend(request, plan_hardware(request, None))


# -- request fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"model": "m" * 257}, "model must be a string of at most 256 characters, not 257 char"),
        ({"quant": "q" * 65}, "quant must be a string of at most 64 characters"),
        ({"kv_dtype": "q" * 65}, "kv_dtype must be a string of at most 64 characters"),
        ({"engine": "e" * 65}, "engine must be a string of at most 64 characters"),
        ({"gpu": "1" + " " * 120_000 + "!"}, "gpu must be a string of at most 256 characters"),
        ({"context": MAX_CONTEXT + 1}, f"context must be a whole number from 1 to {MAX_CONTEXT}"),
        ({"context": True}, "context must be a whole number"),
        ({"memory": MAX_BYTES + 1}, f"memory must be a whole number from 1 to {MAX_BYTES}"),
        ({"kv_budget": 0}, "kv_budget must be a whole number from 1"),
        ({"kv_budget": 1.5}, "kv_budget must be a whole number"),
        ({"gpus": MAX_GPUS + 1}, f"gpus must be an integer from 0 to {MAX_GPUS}"),
        ({"gpus": True}, "gpus must be an integer"),
        ({"utilization": math.nan}, "utilization must be a number in"),
        ({"utilization": math.inf}, "utilization must be a number in"),
        ({"utilization": 10**400}, "utilization must be a number in"),
        ({"utilization": True}, "utilization must be a number in"),
        ({"utilization": -0.5}, "utilization must be a number in"),
    ],
)
def test_request_fields_are_bounded(fields: dict[str, Any], words: str) -> None:
    """Each field over its bound is refused by check_limits and by plan_hardware, before any
    lookup or arithmetic, and the message never repeats a long value."""
    request = Query(**{"model": "llama-3.1-8b", "gpu": "H100", **fields})
    for check in (check_limits, lambda r: plan_hardware(r, None)):
        with pytest.raises(RecommendError, match=words) as caught:
            check(request)
        assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("gpu", "words"),
    [
        ("0,,1", "live GPU indexes are numbers separated by commas"),
        ("2048TiB", "a GPU size must be from 1 byte to 1024TiB"),
        ("1" + " " * 62 + "!", "unknown gpu"),
    ],
)
def test_gpu_texts_are_checked_when_planned(gpu: str, words: str) -> None:
    """Live indexes, sizes and names in ``gpu``: each form checked for what it may hold."""
    with pytest.raises(RecommendError, match=words):
        plan_hardware(Query(model="llama-3.1-8b", gpu=gpu), None)


# -- any config, any request: bounded time, one error type, bounded replies -------------------

_NUMBERS = st.one_of(
    st.integers(-2, 70),
    st.integers(-(10**30), 10**30),
    st.sampled_from([0, 1, 2, 4096, 4097, 1 << 20, 1 << 27, (1 << 27) + 1, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e12, 1e308, -1e308, 4096.0, 0.5]),
)
_JSON = st.recursive(
    st.none() | st.booleans() | _NUMBERS | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_KEYS = sorted(
    {*RANGES, "n_layer", "num_experts", "n_routed_experts", "moe_topk", "dim", "n_head"}
    | {"sliding_window", "use_sliding_window", "layer_types", "mlp_only_layers", "model_type"}
    | {"text_config", "tie_word_embeddings", "multi_query", "torch_dtype", "_name_or_path"}
)
_VALUE = st.one_of(
    _NUMBERS,
    st.integers(1, 128),
    st.sampled_from([256, 1024, 4096, 8192, 32768, 1 << 20, 1 << 24]),
    _JSON,
    st.lists(st.sampled_from(["sliding_attention", "full_attention", 3]), max_size=40),
    st.sampled_from(["llama", "gpt2", "opt", "gemma2", "gemma3", "qwen2_moe", "deepseek_v3"]),
)
_CONFIGS = st.builds(
    lambda base, changes: {**base, **changes},
    st.sampled_from(BASES),
    st.dictionaries(st.sampled_from(_KEYS), _VALUE, max_size=6),
)
_REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "gpu": st.sampled_from(["H100", "H200", "RTX 4090", "T4", "L4", "1GiB", "80GiB", "nope"]),
        "gpus": st.one_of(st.integers(0, 8), st.integers(-1, MAX_GPUS + 1)),
        "context": st.one_of(st.integers(-1, 1 << 20), st.sampled_from([MAX_CONTEXT])),
        "memory": st.one_of(st.integers(-1, MAX_BYTES + 1), st.sampled_from(["64GiB", "1"])),
        "kv_budget": st.integers(-1, MAX_BYTES + 1),
        "engine": st.sampled_from(["vllm", "llama.cpp", "ollama", "llamacpp", "vllm", "tgi"]),
        "quant": st.sampled_from(["fp8", "int4", "awq", "Q4_K_M", "fp32", "nope"]),
        "kv_dtype": st.sampled_from(["fp8", "q4_0", "q8_0", "fp32", "nope"]),
        "utilization": st.one_of(
            st.floats(0.05, 1.0), st.floats(allow_nan=True), st.integers(-1, 2)
        ),
    },
)


@pytest.mark.slow
@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(config=_CONFIGS, fields=_REQUESTS)
def test_any_config_plans_fast_or_fails_with_a_recommend_error(
    config: dict[str, Any], fields: dict[str, Any]
) -> None:
    """Whatever a JSON config and the request fields hold: an answer under MAX_REPLY_BYTES
    within SLOW_S, or a RecommendError; never another exception, never a long computation."""
    if "memory" in fields and isinstance(fields["memory"], str):
        from perfd.wire.units import parse_size

        fields["memory"] = parse_size(fields["memory"])
    fields.setdefault("gpu", "H100")
    started = time.perf_counter()
    try:
        result = plan(config, **fields)
    except RecommendError as exc:
        assert len(str(exc)) < 1000
        return
    finally:
        assert time.perf_counter() - started < SLOW_S
    size = len(json.dumps(result))
    target(float(size), label="reply bytes")
    assert size < MAX_REPLY_BYTES


def worst_request() -> Query:
    """The largest reply the bounds allow, as far as we know: the longest name, the most GPUs
    with the longest GPU name, the longest context table, every optional section."""
    config = {
        **DEEPSEEK,
        "model_type": "deepseek_v3",
        "num_hidden_layers": MAX_LAYERS,
        "hidden_size": RANGES["hidden_size"][1],
        "intermediate_size": RANGES["intermediate_size"][1],
        "vocab_size": RANGES["vocab_size"][1],
        "max_position_embeddings": MAX_CONTEXT,
        "n_routed_experts": RANGES["num_local_experts"][1],
        "q_lora_rank": 1536,
        "topk_method": "noaux_tc",
    }
    return Query(
        model="m" * 256,
        config=config,
        gpu="1" + " " * 60 + "GiB",  # "GPU (1 ... GiB)": the longest name a GPU can get
        gpus=MAX_GPUS,
        engine="llama.cpp",
        context=MAX_CONTEXT - 1,
        quant="Q4_K_M",
        memory=MAX_BYTES,
    )


def test_the_worst_allowed_request_has_a_small_reply() -> None:
    """The largest request the bounds allow is answered in under MAX_REPLY_BYTES (a 4.6 KB
    request once had a 62 MB reply)."""
    request = worst_request()
    result = recommend(request, plan_hardware(request, None))
    assert len(result["hardware"]["gpus"]) == MAX_GPUS
    assert len(json.dumps(result)) < MAX_REPLY_BYTES


def test_spellings_of_a_catalog_name_share_one_cache_entry() -> None:
    """Any number of spellings of a catalog name ("l.l.a.m.a-3.1-8b") keep one parsed spec
    each model, not one per spelling a request sends."""
    from perfd.recommend import catalog

    before = catalog._catalog_spec.cache_info().currsize
    specs = {id(catalog.model_spec("-" * i + "llama-3.1-8b")) for i in range(200)}
    assert len(specs) == 1
    assert catalog._catalog_spec.cache_info().currsize <= before + 1
