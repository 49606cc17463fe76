"""The cache's refusals (perfd.cache.errors) as wire error codes: one table, used at the edge.

The cache raises its own exceptions with their facts; a handler that calls the cache lets
``wire_errors`` turn them into a CommandError with the table's code and the same message, so
the reply is what the cache's message always said.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final, ParamSpec, TypeVar

from perfd.cache import errors
from perfd.errors import CommandError
from perfd.wire import protocol

CACHE_CODES: Final[dict[type[errors.CacheError], str]] = {
    errors.UnknownModel: protocol.NOT_FOUND,
    errors.DefinedInConfig: protocol.INVALID_ARGS,
    errors.LoaderUnavailable: protocol.INVALID_ARGS,
    errors.NoCapacity: protocol.NO_CAPACITY,
    errors.TooManyModels: protocol.NO_CAPACITY,
    errors.LoadOverdue: protocol.BUSY,
    errors.StillLoading: protocol.TIMEOUT,
    errors.LoadTimeout: protocol.TIMEOUT,
    errors.LoadFailed: protocol.LOAD_FAILED,
    errors.NotReady: protocol.NOT_FOUND,
    errors.NotLoaded: protocol.NOT_FOUND,
    errors.InUse: protocol.BUSY,
    errors.Pinned: protocol.BUSY,
}


def code_for(exc: errors.CacheError) -> str:
    """The wire code of a cache error: its class's, else its nearest base's in the table."""
    for cls in type(exc).__mro__:
        if issubclass(cls, errors.CacheError) and cls in CACHE_CODES:
            return CACHE_CODES[cls]
    return protocol.INTERNAL


def to_command_error(exc: errors.CacheError) -> CommandError:
    """The CommandError the server replies with for ``exc``: its code, the same message."""
    return CommandError(code_for(exc), exc.message)


P = ParamSpec("P")
R = TypeVar("R")


def wire_errors(handler: Callable[P, R]) -> Callable[P, R]:
    """``handler`` with the cache's exceptions turned into CommandErrors."""

    @functools.wraps(handler)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return handler(*args, **kwargs)
        except errors.CacheError as exc:
            raise to_command_error(exc) from None

    return wrapped
