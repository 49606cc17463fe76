"""The llama_cpp loader in-process: its checks, its estimate against llama.cpp's own log line,
and a real load, request and unload of a tiny random Llama GGUF written by the test.

The tests that need llama-cpp-python skip, saying so, only where it is not installed (it builds
llama.cpp from source; .ci/run installs it, so CI runs them).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from perfd.loaders import llama_log, llama_memory
from perfd.loaders.base import LoaderError, ModelSpec
from perfd.loaders.llama import INSTALL_HINT, LlamaCppLoader, LlamaModel, LlamaOptions, request
from perfd.loaders.registry import Registry
from tests.ggufmodel import TinyLlama, true_bytes, write_tiny_llama

MIB = 1 << 20
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(
    not HAVE_LLAMA,
    reason='llama-cpp-python is not installed (pip install -e ".[test,llama]"; it builds '
    "llama.cpp with a C/C++ compiler and cmake)",
)
SHAPE = TinyLlama()


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", SHAPE)


def spec(path: Path | str, **options: object) -> ModelSpec:
    return ModelSpec(name="tiny", loader="llama_cpp", path=str(path), options=dict(options))


def tensor_sizes(path: Path) -> dict[str, int]:
    """Each tensor's bytes as gguf.GGUFReader reads them (not perfd's reader)."""
    import gguf as gguf_package

    reader = gguf_package.GGUFReader(str(path))
    return {tensor.name: int(tensor.n_bytes) for tensor in reader.tensors}


# --- checks before anything loads ----------------------------------------------------------


def test_the_registry_has_llama_cpp_without_importing_it() -> None:
    """llama_cpp is a built-in loader name; perfd starts (and lists it) with llama_cpp blocked."""
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "from perfd.loaders.registry import Registry\n"
        "print(Registry(group='perfd.none').get('llama_cpp').name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "llama_cpp"
    assert "llama_cpp" in Registry(group="perfd.none").names()


def test_building_the_registry_does_not_import_llama_cpp() -> None:
    """perfd builds its loader registry at start: llama_cpp (and its native libraries) load
    only with the first GGUF model."""
    code = (
        "import sys\n"
        "from perfd.loaders.registry import Registry\n"
        "Registry(group='perfd.none').get('llama_cpp')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'numpy')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "the llama_cpp loader needs path (a .gguf file)"),
        ("missing.gguf", "does not exist"),
        (".", "is not a file"),
    ],
)
def test_a_bad_path_is_refused(tmp_path: Path, path: str, message: str) -> None:
    """No path, a missing file, a directory: LoaderError from estimate and from load."""
    where = "" if not path else str(tmp_path / path)
    for call in (LlamaCppLoader().estimate, LlamaCppLoader().load):
        with pytest.raises(LoaderError, match=re.escape(message)):
            call(spec(where))


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    """A text file: the error names the file and says it is not GGUF, before llama.cpp runs."""
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model\n" * 10)
    for call in (LlamaCppLoader().estimate, LlamaCppLoader().load):
        with pytest.raises(LoaderError, match=r"model 'tiny': .*notes.gguf: not a GGUF file"):
            call(spec(text))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_ctx": -1}, "option n_ctx must be an integer from 0 to 16777216"),
        ({"n_ctx": "4k"}, "option n_ctx must be an integer from 0 to 16777216 (0: the model's"),
        ({"n_ctx": True}, "option n_ctx must be an integer"),
        ({"n_threads": 0}, "option n_threads must be an integer from 1 to 1024"),
        ({"n_threads": 2.5}, "option n_threads must be an integer"),
        ({"n_gpu_layers": -2}, "option n_gpu_layers must be an integer from -1"),
        ({"n_gpu_layers": 3}, 'n_gpu_layers = 3 needs a GPU device; with device = "cpu"'),
        ({"n_batch": 8}, "unknown llama_cpp option(s) n_batch; allowed: n_ctx, n_gpu_layers"),
    ],
)
def test_bad_options_are_refused(gguf: Path, options: dict[str, object], message: str) -> None:
    """Each option is checked for its type and range, and the error says what is allowed."""
    for call in (LlamaCppLoader().estimate, LlamaCppLoader().load):
        with pytest.raises(LoaderError, match=re.escape(message)):
            call(spec(gguf, **options))


def test_a_bad_device_is_refused(gguf: Path) -> None:
    """A device that is neither cpu nor cuda:N is refused before anything loads."""
    bad = ModelSpec(name="tiny", loader="llama_cpp", path=str(gguf), device="gpu0")
    with pytest.raises(LoaderError, match=r"device 'gpu0' is not \"cpu\" or \"cuda:N\""):
        LlamaCppLoader().load(bad)


def test_without_llama_cpp_the_load_says_how_to_install_it(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With llama_cpp not importable, load fails with the install hint; estimate still works."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    with pytest.raises(LoaderError) as caught:
        LlamaCppLoader().load(spec(gguf))
    assert str(caught.value).startswith("model 'tiny' needs llama-cpp-python, which is not")
    assert 'pip install "perfd[llama]"' in str(caught.value)
    assert INSTALL_HINT in str(caught.value)
    assert LlamaCppLoader().estimate(spec(gguf)) > 0


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ("hello", "the inputs must be a JSON object"),
        ({"max_tokens": 3}, "give either prompt (a completion) or messages (a chat), neither"),
        ({"prompt": "a", "messages": []}, "give either prompt (a completion) or messages"),
        ({"prompt": 7}, "prompt must be a string, not int"),
        ({"messages": [{"role": "user"}]}, "messages must be a non-empty list of objects"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"prompt": "a", "grammar": "x"}, "unknown request parameter 'grammar' for a prompt"),
        ({"prompt": "a", "top_logprobs": 2}, "unknown request parameter 'top_logprobs'"),
        ({"prompt": "a", "max_tokens": "8"}, "max_tokens must be int, not '8'"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens must be int, not True"),
        ({"prompt": "a", "temperature": "hot"}, "temperature must be int or float"),
        ({"prompt": "a", "stream": True}, "stream is not supported"),
    ],
)
def test_bad_requests_are_refused(inputs: object, message: str) -> None:
    """A request is a prompt or messages with whitelisted, typed parameters."""
    with pytest.raises(LoaderError, match=re.escape(message)):
        request("tiny", inputs)


def test_a_good_request_passes_through() -> None:
    """The whitelisted parameters go to llama-cpp-python as they came."""
    assert request("t", {"prompt": "hi", "max_tokens": 4, "stop": ["\n"], "stream": False}) == (
        "prompt",
        {"prompt": "hi", "max_tokens": 4, "stop": ["\n"]},
    )
    chat = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    assert request("t", chat) == ("messages", chat)


def test_infer_takes_no_options_and_only_its_models() -> None:
    """Request options are refused (parameters belong in the inputs); other objects too."""
    loader = LlamaCppLoader()
    with pytest.raises(LoaderError, match="cannot run a str"):
        loader.infer("model", {"prompt": "a"}, {})
    gone = LlamaModel("tiny", "x.gguf", None, llama_options(), 512)
    with pytest.raises(LoaderError, match="the llama_cpp loader takes none"):
        loader.infer(gone, {"prompt": "a"}, {"stream": True})
    with pytest.raises(LoaderError, match="model 'tiny' was unloaded"):
        loader.infer(gone, {"prompt": "a"}, {})


def llama_options() -> LlamaOptions:
    return LlamaOptions(n_ctx=512, n_gpu_layers=0, n_threads=None, gpu=None, gpu_index=None)


# --- perfd's own memory math ---------------------------------------------------------------


@pytest.mark.parametrize(("n_ctx", "cells"), [(300, 512), (1000, 1024), (512, 512), (0, 2048)])
def test_the_estimate_is_the_weights_plus_the_kv_cache(gguf: Path, n_ctx: int, cells: int) -> None:
    """estimate = every tensor's bytes (gguf.GGUFReader) + layers x cells x 2 x n_head_kv x
    head_dim x 2 bytes (f16), cells the context rounded up to 256 (0: context_length)."""
    expected = true_bytes(gguf) + SHAPE.kv_bytes(cells)
    assert SHAPE.n_head_kv < SHAPE.n_head  # grouped-query attention: the KV heads count
    assert LlamaCppLoader().estimate(spec(gguf, n_ctx=n_ctx)) == expected


def test_offloaded_layers_are_counted_on_the_gpu(gguf: Path) -> None:
    """n_gpu_layers = 2 of 4 (+ the output layer): the output layer and block 3 on cuda:0,
    token_embd and blocks 0-2 on the cpu; block 3's KV cache on cuda:0 (llama.cpp's split)."""
    sizes = tensor_sizes(gguf)
    on_gpu = sum(v for k, v in sizes.items() if k.startswith(("blk.3.", "output")))
    facts = llama_memory.read_facts(str(gguf), "tiny")
    assert llama_memory.weights_by_device(facts, 2, "cuda:0") == {
        "cpu": sum(sizes.values()) - on_gpu,
        "cuda:0": on_gpu,
    }
    layer_kv = SHAPE.kv_bytes(512) // SHAPE.n_layer
    assert llama_memory.kv_by_device(facts, 512, 2, "cuda:0") == {
        "cpu": 3 * layer_kv,
        "cuda:0": layer_kv,
    }
    everything = llama_memory.weights_by_device(facts, -1, "cuda:0")
    assert everything == {
        "cpu": sizes["token_embd.weight"],
        "cuda:0": sum(sizes.values()) - sizes["token_embd.weight"],
    }
    assert llama_memory.weights_by_device(facts, 0, "cuda:0") == {"cpu": sum(sizes.values())}


def test_the_engine_log_lines_are_read() -> None:
    """The figures in llama.cpp's log lines (as this llama.cpp prints them) are parsed."""
    lines = [
        "load_tensors:   CPU_Mapped model buffer size =     6.42 MiB",
        "llama_kv_cache:        CPU KV buffer size =     1.00 MiB",
        "llama_kv_cache: size =    1.00 MiB (   512 cells,   4 layers,  1/1 seqs), K (f16):"
        "    0.50 MiB, V (f16):    0.50 MiB",
        "sched_reserve:        CPU compute buffer size =     4.69 MiB",
        "~llama_context:        CPU compute buffer size is   4.6933 MiB, matches expectation",
    ]
    figures = llama_log.parse_figures(lines)
    assert (figures.kv_cache_bytes, figures.kv_cells) == (MIB, 512)
    assert figures.model_buffers == {"CPU_Mapped": round(6.42 * MIB)}
    assert figures.kv_buffers == {"CPU": MIB}
    assert figures.compute_buffers == {"CPU": round(4.69 * MIB)}


