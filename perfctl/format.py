"""Human output for each command: pure ``format_<command>(result, style) -> str`` functions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

_CODES = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}


class Style:
    """Colour on or off (on only for a TTY without NO_COLOR; decided by the caller)."""

    __slots__ = ("colour",)

    def __init__(self, colour: bool = False) -> None:
        self.colour = colour

    def paint(self, text: str, colour: str) -> str:
        if not self.colour:
            return text
        return f"\033[{_CODES[colour]}m{text}\033[0m"


PLAIN = Style()


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


def table(rows: Iterable[tuple[str, str]]) -> str:
    """Two aligned columns."""
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


def format_ping(result: dict[str, Any], style: Style = PLAIN, elapsed_ms: float = 0.0) -> str:
    ok = style.paint("pong", "green")
    return f"{ok} from perfd {result['version']} (pid {result['pid']}) in {elapsed_ms:.2f} ms"


def format_status(result: dict[str, Any], style: Style = PLAIN) -> str:
    head = (
        f"perfd {result['version']} · {style.paint('running', 'green')} · pid {result['pid']}"
        f" · up {duration(result['uptime_s'])}"
    )
    config = result["config_path"]
    if not result["config_file_present"]:
        config += style.paint("  (no file: defaults)", "dim")
    components = ", ".join(
        f"{name} {style.paint(state, 'green' if state == 'started' else 'dim')}"
        for name, state in result["components"].items()
    )
    req = result["requests"]
    rows = [
        ("config", config),
        ("runtime dir", result["runtime_dir"]),
        ("components", components),
        ("requests", f"{req['total']} total, {req['errors']} errors, {req['dropped']} dropped"),
    ]
    return head + "\n" + table(rows)


def format_config(result: dict[str, Any], style: Style = PLAIN) -> str:
    """The effective config as TOML, ready to paste into a config file."""
    note = "" if result["file_present"] else " (no file: defaults)"
    lines = [style.paint(f"# {result['path']}{note}", "dim")]
    _toml(result["config"], [], lines)
    return "\n".join(lines)


def _toml(section: dict[str, Any], name: list[str], lines: list[str]) -> None:
    tables = []
    for key, value in section.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in tables:
        lines.extend(["", f"[{'.'.join([*name, key])}]"])
        _toml(value, [*name, key], lines)


def format_reload(result: dict[str, Any], style: Style = PLAIN) -> str:
    changed = ", ".join(result["changed"]) or "nothing changed"
    text = f"{style.paint('reloaded', 'green')} {result['path']}: {changed}"
    if result["restart_required"]:
        keys = ", ".join(result["restart_required"])
        text += "\n" + style.paint(f"restart perfd to apply: {keys}", "yellow")
    return text
