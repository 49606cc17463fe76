"""The settings of what serves models: the cache, each model, each remote provider."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from perfd import schema
from perfd.redaction import redact_url
from perfd.schema import option
from perfd.settings import DAY

_DEVICE: Final = re.compile(r"cpu|cuda:[0-9]+")  # fullmatch: "$" would let "cpu\n" through


@dataclass(frozen=True)
class CacheConfig:
    ram_budget: str = option(
        "50%",
        "Host memory the cached models may take: a percent of RAM (of the cgroup limit when "
        "lower) or a size.",
        kind="budget",
    )
    gpu_budget: str = option(
        "90%", "Memory the cached models may take on each GPU: a percent or a size.", kind="budget"
    )
    max_models: int = option(
        16, "Most models loaded at once (0: no limit).", kind="int", minimum=0, maximum=10000
    )
    keep_alive: float = option(
        300.0,
        'How long an idle model stays loaded; 0 unloads it when idle, -1 or "forever" keeps it.',
        kind="ttl",
        maximum=365 * DAY,
    )
    load_timeout: float = option(
        300.0,
        "A load still running after this fails for every waiter.",
        kind="duration",
        minimum=0.01,
        maximum=DAY,
    )
    high_watermark: float = option(
        90.0,
        "Host (or GPU) memory used percent at which cold models are evicted...",
        kind="float",
        minimum=1,
        maximum=100,
    )
    low_watermark: float = option(
        80.0, "...until use is below this percent.", kind="float", minimum=0, maximum=100
    )
    housekeeping: float = option(
        1.0,
        "How often expired keep-alives and the watermarks are checked.",
        kind="duration",
        minimum=0.01,
        maximum=3600,
    )
    evictions_history: int = option(
        100, "Recent evictions kept for `stats`.", kind="int", minimum=1, maximum=100000
    )
    unload_leak_percent: float = option(
        80.0,
        "An eviction that gives back less than this percent of the model's bytes (and at least "
        "64 MiB less) logs `cache.unload_leak`.",
        kind="float",
        minimum=0,
        maximum=100,
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.low_watermark >= self.high_watermark:
            return [("low_watermark", f"must be below high_watermark ({self.high_watermark:g})")]
        return []


@dataclass(frozen=True)
class ModelConfig:
    loader: str = option(
        "python",
        "`python`, `onnx`, `llama_cpp` (a GGUF model), `openai` (a remote model), or one "
        "registered under `perfd.loaders`.",
        kind="str",
    )
    target: str = option(
        "", 'python loader: `"module:callable"`, called with `options`.', kind="str"
    )
    path: str = option(
        "",
        "onnx, llama_cpp (and file-based loaders): the model file; python: the weights, read"
        " for the estimate.",
        kind="path",
    )
    device: str = option("cpu", '`"cpu"` or `"cuda:N"`.', kind="str")
    keep_alive: float | None = option(
        None, "Overrides `[cache] keep_alive` for this model.", kind="ttl", maximum=365 * DAY
    )
    pin: bool = option(False, "Never evict this model.", kind="bool")
    preload: bool = option(False, "Load this model when perfd starts.", kind="bool")
    size_hint: int = option(
        0,
        "Expected size when the loader cannot estimate it (0: unknown); a python model's wins"
        " over its path.",
        kind="size",
        minimum=0,
        maximum=1 << 50,
    )
    options: dict[str, Any] = option(
        None,
        "Passed to the loader (python: the factory's keyword arguments). Entries named like "
        "a secret (`api_key`, `password`, `token`...) are redacted wherever perfd shows them.",
        kind="table",
        secret="table",
    )
    provider: str = option("", "openai loader: the `[providers.NAME]` to call.", kind="str")
    model: str = option(
        "",
        'openai loader: the remote model id (e.g. "meta-llama/llama-3.1-8b-instruct").',
        kind="str",
    )

    def problems(self) -> list[tuple[str, str]]:
        problem = device_problem(self.device)
        if problem is not None:
            return [("device", problem)]
        if self.loader == "python" and ":" not in self.target:
            return [("target", 'the python loader needs target = "module:callable"')]
        if self.loader == "onnx" and not self.path:
            return [("path", "the onnx loader needs path = the model file")]
        if self.loader == "llama_cpp" and not self.path:
            return [("path", "the llama_cpp loader needs path = the .gguf file")]
        if self.loader == "openai" and not (self.provider and self.model):
            return [("model", 'the openai loader needs provider = "NAME" and model = "id"')]
        return []


OPENROUTER_URL: Final = "https://openrouter.ai/api/v1"


def device_problem(device: str) -> str | None:
    """What is wrong with a model's ``device``, or None: a [models.NAME] table's and a
    run-time ``load``'s (perfd.config.check_model_fields) are checked by this one rule."""
    if _DEVICE.fullmatch(device):
        return None
    return f'must be "cpu" or "cuda:N", not {schema.shown(device)}'


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str = option(
        OPENROUTER_URL,
        "The OpenAI-compatible API: OpenRouter's by default; OpenAI, vLLM, llama.cpp's server "
        "and Ollama's /v1 work the same. Its secret parts (user:password@...) are redacted "
        "wherever perfd shows it.",
        kind="str",
        secret="url",
    )
    api_key_env: str = option(
        "",
        'Name of the environment variable holding the API key (e.g. "OPENROUTER_API_KEY").',
        kind="str",
    )
    api_key_file: str = option(
        "", "A file holding the API key (used when api_key_env is empty).", kind="path"
    )
    pool_maxsize: int = option(
        10, "Connections kept open to the provider.", kind="int", minimum=1, maximum=1000
    )
    retries: int = option(3, "Retries in all.", kind="int", minimum=0, maximum=20)
    connect_retries: int = option(
        3, "Retries of connection errors.", kind="int", minimum=0, maximum=20
    )
    read_retries: int = option(
        2,
        "Retries of read errors (never for a POST that may have been processed).",
        kind="int",
        minimum=0,
        maximum=20,
    )
    status_retries: int = option(
        3,
        "Retries on 429/500/502/503/504 (a POST only on 429 and 503).",
        kind="int",
        minimum=0,
        maximum=20,
    )
    backoff_factor: float = option(
        0.5, "Exponential backoff base, seconds.", kind="float", minimum=0, maximum=60
    )
    backoff_jitter: float = option(
        0.25,
        "Random extra backoff, up to this many seconds.",
        kind="float",
        minimum=0,
        maximum=60,
    )
    backoff_max: float = option(
        30.0,
        "Longest backoff (also caps Retry-After).",
        kind="duration",
        minimum=0,
        maximum=3600,
    )
    connect_timeout: float = option(
        5.0, "Connect timeout.", kind="duration", minimum=0.01, maximum=300
    )
    read_timeout: float = option(
        120.0,
        "Read timeout (time between bytes).",
        kind="duration",
        minimum=0.01,
        maximum=3600,
    )
    ca_bundle: str = option(
        "", "CA bundle for https (default: certifi's, or $REQUESTS_CA_BUNDLE).", kind="path"
    )
    referer: str = option(
        "",
        "OpenRouter attribution: sent as HTTP-Referer (your site's URL).",
        kind="str",
        secret="url",
    )
    title: str = option(
        "", "OpenRouter attribution: sent as X-Title (your app's name).", kind="str"
    )

    def problems(self) -> list[tuple[str, str]]:
        if not self.base_url.startswith(("http://", "https://")):
            shown = redact_url(self.base_url)
            return [("base_url", f"must start with http:// or https://, not {shown!r}")]
        if self.api_key_env and self.api_key_file:
            return [("api_key_file", "give api_key_env or api_key_file, not both")]
        return []
