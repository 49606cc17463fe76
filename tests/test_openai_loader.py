"""The openai loader: remote chat models in the cache, in-process and in a real perfd that calls
real local HTTP servers (tests/httpservers.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import perfctl
from perfd.config import ProviderConfig
from perfd.loaders import LoaderError, ModelSpec
from perfd.loaders.openai import OpenAILoader, RemoteModel, request_body
from perfd.net.provider import Providers
from tests.conftest import Perfd, StartPerfd
from tests.httpservers import Reply, ScriptedServer, sse_reply

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
MESSAGES = [{"role": "user", "content": "hello"}]
KEY = "sk-test-9f8e7d6c5b4a"  # what must never show up outside the Authorization header


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=Reply(200, COMPLETION)) as running:
        yield running


def loader_for(**providers: ProviderConfig) -> OpenAILoader:
    configured = Providers(providers)
    return OpenAILoader(lambda: configured)


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec(**{"name": "fast", "loader": "openai", **fields})


def provider_toml(name: str, url: str, extra: str = "") -> str:
    return f'[providers.{name}]\nbase_url = "{url}/v1"\nbackoff_factor = 0\n{extra}\n'


def model_toml(name: str, provider: str, remote: str = "m") -> str:
    return f'[models.{name}]\nloader = "openai"\nprovider = "{provider}"\nmodel = "{remote}"\n'


def call(perfd: Perfd, cmd: str, **args: Any) -> dict[str, Any]:
    with perfctl.Client(runtime_dir=perfd.runtime_dir, timeout=20) as client:
        return client.call(cmd, **args)


def ctl_json(perfd: Perfd, *args: str) -> dict[str, Any]:
    out = perfd.ctl(*args, "--json")
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- in-process --------------------------------------------------------------------------------


def test_body_is_the_inputs_with_the_remote_model() -> None:
    """The body sent is the model's defaults, then the inputs, then its remote id."""
    model = RemoteModel("fast", "local", "m", {"temperature": 0, "max_tokens": 5})
    body = request_body(model, {"messages": MESSAGES, "temperature": 0.7})
    assert body == {"messages": MESSAGES, "temperature": 0.7, "max_tokens": 5, "model": "m"}


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        (["hello"], "must be a chat request body.*not a list"),
        ("hello", "not a string"),
        ({"messages": MESSAGES, "model": "other"}, "leave 'model' out.*'m'"),
        ({"messages": MESSAGES, "stream": True}, "option stream = true"),
    ],
)
def test_bad_inputs_say_what_to_send(inputs: Any, error: str) -> None:
    """Inputs that are not a chat body without model (or stream) fail with what to send."""
    with pytest.raises(LoaderError, match=error):
        request_body(RemoteModel("fast", "local", "m"), inputs)


def test_load_checks_the_provider_and_costs_nothing(server: ScriptedServer) -> None:
    """load builds the provider (no request sent) and reports 0 bytes; an unknown one fails."""
    loader = loader_for(local=ProviderConfig(base_url=server.url + "/v1"))
    assert loader.estimate(spec(provider="local", remote_model="m")) == 0
    loaded = loader.load(spec(provider="local", remote_model="m"))
    assert loaded.estimate_bytes == 0
    assert loaded.model == RemoteModel("fast", "local", "m")
    assert server.requests == []
    with pytest.raises(LoaderError, match=r"provider 'nope' \(config\).*\[providers\.nope\]"):
        loader.load(spec(provider="nope", remote_model="m"))


def test_load_fails_when_the_key_is_missing(server: ScriptedServer) -> None:
    """A provider whose api_key_env is not set fails the load and names the variable."""
    cfg = ProviderConfig(base_url=server.url + "/v1", api_key_env="NO_SUCH_KEY_VARIABLE")
    loader = OpenAILoader(lambda: Providers({"local": cfg}, environ={}))
    with pytest.raises(LoaderError, match="NO_SUCH_KEY_VARIABLE"):
        loader.load(spec(provider="local", remote_model="m"))


def test_run_time_model_names_its_target_in_options(server: ScriptedServer) -> None:
    """Without config fields, provider and model come from the options; the rest are defaults."""
    loader = loader_for(local=ProviderConfig(base_url=server.url + "/v1"))
    options = {"provider": "local", "model": "m2", "temperature": 0}
    handle = loader.load(spec(options=options)).model
    assert handle == RemoteModel("fast", "local", "m2", {"temperature": 0})
    with pytest.raises(LoaderError, match="needs a provider and a remote model id"):
        loader.load(spec(options={"provider": "local"}))


