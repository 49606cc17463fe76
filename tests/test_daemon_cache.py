"""The model cache inside a real perfd, driven over the real socket by the client API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import perfctl
from perfd.wire import arrays, protocol
from tests.conftest import Perfd, StartPerfd
from tests.daemons import wait_until

ROOT = str(Path(__file__).resolve().parent.parent)
MODELS = """
[models.echo]
target = "tests.models.toy:make_echo"
[models.doubler]
target = "tests.models.toy:make_doubler"
[models.ballast]
target = "tests.models.toy:make_ballast"
options = { size_mb = 64 }
[models.broken]
target = "tests.models.toy:make_failing"
[models.pinned]
target = "tests.models.toy:make_upper"
pin = true
preload = true
"""


def start(start_perfd: StartPerfd, extra: str = "") -> Perfd:
    return start_perfd(MODELS + extra, env={"PYTHONPATH": ROOT})


def call(perfd: Perfd, cmd: str, socket: str | None = None, **args: Any) -> dict[str, Any]:
    with perfctl.Client(socket, runtime_dir=perfd.runtime_dir, timeout=20) as client:
        return client.call(cmd, **args)


def test_infer_loads_on_miss_then_hits(start_perfd: StartPerfd) -> None:
    """infer on a python model: the first call loads it, the second is a hit."""
    perfd = start(start_perfd)
    assert call(perfd, "infer", model="echo", inputs={"q": [1, 2]}) == {
        "model": "echo",
        "outputs": {"q": [1, 2]},
    }
    call(perfd, "infer", model="echo", inputs="again")
    (echo,) = [m for m in call(perfd, "ps")["models"] if m["name"] == "echo"]
    assert (echo["misses"], echo["hits"], echo["loads"], echo["state"]) == (1, 1, 1, "ready")


def test_numpy_outputs_as_json_and_as_frames(start_perfd: StartPerfd) -> None:
    """A model returning numpy arrays answers nested lists in JSON, raw frames in multipart."""
    perfd = start(start_perfd)
    assert call(perfd, "infer", model="doubler", inputs=[[1.0, 2.0]])["outputs"] == [[2.0, 4.0]]
    value, meta, frames = arrays.to_frames(np.arange(6, dtype=np.float32).reshape(2, 3))
    request = protocol.Request("m", "infer", {"model": "doubler", "inputs": value, "arrays": meta})
    with zmq.Context() as ctx, ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{perfd.admin_socket}")
        sock.send_multipart([protocol.encode_request(request), *frames])
        assert sock.poll(20000)
        reply = sock.recv_multipart()
    result = json.loads(reply[0])["result"]
    out = arrays.decode(result["outputs"], result["arrays"], reply[1:])
    assert out.dtype == np.float32
    assert out.tolist() == [[0, 2, 4], [6, 8, 10]]
    # Frames their 'arrays' do not describe: invalid_args with perfd.wire.arrays' words.
    request = protocol.Request("n", "infer", {"model": "doubler", "inputs": value, "arrays": []})
    with zmq.Context() as ctx, ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{perfd.admin_socket}")
        sock.send_multipart([protocol.encode_request(request), *frames])
        assert sock.poll(20000)
        error = json.loads(sock.recv())["error"]
    assert error == {
        "code": "invalid_args",
        "message": "'arrays' must describe each of the 1 extra frames (dtype, shape)",
    }


def test_explicit_load_evict_and_memory_comes_back(start_perfd: StartPerfd) -> None:
    """load measures the real cost (RSS); evict unloads it and the RSS comes back."""
    perfd = start(start_perfd)
    call(perfd, "load", model="pinned")  # let the preload finish: an overlap is not measured
    loaded = call(perfd, "load", model="ballast")
    assert loaded["state"] == "ready"
    assert loaded["measured_by"] == "rss"
    assert loaded["measured_bytes"] >= 48 << 20
    result = call(perfd, "evict", model="ballast")
    assert result["evicted"] == ["ballast"]
    assert result["records"][0]["freed_rss_bytes"] >= 32 << 20
    stats = call(perfd, "stats")["cache"]
    assert stats["evictions"]["manual"] >= 1
    assert stats["recent_evictions"][0]["model"] == "ballast"


def test_failed_load_is_reported_and_leaves_nothing(start_perfd: StartPerfd) -> None:
    """A factory that raises: load_failed with its message; the daemon keeps serving."""
    perfd = start(start_perfd)
    with pytest.raises(perfctl.CommandFailed) as caught:
        call(perfd, "infer", model="broken", inputs=1)
    assert caught.value.code == "load_failed"
    assert "refuses to load" in caught.value.message
    assert all(m["name"] != "broken" for m in call(perfd, "ps")["models"])
    assert call(perfd, "ping")["pong"] is True


def test_pins_and_preload(start_perfd: StartPerfd) -> None:
    """A preloaded pinned model is loaded at start and cannot be evicted until unpinned."""
    perfd = start(start_perfd)
    assert call(perfd, "infer", model="pinned", inputs="a")["outputs"] == "A"
    with pytest.raises(perfctl.Busy, match="pinned"):
        call(perfd, "evict", model="pinned")
    call(perfd, "unpin", model="pinned")
    assert call(perfd, "evict", model="pinned")["evicted"] == ["pinned"]


def test_unknown_model_and_run_time_model(start_perfd: StartPerfd) -> None:
    """Unknown names are not_found; a model named at run time loads when its loader resolves it."""
    perfd = start(start_perfd)
    with pytest.raises(perfctl.NotFound):
        call(perfd, "infer", model="nope", inputs=1)
    call(perfd, "load", model="rt", target="tests.models.toy:make_upper")
    assert call(perfd, "infer", model="rt", inputs="x")["outputs"] == "X"
    with pytest.raises(perfctl.CommandFailed, match=r"module 'no\.such\.module' not found") as e:
        call(perfd, "load", model="bad", target="no.such.module:f")
    assert e.value.code == "load_failed"
    with pytest.raises(perfctl.LoadFailed, match=r"openai loader needs a provider"):
        call(perfd, "load", model="bad2", loader="openai")


def test_mutating_cache_commands_need_the_admin_socket(start_perfd: StartPerfd) -> None:
    """infer, load, evict and pin are refused on the read-only socket; ps is allowed."""
    perfd = start(start_perfd)
    ro = str(perfd.readonly_socket)
    assert "models" in call(perfd, "ps", ro)
    for cmd, args in (
        ("infer", {"model": "echo", "inputs": 1}),
        ("load", {"model": "echo"}),
        ("evict", {"all": True}),
        ("pin", {"model": "echo"}),
    ):
        with pytest.raises(perfctl.Forbidden):
            call(perfd, cmd, ro, **args)


def test_evict_all_idle_and_dry_run(start_perfd: StartPerfd) -> None:
    """evict --all --dry-run lists without unloading; --all unloads the unpinned ones."""
    perfd = start(start_perfd)
    call(perfd, "load", model="echo")
    call(perfd, "load", model="doubler")
    dry = call(perfd, "evict", all=True, dry_run=True)
    assert sorted(dry["evicted"]) == ["doubler", "echo"]
    assert {m["name"] for m in call(perfd, "ps")["models"]} >= {"echo", "doubler"}
    assert sorted(call(perfd, "evict", all=True)["evicted"]) == ["doubler", "echo"]
    assert call(perfd, "evict", idle=True)["evicted"] == []
    # evict's argument combinations: tests/test_handlers_cache.py


def test_keep_alive_zero_unloads_after_use(start_perfd: StartPerfd) -> None:
    """keep_alive = 0: the model is unloaded as soon as its request is done."""
    perfd = start(
        start_perfd, '[models.once]\ntarget = "tests.models.toy:make_echo"\nkeep_alive = 0\n'
    )
    call(perfd, "infer", model="once", inputs=1)
    assert all(m["name"] != "once" for m in call(perfd, "ps")["models"])
    assert call(perfd, "stats")["cache"]["evictions"]["ttl"] == 1


def test_no_capacity_gives_the_numbers(start_perfd: StartPerfd) -> None:
    """A model whose size hint exceeds the budget is refused at once, with the numbers."""
    perfd = start(
        start_perfd,
        '[models.huge]\ntarget = "tests.models.toy:make_echo"\nsize_hint = "1TiB"\n',
    )
    with pytest.raises(perfctl.CommandFailed) as caught:
        call(perfd, "load", model="huge")
    assert caught.value.code == "no_capacity"
    assert "1024.00 GiB" in caught.value.message


def test_arrays_bigger_than_the_read_only_limit_reach_the_admin_socket(
    start_perfd: StartPerfd,
) -> None:
    """A 4 MiB array (over the read-only socket's 1 MiB) is accepted on the admin socket."""
    perfd = start(start_perfd)
    big = np.ones((1024, 1024), dtype=np.float32)
    value, meta, frames = arrays.to_frames(big)
    request = protocol.Request("b", "infer", {"model": "doubler", "inputs": value, "arrays": meta})
    with zmq.Context() as ctx, ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{perfd.admin_socket}")
        sock.send_multipart([protocol.encode_request(request), *frames])
        assert sock.poll(20000)
        reply = sock.recv_multipart()
    result = json.loads(reply[0])["result"]
    assert arrays.decode(result["outputs"], result["arrays"], reply[1:]).sum() == 2 * big.size


def test_a_failed_preload_is_logged_and_the_next_preload_still_loads(
    start_perfd: StartPerfd,
) -> None:
    """preload = true on a model whose loader raises: cache.preload_failed names it with the
    cache's message, and the models after it are still preloaded."""
    perfd = start_perfd(
        "[models.bad]\n"
        'target = "tests.models.toy:make_failing"\n'
        "preload = true\n"
        "[models.good]\n"
        'target = "tests.models.toy:make_echo"\n'
        "preload = true\n",
        env={"PYTHONPATH": ROOT},
    )
    wait_until(lambda: "good" in {m["name"] for m in call(perfd, "ps")["models"]}, 30)
    failed = perfd.log_entry("cache.preload_failed")
    assert failed["model"] == "bad"
    assert failed["error"].startswith("loading 'bad' failed: ")
    assert "toy model refuses to load" in failed["error"]
    assert perfd.stop() == 0
