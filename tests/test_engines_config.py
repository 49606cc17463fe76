"""[engines.NAME] and [discovery]: good tables parse, bad ones are specific errors naming the
key; the kinds match the record's; the defaults are the documented ones."""

from __future__ import annotations

from typing import Any

import pytest

from perfd import config
from perfd.engines.record import KINDS
from perfd.errors import ConfigError


def test_the_kinds_are_the_records() -> None:
    """The settings spell the kinds as perfd.engines.record does (they import no part)."""
    assert config.ENGINE_KINDS == KINDS


def test_a_good_engine_table_and_the_discovery_defaults() -> None:
    """Every key of an engine table is kept; discovery is on, 30 s, reads every 5 s, 2 s each."""
    cfg = config.parse(
        {
            "engines": {
                "big": {
                    "kind": "vllm",
                    "url": "http://127.0.0.1:8000/",
                    "pid": 4242,
                    "unit": "vllm.service",
                    "api_key_env": "VLLM_API_KEY",
                }
            }
        }
    )
    big = cfg.engines["big"]
    assert (big.kind, big.pid, big.unit, big.api_key_env) == (
        "vllm",
        4242,
        "vllm.service",
        "VLLM_API_KEY",
    )
    d = cfg.discovery
    assert (d.enabled, d.interval, d.read_interval, d.timeout) == (True, 30.0, 5.0, 2.0)


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ({"kind": "tgi", "url": "http://127.0.0.1:1"}, "engines.x.kind", '"vllm"'),
        ({"kind": "vllm"}, "engines.x.url", "is required"),
        ({"kind": "vllm", "url": "127.0.0.1:8000"}, "engines.x.url", "http://"),
        ({"kind": "vllm", "url": "http://h:1/v1/models"}, "engines.x.url", "base URL only"),
        ({"kind": "vllm", "url": "http://h:1", "pid": -1}, "engines.x.pid", "an integer from 0"),
        (
            {"kind": "vllm", "url": "http://h:1", "api_key_env": "A B"},
            "engines.x.api_key_env",
            "environment variable",
        ),
        ({"kind": "vllm", "url": "http://h:1", "port": 1}, "engines.x.port", "unknown"),
    ],
)
def test_bad_engine_tables_name_the_key(table: dict[str, Any], key: str, says: str) -> None:
    """Each bad engine table is a ConfigError naming the key and what is wrong."""
    with pytest.raises(ConfigError) as caught:
        config.parse({"engines": {"x": table}}, "perfd.toml")
    assert caught.value.key == key
    assert says in str(caught.value)


def test_a_timeout_longer_than_the_read_interval_is_refused() -> None:
    """timeout must not exceed read_interval (a read would overlap the next)."""
    with pytest.raises(ConfigError) as caught:
        config.parse({"discovery": {"read_interval": "1s", "timeout": "2s"}}, "perfd.toml")
    assert caught.value.key == "discovery.timeout"


def test_engine_changes_are_reloadable() -> None:
    """Engines and discovery apply on reload: none of their keys is restart-only."""
    old = config.parse({})
    new = config.parse(
        {
            "engines": {"a": {"kind": "ollama", "url": "http://127.0.0.1:11434"}},
            "discovery": {"enabled": False},
        }
    )
    changed = config.changed_keys(old, new)
    assert "discovery.enabled" in changed
    assert not [k for k in changed if k in config.RESTART_ONLY]
