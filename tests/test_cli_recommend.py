"""`perfctl recommend`: the real perfctl, offline and against a real perfd; the client API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import perfctl
from perfd.recommend import Query, plan_hardware, recommend
from tests.conftest import Perfd, StartPerfd, clean_env, command
from tests.test_recommend_weights import tiny_llama_gguf

LLAMA_2_7B = {  # a Llama-2-7B-shaped config.json: 32 layers x 32 KV heads x 128 x 2 x 2 bytes
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


def ctl(runtime_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real perfctl with PERFD_RUNTIME_DIR=``runtime_dir`` (no perfd there unless started)."""
    return subprocess.run(
        [*command("perfctl"), *args],
        env=clean_env(PERFD_RUNTIME_DIR=str(runtime_dir)),
        capture_output=True,
        text=True,
        timeout=20,
    )


def answer(perfd: Perfd, *args: str) -> dict[str, Any]:
    """`perfctl recommend ARGS --json` against ``perfd``; it must exit 0."""
    out = perfd.ctl("recommend", *args, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data.pop("schema") == 1
    return data


# -- no daemon --------------------------------------------------------------------------------


def test_offline_plans_for_a_named_gpu(tmp_path: Path) -> None:
    """--offline --gpu H100: exit 0 without perfd, and vLLM's flags alone on their line."""
    out = ctl(tmp_path, "recommend", "--offline", "--gpu", "H100", "llama-3.1-8b")
    assert out.returncode == 0, out.stderr
    request = Query(model="llama-3.1-8b", gpu="H100")
    flags = recommend(request, plan_hardware(request, None))["flags"]
    lines = out.stdout.splitlines()
    assert flags["vllm"].startswith("--max-model-len 32768 --max-num-seqs 13")
    assert flags["vllm"] in lines
    assert flags["llama.cpp"] in lines


def test_offline_without_hardware_is_usage(tmp_path: Path) -> None:
    """--offline with no --gpu NAME, --memory or --kv-budget exits 2 saying what to add."""
    out = ctl(tmp_path, "recommend", "--offline", "llama-3.1-8b")
    assert out.returncode == 2
    assert out.stderr.startswith("usage: perfctl recommend")
    assert "name a GPU with --gpu NAME" in out.stderr
    assert "--memory SIZE" in out.stderr


def test_a_model_that_does_not_fit_is_an_answer(tmp_path: Path) -> None:
    """Llama-3.1-70B on an RTX 4090 exits 0: the shortfall and the smallest change."""
    out = ctl(tmp_path, "recommend", "llama-3.1-70b", "--offline", "--gpu", "RTX 4090", "--json")
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert data["fits"] is False
    assert data["shortfall_bytes"] > 0
    assert data["smallest_change"]["result"]["fits"] is True


def test_list_models_and_gpus_need_no_daemon(tmp_path: Path) -> None:
    """--list-models lists at least 14 models, --list-gpus the GPUs, with no perfd running."""
    out = ctl(tmp_path, "recommend", "--list-models")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("NAME ")
    rows = [line for line in lines[1:] if line.split()[-1] in {"mha", "gqa", "mla", "MoE"}]
    assert len(rows) >= 14
    assert any(line.startswith("Llama-3.1-8B ") for line in rows)
    models = json.loads(ctl(tmp_path, "recommend", "--list-models", "--json").stdout)["models"]
    assert len(models) >= 14
    gpus = ctl(tmp_path, "recommend", "--list-gpus")
    assert gpus.returncode == 0
    assert "H100-80GB" in gpus.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config-json", "missing.json"], "--config-json missing.json: No such file"),
        (["--config-json", "bad.json"], "not valid JSON"),
        (["--weights", "missing.gguf", "--offline", "--gpu", "H100"], "no such file"),
        (["llama-3.1-8b", "--memory", "lots"], "not a size"),
        (["llama-3.1-8b", "--utilization", "1.5"], "at most 1"),
        ([], "give a MODEL"),
        (["--list-models", "llama-3.1-8b"], "takes no MODEL"),
    ],
)
def test_usage_mistakes_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    """Unreadable files, bad sizes and fractions, no model: exit 2 before any daemon."""
    (tmp_path / "bad.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    out = ctl(tmp_path / "none", "recommend", *args)
    assert out.returncode == 2, out
    assert words in out.stderr


def test_daemon_down_exits_3_with_the_offline_hint(tmp_path: Path) -> None:
    """No perfd and no --offline (also with --weights): exit 3, hint at --offline."""
    gguf = tiny_llama_gguf(tmp_path / "tiny.gguf")
    for args in (["llama-3.1-8b"], ["--weights", str(gguf)]):
        out = ctl(tmp_path / "none", "recommend", *args)
        assert out.returncode == 3
        assert "perfd is not running" in out.stderr
        assert "hint: " in out.stderr
        assert "or use --offline with --gpu NAME / --memory SIZE" in out.stderr


# -- against a real perfd ---------------------------------------------------------------------


def test_daemon_answers_with_the_documented_keys(start_perfd: StartPerfd) -> None:
    """`perfctl recommend llama-3.1-8b --gpu H100 --json` carries the recommend() result."""
    data = answer(start_perfd(), "llama-3.1-8b", "--gpu", "H100")
    keys = {"weights_bytes", "kv_bytes_per_token", "max_tokens", "max_model_len", "table"}
    assert keys | {"recommended", "tips", "flags"} <= set(data)
    assert data["kv_bytes_per_token"] == 131072
    assert data["fits"] is True


def test_unknown_model_exits_1_with_the_list_hint(start_perfd: StartPerfd) -> None:
    """perfd's invalid_args for an unknown model: exit 1, hint perfctl recommend --list-models."""
    out = start_perfd().ctl("recommend", "llama-9", "--gpu", "H100")
    assert out.returncode == 1
    assert out.stderr.startswith("perfctl: unknown model 'llama-9'")
    assert "hint: perfctl recommend --list-models" in out.stderr


def test_config_json_contents_are_sent(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """--config-json is read by perfctl; perfd plans it: 512 KiB of KV per token, named
    after its directory."""
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_2_7B))
    perfd = start_perfd()
    data = answer(perfd, "--config-json", str(folder / "config.json"), "--kv-budget", "16GiB")
    assert data["kv_bytes_per_token"] == 524288
    assert data["max_tokens"] == 16 * (1 << 30) // 524288
    assert data["model"]["name"] == "my-llama"
    named = answer(perfd, "mine", "--config-json", str(folder), "--gpu", "H100")
    assert named["model"]["name"] == "mine"


