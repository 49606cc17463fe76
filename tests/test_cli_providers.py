"""`perfctl providers` and the providers line of `perfctl stats`: pure formatting of replies
shaped like perfd's (perfd.handlers.providers.providers, perfd.net.http.HttpStats.as_dict)."""

from __future__ import annotations

import re

from perfctl.format import base
from perfctl.format import stats as fmt_stats
from perfctl.format.providers import format_providers, ms, provider_items, reuse
from tests.test_format import STATS  # a real stats reply

USED = {
    "base_url": "https://openrouter.ai/api/v1",
    "key_from": "env OPENROUTER_API_KEY",
    "key_set": True,
    "used": True,
    "requests": 120,
    "streamed": 4,
    "retries": 3,
    "failures": {"rate_limited": 1, "timeout": 1},
    "connections_opened": 4,
    "latency_ms": {"p50": 212.4, "p95": 1840.0},
    "reuse_ratio": 30.0,
}
UNUSED = {
    "base_url": "http://127.0.0.1:8000/v1",
    "key_from": None,
    "key_set": False,
    "used": False,
}
NO_KEY = {
    "base_url": "https://api.openai.com/v1",
    "key_from": "file /etc/perfd/openai.key",
    "key_set": False,
    "used": False,
}


def columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_table_has_a_row_per_provider() -> None:
    """Header, then one aligned row per provider with its counters."""
    text = format_providers({"providers": {"openrouter": USED, "vllm": UNUSED}})
    header, used, unused, *notes = text.splitlines()
    assert columns(header) == [
        "NAME",
        "BASE URL",
        "REQUESTS",
        "RETRIES",
        "FAILURES",
        "p50/p95 ms",
        "CONNS",
        "REUSE",
    ]
    assert columns(used) == [
        "openrouter",
        "https://openrouter.ai/api/v1",
        "120",
        "3",
        "2",
        "212/1840",
        "4",
        "30.0x",
    ]
    assert columns(unused) == ["vllm", "http://127.0.0.1:8000/v1", *["-"] * 5, "not used yet"]
    assert notes == ["openrouter: failures: rate_limited 1, timeout 1"]


def test_numbers_are_right_aligned() -> None:
    """REQUESTS and the other counters end in the same column on every row."""
    small = {**USED, "requests": 7, "retries": 0, "failures": {}}
    lines = format_providers({"providers": {"a": USED, "b": small}}).splitlines()
    ends = {line.index("REQUESTS") + len("REQUESTS") for line in lines[:1]}
    ends |= {lines[1].index(" 120") + 4, lines[2].index("  7 ") + 3}
    assert len(ends) == 1


def test_missing_key_is_flagged() -> None:
    """A configured key that is not there gets a line saying where perfd looked."""
    env = {**NO_KEY, "key_from": "env OPENROUTER_API_KEY"}
    text = format_providers({"providers": {"openai": NO_KEY, "openrouter": env}})
    assert "openai: no API key: /etc/perfd/openai.key is missing, empty or unreadable" in text
    assert "openrouter: no API key: OPENROUTER_API_KEY is not set in perfd's environment" in text


def test_no_key_configured_is_not_a_problem() -> None:
    """A provider without api_key_env/api_key_file (a local vLLM) gets no note."""
    assert len(format_providers({"providers": {"vllm": UNUSED}}).splitlines()) == 2


def test_no_providers() -> None:
    """Nothing configured: say how to add one."""
    assert "add [providers.NAME] tables" in format_providers({"providers": {}})


def test_colour_only_on_a_tty_style() -> None:
    """Plain style has no escapes; colour marks retries, failures and notes."""
    plain = format_providers({"providers": {"openrouter": USED}})
    assert "\033[" not in plain
    coloured = format_providers({"providers": {"openrouter": USED}}, base.Style(colour=True))
    assert "\033[33m3\033[0m" in coloured  # retries, yellow
    assert "\033[31m2\033[0m" in coloured  # failures, red
    assert coloured.count("\n") == plain.count("\n")


def test_small_helpers() -> None:
    """Latency precision follows its size; reuse is requests per connection."""
    assert [ms(None), ms(0.4213), ms(12.34), ms(1840.4)] == ["-", "0.42", "12.3", "1840"]
    assert reuse({"reuse_ratio": None}) == "-"
    assert reuse({"reuse_ratio": 1}) == "1.0x"


def test_stats_line_lists_used_providers() -> None:
    """perfctl stats: one providers line, items per provider used."""
    assert provider_items({"openrouter": USED}) == [
        "openrouter 120 req, 3 retries, 2 failed, p50 212 ms"
    ]
    one = {**USED, "retries": 1, "failures": {}, "latency_ms": {"p50": None, "p95": None}}
    assert provider_items({"x": one}) == ["x 120 req, 1 retry, 0 failed, p50 - ms"]


def test_stats_screen_shows_providers_only_when_present() -> None:
    """The stats screen gets a providers line once perfd reports the section."""
    assert "providers" not in fmt_stats.format_stats(STATS)
    shown = fmt_stats.format_stats({**STATS, "providers": {"openrouter": USED, "local": USED}})
    (line,) = [entry for entry in shown.splitlines() if entry.startswith("providers")]
    assert line.startswith("providers openrouter 120 req")
    assert "local 120 req" in shown
    assert all(len(entry) <= base.WIDTH for entry in shown.splitlines())
