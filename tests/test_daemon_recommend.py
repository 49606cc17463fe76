"""`recommend` in a real perfd: live hardware, planned hardware, config contents, errors."""

from __future__ import annotations

from typing import Any

import pytest

import perfctl
from tests.conftest import Perfd, StartPerfd


def call(perfd: Perfd, socket: str | None = None, **args: Any) -> dict[str, Any]:
    with perfctl.Client(socket, runtime_dir=perfd.runtime_dir, timeout=20) as client:
        return client.call("recommend", **args)


def test_planned_gpu_over_the_read_only_socket(start_perfd: StartPerfd) -> None:
    """Anyone may ask: Llama-3.1-8B on a catalog H100 gives the documented keys and flags."""
    perfd = start_perfd()
    result = call(perfd, str(perfd.readonly_socket), model="llama-3.1-8b", gpu="H100")
    assert result["fits"] is True
    assert result["kv_bytes_per_token"] == 131072
    assert result["weights_bytes"] == 16060522496
    assert {"max_tokens", "max_model_len", "table", "recommended", "tips", "flags"} <= set(result)
    assert "--tensor-parallel-size 1" in result["flags"]["vllm"]


def test_live_host_without_gpu_plans_for_ram(start_perfd: StartPerfd) -> None:
    """On this GPU-less host the live plan is for RAM, from the monitor's figures."""
    perfd = start_perfd()
    result = call(perfd, model="tinyllama-1.1b", engine="llama.cpp")
    assert result["hardware"]["gpus"] == []
    assert result["fits"] is True


def test_config_contents_and_sizes_as_strings(start_perfd: StartPerfd) -> None:
    """A config.json's contents (not its path) and size strings are accepted."""
    perfd = start_perfd()
    config = {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "torch_dtype": "float16",
    }
    result = call(perfd, model="my-llama", config=config, kv_budget="16GiB")
    assert result["kv_bytes_per_token"] == 524288
    assert result["max_tokens"] == 16 * (1 << 30) // 524288


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"model": "llama-9"}, "llama"),
        ({}, "name a model"),
        ({"model": "llama-3.1-8b", "memory": "lots"}, "not a size"),
        ({"model": "llama-3.1-8b", "gpu": "H100", "engine": "tgi"}, "engine"),
    ],
)
def test_bad_requests_are_invalid_args(
    start_perfd: StartPerfd, args: dict[str, Any], words: str
) -> None:
    """Unknown models, missing names, bad sizes and engines: invalid_args saying what to do."""
    perfd = start_perfd()
    with pytest.raises(perfctl.InvalidArgs, match=words):
        call(perfd, **args)


@pytest.mark.parametrize(
    "broken",
    [
        {"num_key_value_heads": 0},
        {"head_dim": 0},
        {"max_position_embeddings": 0},
    ],
)
def test_nonsense_config_contents_are_invalid_args(
    start_perfd: StartPerfd, broken: dict[str, Any]
) -> None:
    """A config.json with impossible fields is the caller's error (invalid_args), never internal."""
    perfd = start_perfd()
    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 100,
        "max_position_embeddings": 512,
        **broken,
    }
    with pytest.raises(perfctl.CommandFailed) as caught:
        call(perfd, str(perfd.readonly_socket), model="x", config=config, gpu="H100")
    assert caught.value.code == "invalid_args"
    assert call(perfd, model="tinyllama-1.1b", gpu="H100")["fits"] is True


def test_q4_0_kv_with_vllm_is_planned_as_fp8() -> None:
    """vLLM has no q4_0 KV cache: the plan counts the fp8 it will really use."""
    from perfd import recommend as r

    def plan(kv: str) -> dict[str, Any]:
        req = r.Request(model="llama-3.1-8b", gpu="H100", kv_dtype=kv)
        return r.recommend(req, r.plan_hardware(req, None))

    assert plan("q4_0")["kv_bytes_per_token"] == plan("fp8")["kv_bytes_per_token"]
