"""TOML text of plain data, such as the ``config`` reply, that a TOML parser reads back.

    [models."llama-3.1-8b"]      # keys that are not bare (a dot, a space) are quoted
    device = "cpu"               # an unset value (null) is left out: TOML has no null

Scalar keys come before the sub-tables of their table; a table inside a list is written
inline (``{ a = 1 }``); strings escape what TOML requires (quotes, backslash, control
characters, DEL). Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

_BARE: Final = re.compile(r"[A-Za-z0-9_-]+")


def key(name: str) -> str:
    """A TOML key: bare when it can be, else a quoted string."""
    return name if _BARE.fullmatch(name) else string(name)


def string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, and DEL must be escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def value(item: Any) -> str:
    """A TOML value: a string, number, boolean, array or inline table."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v) for v in item if v is not None) + "]"
    if isinstance(item, Mapping):
        pairs = [f"{key(k)} = {value(v)}" for k, v in item.items() if v is not None]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    return string(str(item))


def document(data: Mapping[str, Any], lines: list[str], path: tuple[str, ...] = ()) -> None:
    """Append the lines of ``data`` as TOML: its keys, then one ``[table]`` per mapping."""
    tables = []
    for name, item in data.items():
        if item is None:
            continue  # unset: TOML has no null, and leaving the key out means the same
        if isinstance(item, Mapping):
            tables.append((name, item))
        else:
            lines.append(f"{key(name)} = {value(item)}")
    for name, table in tables:
        inner = (*path, name)
        lines.extend(["", "[" + ".".join(key(part) for part in inner) + "]"])
        document(table, lines, inner)
