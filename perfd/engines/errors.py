"""Why an engine could not be read: each maps to an engine state (perfd.engines.record)."""

from __future__ import annotations

from perfd.engines.record import DOWN, ERROR, TIMEOUT


class EngineUnavailable(Exception):
    """An engine's endpoint gave nothing usable; ``state`` is the record's state, the message
    the reason shown to the operator (what was wrong, where)."""

    state = ERROR


class EngineDown(EngineUnavailable):
    """Nothing listens (refused, reset before an answer, no such host)."""

    state = DOWN


class EngineTimeout(EngineUnavailable):
    """No complete answer within the read timeout (a hung or slow engine)."""

    state = TIMEOUT


class PayloadError(EngineUnavailable):
    """An answer perfd cannot use: an HTTP error status, a truncated, unparseable or
    wrongly shaped payload. The message names the endpoint and what was wrong."""

    state = ERROR