def test_the_log_callback_collects_per_thread_and_forwards_warnings() -> None:
    """Inside a capture llama.cpp's lines are kept (continuations joined, errors found);
    outside one, info lines are dropped and warnings and errors become llama_cpp.log events."""
    held = llama_log.Capture()
    llama_log._local.capture = held
    try:
        llama_log._on_log(2, b"llama_kv_cache: size =    1.00 MiB (   512 cel", None)
        llama_log._on_log(llama_log.CONT, b"ls,   4 layers)\n", None)
        llama_log._on_log(llama_log.ERROR, b"llama_model_load: error loading model\n", None)
    finally:
        llama_log._local.capture = None
    assert held.figures().kv_cells == 512
    assert held.errors() == ["llama_model_load: error loading model"]
    with capture_logs() as logs:
        llama_log._on_log(2, b"print_info: n_ctx_train = 2048\n", None)
        llama_log._on_log(llama_log.WARN, b"llama_context: n_ctx_seq > n_ctx_train\n", None)
    assert logs == [
        {
            "event": "llama_cpp.log",
            "log_level": "warning",
            "level": "warning",
            "text": "llama_context: n_ctx_seq > n_ctx_train",
        }
    ]


# --- against llama.cpp itself --------------------------------------------------------------


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [300, 1000])
def test_the_kv_estimate_matches_llama_cpps_own_log_line(gguf: Path, n_ctx: int) -> None:
    """llama.cpp, loading the file in a process of its own, logs `llama_kv_cache: size = X MiB
    (N cells` and its model buffer's size: perfd's figures, computed from the header before
    any load, agree to the log's 0.01 MiB."""
    code = (
        "import sys, llama_cpp\n"
        "llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=1, verbose=True)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(gguf), str(n_ctx)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kv_line = re.search(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells", done.stderr)
    model_line = re.search(r"CPU_Mapped model buffer size = +([\d.]+) MiB", done.stderr)
    assert kv_line, done.stderr[-3000:]
    assert model_line, done.stderr[-3000:]
    facts = llama_memory.read_facts(str(gguf), "tiny")
    estimate = LlamaCppLoader().estimate(spec(gguf, n_ctx=n_ctx))
    kv = estimate - facts.weights_bytes
    assert int(kv_line.group(2)) == llama_memory.kv_cells(n_ctx, facts.n_ctx_train)
    assert abs(kv / MIB - float(kv_line.group(1))) <= 0.005
    assert abs(facts.weights_bytes / MIB - float(model_line.group(1))) <= 0.01


