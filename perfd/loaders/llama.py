"""The llama_cpp loader: a GGUF model run in perfd's process by llama.cpp (llama-cpp-python).

    [models.chat]
    loader = "llama_cpp"
    path = "/srv/models/qwen2.5-7b-instruct-q4_k_m.gguf"
    options = { n_ctx = 8192, n_threads = 8 }

llama-cpp-python comes with the ``llama`` extra (``pip install "perfd[llama]"``; it builds
llama.cpp from source, so it needs a C/C++ compiler and cmake) and is imported only when a
model loads, so perfd starts without it.

Options (checked before anything is loaded):

- ``n_ctx``: int, the context in tokens (default 4096; 0: the model's training context, which
  can need gigabytes of KV cache). llama.cpp rounds it up to a multiple of 256.
- ``n_gpu_layers``: int, layers offloaded to the GPU, the output layer counting as one;
  -1: all. Default 0 on ``device = "cpu"`` (where only 0 is allowed), -1 on ``"cuda:N"``
  (which needs a llama-cpp-python built with CUDA).
- ``n_threads``: int from 1 to 1024, threads for prompt processing and generation (default:
  llama-cpp-python's, half the cores for generation and all of them for prompts).

A request's inputs are a JSON object: ``{"prompt": "..."}`` for a completion or
``{"messages": [...]}`` for a chat completion (the model's chat template), with sampling
parameters beside them (``max_tokens``, ``temperature``, ``stop``...; ``REQUEST_KEYS``). The
reply is llama.cpp's, in the OpenAI shape: ``choices[0].text`` (completion) or
``choices[0].message.content`` (chat), and ``usage``.

Memory. ``estimate`` is perfd's own figure from the GGUF header (perfd.loaders.llama_memory):
the weights plus the KV cache for ``n_ctx``. After a load the loader reports the same figures
per device as ``tensor_bytes`` (with the context llama.cpp really allocated) and the parts
``weights`` and ``kv_cache``, plus ``compute_buffers`` as llama.cpp's log gives them
(perfd.loaders.llama_log; not tensors, so outside ``tensor_bytes``). On the CPU the weights
are mapped from the file (mmap): file-backed pages, counted in RssFile and resident once
touched (the kernel may drop and re-read them under pressure), while the KV cache and the
compute buffers are anonymous memory (RssAnon). ``unload`` closes the Llama object, which
unmaps the file and frees the KV cache and buffers, so eviction gives both kinds back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from perfd.loaders import base, llama_log, llama_memory
from perfd.loaders.base import Loaded, LoaderError, ModelSpec
from perfd.loaders.onnx import parse_device

INSTALL_HINT = 'install the llama extra: pip install "perfd[llama]"'
LOAD_OPTIONS = ("n_ctx", "n_gpu_layers", "n_threads")
DEFAULT_N_CTX = 4096
MAX_N_CTX = 1 << 24
MAX_THREADS = 1024
# Request parameters passed through to llama-cpp-python, by kind of request, with their types.
_NUMBER = (int, float)
COMMON_KEYS: dict[str, tuple[type, ...]] = {
    "max_tokens": (int,),
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "top_k": (int,),
    "min_p": _NUMBER,
    "typical_p": _NUMBER,
    "stop": (str, list),
    "seed": (int,),
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
    "repeat_penalty": _NUMBER,
}
REQUEST_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "prompt": COMMON_KEYS | {"suffix": (str,), "echo": (bool,), "logprobs": (int,)},
    "messages": COMMON_KEYS
    | {"response_format": (dict,), "logprobs": (bool,), "top_logprobs": (int,)},
}


@dataclass(frozen=True)
class LlamaOptions:
    n_ctx: int
    n_gpu_layers: int
    n_threads: int | None
    gpu: str | None  # "cuda:N", or None on the CPU
    gpu_index: int | None


@dataclass
class LlamaModel:
    """A loaded GGUF model: the engine's Llama object and what perfd knows of it."""

    name: str
    path: str
    llama: Any  # llama_cpp.Llama; None once unloaded
    options: LlamaOptions
    n_ctx: int  # the context llama.cpp allocated
    engine: llama_log.EngineFigures = field(default_factory=llama_log.EngineFigures)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request at a time


def model_file(spec: ModelSpec) -> str:
    """``spec.path``, checked to be an existing file."""
    return base.model_file(spec, "the llama_cpp loader needs path (a .gguf file)")


