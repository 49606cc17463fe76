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
