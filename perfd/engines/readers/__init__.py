"""One reader per engine kind: ``read(target, get) -> Reading`` from the engine's own
endpoints.

``get(path)`` fetches one endpoint of the target (a path such as "/metrics") and returns its
body; ``get(path, body)`` POSTs ``body`` (JSON) instead, for the few endpoints that want it
(Ollama's /api/show). It raises perfd.engines.errors' EngineDown, EngineTimeout or
PayloadError (an HTTP error status). A reader raises PayloadError for a payload it cannot use,
naming the endpoint and what was wrong, and never any other exception (fuzzed). Readers are
pure of I/O other than ``get``; each module is imported only when its kind is first read.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from perfd.engines.record import KINDS, Reading, Target


class Get(Protocol):
    def __call__(self, path: str, body: bytes | None = None) -> bytes: ...


class Reader(Protocol):
    def __call__(self, target: Target, get: Get) -> Reading: ...


MODULES = {kind: f"perfd.engines.readers.{kind}" for kind in KINDS}


def reader(kind: str) -> Reader:
    """The ``read`` function of ``kind``'s module; KeyError for an unknown kind."""
    module = importlib.import_module(MODULES[kind])
    read: Reader = module.read
    return read
