"""The cache commands' handlers (perfd.handlers.cache) in process against a fake cache:
evict's argument combinations, run-time spec validation, infer's reply errors."""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np
import pytest

from perfd.errors import CommandError
from perfd.handlers import table
from perfd.loaders.base import LoaderError
from perfd.server.commands import WithFrames
from perfd.wire import arrays, protocol
from tests.fakeview import FakeCache, FakeView, Row

TOY = "tests.models.toy:make_echo"
CONFIGURED = ("echo", "upper", "busy")


def run(view: Any, cmd: str, *frames: bytes, **args: Any) -> Any:
    command = table.build(view)[cmd]
    return command.handler(args, list(frames)) if command.frames else command.handler(args)


def failure(view: Any, cmd: str, **args: Any) -> CommandError:
    with pytest.raises(CommandError) as caught:
        run(view, cmd, **args)
    return caught.value


def in_thread(call: Any) -> Any:
    """``call()`` on a fresh thread, as perfd's workers run slow commands (a fresh stack)."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = call()
        except BaseException as exc:  # handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(60)
    if "error" in out:
        raise out["error"]
    return out["result"]


def cache_view(*rows: Row, configured: tuple[str, ...] = ("echo", "upper")) -> FakeView:
    cache = FakeCache(configured, {row.name: row for row in rows})
    return FakeView(cache=cache)


def test_ps_before_the_cache_exists_lists_the_configured_models_only() -> None:
    view = FakeView({"models": {"b": {"target": TOY}, "a": {"target": TOY}}})
    assert run(view, "ps") == {"models": [], "configured": ["a", "b"], "runtime": []}
    assert view.builds == []


def test_evict_needs_exactly_one_target() -> None:
    """No target, or two of model, all and idle: invalid_args naming the three choices."""
    view = cache_view(Row("echo"))
    for args in ({}, {"model": "echo", "all": True}, {"all": True, "idle": True}, {"all": False}):
        error = failure(view, "evict", **args)
        assert error.code == protocol.INVALID_ARGS, args
        assert error.message == "give exactly one of 'model', 'all': true or 'idle': true"
    assert view.cache.rows.keys() == {"echo"}  # nothing evicted


def test_evict_before_the_cache_exists_evicts_nothing_and_builds_nothing() -> None:
    view = FakeView({})
    assert run(view, "evict", all=True, dry_run=True) == {"evicted": [], "dry_run": True}
    assert run(view, "evict", model="x") == {"evicted": [], "dry_run": False}
    assert view.builds == []


def test_evict_dry_run_lists_without_unloading_and_names_what_it_skips() -> None:
    """--all --dry-run lists the evictable ones; the pinned and the leased are `skipped`."""
    view = cache_view(
        Row("echo"), Row("upper", pinned=True), Row("busy", leases=2), configured=CONFIGURED
    )
    dry = run(view, "evict", all=True, dry_run=True)
    assert dry["evicted"] == ["echo", "busy"]
    assert dry["dry_run"] is True
    assert dry["skipped"] == [{"model": "upper", "why": "pinned"}]
    assert view.cache.rows.keys() == {"echo", "upper", "busy"}
    view.cache.rows["busy"].leases = 1
    done = run(view, "evict", idle=True)
    assert done["skipped"] == [{"model": "upper", "why": "pinned"}]
    assert done["evicted"] == ["echo", "busy"]
    assert done["dry_run"] is False


def test_evict_all_keeps_a_model_leased_meanwhile() -> None:
    """A model that got a lease after evictable() stays, and is listed as in use."""
    view = cache_view(Row("echo"), Row("upper"))

    def evict_many(names: list[str]) -> list[dict[str, Any]]:
        view.cache.rows["upper"].leases = 1  # leased between the listing and the eviction
        return [view.cache.evict("echo")]

    view.cache.evict_many = evict_many  # type: ignore[method-assign]
    result = run(view, "evict", all=True)
    assert result["evicted"] == ["echo"]
    assert result["skipped"] == [{"model": "upper", "why": "in use by 1 request"}]


def test_evict_dry_run_of_one_model_not_loaded() -> None:
    """Known but not loaded: not_found 'is not loaded'; unknown: the cache's not_found."""
    view = cache_view(Row("echo"))
    assert run(view, "evict", model="echo", dry_run=True) == {"evicted": ["echo"], "dry_run": True}
    error = failure(view, "evict", model="upper", dry_run=True)
    assert (error.code, error.message) == (protocol.NOT_FOUND, "'upper' is not loaded")
    error = failure(view, "evict", model="nope", dry_run=True)
    assert error.code == protocol.NOT_FOUND
    assert "unknown model 'nope'" in error.message
    assert run(view, "evict", model="echo") == {
        "evicted": ["echo"],
        "records": [{"model": "echo", "reason": "manual"}],
        "dry_run": False,
    }


