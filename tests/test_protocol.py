"""The wire format: requests and replies encode, decode and fail with the right codes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfd.wire import protocol
from perfd.wire.protocol import ProtocolError, Request


def test_request_round_trip() -> None:
    """An encoded request decodes to the same request."""
    request = Request(id="c-1", cmd="status", args={"a": [1, 2]})
    assert protocol.decode_request(protocol.encode_request(request)) == request


def test_args_default_to_empty() -> None:
    """A request without args gets an empty dict."""
    assert protocol.decode_request(b'{"v":1,"id":"x","cmd":"ping"}').args == {}


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        (b"nope", "bad_request", "not valid JSON"),
        (b"\xff", "bad_request", "not valid JSON"),
        (b"[]", "bad_request", "must be a JSON object, got array"),
        (b'{"id":"x","cmd":"ping"}', "bad_request", 'no protocol version "v"'),
        (b'{"v":"1","id":"x","cmd":"ping"}', "bad_request", "must be an integer"),
        (b'{"v":true,"id":"x","cmd":"ping"}', "bad_request", "must be an integer"),
        (b'{"v":9,"id":"x","cmd":"ping"}', "unsupported_version", "speaks v1"),
        (b'{"v":1,"id":"x","cmd":"ping","extra":1}', "bad_request", "unknown request keys"),
        (b'{"v":1,"id":null,"cmd":"ping"}', "bad_request", '"id" must be a string'),
        (b'{"v":1,"id":"x","cmd":""}', "bad_request", "non-empty string"),
        (b'{"v":1,"id":"x","cmd":5}', "bad_request", "got number"),
        (b'{"v":1,"id":"x","cmd":"ping","args":"a"}', "bad_request", '"args" must be an object'),
        (b"[" * 50000, "bad_request", "nested too deeply"),
        (b'{"v":1,"id":"x","cmd":"ping","args":{"a":NaN}}', "bad_request", "NaN is not a JSON"),
        (b'{"v":1,"id":"x","cmd":"ping","args":{"a":[-Infinity]}}', "bad_request", "-Infinity"),
    ],
)
def test_malformed_requests(frame: bytes, code: str, words: str) -> None:
    """Each malformed request raises ProtocolError with a stable code and a clear message."""
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_request(frame)
    assert caught.value.code == code
    assert words in caught.value.message


def test_error_keeps_request_id_when_known() -> None:
    """An error after the id was read carries it, so the client can match the reply."""
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_request(b'{"v":1,"id":"abc","cmd":7}')
    assert caught.value.request_id == "abc"


def test_overlong_id_rejected() -> None:
    """Ids longer than MAX_ID_LENGTH are rejected and not echoed."""
    frame = json.dumps({"v": 1, "id": "x" * 500, "cmd": "ping"}).encode()
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_request(frame)
    assert caught.value.request_id is None


def test_reply_round_trip() -> None:
    """Results and errors decode back into a Reply."""
    ok = protocol.decode_reply(protocol.encode_result("i", {"pong": True}))
    assert ok == protocol.Reply(id="i", ok=True, result={"pong": True})
    err = protocol.decode_reply(protocol.encode_error("i", "busy", "later"))
    assert (err.ok, err.error_code, err.error_message) == (False, "busy", "later")


def test_a_result_json_cannot_carry_is_unencodable() -> None:
    """A result JSON cannot carry raises Unencodable saying why (the server turns it into an
    `internal` reply with the request's id, see tests/test_server.py)."""
    cycle: list[object] = []
    cycle.append(cycle)
    for result in ({"n": 10**5000}, {"c": cycle}, {"k": {(1, 2): 3}}):
        with pytest.raises(protocol.Unencodable, match="cannot be sent as JSON"):
            protocol.encode_result("r", result)


@pytest.mark.parametrize("frame", [b"x", b"{}", b'{"v":1,"ok":true}', b'{"v":1,"ok":false}'])
def test_bad_replies(frame: bytes) -> None:
    """A reply that is not a perfd v1 answer raises ProtocolError."""
    with pytest.raises(ProtocolError):
        protocol.decode_reply(frame)


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(frame: bytes) -> None:
    """Arbitrary bytes either decode or raise ProtocolError, never anything else."""
    try:
        protocol.decode_request(frame)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES


@pytest.mark.slow
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    )
)
def test_any_json_value_is_handled(value: object) -> None:
    """Any JSON document decodes to a Request or a ProtocolError with a known code."""
    try:
        protocol.decode_request(json.dumps(value).encode())
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
