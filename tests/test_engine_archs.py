"""Where the plan check finds an engine's model architecture (perfd.engines.archs): a GGUF
through the engine process's working directory, a config.json in the model root, Ollama's
/api/show facts; every miss a reason naming what was looked for, never an exception; a file
read again only when it changes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from perfd.engines import archs
from perfd.engines.record import (
    LLAMACPP,
    OLLAMA,
    SGLANG,
    UP,
    VLLM,
    EngineRecord,
    Reading,
    ServedModel,
    Target,
)
from perfd.recommend.llama_memory import kv_bytes, read_facts
from tests.ggufmodel import write_tiny_llama


def record(kind: str, model: ServedModel, pids: tuple[int, ...] = ()) -> EngineRecord:
    target = Target(name=f"{kind}-1", kind=kind, url="http://127.0.0.1:1", pids=pids)
    return EngineRecord(target=target, state=UP, reading=Reading(models=(model,)))


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[int]:
    """A real process whose working directory holds tiny.gguf (and this one's does not)."""
    write_tiny_llama(tmp_path / "tiny.gguf")
    proc = subprocess.Popen(["sleep", "600"], cwd=tmp_path)
    yield proc.pid
    proc.kill()
    proc.wait(10)


def test_a_relative_gguf_is_found_through_the_process_cwd(tmp_path: Path, elsewhere: int) -> None:
    assert not Path("tiny.gguf").exists()
    arch = archs.resolve(record(LLAMACPP, ServedModel("tiny", path="tiny.gguf"), (elsewhere,)))
    assert not isinstance(arch, str), arch
    assert arch.query.weights_path == str(tmp_path / "tiny.gguf")
    assert arch.gguf == read_facts(str(tmp_path / "tiny.gguf"), "tiny")


def test_a_relative_gguf_without_its_process_says_so(elsewhere: int) -> None:
    unknown = archs.resolve(record(LLAMACPP, ServedModel("tiny", path="tiny.gguf")))
    assert unknown == "tiny.gguf is relative and the engine's processes are not known"
    missing = archs.resolve(record(LLAMACPP, ServedModel("m", path="none.gguf"), (elsewhere,)))
    assert missing == f"none.gguf is relative: not in /proc/{elsewhere}/cwd"


def test_a_bad_gguf_says_what_is_wrong_and_is_read_again_once_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"not a gguf at all")
    bad = archs.resolve(record(LLAMACPP, ServedModel("bad", path=str(path))))
    assert isinstance(bad, str)
    assert "not a GGUF file (no GGUF magic)" in bad
    write_tiny_llama(path)
    os.utime(path, ns=(1, 1))  # another mtime than the bad file's, whatever the clock
    good = archs.resolve(record(LLAMACPP, ServedModel("bad", path=str(path))))
    assert not isinstance(good, str), good


@pytest.mark.parametrize("kind", [VLLM, SGLANG])
def test_a_config_json_in_the_model_root(tmp_path: Path, kind: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    arch = archs.resolve(record(kind, ServedModel("m", path=str(tmp_path))))
    assert not isinstance(arch, str), arch
    assert arch.query.config == {"model_type": "llama"}
    (tmp_path / "config.json").write_text("[1, 2]")
    os.utime(tmp_path / "config.json", ns=(2, 2))
    assert archs.resolve(record(kind, ServedModel("m", path=str(tmp_path)))) == (
        f"{tmp_path}/config.json: not a JSON object"
    )


def test_a_model_root_not_on_this_host() -> None:
    reason = archs.resolve(record(VLLM, ServedModel("m", path="/models/nowhere")))
    assert reason == (
        "/models/nowhere/config.json: no such file on this host (the model root is not a "
        "local directory with a config.json)"
    )
    assert archs.resolve(record(VLLM, ServedModel("meta-llama/Llama-3.1-8B"))) == (
        "the engine names no local path for 'meta-llama/Llama-3.1-8B'"
    )


def test_ollamas_show_facts_give_llama_cpps_kv_bytes() -> None:
    facts = {
        "architecture": "llama",
        "block_count": 16,
        "head_count": 32,
        "head_count_kv": 8,
        "key_length": 64,
        "value_length": 64,
        "embedding_length": 2048,
        "context_length": 131072,
    }
    arch = archs.resolve(record(OLLAMA, ServedModel("llama3.2:1b", architecture=facts)))
    assert not isinstance(arch, str), arch
    assert arch.gguf is not None
    assert kv_bytes(arch.gguf, 4096) == 16 * 2 * 8 * 64 * 2 * 4096  # K and V, f16
    assert arch.query.config is not None
    assert arch.query.config["num_key_value_heads"] == 8
    none = archs.resolve(record(OLLAMA, ServedModel("x")))
    assert none == "Ollama's /api/show gave no architecture for 'x'"
    partial = archs.resolve(record(OLLAMA, ServedModel("x", architecture={"architecture": "y"})))
    assert partial == "x: /api/show lacks block_count, head_count or embedding_length"


def test_no_reading_no_architecture() -> None:
    target = Target(name="v", kind=VLLM, url="http://127.0.0.1:1")
    assert archs.resolve(EngineRecord(target=target, state="starting")) == (
        "no model read from the engine yet"
    )
