"""The client's exceptions: each says what went wrong and, in ``hint``, what to try (a
default per class; perfctl.hints picks one that fits what failed).

PerfctlError
├── DaemonNotRunning    no socket file: perfd is not running     (perfctl exit 3)
│   └── DaemonTimeout   the socket exists but nobody answered     (perfctl exit 3)
├── AccessDenied        the socket exists but we may not use it  (perfctl exit 4)
│   └── KeyRefused      perfd's tcp endpoint refused our CURVE key (perfctl exit 4)
└── CommandFailed       perfd answered with an error; .code      (perfctl exit 1)
    ├── Forbidden, InvalidArgs, NotFound, Busy, Timeout, ConfigInvalid
    ├── NoCapacity      a model cannot fit in its device's budget
    ├── LoadFailed      the model's loader raised
    ├── InferFailed     the model raised, or a remote model's provider failed
    └── BadReply        the answer was not a well-formed perfd reply
UsageError              a command-line mistake argparse cannot see (perfctl exit 2)
"""

from __future__ import annotations

from typing import Final

from perfctl import hints
from perfd.wire import protocol

BAD_REPLY: Final = "bad_reply"  # client-side code: perfd's answer was not a well-formed reply


class UsageError(Exception):
    """A command-line mistake found after parsing (a remote option that cannot work, recommend
    without hardware, an unreadable --weights file): perfctl prints it with the usage line and
    exits 2. Not a PerfctlError: perfd was not asked."""


class PerfctlError(Exception):
    """Base of the client's errors; ``hint`` says what to try."""

    hint = ""


class DaemonNotRunning(PerfctlError):
    hint = "is perfd running? systemctl status perfd"


class DaemonTimeout(DaemonNotRunning):
    hint = "perfd is not answering; check it with systemctl status perfd and journalctl -u perfd"


class AccessDenied(PerfctlError):
    """The socket at ``path`` (when known) exists but this user may not open it; the hint
    names the group that the socket file really has."""

    hint = (
        "ask an admin to add you to the socket's group (ls -l shows it; usermod -aG GROUP "
        "$USER), then log in again"
    )

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.hint = hints.for_socket(path) or type(self).hint


class KeyRefused(AccessDenied):
    """perfd's tcp endpoint refused this client's key."""

    hint = (
        "send the public half of your key (the .key file) to perfd's admin, who adds it to "
        "[remote] authorized_keys and reloads perfd"
    )


class CommandFailed(PerfctlError):
    """perfd answered with an error; ``code`` is the protocol's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        found = hints.for_failure(code, message)
        self.hint = type(self).hint if found is None else found


class Forbidden(CommandFailed):
    hint = AccessDenied.hint


class InvalidArgs(CommandFailed):
    pass


class NotFound(CommandFailed):
    pass


class Busy(CommandFailed):
    hint = "perfd is busy; retry shortly"


class Timeout(CommandFailed):
    pass


class ConfigInvalid(CommandFailed):
    hint = "fix the file (perfd --check-config PATH) and reload again"


class NoCapacity(CommandFailed):
    """The model does not fit its device's budget even after evicting what can be evicted."""

    hint = "raise [cache] budgets, unpin or evict models"


class LoadFailed(CommandFailed):
    """The model's loader raised; the message carries its error."""

    hint = "check the model's target/path and perfd's log (journalctl -u perfd)"


class InferFailed(CommandFailed):
    """The model raised while running the request; the message carries its error."""

    hint = "check the inputs the model expects; for a remote model, perfctl providers"


class BadReply(CommandFailed):
    pass


_BY_CODE: dict[str, type[CommandFailed]] = {
    protocol.FORBIDDEN: Forbidden,
    protocol.INVALID_ARGS: InvalidArgs,
    protocol.NOT_FOUND: NotFound,
    protocol.BUSY: Busy,
    protocol.TIMEOUT: Timeout,
    protocol.CONFIG_INVALID: ConfigInvalid,
    protocol.NO_CAPACITY: NoCapacity,
    protocol.LOAD_FAILED: LoadFailed,
    protocol.INFER_FAILED: InferFailed,
}


def for_code(code: str, message: str) -> CommandFailed:
    """The exception for an error reply's stable ``code``."""
    return _BY_CODE.get(code, CommandFailed)(code, message)