def test_bad_run_time_specs_are_invalid_args() -> None:
    """A size_hint out of range or a device with a trailing newline is invalid_args (found by
    the fuzz; was internal), checked by config's own code, before the cache is reached."""
    view = cache_view()
    for bad in ({"size_hint": 10**400}, {"size_hint": -1}, {"device": "cpu\n"}):
        error = failure(view, "load", model="rt", target=TOY, **bad)
        assert error.code == protocol.INVALID_ARGS, bad
        assert re.search(r"size_hint|device", error.message), error.message
    assert view.cache.calls == []
    error = failure(view, "load", model="rt", target=TOY, device="gpu0")
    assert error.message == 'device: must be "cpu" or "cuda:N", not "gpu0"'
    error = failure(view, "load", model="rt", target=TOY, size_hint=-1)
    assert error.message == "size_hint: bad value -1; allowed: a size from 0 bytes to 1024TiB"


def test_a_run_time_spec_is_defined_then_loaded() -> None:
    """Any spec field makes a run-time model: defined with its fields, then loaded; a plain
    name loads the configured model."""
    view = cache_view()
    run(view, "load", model="rt", target=TOY, device="cuda:1", size_hint=5, options={"k": 1})
    (_, spec), load = view.cache.calls
    assert load == ("load", "rt")
    assert (spec.name, spec.loader, spec.target, spec.device) == ("rt", "python", TOY, "cuda:1")
    assert (spec.size_hint, spec.options, spec.path) == (5, {"k": 1}, "")
    run(view, "load", model="zero", target=TOY, size_hint=0)
    assert view.cache.runtime["zero"].size_hint is None  # 0: unknown
    view.cache.calls.clear()
    run(view, "load", model="echo")
    assert view.cache.calls == [("load", "echo")]


def test_pin_and_unpin_reach_the_cache() -> None:
    view = cache_view(Row("echo"))
    assert run(view, "pin", model="echo") == {"name": "echo", "pinned": True}
    assert run(view, "unpin", model="echo") == {"name": "echo", "pinned": False}
    assert failure(view, "pin", model="nope").code == protocol.NOT_FOUND


def test_outputs_nested_too_deeply_to_send_are_infer_failed() -> None:
    """An echo of 900 nested lists: infer_failed 'nested too deeply', not internal."""
    view = cache_view()
    deep: Any = 0
    for _ in range(900):
        deep = [deep]
    with pytest.raises(CommandError) as caught:
        in_thread(lambda: run(view, "infer", model="echo", inputs=deep))
    assert caught.value.code == protocol.INFER_FAILED
    assert "nested too deeply" in caught.value.message


def test_a_model_failure_is_infer_failed_with_its_message() -> None:
    """A LoaderError's own text; any other exception with its type; options reach the model."""
    view = cache_view()

    def model(inputs: Any, options: dict[str, Any]) -> Any:
        if options.get("fail") == "loader":
            raise LoaderError("the remote model refused")
        if options.get("fail"):
            raise ZeroDivisionError("division by zero")
        return {"got": inputs, "options": options}

    view.cache.model = model
    assert run(view, "infer", model="echo", inputs=[1], options={"k": 2}) == {
        "model": "echo",
        "outputs": {"got": [1], "options": {"k": 2}},
    }
    error = failure(view, "infer", model="echo", inputs=1, options={"fail": "loader"})
    assert (error.code, error.message) == (
        protocol.INFER_FAILED,
        "'echo': the remote model refused",
    )
    error = failure(view, "infer", model="echo", inputs=1, options={"fail": True})
    assert error.message == "'echo': ZeroDivisionError: division by zero"
    assert failure(view, "infer", model="nope", inputs=1).code == protocol.NOT_FOUND


def test_frames_in_frames_out() -> None:
    """A request with array frames gets its outputs as frames."""
    view = cache_view()
    value, meta, frames = arrays.to_frames(np.arange(6, dtype=np.float32).reshape(2, 3))
    reply = run(view, "infer", *frames, model="echo", inputs=value, arrays=meta)
    assert isinstance(reply, WithFrames)
    out = arrays.decode(reply.result["outputs"], reply.result["arrays"], reply.frames)
    assert out.tolist() == [[0, 1, 2], [3, 4, 5]]
