"""A GGUF model in a real perfd through the llama_cpp loader: load, ps, infer, evict, reload.

Every figure perfd shows is checked against a source of its own: the tensor bytes against the
file read back with gguf.GGUFReader plus the KV cache's textbook size, the weights' residence
against the kernel's view of perfd's mapping of the file (/proc/PID/smaps), llama.cpp's replies
by their shape. Skipped, saying so, only where llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

import perfctl
from tests.conftest import Perfd, StartPerfd
from tests.ggufmodel import TinyLlama, true_bytes, write_tiny_llama

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed (pip install -e ".[test,llama]"; it builds '
    "llama.cpp with a C/C++ compiler and cmake)",
)
SHAPE = TinyLlama(n_embd=512, n_ff=1536)  # about 25 MiB of f16 weights, 4 MiB of KV cache
N_CTX, CELLS = 1000, 1024  # llama.cpp rounds the context up to a multiple of 256
CONFIG = """
[models.tiny]
loader = "llama_cpp"
path = "{path}"
options = {{ n_ctx = {n_ctx}, n_threads = 1 }}
"""


def call(perfd: Perfd, cmd: str, **args: Any) -> dict[str, Any]:
    with perfctl.Client(None, runtime_dir=perfd.runtime_dir, timeout=60) as client:
        return client.call(cmd, **args)


def entry(perfd: Perfd) -> dict[str, Any]:
    (found,) = [m for m in call(perfd, "ps")["models"] if m["name"] == "tiny"]
    return found


def mapped_rss(pid: int, path: Path) -> int | None:
    """The resident bytes of ``path``'s mappings in process ``pid`` (None: not mapped), as
    the kernel counts them in /proc/PID/smaps."""
    total, mapped, current = 0, False, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            current = len(head) >= 6 and head[5] == str(path)
            mapped |= current
        elif current and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total if mapped else None


def within(value: int, expected: int, percent: float) -> bool:
    return abs(value - expected) <= expected * percent / 100


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    return write_tiny_llama(tmp_path / "tiny.gguf", SHAPE)


def test_a_gguf_model_loads_answers_evicts_and_reloads(start_perfd: StartPerfd, gguf: Path) -> None:
    """ps shows the loader's tensor bytes (weights + KV cache) within 2% of the tensors read
    back from the file plus layers x cells x K+V; the weights are mapped from the file and
    resident; a completion and a chat answer; evict unmaps the file; a reload shows the same."""
    weights, kv = true_bytes(gguf), SHAPE.kv_bytes(CELLS)
    perfd = start_perfd(CONFIG.format(path=gguf, n_ctx=N_CTX))
    pid = call(perfd, "status")["pid"]
    assert mapped_rss(pid, gguf) is None  # nothing loaded yet

    for load in (1, 2):
        assert call(perfd, "load", model="tiny")["state"] == "ready"
        shown = entry(perfd)
        assert shown["loads"] == load
        assert shown["estimated_bytes"] == weights + kv  # from the header, before the load
        assert within(shown["tensor_bytes"], weights + kv, 2)
        assert shown["tensor_bytes_by_device"] == {"cpu": shown["tensor_bytes"]}
        assert shown["tensor_counted_by"] == "loader"
        parts = shown["tensor_parts"]
        assert within(parts["weights"], weights, 2)
        assert within(parts["kv_cache"], kv, 2)
        assert parts["compute_buffers"] > 0  # llama.cpp's own figure, outside tensor_bytes
        assert shown["bytes_source"] == "tensors"
        assert shown["bytes"] == shown["tensor_bytes"]
        # mmap: the weights are file-backed pages of perfd, resident after the load
        resident = mapped_rss(pid, gguf)
        assert resident is not None
        assert within(resident, gguf.stat().st_size, 2)
        if load == 2:  # llama_cpp's own libraries were mapped by the first load
            delta = shown["resident_delta"]
            assert within(delta["file_bytes"], resident, 5)
            assert delta["anon_bytes"] >= kv * 0.9  # the KV cache is anonymous and cleared

        completion = call(
            perfd, "infer", model="tiny", inputs={"prompt": "the water", "max_tokens": 5}
        )["outputs"]
        assert completion["object"] == "text_completion"
        assert isinstance(completion["choices"][0]["text"], str)
        assert completion["usage"]["completion_tokens"] >= 1
        chat_input = json.dumps(
            {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        )
        done = perfd.ctl("--json", "infer", "tiny", "--input", chat_input, timeout=60)
        assert done.returncode == 0, done.stderr
        chat = json.loads(done.stdout)["outputs"]
        assert chat["object"] == "chat.completion"
        assert isinstance(chat["choices"][0]["message"]["content"], str)
        assert chat["usage"]["prompt_tokens"] >= 1

        evicted = call(perfd, "evict", model="tiny")
        assert evicted["evicted"] == ["tiny"]
        record = evicted["records"][0]
        assert mapped_rss(pid, gguf) is None  # unload closed the engine: the file is unmapped
        assert within(record["freed_file_bytes"], resident, 5)
        assert record["freed_anon_bytes"] >= kv * 0.9

    assert perfd.proc.poll() is None


def test_a_bad_request_is_infer_failed_and_perfd_keeps_serving(
    start_perfd: StartPerfd, gguf: Path
) -> None:
    """A request that is neither a prompt nor messages: infer_failed with the loader's words;
    the model stays loaded and the next request is answered."""
    perfd = start_perfd(CONFIG.format(path=gguf, n_ctx=256))
    with pytest.raises(perfctl.CommandFailed) as caught:
        call(perfd, "infer", model="tiny", inputs={"text": "hi"})
    assert caught.value.code == "infer_failed"
    assert "give either prompt (a completion) or messages (a chat)" in caught.value.message
    reply = call(perfd, "infer", model="tiny", inputs={"prompt": "hi", "max_tokens": 2})
    assert reply["outputs"]["usage"]["completion_tokens"] >= 1
    assert entry(perfd)["state"] == "ready"
