"""Durations and sizes: parsing what people write in config files, and writing them back.

The text forms are a number (digits, optionally a point and more digits) and a unit of ASCII
letters, with whitespace around either. They are read by a single pass over at most
``MAX_TEXT`` characters: request arguments (``recommend``'s ``memory``, ``kv_budget`` and
``gpu``) come through here, so longer text is refused before it is read at all.
"""

from __future__ import annotations

import math
from typing import Final

_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}
# The longest size or duration text read: "1099511627776 bytes" is 19 characters.
MAX_TEXT: Final = 64
_DIGITS: Final = frozenset("0123456789")
_LETTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class TextTooLong(ValueError):
    """A size or duration text longer than ``MAX_TEXT``: refused unread.

    ``length`` is how long it was and ``limit`` the most allowed; the message quotes neither
    the text nor any part of it.
    """

    def __init__(self, kind: str, length: int) -> None:
        super().__init__(
            f'a {kind} is at most {MAX_TEXT} characters long (like "24GiB" or "5s"), not {length}'
        )
        self.length = length
        self.limit = MAX_TEXT


def _run(text: str, start: int, chars: frozenset[str]) -> int:
    """The index after the run of ``chars`` that begins at ``start``."""
    end = start
    while end < len(text) and text[end] in chars:
        end += 1
    return end


def number_unit(text: str, kind: str = "value") -> tuple[str, str] | None:
    """(number, unit) of "1.5 GiB", "30s", " 4 "; None when ``text`` is not of that form.

    In one pass: whitespace (``str.isspace``), ASCII digits with an optional point and more
    digits, whitespace, ASCII letters, whitespace. TextTooLong past MAX_TEXT characters.
    """
    if len(text) > MAX_TEXT:
        raise TextTooLong(kind, len(text))
    text = text.strip()  # str.strip() and the old regex's \s agree on what is whitespace
    end = _run(text, 0, _DIGITS)
    if end == 0:
        return None
    if end < len(text) and text[end] == ".":
        after = _run(text, end + 1, _DIGITS)
        if after == end + 1:
            return None
        end = after
    number = text[:end]
    rest = text[end:].lstrip()
    unit_end = _run(rest, 0, _LETTERS)
    if unit_end != len(rest):
        return None
    return number, rest


def parse_duration(value: object) -> float:
    """Seconds from 30, 1.5, "500ms", "5s", "10m", "1h" or "1d"; ValueError otherwise
    (TextTooLong, a ValueError, for text over MAX_TEXT characters)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite duration: {value!r}")
        return float(value)
    if isinstance(value, str):
        parts = number_unit(value, "duration")
        if parts is not None and parts[1].lower() in _DURATION_UNITS:
            return float(parts[0]) * _DURATION_UNITS[parts[1].lower()]
    raise ValueError(f"not a duration: {value!r}")


def parse_size(value: object) -> int:
    """Bytes from 1048576, "512KiB", "1MiB", "2GB", "4G" (K/M/G/T are binary); ValueError else
    (TextTooLong, a ValueError, for text over MAX_TEXT characters)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        parts = number_unit(value, "size")
        if parts is not None and parts[1].lower() in _SIZE_UNITS:
            return int(float(parts[0]) * _SIZE_UNITS[parts[1].lower()])
    raise ValueError(f"not a size: {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest exact form: "500ms", "5s", "10m", "4h", "1d"; else seconds like "1.5s"."""
    if seconds == 0:
        return "0s"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    milliseconds = seconds * 1000
    if seconds < 1 and abs(milliseconds - round(milliseconds)) < 1e-6:
        return f"{round(milliseconds)}ms"
    return f"{seconds:g}s"


def format_size(size: float) -> str:
    """The largest exact binary unit: "1GiB", "512KiB"; else bytes."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{int(size // factor)}{unit}"
    return f"{int(size)} bytes"
