"""perfctl: the command-line client of perfd, and its Python client API."""

from perfctl.client import Client, Curve
from perfctl.errors import (
    AccessDenied,
    BadReply,
    Busy,
    CommandFailed,
    ConfigInvalid,
    DaemonNotRunning,
    DaemonTimeout,
    Forbidden,
    InferFailed,
    InvalidArgs,
    KeyRefused,
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
    "Curve",
    "DaemonNotRunning",
    "DaemonTimeout",
    "Forbidden",
    "InferFailed",
    "InvalidArgs",
    "KeyRefused",
    "LoadFailed",
    "NoCapacity",
    "NotFound",
    "PerfctlError",
    "Timeout",
]
