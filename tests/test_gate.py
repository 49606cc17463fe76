"""The gate between a request and its command, as pure logic: fake frames, an injected clock.

tests/test_access.py and tests/test_remote.py drive the same checks through a real perfd.
"""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest
import zmq

from perfd import log
from perfd import server as server_package
from perfd.server.access import AdminPolicy, Peer
from perfd.server.gate import ADMIN, READONLY, REMOTE, Gate
from perfd.wire import keys, protocol
from perfd.wire.protocol import ProtocolError

NOBODY = 65534


class Frame:
    """A received frame's properties, as zmq.Frame.get gives them."""

    def __init__(self, **properties: str) -> None:
        self.properties = {k.replace("_", "-"): v for k, v in properties.items()}

    def get(self, name: str) -> str:
        if name not in self.properties:
            raise zmq.ZMQError(zmq.EINVAL)
        return self.properties[name]


def _events(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _gate(now: list[float]) -> Gate:
    gate = Gate(clock=lambda: now[0])
    gate.policy = AdminPolicy(service_uid=4242)
    admin, reader = keys.generate().public.decode(), keys.generate().public.decode()
    gate.remote_keys = {
        admin: keys.AuthorizedKey(admin, "admin", "ops"),
        reader: keys.AuthorizedKey(reader, "read", "grafana"),
    }
    return gate


def _key(gate: Gate, role: str) -> str:
    return next(k for k, v in gate.remote_keys.items() if v.role == role)


def test_ipc_sockets_say_whether_they_take_admin_commands() -> None:
    """The read-only socket refuses admin commands; the admin socket leaves it to authorize."""
    gate = _gate([0.0])
    frame = Frame(Peer_Address="localhost:0:0:1")
    assert gate.caller(ADMIN, frame, "r") == (None, None)
    peer, refused = gate.caller(READONLY, frame, "r")
    assert peer is None
    assert refused == "needs the admin socket perfd.sock; this is the read-only socket"


def test_remote_callers_are_known_by_key() -> None:
    """A tcp message's User-Id names its key: admin keys may, read keys may not, and a key
    removed since the connection was made is refused outright."""
    gate = _gate([0.0])
    admin = Frame(User_Id=_key(gate, "admin"), Peer_Address="10.0.0.9")
    assert gate.caller(REMOTE, admin, "r") == (
        Peer(key_name="ops", address="10.0.0.9"),
        None,
    )
    reader = Frame(User_Id=_key(gate, "read"), Peer_Address="10.0.0.8")
    _, refused = gate.caller(REMOTE, reader, "r")
    assert refused == "needs an admin key; key 'grafana' is read-only"
    with pytest.raises(ProtocolError, match="no longer in perfd's authorized_keys") as info:
        gate.caller(REMOTE, Frame(User_Id="x" * 40), "r")
    assert (info.value.code, info.value.request_id) == (protocol.FORBIDDEN, "r")


def test_admin_commands_are_logged_and_refusals_rate_limited() -> None:
    """An allowed admin command logs command.admin with the caller; a refused one raises
    forbidden and logs access.denied once a minute per uid, counting the ones in between."""
    now = [0.0]
    gate = _gate(now)
    out = io.StringIO()
    log.configure(stream=out)
    reload = protocol.Request("r1", "reload")
    gate.authorize(reload, ADMIN, Frame(Peer_Address="localhost:0:0:77"), audit="info", peer=None)
    nobody = Frame(Peer_Address=f"localhost:{NOBODY}:{NOBODY}:88")
    load = protocol.Request("r2", "load", {"model": "m"})
    for _ in range(3):
        with pytest.raises(ProtocolError, match="nobody may not run admin commands"):
            gate.authorize(load, ADMIN, nobody, audit="info", peer=None)
    now[0] = 61.0
    with pytest.raises(ProtocolError):
        gate.authorize(load, ADMIN, nobody, audit="info", peer=None)
    allowed, first, later = _events(out)
    assert allowed["event"] == "command.admin"
    assert (allowed["cmd"], allowed["uid"], allowed["pid"]) == ("reload", 0, 77)
    assert (first["event"], first["uid"], first["pid"], first["model"]) == (
        "access.denied",
        NOBODY,
        88,
        "m",
    )
    assert (first["suppressed_since_last"], later["suppressed_since_last"]) == (0, 2)


def test_infer_builds_no_event_below_the_log_level() -> None:
    """An admin command audited at debug (infer) logs nothing at info, and still passes."""
    gate = _gate([0.0])
    out = io.StringIO()
    log.configure(stream=out)
    infer = protocol.Request("r", "infer", {"model": "m"})
    gate.authorize(infer, ADMIN, Frame(Peer_Address="localhost:0:0:1"), audit="debug", peer=None)
    assert out.getvalue() == ""


def test_the_curve_callback_lets_in_listed_keys_only() -> None:
    """zmq.auth's callback: listed keys pass; a stranger is refused and logged (once a
    minute for every stranger together)."""
    gate = _gate([0.0])
    out = io.StringIO()
    log.configure(stream=out)
    assert gate.callback("*", _key(gate, "read").encode())
    strangers = [keys.generate().public for _ in range(3)]
    assert not any(gate.callback("*", key) for key in strangers)
    (denied,) = _events(out)
    assert denied["key"] == strangers[0].decode()


def test_refusals_of_read_only_callers_are_logged_per_key_and_uid() -> None:
    """An admin command from a read key or on perfd-ro.sock: forbidden, and access.denied is
    logged once a minute per key name and per uid (one does not hide the other)."""
    now = [0.0]
    gate = _gate(now)
    out = io.StringIO()
    log.configure(stream=out)
    reload = protocol.Request("r1", "reload")
    reader = Frame(User_Id=_key(gate, "read"), Peer_Address="10.0.0.8")
    peer, reason = gate.caller(REMOTE, reader, "r1")
    assert reason is not None
    for _ in range(2):
        error = gate.refuse(reload, REMOTE, reader, peer, reason)
        assert (error.code, error.request_id, error.message) == (protocol.FORBIDDEN, "r1", reason)
    local = Frame(Peer_Address=f"localhost:{NOBODY}:{NOBODY}:99")
    gate.refuse(reload, READONLY, local, None, "on the read-only socket")
    remote, ipc = _events(out)
    assert (remote["event"], remote["cmd"], remote["key"], remote["address"]) == (
        "access.denied",
        "reload",
        "grafana",
        "10.0.0.8",
    )
    assert remote["reason"] == reason
    assert (ipc["uid"], ipc["pid"], ipc["socket"]) == (NOBODY, 99, READONLY)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, function-level imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_access_decides_and_the_gate_applies_it_to_messages() -> None:
    """The split of perfd.server: access.py (who a sender is, the admin policy) knows no
    socket, no wire format and no log; gate.py, which applies it per message, does the logging."""
    server = Path(server_package.__file__).parent
    access, gate = _imports(server / "access.py"), _imports(server / "gate.py")
    forbidden = ("zmq", "perfd.log", "perfd.wire", "perfd.server.gate", "perfd.server.loop")
    assert not {name for name in access if name.startswith(forbidden)}
    assert {"zmq", "perfd.log", "perfd.server.access"} <= gate
