"""What a recommendation is asked for, and the error every bad input becomes.

``Query`` holds the user's words (``perfctl recommend`` flags, or the daemon command's
arguments) unchanged; ``check()`` validates the ones that need no catalog lookup and returns
the normalised engine name. Sizes are bytes; a ``RecommendError`` names the option, the value
and what is allowed, so the CLI can print it as one line.

``check_limits()`` bounds every field before anything else reads it (any local user can send
a request): texts by length, numbers by range (docs/recommend.md, "Limits on the input").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

ENGINES = ("vllm", "llama.cpp", "ollama")
_ENGINE_ALIASES = {
    "vllm": "vllm",
    "llama.cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "ollama": "ollama",
}

# Planning repeats the GPU once per ``gpus`` and the reply lists each one (about 200 bytes):
# 1024 of them made a 210 KB reply, a million took 12 s. No engine splits one model copy over
# more GPUs than this (vLLM's tensor parallel size divides the attention heads).
MAX_GPUS: Final = 64
MAX_NAME: Final = 256  # a model's name (``model``, a config's _name_or_path)
MAX_WORD: Final = 64  # quant, kv_dtype, engine, a config's model_type
MAX_GPU_TEXT: Final = 256  # gpu: a catalog name, a size, or live indexes ("0,1,2,3")
MAX_BYTES: Final = 1 << 50  # memory, kv_budget and a GPU's size: 1 PiB
MAX_CONTEXT: Final = 1 << 27  # tokens: context and max_position_embeddings (134,217,728)
_TEXTS: Final = {
    "model": MAX_NAME,
    "quant": MAX_WORD,
    "kv_dtype": MAX_WORD,
    "engine": MAX_WORD,
    "gpu": MAX_GPU_TEXT,
}
_COUNTS: Final = {
    "context": (1, MAX_CONTEXT),
    "memory": (1, MAX_BYTES),
    "kv_budget": (1, MAX_BYTES),
}


def shown(value: object) -> str:
    """``repr(value)``, cut to 40 characters: errors say what was given, never at length."""
    text = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


class RecommendError(ValueError):
    """A bad model name, file or option; the message says what is allowed.

    ``option`` is the request field at fault (``"model"``, ``"quant"``, ``"gpu"``...) and
    ``value`` what was given; ``allowed`` lists valid choices or close matches when known.
    """

    def __init__(
        self,
        message: str,
        *,
        option: str | None = None,
        value: object = None,
        allowed: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.option = option
        self.value = value
        self.allowed = allowed


@dataclass(frozen=True)
class Query:
    """What one recommendation is asked for (the wire's request is protocol.Request); None
    means "not given" (use the model's or host's own).

    ``model`` a catalog name or alias; ``config_json`` a Hugging Face config.json path;
    ``weights_path`` a .safetensors file or directory, or a .gguf file. ``quant`` the weight
    format (fp16, bf16, fp8, int8, int4, awq, gptq, Q4_K_M...), ``kv_dtype`` the KV cache
    format (fp16, bf16, fp8, q8_0, q4_0). ``context`` a required context length in tokens.
    ``gpu`` a live GPU index ("0", "0,1"), a catalog GPU name or a size ("48GiB");
    ``gpus`` how many of them; ``memory`` the host RAM to plan for, in bytes.
    ``kv_budget`` skips the hardware: how many tokens fit in this many bytes of KV cache.
    """

    model: str | None = None
    config_json: str | None = None
    weights_path: str | None = None
    quant: str | None = None
    kv_dtype: str | None = None
    context: int | None = None
    gpu: str | None = None
    gpus: int | None = None
    memory: int | None = None
    kv_budget: int | None = None
    engine: str = "vllm"
    utilization: float = 0.9
    config: Mapping[str, Any] | None = None  # a config.json's contents, instead of its path


def engine_name(engine: str) -> str:
    """The canonical engine name for ``engine`` ("llamacpp" -> "llama.cpp")."""
    name = _ENGINE_ALIASES.get(engine.strip().lower())
    if name is None:
        raise RecommendError(
            f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}",
            option="engine",
            value=engine,
            allowed=ENGINES,
        )
    return name


def check_gpus(gpus: int | None) -> None:
    """RecommendError unless ``gpus`` is None or a whole number from 0 to MAX_GPUS."""
    if gpus is not None and (
        isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= MAX_GPUS
    ):
        raise RecommendError(
            f"gpus must be an integer from 0 to {MAX_GPUS}, not {shown(gpus)}",
            option="gpus",
            value=gpus,
        )


def check_limits(request: Query) -> None:
    """RecommendError unless every field of ``request`` has its type and is within its
    bound: texts by length, counts and sizes by range, utilization in (0, 1]."""
    for option, limit in _TEXTS.items():
        value = getattr(request, option)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            given = f"{len(value)} characters" if isinstance(value, str) else shown(value)
            raise RecommendError(
                f"{option} must be a string of at most {limit} characters, not {given}",
                option=option,
            )
    for option, (low, high) in _COUNTS.items():
        value = getattr(request, option)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            raise RecommendError(
                f"{option} must be a whole number from {low} to {high}, not {shown(value)}",
                option=option,
                value=value,
            )
    check_gpus(request.gpus)
    if not _fraction(request.utilization):
        raise RecommendError(
            f"utilization must be a number in (0, 1], not {shown(request.utilization)}",
            option="utilization",
            value=request.utilization,
        )
    if request.config is not None and not isinstance(request.config, Mapping):
        raise RecommendError(
            f"config must be a JSON object, not {shown(request.config)}", option="config"
        )


def _fraction(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return False
    return math.isfinite(number) and 0.0 < number <= 1.0


def check(request: Query) -> str:
    """Validate the plain-number options of ``request``; its canonical engine name."""
    check_limits(request)
    if (
        request.model is None
        and request.config is None
        and request.config_json is None
        and request.weights_path is None
    ):
        raise RecommendError(
            "no model: give a catalog name (perfctl recommend --list-models), "
            "a config.json, a safetensors file or directory, or a GGUF file",
            option="model",
        )
    return engine_name(request.engine)


# A config.json whose fields make no sense (zero heads, wrong types) fails the math with one
# of these: the caller's input, not a bug (anyone on the read-only socket can send one).
UNUSABLE: Final = (ArithmeticError, TypeError, ValueError, KeyError, AttributeError)


def unusable(exc: BaseException) -> RecommendError:
    """The error a model description that fails the math (UNUSABLE) becomes."""
    return RecommendError(f"this model description cannot be used: {type(exc).__name__}: {exc}")


def size_arg(option: str, value: int | str | None) -> int | None:
    """Bytes from an int or a size string ("24GiB"); RecommendError for anything else, with
    no more of the text than the limit allows (perfd.wire.units.MAX_TEXT)."""
    from perfd.wire.units import MAX_TEXT, parse_size  # pure, stdlib-only

    if value is None or isinstance(value, int):
        return value
    try:
        return int(parse_size(value))
    except ValueError as exc:
        if len(value) > MAX_TEXT:
            raise RecommendError(f"{option}: {exc}", option=option) from None
        raise RecommendError(
            f"{option}: not a size: {value!r} (use bytes or 24GiB, 512MiB, 80GB)", option=option
        ) from None


def build_request(
    *,
    model: str | None = None,
    config: Mapping[str, Any] | None = None,
    weights_path: str | None = None,
    quant: str | None = None,
    kv_dtype: str | None = None,
    context: int | None = None,
    gpu: str | int | None = None,
    gpus: int | None = None,
    memory: int | str | None = None,
    kv_budget: int | str | None = None,
    engine: str = "vllm",
    utilization: float = 0.9,
) -> Query:
    """The Query for a caller's words (the daemon command's arguments, perfctl's flags),
    every field bounded (check_limits); RecommendError when a size is not one or no model is
    named. The daemon and ``perfctl recommend --offline`` both build theirs here."""
    request = Query(
        model=model,
        config=config,
        weights_path=weights_path,
        quant=quant,
        kv_dtype=kv_dtype,
        context=context,
        gpu=None if gpu is None else str(gpu),
        gpus=gpus,
        memory=size_arg("memory", memory),
        kv_budget=size_arg("kv_budget", kv_budget),
        engine=engine,
        utilization=utilization,
    )
    check_limits(request)  # every field bounded before anything reads it
    if model is None and config is None and weights_path is None:
        raise RecommendError("name a model (perfctl recommend --list-models)", option="model")
    return request
