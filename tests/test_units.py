"""perfd.wire.units: the linear size and duration parser, its length bound, and the formatters."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from perfd.wire import units
from perfd.wire.units import MAX_TEXT, TextTooLong, number_unit, parse_duration, parse_size

# The parser perfd used before: quadratic on "1" + spaces + "!" (issue 12, finding 1). The
# new one must accept exactly what it accepted, with the same number and unit.
_OLD = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")

# Text close to the accepted forms, so most examples get past the first character.
_NEAR = st.text(
    alphabet=st.sampled_from(
        list("0123456789.. \t\n\r\x0b\x0c\x1c\x85\xa0\u2003\u3000kKmMgGiIbBsShHdD!x-+e٣")
    ),
    max_size=MAX_TEXT,
)


def _old(text: str) -> tuple[str, str] | None:
    match = _OLD.match(text)
    return None if match is None else (match.group(1), match.group(2))


@pytest.mark.slow
@settings(max_examples=3000, derandomize=True)
@given(st.one_of(_NEAR, st.text(max_size=MAX_TEXT)))
@example("1" + " " * (MAX_TEXT - 2) + "!")
@example("5s\n")
@example(" 1.5 GiB ")
@example("1.")
@example(".5")
@example("1 . 5")
@example("\u0661")  # an Arabic-Indic digit: not [0-9]
def test_same_answers_as_the_old_regex(text: str) -> None:
    """Up to MAX_TEXT characters, (number, unit) is what the old regex's groups were."""
    assert number_unit(text) == _old(text)


@settings(max_examples=200, derandomize=True)
@given(st.text(min_size=MAX_TEXT + 1, max_size=4 * MAX_TEXT))
def test_longer_text_is_refused(text: str) -> None:
    """Past MAX_TEXT characters every text is refused, whatever it holds."""
    with pytest.raises(TextTooLong):
        number_unit(text)
    with pytest.raises(ValueError, match=f"at most {MAX_TEXT} characters"):
        parse_size(text)
    with pytest.raises(ValueError, match=f"at most {MAX_TEXT} characters"):
        parse_duration(text)


def test_the_attack_text_is_refused_at_once_without_echo() -> None:
    """ "1" + 120000 spaces + "!" is refused at once; the message holds no part of the text."""
    attack = "1" + " " * 120_000 + "!"
    started = time.perf_counter()
    with pytest.raises(TextTooLong) as caught:
        parse_size(attack)
    assert time.perf_counter() - started < 1.0  # the old regex took 35 s on this
    assert caught.value.length == 120_002
    assert caught.value.limit == MAX_TEXT
    assert str(caught.value) == (
        f'a size is at most {MAX_TEXT} characters long (like "24GiB" or "5s"), not 120002'
    )
    with pytest.raises(TextTooLong, match="a duration is at most"):
        parse_duration(attack)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("512KiB", 512 << 10),
        (" 1 MiB ", 1 << 20),
        ("2GB", 2 * 10**9),
        ("4G", 4 << 30),
        ("1.5k", 1536),
        ("9" * 40 + "TiB", int(float("9" * 40) * (1 << 40))),
    ],
)
def test_sizes(text: str, size: int) -> None:
    """Bytes, binary and decimal units, whitespace around either, fractions."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1 GiBs", "-1", "1e9", "1.", "GiB", "1 2"])
def test_not_sizes(text: str) -> None:
    """Anything else is a ValueError that quotes the (short) text."""
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_durations() -> None:
    """Seconds from numbers and from text with ms, s, m, h, d."""
    assert parse_duration(30) == 30.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("10m") == 600.0
    assert parse_duration(" 1d ") == 86400.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 parsecs")
    with pytest.raises(ValueError, match="boolean"):
        parse_duration(True)


def test_formats_round_trip() -> None:
    """format_size and format_duration write what parse_* read back."""
    for size in (1, 1000, 1 << 10, 3 << 20, 5 << 30, 7 << 40):
        assert parse_size(units.format_size(size).replace(" bytes", "")) == size
    for seconds in (0.5, 1.5, 5.0, 600.0, 7200.0, 86400.0):
        assert parse_duration(units.format_duration(seconds)) == seconds