def parse_options(spec: ModelSpec) -> LlamaOptions:
    """The load options of ``spec``, checked; LoaderError names the bad one and the range."""
    unknown = sorted(set(spec.options) - set(LOAD_OPTIONS))
    if unknown:
        raise LoaderError(
            f"model {spec.name!r}: unknown llama_cpp option(s) {', '.join(unknown)};"
            f" allowed: {', '.join(LOAD_OPTIONS)}"
        )
    gpu_index = parse_device(spec.device)
    gpu = None if gpu_index is None else spec.device
    n_ctx = _int_option(
        spec, "n_ctx", default=DEFAULT_N_CTX, low=0, high=MAX_N_CTX, note="0: the model's own"
    )
    n_gpu_layers = _int_option(
        spec, "n_gpu_layers", default=0 if gpu is None else -1, low=-1, high=1 << 20, note="-1: all"
    )
    if gpu is None and n_gpu_layers != 0:
        raise LoaderError(
            f"model {spec.name!r}: n_gpu_layers = {n_gpu_layers} needs a GPU device; with"
            ' device = "cpu" leave it out or set 0, or set device = "cuda:N"'
        )
    threads = spec.options.get("n_threads")
    n_threads = None
    if threads is not None:
        n_threads = _int_option(
            spec, "n_threads", default=1, low=1, high=MAX_THREADS, note="threads"
        )
    return LlamaOptions(n_ctx, n_gpu_layers, n_threads, gpu, gpu_index)


def _int_option(spec: ModelSpec, key: str, *, default: int, low: int, high: int, note: str) -> int:
    value = spec.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LoaderError(
            f"model {spec.name!r}: option {key} must be an integer from {low} to {high}"
            f" ({note}), not {value!r}"
        )
    return value


