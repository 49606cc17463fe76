"""Hints fit the error, not only its class: the real perfctl against a real perfd (a closed
port on 127.0.0.1 for a refused provider), and perfctl.hints' pure choice of a hint."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from perfctl import hints
from tests.conftest import Perfd, StartPerfd

ROOT = str(Path(__file__).resolve().parent.parent)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def failing(perfd: Perfd, *args: str) -> tuple[str, str]:
    """Run perfctl, which must exit 1; the message line and the hint line of its stderr."""
    out: subprocess.CompletedProcess[str] = perfd.ctl(*args)
    assert out.returncode == 1, (args, out.stdout, out.stderr)
    message, hint = out.stderr.splitlines()
    assert hint.startswith("  hint: "), out.stderr
    return message.removeprefix("perfctl: "), hint.removeprefix("  hint: ")


def start(start_perfd: StartPerfd, extra: str = "") -> Perfd:
    config = (
        "[cache]\nmax_models = 2\n"
        '[models.upper]\ntarget = "tests.models.toy:make_upper"\npin = true\n'
        '[models.echo]\ntarget = "tests.models.toy:make_echo"\n'
        '[models.third]\ntarget = "tests.models.toy:make_echo"\n' + extra
    )
    return start_perfd(config, env={"PYTHONPATH": ROOT})


def test_evicting_a_pinned_model_is_not_told_to_retry(start_perfd: StartPerfd) -> None:
    """evict of a pinned model: the hint says how to unpin it, never "retry shortly"."""
    perfd = start(start_perfd)
    assert perfd.ctl("load", "upper").returncode == 0
    message, hint = failing(perfd, "evict", "upper")
    assert message == "'upper' is pinned; unpin it first"
    assert "retry" not in hint
    assert "perfctl unpin" in hint
    assert "pins it again at the next reload" in hint


def test_unknown_and_unloaded_models_hint_at_what_to_do(start_perfd: StartPerfd) -> None:
    """An unknown model's hint says how to define one; an unloaded one's how to load it."""
    perfd = start(start_perfd)
    message, hint = failing(perfd, "infer", "nope", "--input", "1")
    assert message.startswith("unknown model 'nope'; known: ")
    assert hint.startswith("add a [models.NAME] table and perfctl reload")
    message, hint = failing(perfd, "evict", "echo")
    assert message == "'echo' is not loaded"
    assert hint == "perfctl ps lists the loaded models; perfctl load NAME loads one"


def test_max_models_hint_names_the_key(start_perfd: StartPerfd) -> None:
    """A model over max_models with the others pinned or in use: raise max_models."""
    perfd = start(start_perfd)
    for name in ("upper", "echo"):
        assert perfd.ctl("load", name).returncode == 0
    assert perfd.ctl("pin", "echo").returncode == 0
    message, hint = failing(perfd, "load", "third")
    assert "max_models = 2" in message
    assert hint.startswith("raise [cache] max_models")
    assert hint not in message


def test_missing_provider_key_hint_is_about_perfds_environment(start_perfd: StartPerfd) -> None:
    """A remote model whose key variable is unset in perfd: the hint says where perfd reads it
    (perfd's environment, systemctl edit, api_key_file), not to check target/path."""
    perfd = start(
        start_perfd,
        '[providers.p]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "PERFD_NO_SUCH_KEY"\n'
        '[models.remote]\nloader = "openai"\nprovider = "p"\nmodel = "m"\n',
    )
    message, hint = failing(perfd, "load", "remote")
    assert "PERFD_NO_SUCH_KEY" in message
    assert hint.startswith("perfd reads the key in its own environment, not in perfctl's")
    assert "api_key_file" in hint
    assert "target/path" not in hint


def test_refused_provider_connection_hint(start_perfd: StartPerfd) -> None:
    """A provider whose port is closed: the hint asks whether its server runs at base_url."""
    port = closed_port()
    perfd = start(
        start_perfd,
        f'[providers.down]\nbase_url = "http://127.0.0.1:{port}/v1"\nretries = 0\n'
        '[models.remote]\nloader = "openai"\nprovider = "down"\nmodel = "m"\n',
    )
    message, hint = failing(perfd, "infer", "remote", "--input", '{"messages": []}')
    assert "provider 'down' (connect" in message
    assert hint.startswith("perfd could not connect to the provider: is its server running")
    assert "check the inputs" not in hint


@pytest.mark.parametrize(
    ("code", "message", "hint"),
    [
        ("busy", "no sample yet; retry shortly", ""),
        ("busy", "'x' is in use by 1 request(s); retry later", "it can go once"),
        ("infer_failed", "'f': provider 'p' (rate_limited, HTTP 429, 3 retries): slow", "the "),
        ("infer_failed", "'f': provider 'p' (auth, HTTP 401): no", "the provider refused"),
        ("infer_failed", "'f': provider 'p' (timeout): x sent nothing", "the provider did not"),
        ("load_failed", "loading 'y' failed: LoaderError: provider 'p' (config): bad URL", "fix"),
        ("infer_failed", "the model raised ValueError", None),
    ],
)
def test_hint_chosen_from_what_failed(code: str, message: str, hint: str | None) -> None:
    """The hint follows the failure's kind; None keeps the class's default, "" means none."""
    found = hints.for_failure(code, message)
    if hint is None or hint == "":
        assert found == hint
    else:
        assert found is not None
        assert found.startswith(hint)


def test_provider_kind_is_read_from_the_message() -> None:
    """perfd.net.provider's ``provider 'NAME' (KIND, ...)`` gives KIND; other text gives None."""
    assert hints.provider_kind("'f': provider 'a b' (rate_limited, HTTP 429): x") == "rate_limited"
    assert hints.provider_kind("provider 'p' (config): no key") == "config"
    assert hints.provider_kind("no provider here") is None
    assert hints.provider_kind("provider 'p' has (no kind)") is None
