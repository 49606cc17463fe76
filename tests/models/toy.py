"""Deterministic toy models for python-loader targets: ``tests.models.toy:make_echo`` and so on.

The cache's tests use them too: Ballast holds real memory (RSS goes up on load and back down
on close), ``make_blocking`` parks a load until the test releases it (single flight, timeouts),
``make_failing`` fails a load. Call ``reset()`` between tests (an autouse fixture should).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

MB = 1024 * 1024
PAGE = 4096

# make_blocking: ENTERED is set when a load starts, the load returns once RELEASE is set.
RELEASE = threading.Event()
ENTERED = threading.Event()
_calls_lock = threading.Lock()
_calls = 0


def reset() -> None:
    """Forget every blocking load: clear both events and the call count."""
    global _calls
    RELEASE.clear()
    ENTERED.clear()
    with _calls_lock:
        _calls = 0


def blocking_calls() -> int:
    """How many times ``make_blocking`` has been called since ``reset()``."""
    with _calls_lock:
        return _calls


class Echo:
    """Returns its inputs unchanged; ``options`` are the factory's keyword arguments."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def __call__(self, inputs: Any, **options: Any) -> Any:
        return inputs


def make_echo(**options: Any) -> Echo:
    """A model that echoes its inputs and remembers the options it was made with."""
    return Echo(options)


class Upper:
    """Upper-cases a string (or each string of a list); ``suffix`` is a request option."""

    def __call__(self, inputs: str | list[str], suffix: str = "") -> str | list[str]:
        if isinstance(inputs, str):
            return inputs.upper() + suffix
        return [text.upper() + suffix for text in inputs]


def make_upper() -> Upper:
    return Upper()


class Embedder:
    """``encode(text)`` is a list of ``dim`` floats in [0, 1) derived from the text's sha256."""

    def __init__(self, dim: int = 4) -> None:
        if not 1 <= dim <= 32:
            raise ValueError(f"dim must be 1..32, got {dim}")
        self.dim = dim

    def encode(self, inputs: str | list[str], normalize: bool = False) -> Any:
        if isinstance(inputs, list):
            return [self.encode(text, normalize) for text in inputs]
        digest = hashlib.sha256(inputs.encode()).digest()
        vector = [byte / 256 for byte in digest[: self.dim]]
        if normalize:
            norm = sum(x * x for x in vector) ** 0.5 or 1.0
            vector = [x / norm for x in vector]
        return vector


class Ballast:
    """Holds ``size_mb`` MB of touched memory until ``close()``; a request returns its size."""

    def __init__(self, size_mb: int) -> None:
        self.size_mb = size_mb
        self.buffer = bytearray(size_mb * MB)
        # bytearray's zeroed pages are not resident until written: touch one byte per page.
        self.buffer[::PAGE] = b"\x01" * len(range(0, len(self.buffer), PAGE))
        self.closed = False

    def __call__(self, inputs: Any) -> dict[str, Any]:
        return {"size_mb": self.size_mb, "inputs": inputs}

    def close(self) -> None:
        self.buffer = bytearray()
        self.closed = True


def make_ballast(size_mb: int = 16) -> Ballast:
    """A model that really takes ``size_mb`` MB of RSS and gives it back on close."""
    return Ballast(size_mb)


class ToyLoadError(RuntimeError):
    """What ``make_failing`` raises."""


def make_failing(message: str = "toy model refuses to load") -> Any:
    """A factory that always raises ToyLoadError(message)."""
    raise ToyLoadError(message)


def make_blocking(timeout: float = 30.0, **options: Any) -> Echo:
    """Set ENTERED, wait for RELEASE (at most ``timeout`` seconds), then return an Echo.

    If nobody releases it the load fails instead of hanging the test run.
    """
    global _calls
    with _calls_lock:
        _calls += 1
    ENTERED.set()
    if not RELEASE.wait(timeout):
        raise ToyLoadError(f"make_blocking was not released within {timeout}s")
    return Echo(options)


class Doubler:
    """Returns ``2 * inputs`` as a float32 numpy array."""

    def __call__(self, inputs: Any) -> Any:
        import numpy as np

        return np.asarray(inputs, dtype=np.float32) * 2


def make_doubler() -> Doubler:
    return Doubler()


def wait_for_file(path: str, timeout: float, what: str) -> None:
    """Return once ``path`` exists; ToyLoadError after ``timeout`` seconds (never hangs).

    Waits with Event.wait, not time.sleep: under libfaketime with FAKETIME_DONT_FAKE_MONOTONIC
    Python 3.11's time.sleep fails with EINVAL (wolfcw/libfaketime#426).
    """
    import os
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise ToyLoadError(f"{what}: {path} did not appear within {timeout}s")
        threading.Event().wait(0.01)


def _touch(path: str) -> None:
    if path:
        with open(path, "a"):
            pass


class Gated:
    """Echoes its inputs after taking a while, controlled from another process by files.

    Request options: ``seconds`` to sleep, ``gate`` a file to wait for (at most ``timeout``
    seconds), ``entered`` a file created when the request starts and ``done`` one created when
    it has finished, so a test outside perfd knows where the request is.
    """

    def __call__(
        self,
        inputs: Any,
        *,
        seconds: float = 0.0,
        gate: str = "",
        entered: str = "",
        done: str = "",
        timeout: float = 30.0,
    ) -> Any:
        _touch(entered)
        if gate:
            wait_for_file(gate, timeout, "Gated request")
        if seconds:
            threading.Event().wait(seconds)  # not time.sleep: see wait_for_file
        _touch(done)
        return inputs


def make_gated(
    *, gate: str = "", entered: str = "", done: str = "", timeout: float = 30.0
) -> Gated:
    """A Gated model whose load, too, can be held on files: it creates ``entered``, waits for
    ``gate`` (ToyLoadError after ``timeout`` seconds), then creates ``done``. Works inside a
    perfd subprocess, where make_blocking's in-process Event cannot be reached."""
    _touch(entered)
    if gate:
        wait_for_file(gate, timeout, "make_gated load")
    _touch(done)
    return Gated()


_LEAKED: list[bytearray] = []  # what Leaky models keep after close(): a leak, on purpose


class Leaky(Ballast):
    """A Ballast whose close() hides its memory in a module-level list instead of freeing it."""

    def close(self) -> None:
        _LEAKED.append(self.buffer)
        self.buffer = bytearray()
        self.closed = True


def make_leaky(size_mb: int = 96) -> Leaky:
    """A model that takes ``size_mb`` MB of RSS and keeps it after unload (a leaking model)."""
    return Leaky(size_mb)
