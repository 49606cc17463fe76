"""The Python client API: endpoint choice, typed errors, timeout with one retry."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import zmq

import perfctl
from perfd.wire import paths, protocol
from tests.conftest import StartPerfd


def test_client_methods(start_perfd: StartPerfd) -> None:
    """One method per command, as a context manager."""
    perfd = start_perfd()
    with perfctl.Client(runtime_dir=perfd.runtime_dir) as client:
        assert client.ping()["pong"] is True
        assert client.status()["pid"] == perfd.proc.pid
        assert "config" in client.config()
        assert client.reload()["reloaded"] is True


def test_forbidden_is_typed(start_perfd: StartPerfd) -> None:
    """An admin command on the read-only socket raises Forbidden with its code."""
    perfd = start_perfd()
    with perfctl.Client(perfd.readonly_socket) as client, pytest.raises(perfctl.Forbidden) as e:
        client.reload()
    assert e.value.code == "forbidden"


def test_not_running(short_dir: Path) -> None:
    """No socket file: DaemonNotRunning at once, with a hint."""
    with (
        perfctl.Client(runtime_dir=short_dir) as client,
        pytest.raises(perfctl.DaemonNotRunning) as e,
    ):
        client.ping()
    assert "systemctl status perfd" in e.value.hint


@pytest.mark.slow
def test_timeout_retries_once_then_raises(short_dir: Path) -> None:
    """A silent peer: the request is sent twice (one retry), then DaemonTimeout."""
    path = short_dir / "perfd.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    seen: list[bytes] = []

    def swallow() -> None:
        while router.poll(1500):
            seen.append(router.recv_multipart()[-1])

    thread = threading.Thread(target=swallow)
    thread.start()
    try:
        with perfctl.Client(path, timeout=0.2) as client, pytest.raises(perfctl.DaemonTimeout) as e:
            client.ping()
    finally:
        thread.join(10)
        router.close(0)
        ctx.term()
    assert len(seen) == 2
    assert json.loads(seen[0])["id"] == json.loads(seen[1])["id"]
    assert "within 0.4s (2 tries of 0.2s each)" in str(e.value)  # the real total wait


def test_retry_succeeds_when_second_attempt_is_answered(short_dir: Path) -> None:
    """The first request is lost, the retry is answered: the call succeeds."""
    path = short_dir / "perfd.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")

    def answer_second() -> None:
        router.poll(5000)
        router.recv_multipart()  # dropped
        router.poll(5000)
        frames = router.recv_multipart()
        request = protocol.decode_request(frames[-1])
        router.send_multipart([*frames[:-1], protocol.encode_result(request.id, {"pong": True})])

    thread = threading.Thread(target=answer_second)
    thread.start()
    try:
        with perfctl.Client(path, timeout=0.3) as client:
            assert client.ping() == {"pong": True}
    finally:
        thread.join(10)
        router.close(0)
        ctx.term()


def test_bad_reply_and_mismatched_id(short_dir: Path) -> None:
    """A garbled reply or one with another id raises BadReply, never a raw exception."""
    path = short_dir / "perfd.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    replies = [b"garbage", protocol.encode_result("other-id", {})]

    def serve() -> None:
        for reply in replies:
            router.poll(5000)
            frames = router.recv_multipart()
            router.send_multipart([*frames[:-1], reply])

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with perfctl.Client(path, timeout=2) as client:
            with pytest.raises(perfctl.BadReply, match="not valid JSON"):
                client.ping()
            with pytest.raises(perfctl.BadReply, match="other-id"):
                client.ping()
    finally:
        thread.join(10)
        router.close(0)
        ctx.term()


def test_explicit_endpoint_forms(tmp_path: Path) -> None:
    """--socket takes a path or an ipc:// endpoint."""
    assert perfctl.Client("/run/x.sock").endpoint_for("ping") == (
        "ipc:///run/x.sock",
        "/run/x.sock",
    )
    assert perfctl.Client("ipc:///run/x.sock").endpoint_for("ping")[0] == "ipc:///run/x.sock"


def test_client_runtime_dirs_match_perfds_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """$PERFD_RUNTIME_DIR alone when set; else every default perfd may use, then /run/perfd."""
    monkeypatch.setenv("PERFD_RUNTIME_DIR", "/srv/pd")
    assert paths.client_runtime_dirs() == [("/srv/pd", "$PERFD_RUNTIME_DIR")]
    monkeypatch.delenv("PERFD_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setattr(paths.os, "geteuid", lambda: 1000)
    assert [d for d, _ in paths.client_runtime_dirs()] == [
        "/run/user/1000/perfd",
        "/tmp/perfd-1000",
        paths.SYSTEM_RUNTIME_DIR,
    ]
    assert paths.default_runtime_dir() == "/run/user/1000/perfd"
    monkeypatch.delenv("XDG_RUNTIME_DIR")  # su -: perfd falls back to /tmp/perfd-UID
    assert paths.default_runtime_dir() == "/tmp/perfd-1000"
    assert paths.client_runtime_dirs()[0][0] == "/tmp/perfd-1000"
    monkeypatch.setattr(paths.os, "geteuid", lambda: 0)
    assert [d for d, _ in paths.client_runtime_dirs()] == [paths.SYSTEM_RUNTIME_DIR]


@pytest.mark.parametrize(
    ("result", "frames", "words"),
    [
        ({"outputs": {"$frame": 0}, "arrays": []}, [b"\0" * 4], "does not describe the reply's 1"),
        (
            {"outputs": {"$frame": 2}, "arrays": [{"dtype": "<f4", "shape": [1]}]},
            [b"\0" * 4],
            "reply names frame 2; it has 1",
        ),
        (
            {"outputs": {"$frame": 0}, "arrays": [{"dtype": "<f4", "shape": [9]}]},
            [b"\0" * 4],
            "reply array 0:",
        ),
    ],
)
def test_a_reply_with_bad_arrays_is_a_bad_reply(
    result: dict[str, object], frames: list[bytes], words: str
) -> None:
    """Reply frames their 'arrays' do not describe raise BadReply in the client's words."""
    from perfctl.client import _outputs

    with pytest.raises(perfctl.BadReply, match=words) as caught:
        _outputs(result, [zmq.Frame(f) for f in frames])
    assert caught.value.code == "bad_reply"


def test_an_array_of_python_objects_is_refused_before_sending() -> None:
    """infer with an object-dtype array raises TypeError naming its dtype; nothing is sent."""
    import numpy as np

    with (
        perfctl.Client(socket="/nonexistent/perfd.sock") as client,
        pytest.raises(TypeError, match="Python objects"),
    ):
        client.infer("m", {"x": np.array([object()])})
