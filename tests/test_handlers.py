"""The command table and the status, config, stats, alerts and providers handlers, in
process against a fake view (tests/fakeview.py); the domain-error table."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest

from perfd import __version__
from perfd.errors import CommandError
from perfd.handlers import errors, table
from perfd.monitor.snapshot import stats_reply
from perfd.recommend import RecommendError
from perfd.wire import protocol
from tests.fakeprobes import make_snapshot
from tests.fakeview import FakeCache, FakeProviders, FakeView


def run(view: Any, cmd: str, **args: Any) -> Any:
    return table.build(view)[cmd].handler(args)


def failure(view: Any, cmd: str, **args: Any) -> CommandError:
    with pytest.raises(CommandError) as caught:
        run(view, cmd, **args)
    return caught.value


def test_every_command_is_a_top_level_function_of_a_group_module() -> None:
    """Each handler is importable as perfd.handlers.<group>.<name>, taking (view, args)."""
    commands = table.commands(FakeView())
    assert {c.name for c in commands} == set(protocol.READ_ONLY_COMMANDS) | {
        "reload",
        "load",
        "evict",
        "pin",
        "unpin",
        "infer",
    }
    for command in commands:
        handler = command.handler.__wrapped__
        assert handler.__module__.startswith("perfd.handlers."), command.name
        assert "<locals>" not in handler.__qualname__, command.name
        params = list(inspect.signature(handler).parameters)
        assert len(params) == (3 if command.frames else 2), (command.name, params)


def test_ping_and_status_answer_the_daemon_facts() -> None:
    view = FakeView({})
    assert run(view, "ping") == {"pong": True, "version": __version__, "pid": os.getpid()}
    status = run(view, "status")
    assert status["started_at"] == 1700000000.0
    assert status["config_path"] == "/etc/perfd/perfd.toml"
    assert status["config_file_present"] is True
    assert status["runtime_dir"] == "/run/perfd"
    assert status["components"] == {"server": "started"}
    assert status["requests"] == {"total": 3}
    assert status["uid"] == os.geteuid()
    assert view.builds == []  # status builds no part


def test_config_is_redacted_and_reload_goes_to_the_daemon() -> None:
    view = FakeView({"models": {"m": {"target": "a:b", "options": {"api_key": "sk-secret"}}}})
    shown = run(view, "config")
    assert shown["file_present"] is True
    assert "sk-secret" not in repr(shown)
    assert run(view, "reload") == {"changed": []}
    assert view.reloads == 1


def test_stats_and_alerts_are_busy_until_the_monitor_has_a_sample() -> None:
    assert failure(FakeView(monitor=False), "stats").code == protocol.BUSY
    assert "has not started yet" in failure(FakeView(monitor=False), "alerts").message
    empty = failure(FakeView(snapshot=None), "stats")
    assert (empty.code, empty.message) == (protocol.BUSY, "no sample yet; retry shortly")


def test_stats_adds_the_cache_and_the_providers_used_without_building_them() -> None:
    """Before the cache exists: its configured names; providers only once one is used."""
    snapshot = make_snapshot()
    view = FakeView({"models": {"b": {"target": "a:b"}, "a": {"target": "a:b"}}}, snapshot=snapshot)
    assert run(view, "stats") == {
        **stats_reply(snapshot),
        "cache": {"started": False, "configured": ["a", "b"]},
        "engines": [],
    }
    assert view.builds == []
    used = {"base_url": "u", "used": True, "requests": 2}
    view = FakeView(
        snapshot=snapshot,
        cache=FakeCache(),
        providers=FakeProviders({"p": used, "q": {"used": False}}),
    )
    result = run(view, "stats")
    assert result["cache"] == {"started": True, "models": 0}
    assert result["providers"] == {"p": {"requests": 2}}


def test_providers_say_where_the_key_is_never_what(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """env (set or not), file (empty or not) or none; a provider's counters once used."""
    key = tmp_path / "key"
    key.write_text("sk-file")
    monkeypatch.setenv("TEST_HANDLERS_KEY", "sk-env")
    view = FakeView(
        {
            "providers": {
                "env": {
                    "base_url": "https://u:pw@example.com/v1",
                    "api_key_env": "TEST_HANDLERS_KEY",
                },
                "file": {"base_url": "http://127.0.0.1:1/v1", "api_key_file": str(key)},
                "none": {"base_url": "http://127.0.0.1:2/v1"},
            }
        }
    )
    out = run(view, "providers")["providers"]
    assert view.builds == []  # reporting builds no provider
    assert out["env"]["key_from"] == "env TEST_HANDLERS_KEY"
    assert out["env"]["key_set"] is True
    assert "pw" not in out["env"]["base_url"]
    assert (out["file"]["key_from"], out["file"]["key_set"]) == (f"file {key}", True)
    assert (out["none"]["key_from"], out["none"]["key_set"], out["none"]["used"]) == (
        None,
        False,
        False,
    )
    assert "sk-" not in repr(out)
    key.write_text("")
    monkeypatch.setenv("TEST_HANDLERS_KEY", "  ")
    view._providers = FakeProviders({"none": {"used": True, "requests": 5}})
    out = run(view, "providers")["providers"]
    assert (out["env"]["key_set"], out["file"]["key_set"]) == (False, False)
    assert (out["none"]["used"], out["none"]["requests"]) == (True, 5)


def test_domain_errors_map_to_wire_codes_in_one_table() -> None:
    """RecommendError is invalid_args with its own message; a CommandError passes as it is;
    an exception the table does not list comes up unchanged (the server answers internal)."""
    wire = errors.to_wire(RecommendError("bad quant", option="quant"))
    assert (wire.code, wire.message) == (protocol.INVALID_ARGS, "bad quant")
    passed = CommandError(protocol.BUSY, "later")
    assert errors.to_wire(passed) is passed
    with pytest.raises(ValueError, match="no wire code for KeyError"):
        errors.to_wire(KeyError("x"))

    def broken(_view: Any, _args: Any) -> Any:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        errors.run(broken, FakeView())({})


def test_every_cache_error_has_a_code() -> None:
    """Each exception class perfd.cache.errors defines is in the one table (a base class
    through its leaves, which are what is raised)."""
    from perfd.cache import errors as cache_errors

    classes = [
        value
        for value in vars(cache_errors).values()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == cache_errors.__name__
    ]
    assert classes
    for cls in classes:
        if cls.__subclasses__():
            continue  # a base: its leaves are what is raised
        assert any(base in errors.CODES for base in cls.__mro__), f"{cls.__name__}: no wire code"
