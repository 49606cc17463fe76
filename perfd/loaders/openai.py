"""The openai loader: a model served by a remote OpenAI-compatible API, through a provider.

    [providers.openrouter]
    api_key_env = "OPENROUTER_API_KEY"

    [models.fast]
    loader = "openai"
    provider = "openrouter"
    model = "meta-llama/llama-3.1-8b-instruct"

A request's inputs are a chat completion body without ``model`` (``{"messages": [...],
"temperature": 0.2}``); the loader adds the configured model id, POSTs it through the pooled
provider client (perfd.net.provider) and returns the provider's response object as it came. The
infer option ``stream = true`` streams the completion instead and returns the chunks
collected: ``{"stream": [chunk, ...]}``.

A model named at run time (``perfctl load NAME --loader openai --option provider=NAME
--option model=ID``) takes ``provider`` and ``model`` from its options; any other option is a
request default, which a request's own inputs override (``options = { temperature = 0 }``).

"Loading" checks that the provider exists and can be built (its API key found...); it holds
no local memory (the estimate is 0 bytes) and unloading releases nothing. The provider is
looked up again on each request, so a reload that changes ``[providers.NAME]`` takes effect
on the next one. perfd.net.provider (and requests with it) is imported on first use only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfd.loaders.base import Loaded, LoaderError, ModelSpec

if TYPE_CHECKING:
    from perfd.net.provider import Provider, Providers

RUN_TIME_KEYS = ("provider", "model")  # options a run-time model names its target with
INFER_OPTIONS = frozenset({"stream"})


@dataclass(frozen=True)
class RemoteModel:
    """A "loaded" remote model: which provider serves it, its id there, request defaults."""

    name: str
    provider: str
    model: str
    defaults: dict[str, Any] = field(default_factory=dict)


class OpenAILoader:
    """Serve remote chat models through ``providers()`` (the daemon's perfd.net.provider.Providers,
    built on first use); see the module docstring."""

    name = "openai"
    local_memory = False  # the model lives at the provider: nothing to measure here

    def __init__(self, providers: Callable[[], Providers]) -> None:
        self._providers = providers

    def estimate(self, spec: ModelSpec) -> int:
        return 0  # remote: no local memory

    def load(self, spec: ModelSpec) -> Loaded:
        provider, model, defaults = _target(spec)
        self._provider(provider)  # an unknown provider, a missing key: fail now
        return Loaded(RemoteModel(spec.name, provider, model, defaults), estimate_bytes=0)

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        if not isinstance(model, RemoteModel):
            raise LoaderError(f"the openai loader cannot run a {type(model).__name__}")
        body = request_body(model, inputs)
        unknown = sorted(set(options) - INFER_OPTIONS)
        if unknown:
            raise LoaderError(
                f"unknown infer option {unknown[0]!r}: the openai loader takes stream = true or "
                "false; request parameters (temperature...) go in the inputs"
            )
        stream = options.get("stream", False)
        if not isinstance(stream, bool):
            raise LoaderError(f"option stream must be true or false, not {stream!r}")
        provider = self._provider(model.provider)
        from perfd.net.provider import ProviderError

        try:
            if stream:
                return {"stream": list(provider.chat_stream(body))}
            return provider.chat(body)
        except ProviderError as exc:
            raise LoaderError(str(exc)) from exc  # kind, status, retries, message

    def unload(self, model: Any) -> None:
        pass  # nothing local: the provider's pooled connections belong to every model

    def _provider(self, name: str) -> Provider:
        from perfd.net.provider import ProviderError

        try:
            return self._providers().get(name)
        except ProviderError as exc:
            raise LoaderError(str(exc)) from exc


def _target(spec: ModelSpec) -> tuple[str, str, dict[str, Any]]:
    """The provider, the remote model id and the request defaults of a spec: from the config's
    ``provider``/``model``, else (a run-time model) from its options."""
    provider = spec.provider or spec.options.get("provider", "")
    model = spec.remote_model or spec.options.get("model", "")
    defaults = {k: v for k, v in spec.options.items() if k not in RUN_TIME_KEYS}
    if not (isinstance(provider, str) and provider and isinstance(model, str) and model):
        raise LoaderError(
            "the openai loader needs a provider and a remote model id: "
            'provider = "NAME" and model = "ID" in [models.NAME], or --option provider=NAME '
            "--option model=ID with perfctl load"
        )
    return provider, model, defaults


def request_body(model: RemoteModel, inputs: Any) -> dict[str, Any]:
    """The chat completion body for ``inputs``: the model's defaults, the inputs, the id."""
    if not isinstance(inputs, dict):
        raise LoaderError(
            "the inputs must be a chat request body, a JSON object like "
            f'{{"messages": [{{"role": "user", "content": "..."}}]}}, not a {_kind(inputs)}'
        )
    if "model" in inputs:
        raise LoaderError(
            f"leave 'model' out of the inputs: perfd sets it to {model.model!r}, the remote id "
            f"that {model.name!r} is configured with"
        )
    if inputs.get("stream"):
        raise LoaderError(
            "leave 'stream' out of the inputs; to stream, give the infer option stream = true "
            "(perfctl infer --option stream=true)"
        )
    return {**model.defaults, **inputs, "model": model.model}


def _kind(value: Any) -> str:
    return {list: "list", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
