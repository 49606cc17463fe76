"""The perfd control protocol: pure encode/decode, no ZeroMQ, no I/O.

perfctl imports this module, so it may import the standard library only.

A request is one JSON object in one ZeroMQ frame (after the REQ envelope)::

    {"v": 1, "id": "c1f0-1", "cmd": "status", "args": {}}

A reply echoes the id and carries either a result or an error::

    {"v": 1, "id": "c1f0-1", "ok": true, "result": {"version": "0.1.0", "pid": 4242, ...}}
    {"v": 1, "id": "c1f0-1", "ok": false,
     "error": {"code": "forbidden", "message": "'reload' changes perfd and needs the admin
     socket perfd.sock; this is the read-only socket"}}

Error codes are stable; clients switch on ``code`` and show ``message`` to people.
docs/protocol.md describes every command with real examples.
"""

from __future__ import annotations

import json
from typing import Any, Final

VERSION: Final = 1
MAX_ID_LENGTH: Final = 128
DEFAULT_MAX_MESSAGE_BYTES: Final = 1 << 20  # per frame, read-only socket
DEFAULT_MAX_ADMIN_MESSAGE_BYTES: Final = 256 << 20  # per frame, admin socket (infer arrays)

MAIN_SOCKET: Final = "perfd.sock"
READONLY_SOCKET: Final = "perfd-ro.sock"

# Stable error codes.
BAD_REQUEST: Final = "bad_request"
UNKNOWN_COMMAND: Final = "unknown_command"
INVALID_ARGS: Final = "invalid_args"
NOT_FOUND: Final = "not_found"
FORBIDDEN: Final = "forbidden"
BUSY: Final = "busy"
TIMEOUT: Final = "timeout"
UNSUPPORTED_VERSION: Final = "unsupported_version"
INTERNAL: Final = "internal"
CONFIG_INVALID: Final = "config_invalid"
NO_CAPACITY: Final = "no_capacity"  # a model cannot fit even after evicting what can be
LOAD_FAILED: Final = "load_failed"  # the loader raised; the message carries its error
INFER_FAILED: Final = "infer_failed"  # the model raised while running a request
ERROR_CODES: Final = frozenset(
    {
        BAD_REQUEST,
        UNKNOWN_COMMAND,
        INVALID_ARGS,
        NOT_FOUND,
        FORBIDDEN,
        BUSY,
        TIMEOUT,
        UNSUPPORTED_VERSION,
        INTERNAL,
        CONFIG_INVALID,
        NO_CAPACITY,
        LOAD_FAILED,
        INFER_FAILED,
    }
)

# Commands anyone who can reach the read-only socket may run; everything else is admin-only.
READ_ONLY_COMMANDS: Final = frozenset(
    {"ping", "status", "config", "stats", "alerts", "ps", "recommend", "providers", "engines"}
)

_REQUEST_KEYS: Final = frozenset({"v", "id", "cmd", "args"})


class ProtocolError(Exception):
    """A message that does not follow the protocol; ``code`` is the reply's error code."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class _Record:
    """A small value object. Not a dataclass: importing dataclasses (inspect, ast, dis...)
    would add about 8 ms to every perfctl run."""

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # compared by value, holds dicts: unhashable

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Request(_Record):
    __slots__ = ("args", "cmd", "id")

    def __init__(self, id: str, cmd: str, args: dict[str, Any] | None = None) -> None:
        self.id = id
        self.cmd = cmd
        self.args: dict[str, Any] = {} if args is None else args


class Reply(_Record):
    __slots__ = ("error_code", "error_message", "id", "ok", "result")

    def __init__(
        self,
        id: str | None,
        ok: bool,
        result: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        self.id = id
        self.ok = ok
        self.result = result
        self.error_code = error_code
        self.error_message = error_message


def encode_request(request: Request) -> bytes:
    body = {"v": VERSION, "id": request.id, "cmd": request.cmd, "args": request.args}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_request(frame: bytes) -> Request:
    """Parse and validate one request frame; raise ProtocolError saying what is wrong."""
    body = _load(frame, "request", strict=True)
    if not isinstance(body, dict):
        raise ProtocolError(BAD_REQUEST, f"request must be a JSON object, got {_kind(body)}")
    raw_id = body.get("id")
    request_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_ID_LENGTH else None
    if "v" not in body:
        raise ProtocolError(BAD_REQUEST, 'request has no protocol version "v"', request_id)
    version = body["v"]
    if type(version) is not int:
        raise ProtocolError(
            BAD_REQUEST, f'"v" must be an integer, got {_kind(version)}', request_id
        )
    if version != VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported; this perfd speaks v{VERSION}",
            request_id,
        )
    extra = sorted(set(body) - _REQUEST_KEYS)
    if extra:
        raise ProtocolError(
            BAD_REQUEST, f"unknown request keys {extra}; allowed: v, id, cmd, args", request_id
        )
    if not isinstance(raw_id, str):
        raise ProtocolError(BAD_REQUEST, f'"id" must be a string, got {_kind(raw_id)}')
    if request_id is None:
        raise ProtocolError(BAD_REQUEST, f'"id" is longer than {MAX_ID_LENGTH} characters')
    cmd = body.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError(
            BAD_REQUEST, f'"cmd" must be a non-empty string, got {_kind(cmd)}', request_id
        )
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(BAD_REQUEST, f'"args" must be an object, got {_kind(args)}', request_id)
    return Request(id=request_id, cmd=cmd, args=args)


class Unencodable(Exception):
    """A result JSON cannot carry (an int of more than 4300 digits, a cycle, nesting deeper
    than the encoder goes); the message says why."""


def encode_result(request_id: str | None, result: dict[str, Any]) -> bytes:
    """The reply for ``result``; raise Unencodable when JSON cannot carry it."""
    body = {"v": VERSION, "id": request_id, "ok": True, "result": result}
    try:
        return json.dumps(body, separators=(",", ":"), default=str).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise Unencodable(f"the result cannot be sent as JSON: {_short(exc)}") from None


def encode_error(request_id: str | None, code: str, message: str) -> bytes:
    body = {
        "v": VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_reply(frame: bytes) -> Reply:
    """Parse a reply; raise ProtocolError when the daemon's answer is not well-formed."""
    body = _load(frame, "reply")
    if not isinstance(body, dict) or body.get("v") != VERSION:
        raise ProtocolError(BAD_REQUEST, "reply is not a perfd v1 message")
    reply_id = body.get("id")
    if reply_id is not None and not isinstance(reply_id, str):
        raise ProtocolError(BAD_REQUEST, '"id" in reply is not a string')
    if body.get("ok") is True and isinstance(body.get("result"), dict):
        return Reply(id=reply_id, ok=True, result=body["result"])
    error = body.get("error")
    if body.get("ok") is False and isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and isinstance(message, str):
            return Reply(id=reply_id, ok=False, error_code=code, error_message=message)
    raise ProtocolError(BAD_REQUEST, "reply has neither a result object nor an error object")


def _load(frame: bytes, what: str, *, strict: bool = False) -> Any:
    """JSON from ``frame``; ``strict`` refuses NaN and Infinity, which Python's json reads and
    writes but JSON has not (other languages' clients could not send them)."""
    try:
        return json.loads(frame, parse_constant=_not_json if strict else None)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_REQUEST, f"{what} is not valid JSON: {_short(exc)}") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send null or a string")


def _kind(value: object) -> str:
    """A JSON type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _short(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:120]