def test_infer_posts_the_body_and_returns_the_reply(server: ScriptedServer) -> None:
    """infer POSTs {inputs..., model} to /chat/completions and returns the completion as is."""
    loader = loader_for(local=ProviderConfig(base_url=server.url + "/v1"))
    handle = loader.load(spec(provider="local", remote_model="m")).model
    assert loader.infer(handle, {"messages": MESSAGES}, {}) == COMPLETION
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json() == {"messages": MESSAGES, "model": "m"}


def test_infer_stream_collects_the_chunks(server: ScriptedServer) -> None:
    """The infer option stream = true returns {"stream": [chunk, ...]} and sends stream: true."""
    chunks = [{"choices": [{"delta": {"content": c}}]} for c in ("he", "llo")]
    server.enqueue(sse_reply(chunks))
    loader = loader_for(local=ProviderConfig(base_url=server.url + "/v1"))
    handle = loader.load(spec(provider="local", remote_model="m")).model
    assert loader.infer(handle, {"messages": MESSAGES}, {"stream": True}) == {"stream": chunks}
    assert server.requests[0].json()["stream"] is True
    with pytest.raises(LoaderError, match="unknown infer option 'temperature'"):
        loader.infer(handle, {"messages": MESSAGES}, {"temperature": 0})
    with pytest.raises(LoaderError, match="stream must be true or false"):
        loader.infer(handle, {"messages": MESSAGES}, {"stream": "yes"})


def test_provider_errors_become_loader_errors(server: ScriptedServer) -> None:
    """A provider failure is a LoaderError carrying its kind, status and message."""
    server.enqueue(Reply(400, {"error": {"message": "messages is required"}}))
    loader = loader_for(local=ProviderConfig(base_url=server.url + "/v1"))
    handle = loader.load(spec(provider="local", remote_model="m")).model
    with pytest.raises(LoaderError, match=r"\(http, HTTP 400\): messages is required"):
        loader.infer(handle, {}, {})


# -- in a real perfd ---------------------------------------------------------------------------


def test_infer_through_perfd_and_perfctl(start_perfd: StartPerfd, server: ScriptedServer) -> None:
    """Client.infer and perfctl infer reach the remote model; ps lists it with its counts."""
    perfd = start_perfd(provider_toml("local", server.url) + model_toml("fast", "local"))
    with perfctl.Client(runtime_dir=perfd.runtime_dir, timeout=20) as client:
        assert client.infer("fast", {"messages": MESSAGES}) == COMPLETION
    assert server.requests[0].json() == {"messages": MESSAGES, "model": "m"}
    out = perfd.ctl("infer", "fast", "--input", json.dumps({"messages": MESSAGES}))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == COMPLETION
    (fast,) = call(perfd, "ps")["models"]
    assert (fast["name"], fast["state"], fast["loader"]) == ("fast", "ready", "openai")
    assert (fast["hits"], fast["misses"], fast["device"]) == (1, 1, "cpu")


def test_retry_is_counted(start_perfd: StartPerfd, server: ScriptedServer) -> None:
    """A 503 then a 200: the call succeeds after one retry, which perfctl providers shows."""
    perfd = start_perfd(provider_toml("local", server.url) + model_toml("fast", "local"))
    before = ctl_json(perfd, "providers")["providers"]["local"]
    assert before["used"] is False
    assert before["base_url"] == server.url + "/v1"
    server.enqueue(Reply(503, {"error": {"message": "overloaded"}}))
    assert call(perfd, "infer", model="fast", inputs={"messages": MESSAGES})["outputs"] == (
        COMPLETION
    )
    assert len(server.requests) == 2
    local = ctl_json(perfd, "providers")["providers"]["local"]
    assert (local["used"], local["requests"], local["retries"]) == (True, 1, 1)
    with perfctl.Client(perfd.readonly_socket, timeout=20) as client:  # read-only: anyone
        assert client.providers()["providers"]["local"] == local
    assert local["failures"] == {}
    assert local["connections_opened"] >= 1
    stats = ctl_json(perfd, "stats")
    assert stats["providers"]["local"]["retries"] == 1
    assert "base_url" not in stats["providers"]["local"]
    table = perfd.ctl("providers")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "BASE", "URL"]
    assert table.stdout.splitlines()[1].split()[:5] == ["local", server.url + "/v1", "1", "1", "0"]


def test_no_providers_section_before_use(start_perfd: StartPerfd, server: ScriptedServer) -> None:
    """stats has no providers section until a provider is used; perfd has not built them."""
    perfd = start_perfd(provider_toml("local", server.url) + model_toml("fast", "local"))
    assert "providers" not in ctl_json(perfd, "stats")
    assert ctl_json(perfd, "status")["components"]["providers"] == "not_started"