def import_llama_cpp(name: str) -> Any:
    """The llama_cpp module; LoaderError with the install hint when it is missing."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LoaderError(
            f"model {name!r} needs llama-cpp-python, which is not installed: {INSTALL_HINT}"
            f" ({type(exc).__name__}: {exc})"
        ) from exc
    return llama_cpp


class LlamaCppLoader:
    """Run GGUF models with llama.cpp; see the module docstring."""

    name = "llama_cpp"

    def estimate(self, spec: ModelSpec) -> int:
        facts = llama_memory.read_facts(model_file(spec), spec.name)
        return llama_memory.estimate(facts, parse_options(spec).n_ctx)

    def load(self, spec: ModelSpec) -> Loaded:
        path = model_file(spec)
        options = parse_options(spec)
        facts = llama_memory.read_facts(path, spec.name)  # not GGUF, unsized types: fail now
        estimate = llama_memory.estimate(facts, options.n_ctx)
        llama_cpp = import_llama_cpp(spec.name)
        if options.gpu is not None and not llama_cpp.llama_supports_gpu_offload():
            raise LoaderError(
                f"model {spec.name!r}: device {spec.device} needs a llama-cpp-python built with"
                " GPU support (this one runs on the CPU only): reinstall it with CMAKE_ARGS="
                '"-DGGML_CUDA=on", or set device = "cpu"'
            )
        kwargs: dict[str, Any] = {
            "n_ctx": options.n_ctx,
            "n_gpu_layers": options.n_gpu_layers,
            # verbose: llama_cpp would otherwise point the process's stdout and stderr at
            # /dev/null while it loads (dup2), losing perfd's own log lines; llama.cpp's log
            # goes to llama_log's callback instead.
            "verbose": True,
        }
        if options.n_threads is not None:
            kwargs |= {"n_threads": options.n_threads, "n_threads_batch": options.n_threads}
        if options.gpu_index is not None:
            kwargs |= {
                "main_gpu": options.gpu_index,
                "split_mode": llama_cpp.LLAMA_SPLIT_MODE_NONE,
            }
        with llama_log.capture(llama_cpp) as held:
            try:
                llama = llama_cpp.Llama(path, **kwargs)
            except Exception as exc:
                said = "; ".join(held.errors()) or "llama.cpp logged no error"
                raise LoaderError(
                    f"model {spec.name!r}: llama.cpp cannot load {path}:"
                    f" {type(exc).__name__}: {exc} (llama.cpp: {said})"
                ) from exc
        llama.verbose = False  # no timings printed to stderr after each request
        n_ctx = int(llama.n_ctx())
        model = LlamaModel(spec.name, path, llama, options, n_ctx, held.figures())
        tensor_bytes, parts = memory_of(facts, model)
        return Loaded(model, estimate_bytes=estimate, tensor_bytes=tensor_bytes, parts=parts)

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        if not isinstance(model, LlamaModel):
            raise LoaderError(f"the llama_cpp loader cannot run a {type(model).__name__}")
        if options:
            raise LoaderError(
                f"unknown infer option(s) {', '.join(sorted(options))}: the llama_cpp loader"
                " takes none; request parameters (max_tokens, temperature...) go in the inputs"
            )
        kind, body = request(model.name, inputs)
        with model.lock:
            if model.llama is None:
                raise LoaderError(f"model {model.name!r} was unloaded")
            try:
                if kind == "prompt":
                    return model.llama.create_completion(**body)
                return model.llama.create_chat_completion(**body)
            except Exception as exc:
                raise LoaderError(
                    f"model {model.name!r}: llama.cpp failed: {type(exc).__name__}: {exc}"
                ) from exc

    def unload(self, model: Any) -> None:
        if not isinstance(model, LlamaModel):
            return
        with model.lock:
            llama, model.llama = model.llama, None
            if llama is not None:
                llama.close()  # frees the context (KV cache, buffers) and unmaps the weights


def memory_of(
    facts: llama_memory.GgufFacts, model: LlamaModel
) -> tuple[dict[str, int], dict[str, int]]:
    """(tensor_bytes by device, parts) of a loaded model: weights and the KV cache it got."""
    options = model.options
    weights = llama_memory.weights_by_device(facts, options.n_gpu_layers, options.gpu)
    cells = llama_memory.kv_cells(model.n_ctx, facts.n_ctx_train)
    kv = llama_memory.kv_by_device(facts, cells, options.n_gpu_layers, options.gpu)
    by_device = {d: weights.get(d, 0) + kv.get(d, 0) for d in sorted({*weights, *kv})}
    parts = {"weights": sum(weights.values()), "kv_cache": sum(kv.values())}
    compute = sum(model.engine.compute_buffers.values())
    if compute:
        parts["compute_buffers"] = compute
    return by_device, parts


def request(name: str, inputs: Any) -> tuple[str, dict[str, Any]]:
    """("prompt" or "messages", the keyword arguments for llama-cpp-python) of one request."""
    if not isinstance(inputs, dict):
        raise LoaderError(
            f'model {name!r}: the inputs must be a JSON object, {{"prompt": "..."}} or'
            f' {{"messages": [{{"role": "user", "content": "..."}}]}}, not {type(inputs).__name__}'
        )
    kinds = [kind for kind in REQUEST_KEYS if kind in inputs]
    if len(kinds) != 1:
        raise LoaderError(
            f"model {name!r}: give either prompt (a completion) or messages (a chat), "
            + ("not both" if kinds else "neither was given")
        )
    kind = kinds[0]
    allowed = REQUEST_KEYS[kind]
    if inputs.get("stream"):
        raise LoaderError(f"model {name!r}: stream is not supported; leave it out")
    body: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == kind or (key == "stream" and value is False):
            continue
        if key not in allowed:
            raise LoaderError(
                f"model {name!r}: unknown request parameter {key!r} for a {kind} request;"
                f" allowed: {', '.join(sorted(allowed))}"
            )
        if (isinstance(value, bool) and bool not in allowed[key]) or not isinstance(
            value, allowed[key]
        ):
            wanted = " or ".join(t.__name__ for t in allowed[key])
            raise LoaderError(f"model {name!r}: {key} must be {wanted}, not {value!r}")
        body[key] = value
    prompt = inputs[kind]
    if kind == "prompt" and not isinstance(prompt, str):
        raise LoaderError(f"model {name!r}: prompt must be a string, not {type(prompt).__name__}")
    if kind == "messages" and not (
        isinstance(prompt, list) and prompt and all(_message(m) for m in prompt)
    ):
        raise LoaderError(
            f"model {name!r}: messages must be a non-empty list of objects with a role and a"
            ' string content, like [{"role": "user", "content": "Hello"}]'
        )
    body[kind] = prompt
    return kind, body


def _message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
    )