@needs_llama
@pytest.mark.slow
def test_load_infer_and_unload_in_process(gguf: Path) -> None:
    """A real load: tensor_bytes = the tensors (gguf.GGUFReader) + the KV cache llama.cpp got,
    all on the cpu; the log figures are caught (not printed); a completion and a chat answer
    text with usage; unload closes the engine and a later request is refused."""
    loader = LlamaCppLoader()
    loaded = loader.load(spec(gguf, n_ctx=300, n_threads=1))
    model = loaded.model
    try:
        kv = SHAPE.kv_bytes(512)
        assert loaded.tensor_bytes == {"cpu": true_bytes(gguf) + kv}
        assert loaded.parts is not None
        assert (loaded.parts["weights"], loaded.parts["kv_cache"]) == (true_bytes(gguf), kv)
        assert model.engine.kv_cache_bytes == kv  # llama.cpp's own line, through the callback
        assert loaded.parts["compute_buffers"] == sum(model.engine.compute_buffers.values()) > 0
        assert loaded.estimate_bytes == loader.estimate(spec(gguf, n_ctx=300))
        completion = loader.infer(model, {"prompt": "the water", "max_tokens": 5, "seed": 1}, {})
        assert completion["object"] == "text_completion"
        assert isinstance(completion["choices"][0]["text"], str)
        assert completion["usage"]["completion_tokens"] >= 1
        chat = loader.infer(
            model, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}, {}
        )
        assert chat["object"] == "chat.completion"
        assert isinstance(chat["choices"][0]["message"]["content"], str)
        assert chat["usage"]["prompt_tokens"] >= 1
    finally:
        loader.unload(model)
    assert model.llama is None
    with pytest.raises(LoaderError, match="was unloaded"):
        loader.infer(model, {"prompt": "again"}, {})


