"""perfd.redaction: which names are secret, which parts of a URL, scrubbing known secrets in
every form a server may echo them, and the log processor."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfd import log, redaction
from perfd.redaction import REDACTED, Scrubber, redact_url, url_secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1"),
        ("http://127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("https://u:pw@example.com:8443/hook", "https://<redacted>@example.com:8443/hook"),
        ("https://TOKEN123@example.com/", "https://<redacted>@example.com/"),
        (
            "https://hooks.slack.com/services/T0123ABCD/B0123ABCD/AbCdEfGh1234567890IjKlMn",
            "https://hooks.slack.com/services/<redacted>/<redacted>/<redacted>",
        ),
        (
            "https://discord.com/api/webhooks/123456789012345678/AbCd-ef_GhIjKlMnOpQr",
            "https://discord.com/api/webhooks/<redacted>/<redacted>",
        ),
        (
            "https://h/hook?token=abc&channel=ops&API-Key=z&sig=1&code=2",
            "https://h/hook?token=<redacted>&channel=ops&API-Key=<redacted>&sig=<redacted>"
            "&code=<redacted>",
        ),
        ("https://h/x?since=2024-01-01T00:00:00Z", "https://h/x?since=<redacted>"),
        ("https://h/token/abc/next", "https://h/token/<redacted>/next"),
        ("https://h/a#frag", "https://h/a#<redacted>"),
        ("http://[::1]:80/a?password=p", "http://[::1]:80/a?password=<redacted>"),
        ("https://h/alertmanager-webhook-receiver", "https://h/alertmanager-webhook-receiver"),
        ("user:pw@host/x", "<redacted>@host/x"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """Userinfo, secret query values, token-like path segments and fragments are redacted;
    scheme, host, port and readable path words stay."""
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent: a printed config redacts to itself


@given(st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=80))
def test_redaction_is_idempotent_and_hides_the_userinfo(tail: str) -> None:
    """Whatever follows the host, redacting twice changes nothing and no password shows."""
    url = f"https://someone:Pw0rdXYZ@host/{tail}"
    once = redact_url(url)
    assert redact_url(once) == once
    assert "Pw0rdXYZ" not in once


def test_url_secrets_are_what_redaction_hides() -> None:
    """The literal secrets of a URL (for scrubbing error text that quotes only its path)."""
    url = "http://alice:hunter2pass@h/services/T0123ABCD/B0123ABCD/XyZ0123456789abc?token=tok1"
    found = url_secrets(url)
    for part in ("alice:hunter2pass", "hunter2pass", "T0123ABCD", "XyZ0123456789abc", "tok1"):
        assert part in found
    assert "alice" not in found  # a short user name is not scrubbed from every text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("API-KEY", True),
        ("apiKey", True),
        ("Password", True),
        ("client_secret", True),
        ("access_token", True),
        ("Token", True),
        ("key", True),
        ("max_tokens", False),
        ("temperature", False),
        ("keep_alive", False),
        ("monkey", False),
    ],
)
def test_secret_option_names(name: str, secret: bool) -> None:
    """Options keys: a substring rule, case-insensitive; "tokens" (a count) is no secret."""
    assert redaction.is_secret_key(name) is secret


def test_redact_table_walks_nested_tables_and_urls() -> None:
    """Secret-named entries at any depth, and URL secrets inside strings, are redacted."""
    table = {
        "api_key": "k",
        "max_tokens": 5,
        "nested": {"Password": 1, "url": "http://u:p@h/x", "list": [{"token": "t"}]},
    }
    assert redaction.redact_table(table) == {
        "api_key": REDACTED,
        "max_tokens": 5,
        "nested": {
            "Password": REDACTED,
            "url": "http://<redacted>@h/x",
            "list": [{"token": REDACTED}],
        },
    }


def test_scrubber_hides_every_encoding_of_a_secret() -> None:
    """Raw, HTML-escaped (named and numeric), percent-encoded (either case), JSON-escaped."""
    key = "sk-a&b<c>'d/e+f"
    scrub = Scrubber([key])
    forms = [
        key,
        "sk-a&amp;b&lt;c&gt;&#x27;d/e+f",
        "sk-a&b&lt;c&gt;'d/e+f",
        "sk-a%26b%3Cc%3E%27d%2Fe%2Bf",
        "sk-a%26b%3cc%3e%27d%2fe%2bf",
        "sk-a%26b%3Cc%3E%27d/e%2Bf",
        "sk-a&b<c>'d\\/e+f",
        "".join(f"&#{ord(c)};" for c in key),
    ]
    for form in forms:
        assert scrub.text(f"echo: {form}!") == f"echo: {REDACTED}!", form
    value = {"choices": [{"text": forms[1]}], "n": 1}
    assert scrub.value(value) == {"choices": [{"text": REDACTED}], "n": 1}
    clean = {"choices": [{"text": "hello"}]}
    assert scrub.value(clean) is clean


def test_the_log_redacts_urls_in_values_and_exceptions() -> None:
    """A logged URL (a field or inside an exception's traceback) shows no secret part."""
    out = io.StringIO()
    log.configure(stream=out)
    logger = log.get("test")
    logger.warning("x.failed", error="Failed to parse: http://u:Pw0rd123@h:99999/v1")
    try:
        raise ValueError("no route to https://h/hook?token=QueryTok9")
    except ValueError:
        logger.exception("x.crashed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["error"] == "Failed to parse: http://<redacted>@h:99999/v1"
    assert "https://h/hook?token=<redacted>" in lines[1]["exception"]
    assert "Pw0rd123" not in out.getvalue()
    assert "QueryTok9" not in out.getvalue()
