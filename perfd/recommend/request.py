"""What a recommendation is asked for, and the error every bad input becomes.

``Request`` holds the user's words (``perfctl recommend`` flags, or the daemon command's
arguments) unchanged; ``check()`` validates the ones that need no catalog lookup and returns
the normalised engine name. Sizes are bytes; a ``RecommendError`` names the option, the value
and what is allowed, so the CLI can print it as one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENGINES = ("vllm", "llama.cpp", "ollama")
_ENGINE_ALIASES = {
    "vllm": "vllm",
    "llama.cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "ollama": "ollama",
}

# Planning repeats the GPU once per ``gpus``: a bound keeps one request from taking minutes and
# gigabytes of perfd's time (a million took 12 s); no model is split over more GPUs than this.
MAX_GPUS = 1024


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
class Request:
    """One recommendation request; None means "not given" (use the model's or host's own).

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
    if gpus is not None and (isinstance(gpus, bool) or not 0 <= gpus <= MAX_GPUS):
        raise RecommendError(
            f"gpus must be an integer from 0 to {MAX_GPUS}, not {gpus!r}",
            option="gpus",
            value=gpus,
        )


def check(request: Request) -> str:
    """Validate the plain-number options of ``request``; its canonical engine name."""
    if request.model is None and request.config_json is None and request.weights_path is None:
        raise RecommendError(
            "no model: give a catalog name (perfctl recommend --list-models), "
            "a config.json, a safetensors file or directory, or a GGUF file",
            option="model",
        )
    if not 0.0 < request.utilization <= 1.0:
        raise RecommendError(
            f"utilization must be in (0, 1], not {request.utilization!r}",
            option="utilization",
            value=request.utilization,
        )
    check_gpus(request.gpus)
    for option in ("context", "memory", "kv_budget"):
        value = getattr(request, option)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise RecommendError(
                f"{option} must be an integer >= 1, not {value!r}",
                option=option,
                value=value,
            )
    return engine_name(request.engine)
