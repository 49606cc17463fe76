"""Secrets against a real perfd: every place a config secret, an API key or a URL's secret
parts could show (config, providers, stats, replies, errors, the log) shows none of them; no
provider call or alert post follows a redirect.

Each secret holds the marker ``S3CRET``: whatever form it is echoed in (HTML-escaped,
percent-encoded, JSON), the marker survives, so its absence proves the secret's.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import perfctl
from tests.conftest import Perfd, StartPerfd, clean_env, command
from tests.httpservers import Reply, ScriptedServer, closed_port

MARK = "S3CRET"
COMPLETION = {"id": "c1", "object": "chat.completion", "choices": [{"index": 0}]}
MESSAGES = [{"role": "user", "content": "hi"}]
FIRES_AT_ONCE = (
    '[monitor]\ninterval = "100ms"\ntrend_window = "5s"\n'
    "[alerts.host_memory]\nwarn = 0.01\ncrit = 100\nfor = 0\n"
)


def hook_url(base: str) -> str:
    """A Slack-style webhook with every kind of URL secret."""
    return (
        base.replace("http://", "http://hookuser:HookPassS3CRETa@")
        + "/services/T0123ABCD/B0123ABCD/PathTokS3CRETb0123456789?token=QueryS3CRETc&team=ops"
    )


def everything(perfd: Perfd) -> str:
    """All perfd wrote: its stdout log (the log file of these tests)."""
    return perfd.log_path.read_text()


def shown(perfd: Perfd, *commands: tuple[str, ...]) -> str:
    """The stdout and stderr of each perfctl command (each must succeed)."""
    text = ""
    for args in commands:
        out = perfd.ctl(*args)
        assert out.returncode == 0, (args, out.stderr)
        text += out.stdout + out.stderr
    return text


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def events(perfd: Perfd, event: str) -> list[dict[str, Any]]:
    return [entry for entry in perfd.logs() if entry["event"] == event]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=Reply(200, COMPLETION)) as running:
        yield running


def test_config_providers_and_stats_show_no_config_secret(start_perfd: StartPerfd) -> None:
    """Webhook and Alertmanager userinfo, a Slack path token, ?token=, a provider base_url's
    userinfo and model options api_key/password/Token (nested too) never show in `config`
    (TOML and JSON), `providers`, `stats` or `status`; the rest of each value does."""
    port = closed_port()
    perfd = start_perfd(
        f'[alerts.webhook]\nurl = "{hook_url(f"http://127.0.0.1:{port}")}"\n'
        f'[alerts.alertmanager]\nurl = "http://am:AmPassS3CRETd@127.0.0.1:{port}"\n'
        '[providers.local]\nbase_url = "http://apiuser:ApiPassS3CRETe@127.0.0.1:1/v1"\n'
        '[models.remote]\nloader = "openai"\nprovider = "local"\nmodel = "m"\n'
        'options = { api_key = "OptKeyS3CRETf", password = "OptPassS3CRETg", temperature = 0 }\n'
        '[models.local]\ntarget = "json:loads"\n'
        '[models.local.options]\nToken = "OptTokS3CRETh"\nmax_tokens = 5\n'
        'nested = { client_secret = "NestedS3CRETi", url = "http://u:NestS3CRETj@h/x" }\n'
    )
    commands = [
        ("config",),
        ("--json", "config"),
        ("providers",),
        ("--json", "providers"),
        ("--json", "stats"),
        ("--json", "status"),
    ]
    text = shown(perfd, *commands)
    assert MARK not in text
    toml = perfd.ctl("config").stdout
    hook = f"http://<redacted>@127.0.0.1:{port}/services/<redacted>/<redacted>/<redacted>"
    assert f'url = "{hook}?token=<redacted>&team=ops"' in toml
    assert f'url = "http://<redacted>@127.0.0.1:{port}"' in toml
    assert 'base_url = "http://<redacted>@127.0.0.1:1/v1"' in toml
    assert 'api_key = "<redacted>"' in toml
    assert 'password = "<redacted>"' in toml
    assert "temperature = 0" in toml
    assert "max_tokens = 5" in toml
    assert 'client_secret = "<redacted>"' in toml
    assert perfd.stop() == 0
    assert MARK not in everything(perfd)


def test_a_bad_port_in_a_base_url_with_a_password(start_perfd: StartPerfd) -> None:
    """A base_url with user:pass@ and a port out of range: the infer reply and the
    provider.failed log line name the bad URL without its password."""
    perfd = start_perfd(
        '[providers.local]\nbase_url = "http://apiuser:ApiPassS3CRETe@127.0.0.1:99999/v1"\n'
        '[models.remote]\nloader = "openai"\nprovider = "local"\nmodel = "m"\n'
    )
    out = perfd.ctl("infer", "remote", "--input", json.dumps({"messages": MESSAGES}))
    assert out.returncode != 0
    assert "bad URL" in out.stderr
    assert "http://<redacted>@127.0.0.1:99999/v1" in out.stderr
    assert MARK not in out.stdout + out.stderr
    failed = perfd.log_entry("provider.failed")
    assert failed["kind"] == "config"
    assert "<redacted>@127.0.0.1:99999" in failed["message"]
    assert MARK not in shown(perfd, ("--json", "stats"), ("--json", "providers"))
    assert perfd.stop() == 0
    assert MARK not in everything(perfd)


def test_config_errors_show_no_secret(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """A bad base_url or webhook url holding a password: `perfd --check-config`, the
    failed start and a failed reload name the key and the URL without the password."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[providers.p]\nbase_url = "htp://u:ReloadS3CRETk@host/v1"\n')
    check = subprocess.run(
        [*command("perfd"), "--check-config", str(bad)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert check.returncode == 1
    assert "providers.p.base_url" in check.stderr
    assert "htp://<redacted>@host/v1" in check.stderr
    assert MARK not in check.stdout + check.stderr
    perfd = start_perfd()
    perfd.config_path.write_text('[alerts.webhook]\nurl = "ftp://u:HookS3CRETl@h/x"\n')
    out = perfd.ctl("reload")
    assert out.returncode == 1
    assert "alerts.webhook.url" in out.stderr
    assert "ftp://<redacted>@h/x" in out.stderr
    assert MARK not in out.stdout + out.stderr
    perfd.config_path.write_text("[models.m]\ntarget = 'a:b'\noptions = \"api_key=OptS3CRETm\"\n")
    out = perfd.ctl("reload")
    assert out.returncode == 1
    assert "models.m.options" in out.stderr
    assert MARK not in out.stdout + out.stderr
    assert perfd.stop() == 0
    assert MARK not in everything(perfd)


def test_a_failing_webhook_logs_no_secret(start_perfd: StartPerfd, server: ScriptedServer) -> None:
    """A webhook answering 403 with its own path token and ?token= echoed back: the
    alert_sink.failed line names the redacted url and the error, and no secret."""
    echo = "no hook at /services/T0123ABCD/B0123ABCD/PathTokS3CRETb0123456789?token=QueryS3CRETc"
    server.default = Reply(403, f"<p>{echo}</p>")
    perfd = start_perfd(FIRES_AT_ONCE + f'[alerts.webhook]\nurl = "{hook_url(server.url)}"\n')
    (request,) = server.wait_for_requests(1, timeout=30)
    assert "PathTokS3CRETb" in request.path
    assert "QueryS3CRETc" in request.path
    basic = base64.b64encode(b"hookuser:HookPassS3CRETa").decode()
    assert request.headers["authorization"] == f"Basic {basic}"  # userinfo sent as Basic auth
    wait_until(lambda: bool(events(perfd, "alert_sink.failed")))
    (failed,) = events(perfd, "alert_sink.failed")
    assert failed["url"].startswith(f"http://<redacted>@127.0.0.1:{server.port}/services/")
    assert failed["status"] == 403
    assert failed["error"].startswith("HTTP 403: <p>no hook at /")
    assert perfd.stop() == 0
    assert MARK not in everything(perfd)


def test_an_api_key_echoed_back_in_any_form_is_redacted(
    start_perfd: StartPerfd, server: ScriptedServer
) -> None:
    """A provider echoing the API key HTML-escaped (in an error page) or percent-encoded and
    JSON-escaped (in a completion): the error reply, the completion and the log show none."""
    key = "sk-Key&<S3CRETn>'/x+y"
    escaped = "sk-Key&amp;&lt;S3CRETn&gt;&#x27;/x+y"
    encoded = "sk-Key%26%3CS3CRETn%3E%27%2Fx%2By"
    server.enqueue(Reply(401, f"<html><body>Invalid key {escaped}</body></html>"))
    echoed = {**COMPLETION, "echo": [encoded, key.replace("/", "\\/"), key]}
    server.enqueue(Reply(200, echoed))
    perfd = start_perfd(
        f'[providers.local]\nbase_url = "{server.url}/v1"\napi_key_env = "TEST_KEY"\n'
        '[models.remote]\nloader = "openai"\nprovider = "local"\nmodel = "m"\n',
        env={"TEST_KEY": key},
    )
    inputs = json.dumps({"messages": MESSAGES})
    refused = perfd.ctl("infer", "remote", "--input", inputs)
    assert refused.returncode != 0
    assert "Invalid key <redacted>" in refused.stderr
    answered = perfd.ctl("--json", "infer", "remote", "--input", inputs)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["outputs"]["echo"] == ["<redacted>"] * 3
    assert server.requests[0].headers["authorization"] == f"Bearer {key}"  # the key was used
    assert MARK not in refused.stdout + refused.stderr + answered.stdout + answered.stderr
    assert perfd.stop() == 0
    assert MARK not in everything(perfd)


@pytest.mark.parametrize("status", [302, 307])
def test_a_provider_redirect_is_refused(start_perfd: StartPerfd, status: int) -> None:
    """A provider redirecting to another port: the prompt is not sent there, no answer is
    accepted, and the error names the target with its token redacted."""
    with ScriptedServer(default=Reply(200, COMPLETION)) as elsewhere:
        target = f"{elsewhere.url}/v1/chat/completions?token=RedirS3CRETo"
        with ScriptedServer(default=Reply(status, b"", {"Location": target})) as provider:
            perfd = start_perfd(
                f'[providers.local]\nbase_url = "{provider.url}/v1"\n'
                '[models.remote]\nloader = "openai"\nprovider = "local"\nmodel = "m"\n'
            )
            client = perfctl.Client(runtime_dir=perfd.runtime_dir, timeout=30)
            with client, pytest.raises(perfctl.InferFailed) as failed:
                client.call("infer", model="remote", inputs={"messages": MESSAGES})
            assert len(provider.requests) == 1
        assert elsewhere.requests == []
    message = failed.value.message
    target = f"{elsewhere.url}/v1/chat/completions?token=<redacted>"
    assert f"redirected (HTTP {status}) to {target}" in message
    assert "set base_url to the address that answers" in message
    assert perfd.log_entry("provider.failed")["status"] == status
    assert perfd.stop() == 0
    assert MARK not in everything(perfd)


def test_a_webhook_redirect_is_refused(start_perfd: StartPerfd) -> None:
    """A webhook answering 308 to another port: the alert is not posted there, and
    alert_sink.failed names the redirect's target, redacted."""
    with ScriptedServer() as elsewhere:
        target = f"{elsewhere.url}/services/T0123ABCD/B0123ABCD/RedirS3CRETp0123456789"
        with ScriptedServer(default=Reply(308, b"", {"Location": target})) as hook:
            perfd = start_perfd(FIRES_AT_ONCE + f'[alerts.webhook]\nurl = "{hook.url}/hook"\n')
            hook.wait_for_requests(1, timeout=30)
            wait_until(lambda: bool(events(perfd, "alert_sink.failed")))
            assert perfd.stop() == 0
        assert elsewhere.requests == []
    (failed,) = events(perfd, "alert_sink.failed")
    redacted = f"{elsewhere.url}/services/<redacted>/<redacted>/<redacted>"
    assert f"redirected (HTTP 308) to {redacted}" in failed["error"]
    assert MARK not in everything(perfd)