def test_auth_failure_is_infer_failed(start_perfd: StartPerfd, server: ScriptedServer) -> None:
    """A 401 answers infer_failed with the status and the provider's message; ps keeps it."""
    perfd = start_perfd(provider_toml("local", server.url) + model_toml("fast", "local"))
    server.enqueue(Reply(401, {"error": {"message": "No auth credentials found"}}))
    with pytest.raises(perfctl.InferFailed, match=r"HTTP 401.*No auth credentials found") as e:
        call(perfd, "infer", model="fast", inputs={"messages": MESSAGES})
    assert e.value.code == "infer_failed"
    assert "'fast'" in e.value.message
    (fast,) = call(perfd, "ps")["models"]
    assert fast["state"] == "ready"  # loaded: the provider is there, this request failed
    local = ctl_json(perfd, "providers")["providers"]["local"]
    assert (local["requests"], local["failures"]) == (1, {"auth": 1})
    out = perfd.ctl("providers")
    assert "local: failures: auth 1" in out.stdout


def test_the_key_is_sent_and_never_shown(start_perfd: StartPerfd, server: ScriptedServer) -> None:
    """api_key_env: the server gets the Bearer key; log, config and providers never show it."""
    toml = provider_toml("local", server.url, 'api_key_env = "TEST_PROVIDER_KEY"')
    perfd = start_perfd(toml + model_toml("fast", "local"), env={"TEST_PROVIDER_KEY": KEY})
    assert call(perfd, "infer", model="fast", inputs={"messages": MESSAGES})["outputs"] == (
        COMPLETION
    )
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    server.enqueue(Reply(401, {"error": {"message": f"bad key {KEY}"}}))  # echoed back: scrubbed
    with pytest.raises(perfctl.InferFailed) as failed:
        call(perfd, "infer", model="fast", inputs={"messages": MESSAGES})
    assert KEY not in failed.value.message
    shown = {name: perfd.ctl(name, "--json") for name in ("config", "providers", "stats")}
    for name, out in shown.items():
        assert out.returncode == 0, (name, out.stderr)
        assert KEY not in out.stdout + out.stderr, name
    local = json.loads(shown["providers"].stdout)["providers"]["local"]
    assert (local["key_from"], local["key_set"]) == ("env TEST_PROVIDER_KEY", True)
    assert perfd.stop() == 0
    assert KEY not in perfd.log_path.read_text()


def test_unset_key_fails_the_load_and_is_flagged(
    start_perfd: StartPerfd, server: ScriptedServer
) -> None:
    """An api_key_env missing from perfd's environment: load_failed naming it; providers says so."""
    toml = provider_toml("local", server.url, 'api_key_env = "TEST_PROVIDER_KEY"')
    perfd = start_perfd(toml + model_toml("fast", "local"))
    with pytest.raises(perfctl.LoadFailed, match="TEST_PROVIDER_KEY"):
        call(perfd, "load", model="fast")
    assert server.requests == []
    local = ctl_json(perfd, "providers")["providers"]["local"]
    assert (local["key_set"], local["used"]) == (False, False)
    out = perfd.ctl("providers")
    assert "local: no API key: TEST_PROVIDER_KEY is not set in perfd's environment" in out.stdout


def test_run_time_remote_model(start_perfd: StartPerfd, server: ScriptedServer) -> None:
    """perfctl load NAME --loader openai --option provider=... --option model=... then infer."""
    perfd = start_perfd(provider_toml("local", server.url))
    out = perfd.ctl(
        "load", "rt", "--loader", "openai", "--option", "provider=local", "--option", "model=m2"
    )
    assert out.returncode == 0, out.stderr
    out = perfd.ctl("infer", "rt", "--input", json.dumps({"messages": MESSAGES}))
    assert out.returncode == 0, out.stderr
    assert server.requests[-1].json() == {"messages": MESSAGES, "model": "m2"}


def test_reload_points_a_provider_elsewhere(
    start_perfd: StartPerfd, server: ScriptedServer
) -> None:
    """A reload that changes [providers.local] base_url sends the next request to the new URL."""
    perfd = start_perfd(provider_toml("local", server.url) + model_toml("fast", "local"))
    call(perfd, "infer", model="fast", inputs={"messages": MESSAGES})
    moved = {**COMPLETION, "id": "chatcmpl-moved"}
    with ScriptedServer(default=Reply(200, moved)) as other:
        perfd.config_path.write_text(
            provider_toml("local", other.url) + model_toml("fast", "local")
        )
        assert "providers.local.base_url" in call(perfd, "reload")["changed"]
        reply = call(perfd, "infer", model="fast", inputs={"messages": MESSAGES})
        assert reply["outputs"]["id"] == "chatcmpl-moved"
        assert len(other.requests) == 1
    assert len(server.requests) == 1