def test_weights_are_read_here_on_live_hardware(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """--weights: perfctl reads the GGUF header itself and plans on perfd's live stats."""
    gguf = tiny_llama_gguf(tmp_path / "tiny.gguf")
    perfd = start_perfd()
    data = answer(perfd, "--weights", str(gguf), "--engine", "llamacpp")
    model, hardware = data["model"], data["hardware"]
    assert model["file"]["kind"] == "gguf"
    assert model["name"] == "tiny"
    assert hardware["source"] == "live"
    stats = json.loads(perfd.ctl("stats", "--json").stdout)
    assert hardware["ram_total_bytes"] == stats["host"]["memory"]["total_bytes"]
    text = perfd.ctl("recommend", "--weights", str(gguf), "--engine", "llamacpp")
    assert text.returncode == 0
    assert re.search(r"\blive\b", text.stdout)


def test_live_plan_prints_the_human_report(start_perfd: StartPerfd) -> None:
    """On perfd's live hardware the report names it live and ends with the settings."""
    out = start_perfd().ctl("recommend", "tinyllama-1.1b", "--engine", "llamacpp")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("model     TinyLlama-1.1B")
    assert "live" in out.stdout
    assert out.stdout.splitlines()[-1].startswith("PARAMETER num_ctx ")


def test_client_recommend(start_perfd: StartPerfd) -> None:
    """Client.recommend(model, **args) sends the arguments, leaving out the None ones."""
    perfd = start_perfd()
    with perfctl.Client(perfd.readonly_socket, runtime_dir=perfd.runtime_dir) as client:
        result = client.recommend("llama-3.1-8b", gpu="H100", context=None, kv_dtype="fp8")
        assert result["precision"]["kv_cache"] == "fp8"
        with pytest.raises(perfctl.InvalidArgs, match="unknown model"):
            client.recommend("llama-9", gpu="H100")


def test_the_daemon_path_stays_thin(start_perfd: StartPerfd) -> None:
    """`perfctl ping` and `perfctl recommend` (perfd's answer) never import perfd.recommend."""
    perfd = start_perfd()
    code = (
        "import sys; from perfctl.__main__ import main; "
        "codes = [main(['ping']), main(['recommend', 'llama-3.1-8b', '--gpu', 'H100'])]; "
        "print(codes, sorted(m for m in sys.modules if m.startswith('perfd.recommend')), "
        "file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stderr.strip() == "[0, 0] []"


# -- bounded input (issue 12, findings 1 and 5) -----------------------------------------------

MOE_1E12 = {**LLAMA_2_7B, "model_type": "qwen2_moe", "num_experts": 8, "num_hidden_layers": 1e12}


def test_offline_refuses_the_moe_config_that_looped_forever(tmp_path: Path) -> None:
    """--offline with a config of 1e12 MoE layers: exit 2 at once, naming key, value, range."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MOE_1E12))
    out = ctl(tmp_path, "recommend", "--offline", "--gpu", "H100", "--config-json", str(path))
    assert out.returncode == 2, out
    assert "num_hidden_layers must be a whole number from 1 to 4096, not 1000000000000.0" in (
        out.stderr
    )


def test_daemon_and_offline_give_the_same_range_errors(
    start_perfd: StartPerfd, tmp_path: Path
) -> None:
    """A context or --gpus past its bound, and a --memory text past 64 characters: the same
    message from perfd (exit 1) and from --offline, never echoing the long text."""
    perfd = start_perfd()
    cases = [
        (["--context", str(10**12)], 1, "context must be a whole number from 1 to 134217728"),
        (["--gpus", "65"], 1, "gpus must be an integer from 0 to 64"),
        (["--memory", "1" + " " * 1000 + "G"], 2, "a size is at most 64 characters long"),
    ]
    for flags, code, words in cases:
        for where in ([], ["--offline"]):
            out = perfd.ctl("recommend", "llama-3.1-8b", "--gpu", "H100", *flags, *where)
            assert out.returncode == code, (flags, where, out)
            assert words in out.stderr
            assert len(out.stderr) < 1000
