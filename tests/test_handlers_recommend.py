"""The recommend handler (perfd.handlers.recommend) in process against a fake view: planned
and live hardware, config contents, and every bad request as invalid_args with its words.
The socket, timing and reply-size cases stay in tests/test_daemon_recommend.py."""

from __future__ import annotations

from typing import Any

import pytest

from perfd.errors import CommandError
from perfd.handlers import table
from perfd.wire import protocol
from tests.fakeview import HOST_SNAPSHOT, FakeView
from tests.test_recommend_bounds import QWEN_MOE

MOE_CONFIG = QWEN_MOE


def call(view: Any | None = None, **args: Any) -> dict[str, Any]:
    command = table.build(view or FakeView(snapshot=HOST_SNAPSHOT))["recommend"]
    result: dict[str, Any] = command.handler(args)
    return result


def test_recommend_is_open_to_the_read_only_socket() -> None:
    """Anyone may ask (not an admin command) and it runs on a worker (slow)."""
    command = table.build(FakeView())["recommend"]
    assert (command.admin, command.slow) == (False, True)
    assert "recommend" in protocol.READ_ONLY_COMMANDS


def test_planned_gpu() -> None:
    """Llama-3.1-8B on a catalog H100 gives the documented keys and flags."""
    result = call(model="llama-3.1-8b", gpu="H100")
    assert result["fits"] is True
    assert result["kv_bytes_per_token"] == 131072
    assert result["weights_bytes"] == 16060522496
    assert {"max_tokens", "max_model_len", "table", "recommended", "tips", "flags"} <= set(result)
    assert "--tensor-parallel-size 1" in result["flags"]["vllm"]


def test_live_hardware_comes_from_the_monitor_snapshot() -> None:
    """No hardware named: the plan is for the snapshot's host (here GPU-less: its RAM)."""
    result = call(model="tinyllama-1.1b", engine="llama.cpp")
    assert result["hardware"]["gpus"] == []
    assert result["hardware"]["source"] == "live"
    assert result["fits"] is True


def test_config_contents_and_sizes_as_strings() -> None:
    """A config.json's contents (not its path) and size strings are accepted."""
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
    result = call(model="my-llama", config=config, kv_budget="16GiB")
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
def test_bad_requests_are_invalid_args(args: dict[str, Any], words: str) -> None:
    """Unknown models, missing names, bad sizes and engines: invalid_args saying what to do."""
    with pytest.raises(CommandError, match=words) as caught:
        call(**args)
    assert caught.value.code == protocol.INVALID_ARGS


@pytest.mark.parametrize(
    "broken",
    [
        {"num_key_value_heads": 0},
        {"head_dim": 0},
        {"max_position_embeddings": 0},
    ],
)
def test_nonsense_config_contents_are_invalid_args(broken: dict[str, Any]) -> None:
    """A config.json with impossible fields is the caller's error (invalid_args), never internal."""
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
    view = FakeView(snapshot=HOST_SNAPSHOT)
    with pytest.raises(CommandError) as caught:
        call(view, model="x", config=config, gpu="H100")
    assert caught.value.code == "invalid_args"
    assert call(view, model="tinyllama-1.1b", gpu="H100")["fits"] is True


def test_a_long_size_text_is_refused_naming_the_field_and_the_limit() -> None:
    """ "1" + 120000 spaces + "!" as memory, kv_budget or gpu: invalid_args naming the field
    and the limit, without the text (the timing under load stays a real-perfd test)."""
    attack = "1" + " " * 120_000 + "!"
    for field, words in (
        ("memory", "memory: a size is at most 64 characters long (like "),
        ("kv_budget", "kv_budget: a size is at most 64 characters long (like "),
        ("gpu", "gpu must be a string of at most 256 characters, not 120002 characters"),
    ):
        with pytest.raises(CommandError) as caught:
            call(model="llama-3.1-8b", **{field: attack})
        assert caught.value.code == protocol.INVALID_ARGS
        assert words in caught.value.message
        assert len(caught.value.message) < 300


def test_config_contents_alone_name_the_model() -> None:
    """`config` without `model`: named by its _name_or_path (it was refused as "no model")."""
    config = {**MOE_CONFIG, "_name_or_path": "org/tiny-moe"}
    result = call(config=config, gpu="H100")
    assert result["model"]["name"] == "tiny-moe"
    assert result["model"]["moe"] == {"experts": 8, "experts_per_token": 2}


def test_no_monitor_yet_still_plans_named_hardware() -> None:
    """Before the monitor's first sample a named GPU still plans; live-only asks say so."""
    view = FakeView(monitor=False)
    assert call(view, model="llama-3.1-8b", gpu="H100")["fits"] is True
    with pytest.raises(CommandError) as caught:
        call(view, model="llama-3.1-8b")
    assert caught.value.code == protocol.INVALID_ARGS


def offline(*argv: str) -> dict[str, Any]:
    """``perfctl recommend ARGV --offline``'s computation, in process."""
    import argparse

    from perfctl import recommend as ctl_recommend

    parser = argparse.ArgumentParser()
    ctl_recommend.add_arguments(parser)
    return ctl_recommend.compute(parser.parse_args([*argv, "--offline"]), None)


def test_perfctl_offline_builds_the_same_request() -> None:
    """perfctl --offline and the daemon command build their request with one function
    (perfd.recommend.build_request): the same words give the same answer and errors."""
    from perfctl.errors import InvalidArgs

    no_live = FakeView(monitor=False)  # planned hardware only, as --offline plans
    assert offline("llama-3.1-8b", "--gpu", "H100", "--memory", "64GiB") == call(
        no_live, model="llama-3.1-8b", gpu="H100", memory="64GiB"
    )
    with pytest.raises(InvalidArgs) as ctl:
        offline("llama-9", "--gpu", "H100")
    with pytest.raises(CommandError) as daemon:
        call(model="llama-9", gpu="H100")
    assert str(ctl.value) == daemon.value.message
