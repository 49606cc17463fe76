"""The settings of the engines part: ``[engines.NAME]`` tables (engines perfd reads because the
config names them) and ``[discovery]`` (finding the others by their processes).

The kinds are spelled here as perfd.engines.record.KINDS spells them (the settings import no
part; tests/test_engines_config.py keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from perfd.redaction import redact_url
from perfd.schema import option

ENGINE_KINDS: Final = ("vllm", "llamacpp", "ollama", "sglang")


@dataclass(frozen=True)
class EngineConfig:
    kind: str = option(
        "vllm",
        "The engine: `vllm`, `llamacpp` (llama.cpp's llama-server), `ollama` or `sglang`.",
        kind="choice",
        choices=ENGINE_KINDS,
    )
    url: str = option(
        "",
        'Its base URL, e.g. "http://127.0.0.1:8000" (no path: perfd adds each endpoint\'s). '
        "Its secret parts (user:password@...) are redacted wherever perfd shows it.",
        kind="str",
        secret="url",
    )
    pid: int = option(
        0,
        "The engine's main process, when it is known (0: perfd finds it by the URL's port).",
        kind="int",
        minimum=0,
        maximum=2**22,
    )
    unit: str = option(
        "", "The engine's systemd unit, when it is known (e.g. `vllm.service`).", kind="str"
    )
    api_key_env: str = option(
        "",
        "Name of the environment variable holding the engine's API key (never the key "
        "itself); sent as a bearer token. Empty: none.",
        kind="str",
    )

    def problems(self) -> list[tuple[str, str]]:
        if not self.url:
            return [("url", 'is required, e.g. url = "http://127.0.0.1:8000"')]
        if not self.url.startswith(("http://", "https://")):
            return [("url", f"must start with http:// or https://, not {redact_url(self.url)!r}")]
        rest = self.url.split("://", 1)[1]
        if "/" in rest.rstrip("/") or "?" in rest:
            shown = redact_url(self.url)
            return [("url", f"must be the base URL only (scheme, host, port), not {shown!r}")]
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            return [("api_key_env", "must be an environment variable's name (letters, digits, _)")]
        return []


@dataclass(frozen=True)
class DiscoveryConfig:
    enabled: bool = option(
        True,
        "Find engines by their processes (command lines of vLLM, llama-server, Ollama, SGLang, "
        "their listening ports and a probe of the kind's health endpoint).",
        kind="bool",
    )
    interval: float = option(
        30.0,
        "Time between discovery runs (a scan of the process table, off the sampling path).",
        kind="duration",
        minimum=1,
        maximum=86400,
    )
    read_interval: float = option(
        5.0,
        "Time between reads of every known engine (configured and discovered).",
        kind="duration",
        minimum=0.1,
        maximum=3600,
    )
    timeout: float = option(
        2.0,
        "The longest one read of one engine may take; a slower engine is `timeout` and "
        "delays no other engine, no sample and no reply.",
        kind="duration",
        minimum=0.05,
        maximum=10,
    )
    workers: int = option(
        8,
        "Engines read at once (a small thread pool).",
        kind="int",
        minimum=1,
        maximum=64,
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.timeout > self.read_interval:
            return [("timeout", f"must not exceed read_interval ({self.read_interval:g}s)")]
        return []
