"""perfd: the performance daemon for AI inference hosts.

Importing this package must stay cheap: perfctl imports ``perfd.wire.protocol`` through it.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``perfd.embed`` without importing the daemon when perfctl imports this package."""
    if name == "embed":
        from perfd.embedded import embed

        return embed
    raise AttributeError(f"module 'perfd' has no attribute {name!r}")
