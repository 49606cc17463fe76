"""perfctl: the command-line client of perfd, and its Python client API."""

from perfctl.client import (
    AccessDenied,
    BadReply,
    Busy,
    Client,
    CommandFailed,
    ConfigInvalid,
    DaemonNotRunning,
    DaemonTimeout,
    Forbidden,
    InferFailed,
    InvalidArgs,
    LoadFailed,
    NoCapacity,
    NotFound,
    PerfctlError,
    Timeout,
)

__all__ = [
    "AccessDenied",
    "BadReply",
    "Busy",
    "Client",
    "CommandFailed",
    "ConfigInvalid",
    "DaemonNotRunning",
    "DaemonTimeout",
    "Forbidden",
    "InferFailed",
    "InvalidArgs",
    "LoadFailed",
    "NoCapacity",
    "NotFound",
    "PerfctlError",
    "Timeout",
]
