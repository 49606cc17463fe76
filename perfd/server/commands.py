"""A command's description (handler, who may run it, its arguments) and the checks a request
passes before its handler runs: pure, no ZeroMQ (perfd.server.loop dispatches)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from perfd.wire import protocol
from perfd.wire.protocol import ProtocolError
from perfd.wire.values import MAX_FRAMES


@dataclass(frozen=True)
class Command:
    """A command: its handler, who may run it, where it runs and which args it takes.

    ``args`` maps each accepted argument to the Python types allowed for it.
    """

    name: str
    handler: Callable[..., Any]  # (args) -> result; (args, frames) when ``frames``
    admin: bool = False
    slow: bool = False
    args: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    frames: bool = False  # accepts raw frames after the JSON one (perfd.wire.arrays)
    timeout: Callable[[], float] | None = None  # instead of the server's command_timeout
    audit: str = "info"  # the level at which an admin command's caller is logged


@dataclass(frozen=True)
class WithFrames:
    """A result whose reply carries raw frames after the JSON one."""

    result: dict[str, Any]
    frames: list[bytes | memoryview]  # perfd.wire.arrays.to_frames


def command_for(
    commands: Mapping[str, Command],
    request: protocol.Request,
    refused: str | None,
    refuse: Callable[[str], ProtocolError] | None = None,
) -> Command:
    """The request's command with its arguments checked; ProtocolError saying what is wrong.

    An admin command from a caller ``refused`` admin rights raises ``refuse(reason)`` (the
    gate logs the refusal: docs/security.md), or a plain forbidden error without it."""
    command = commands.get(request.cmd)
    if command is None:
        known = ", ".join(sorted(commands))
        raise ProtocolError(
            protocol.UNKNOWN_COMMAND,
            f"unknown command '{request.cmd[:64]}'; known: {known}",
            request.id,
        )
    if refused is not None and command.admin:
        reason = f"'{command.name}' changes perfd and {refused}"
        if refuse is not None:
            raise refuse(reason)
        raise ProtocolError(protocol.FORBIDDEN, reason, request.id)
    unknown = sorted(set(request.args) - set(command.args))
    if unknown:
        allowed = ", ".join(sorted(command.args)) or "none"
        raise ProtocolError(
            protocol.INVALID_ARGS,
            f"'{command.name}' takes no argument {unknown[0][:64]!r}; allowed: {allowed}",
            request.id,
        )
    missing = sorted(command.required - set(request.args))
    if missing:
        raise ProtocolError(
            protocol.INVALID_ARGS, f"'{command.name}' needs argument '{missing[0]}'", request.id
        )
    for name, value in request.args.items():
        types = command.args[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join(t.__name__ for t in types)
            raise ProtocolError(
                protocol.INVALID_ARGS,
                f"'{command.name}' argument '{name}' must be {wanted}",
                request.id,
            )
    return command


def runner(
    command: Command, request: protocol.Request, extra: list[bytes]
) -> Callable[[dict[str, Any]], Any]:
    """The handler call for this request, with its extra frames when it takes them."""
    if not extra:
        return (lambda args: command.handler(args, [])) if command.frames else command.handler
    if not command.frames:
        raise ProtocolError(
            protocol.BAD_REQUEST,
            f"'{command.name}' takes 1 message frame after the envelope, got {1 + len(extra)}",
            request.id,
        )
    if len(extra) > MAX_FRAMES:
        raise ProtocolError(protocol.BAD_REQUEST, f"at most {MAX_FRAMES} array frames", request.id)
    return lambda args: command.handler(args, extra)


def id_of(body: list[bytes]) -> str | None:
    """The request's id, when its frame reads as a request at all (for a crash's reply)."""
    try:
        return protocol.decode_request(body[0]).id if body else None
    except ProtocolError:
        return None


def split(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split [identity, (b"",) body...] into the reply envelope and the body frames.

    REQ peers put an empty delimiter after the identity; DEALER peers may not.
    """
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]
