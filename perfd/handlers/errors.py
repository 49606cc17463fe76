"""The one table from domain errors to wire error codes (docs/protocol.md, "Errors").

The parts below the handlers raise exceptions that carry their facts as attributes and know
no wire code: the recommender's RecommendError, the cache's errors (perfd.cache.errors).
``to_wire`` turns one into the CommandError the reply carries; ``run`` wraps a handler so
every command maps them the same way. Provider errors (perfd.net.provider.ProviderError)
never reach a handler: the openai loader turns them into LoaderError, which load and infer
report as load_failed and infer_failed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

from perfd.cache import errors as cache
from perfd.errors import CommandError
from perfd.recommend.request import RecommendError
from perfd.wire import protocol

# Exception class -> wire code; a subclass takes its nearest listed base's code.
CODES: Final[dict[type[BaseException], str]] = {
    RecommendError: protocol.INVALID_ARGS,
    cache.UnknownModel: protocol.NOT_FOUND,
    cache.DefinedInConfig: protocol.INVALID_ARGS,
    cache.LoaderUnavailable: protocol.INVALID_ARGS,
    cache.NoCapacity: protocol.NO_CAPACITY,
    cache.TooManyModels: protocol.NO_CAPACITY,
    cache.LoadOverdue: protocol.BUSY,
    cache.StillLoading: protocol.TIMEOUT,
    cache.LoadTimeout: protocol.TIMEOUT,
    cache.LoadFailed: protocol.LOAD_FAILED,
    cache.NotReady: protocol.NOT_FOUND,
    cache.NotLoaded: protocol.NOT_FOUND,
    cache.InUse: protocol.BUSY,
    cache.Pinned: protocol.BUSY,
}


def code_for(exc: BaseException) -> str | None:
    """The wire code of ``exc``'s class or nearest listed base; None when it is not a domain
    error (a CommandError carries its own; anything else is perfd's bug: ``internal``)."""
    return next((CODES[cls] for cls in type(exc).__mro__ if cls in CODES), None)


def to_wire(exc: BaseException) -> CommandError:
    """The CommandError for a domain error (its message is the error's own); ValueError
    for an exception the table does not list."""
    if isinstance(exc, CommandError):
        return exc
    code = code_for(exc)
    if code is None:
        raise ValueError(f"no wire code for {type(exc).__name__}: add it to CODES")
    return CommandError(code, str(exc))


def run(handler: Callable[..., Any], view: Any) -> Callable[..., Any]:
    """``handler`` bound to ``view``, its domain errors raised as CommandError."""

    def call(*args: Any) -> Any:
        try:
            return handler(view, *args)
        except CommandError:
            raise
        except Exception as exc:
            if code_for(exc) is None:
                raise
            raise to_wire(exc) from None

    return functools.update_wrapper(call, handler)  # __wrapped__: the handler itself
