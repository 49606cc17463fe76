"""perfd's exceptions. Each keeps its facts as attributes and says what to do.

PerfdError
├── ConfigError        a config file or value is wrong (file, key, value, allowed)
├── StartupError       perfd cannot start: runtime dir unusable, another perfd running
│   └── AlreadyRunning
├── CommandError       a command failed; carries a protocol error code for the reply
└── CacheError         the model cache refuses, with its facts (perfd.cache.errors); the
                       handlers map each kind to a code (perfd.handlers.errors)
"""

from __future__ import annotations

from typing import Any


class PerfdError(Exception):
    """Base of every error perfd raises on purpose."""


class ConfigError(PerfdError):
    """A config file that cannot be used.

    The message names the file, the key, the bad value and what is allowed.
    """

    def __init__(
        self,
        path: str | None,
        key: str | None,
        problem: str,
        *,
        value: Any = None,
        allowed: str | None = None,
    ) -> None:
        self.path = path
        self.key = key
        self.value = value
        self.allowed = allowed
        self.problem = problem
        where = path or "<defaults>"
        if key is not None:
            where += f": {key}"
        text = f"{where}: {problem}"
        if allowed is not None:
            text += f"; allowed: {allowed}"
        super().__init__(text)


class StartupError(PerfdError):
    """perfd cannot start; the message says why and what to do."""


class AlreadyRunning(StartupError):
    """Another perfd already answers on our socket."""


class CommandError(PerfdError):
    """A command failed in a way the client should see; ``code`` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
