"""Text from outside made safe for a terminal, before perfctl prints it.

Process names, command lines, systemd units, users, model names, engine replies, error
messages and hints, provider names and config values all come from outside perfctl (from
perfd, and through perfd from any local user or remote peer). A raw ESC (``\\x1b]2;OWNED\\x07``
retitles the operator's terminal, ``\\x1b[2J`` clears it), a C1 control (``\\x9b`` is a CSI on
some terminals) or a bidi override (``\\u202e`` reverses what follows) must never reach it.

The rule is Python's ``repr``: every character that ``str.isprintable()`` rejects (C0 and C1
controls, DEL, newline and tab, format characters such as the bidi overrides and zero-width
joiners, line and paragraph separators, surrogates, private-use and unassigned code points,
spaces other than U+0020) is shown as the escape ``repr`` would write: ``\\x1b``, ``\\x07``,
``\\n``, ``\\u202e``, ``\\U000e0001``. Printable text, backslashes included, is left as it is.

``--json`` output needs none of this: ``json.dumps`` (with its default ``ensure_ascii``) writes
every control and every non-ASCII character as a ``\\u`` escape. Where perfctl prints JSON for
a human with ``ensure_ascii=False`` (``infer``), ``json_text`` escapes what is left, as JSON.
"""

from __future__ import annotations

from typing import Any, Final

_NAMED: Final = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def text(value: str) -> str:
    """``value`` with every non-printable character shown as its escape (``\\x1b``)."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else _escape(c) for c in value)


def tree(value: Any) -> Any:
    """A reply with every string in it, dict keys included, passed through ``text``."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {tree(k): tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [tree(v) for v in value]
    return value


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: a surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_text(value: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with every non-printable
    character but the indentation's newlines written as a JSON ``\\u`` escape: the same JSON
    value, safe for a terminal."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in value)
