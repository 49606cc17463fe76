"""Values both sides of the wire agree on: what perfd sends and perfctl reads.

Pure constants, standard library only: perfd (config, cache, metrics) and perfctl (its
formatters) import them from here, so a value is spelt once.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

# keep_alive of a model that never expires: config's -1 or "forever", ps's keep_alive_s.
FOREVER: Final = -1.0

# A model's states in the cache (ps's "state").
LOADING: Final = "loading"
READY: Final = "ready"
UNLOADING: Final = "unloading"
MODEL_STATES: Final = (LOADING, READY, UNLOADING)

# Why a model left the cache (stats' cache.evictions keys, perfd_cache_evictions' reason label).
EVICTION_REASONS: Final = ("lru", "pressure", "ttl", "manual", "budget")

# Limits of the wire.
MAX_FRAMES: Final = 64  # raw array frames after a request's JSON frame


def rfc3339(wall: float) -> str:
    """A wall-clock time as every reply and log field writes it: RFC 3339, UTC, seconds."""
    stamp = dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")