@needs_llama
@pytest.mark.slow
def test_a_gpu_device_needs_a_gpu_build(gguf: Path) -> None:
    """device = "cuda:0" with a llama-cpp-python built for the CPU only: a clear refusal."""
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python has GPU support: the refusal does not apply")
    on_gpu = ModelSpec(name="tiny", loader="llama_cpp", path=str(gguf), device="cuda:0")
    with pytest.raises(LoaderError, match="needs a llama-cpp-python built with GPU support"):
        LlamaCppLoader().load(on_gpu)


@needs_llama
@pytest.mark.slow
def test_a_broken_gguf_fails_with_llama_cpps_reason(tmp_path: Path) -> None:
    """A GGUF header llama.cpp rejects (no tensors for a llama): the error carries llama.cpp's
    own error line, not only llama-cpp-python's "Failed to load model"."""
    import gguf as gguf_package

    broken = tmp_path / "broken.gguf"
    writer = gguf_package.GGUFWriter(str(broken), "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(2)
    writer.add_context_length(128)
    writer.add_feed_forward_length(128)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LoaderError) as caught:
        LlamaCppLoader().load(spec(broken, n_ctx=128))
    message = str(caught.value)
    assert message.startswith(f"model 'tiny': llama.cpp cannot load {broken}:")
    assert "(llama.cpp: " in message
    assert "key not found in model: tokenizer.ggml.model" in message  # llama.cpp's own words
