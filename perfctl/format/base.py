"""The formatters' toolkit: styles (colour, unicode or ASCII), the terminal width, sizes,
durations, bars, aligned tables and wrapped lines. Pure functions of values."""

from __future__ import annotations

from collections.abc import Iterable

_CODES = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}


class Style:
    """How to draw, decided by the caller: colour (a TTY without NO_COLOR) and unicode (the
    stream can encode block characters and arrows; otherwise bars are ``#`` and ``.``)."""

    __slots__ = ("colour", "unicode")

    def __init__(self, colour: bool = False, unicode: bool = True) -> None:
        self.colour = colour
        self.unicode = unicode

    def paint(self, text: str, colour: str) -> str:
        if not self.colour:
            return text
        return f"\033[{_CODES[colour]}m{text}\033[0m"


PLAIN = Style()

WIDTH = 80  # the stats screen fits an 80-column terminal

Cell = tuple[str, str | None]  # text, and its colour (None: plain)

# What the screen draws when the stream cannot encode the unicode glyphs.
_ASCII = {"█": "#", "░": ".", "↑": "^", "↓": "v", "→": "->", "·": "|", "°C": "C", "…": "..."}

_UNITS = ("KiB", "MiB", "GiB", "TiB")

LABEL = 7  # width of the host lines' labels: "mem", "swap", "psi", ...


def glyph(style: Style, text: str) -> str:
    """``text`` as drawn: itself, or its ASCII stand-in when the stream has no unicode."""
    return text if style.unicode else _ASCII.get(text, text)


def duration(seconds: float) -> str:
    """A short human duration: 45s, 3m 12s, 2h 05m, 3d 4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def until(seconds: float) -> str:
    """A short time ahead, rounded down: 45s, 15m, 2.5h, 3.1d."""
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def size(n: float) -> str:
    """Bytes in binary units with one decimal: 512 B, 1.5 KiB, 40.4 GiB."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in _UNITS[:-1]:
        n /= 1024
        if abs(n) < 1023.95:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} {_UNITS[-1]}"


def size_pair(used: float, total: float) -> str:
    """Used and total in the total's unit: 40.4/64.0 GiB."""
    exp = 0
    while exp < len(_UNITS) and total / 1024**exp >= 1023.95:
        exp += 1
    if exp == 0:
        return f"{used:.0f}/{total:.0f} B"
    scale = 1024**exp
    return f"{used / scale:.1f}/{total / scale:.1f} {_UNITS[exp - 1]}"


def table(rows: Iterable[tuple[str, str]]) -> str:
    """Two aligned columns."""
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


def bar(percent: float | None, cells: int, style: Style = PLAIN) -> str:
    """``[██████░░░░]``, or ``[######....]`` without unicode; rounded to the nearest cell."""
    filled = round(min(max(percent or 0.0, 0.0), 100.0) / 100 * cells)
    return f"[{glyph(style, '█') * filled}{glyph(style, '░') * (cells - filled)}]"


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


def clip(text: str, room: int, style: Style) -> str:
    """Keep the end of a long path or unit name: ``…/vllm.service``."""
    if len(text) <= room:
        return text
    dots = glyph(style, "…")
    return dots + text[len(text) - max(room - len(dots), 1) :]


def grid(
    style: Style,
    rows: list[list[Cell]],
    right: frozenset[int] = frozenset(),
    *,
    width: int | None = None,
    shrink: int | None = None,
    sep: str = " ",
    floor: int = 4,
) -> list[str]:
    """Cells aligned in columns ``sep`` apart; colour never counts towards a width.

    A row's last cell is not padded and may be shorter than the row above (a lost GPU's
    state spans the rest of its line). With ``width``, column ``shrink`` narrows until lines
    fit (never below ``floor`` characters, so lines may then be wider), then a last cell that
    still overflows is clipped.
    """
    widths = [0] * max((len(row) for row in rows), default=0)
    for row in rows:
        for i, (text, _) in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(text))
    if width is not None and shrink is not None:
        longest = max(
            sum(widths[: len(r) - 1]) + len(sep) * (len(r) - 1) + len(r[-1][0]) for r in rows
        )
        widths[shrink] = max(min(floor, widths[shrink]), widths[shrink] - max(0, longest - width))
    lines = []
    for row in rows:
        parts, offset = [], 0
        for i, (cell, colour) in enumerate(row):
            if i == len(row) - 1:
                text, pad = cell if width is None else clip(cell, width - offset, style), ""
            else:
                text = cell[: widths[i]]
                pad = " " * (widths[i] - len(text))
                offset += widths[i] + len(sep)
            shown = style.paint(text, colour) if colour and text else text
            parts.append(pad + shown if i in right else shown + pad)
        lines.append(sep.join(parts).rstrip())
    return lines


def join(style: Style, cells: list[Cell], sep: str = "  ") -> str:
    """The non-empty cells on one line, ``sep`` apart, each in its colour."""
    return sep.join(style.paint(t, c) if c else t for t, c in cells if t)


def line_width(cells: list[Cell], sep: str = "  ") -> int:
    """How many columns ``join`` takes for ``cells`` (colour takes none)."""
    shown = [t for t, _ in cells if t]
    return sum(map(len, shown)) + len(sep) * max(len(shown) - 1, 0)


def wrap(head: str, items: list[str], sep: str = ", ", width: int = WIDTH) -> list[str]:
    """``head`` then ``items`` joined by ``sep``, on as many lines as it takes; continuation
    lines start under the first item."""
    lines, current = [], head
    for i, item in enumerate(items):
        piece = item + (sep.rstrip() if i < len(items) - 1 else "")
        gap = "" if current.endswith(" ") else " "
        if current.strip() and len(current) + len(gap) + len(piece) > width:
            lines.append(current.rstrip())
            current, gap = " " * len(head), ""
        current += gap + piece
    lines.append(current.rstrip())
    return lines
