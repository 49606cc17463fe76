"""Human output for ``perfctl alerts``: the firing alerts, then the recent history."""

from __future__ import annotations

from typing import Any

from perfctl.format.base import PLAIN, Cell, Style, glyph, grid, until

_SEVERITY_COLOURS = {"warning": "yellow", "critical": "red"}


def alert_value(value: float | None, unit: str, style: Style = PLAIN) -> str:
    """An alert's value or threshold with its unit: 93.0%, 85°C, 15m (time to full)."""
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "C":
        return f"{value:.0f}{glyph(style, '°C')}"
    if unit == "s":
        return until(value)
    return f"{value:g} {unit}".rstrip()


def format_alerts(
    result: dict[str, Any], style: Style = PLAIN, history_limit: int | None = 10
) -> str:
    """Firing alerts as a table, then the recent history, newest first (``history_limit``
    entries at most; None for all)."""
    firing = result.get("firing") or []
    lines: list[str] = []
    if firing:
        rows: list[list[Cell]] = [
            [(h, None) for h in ("SEVERITY", "ID", "VALUE", "THRESHOLD", "SINCE")]
        ]
        for alert in firing:
            severity, unit = alert.get("severity") or "-", alert.get("unit", "")
            rows.append(
                [
                    (severity, _SEVERITY_COLOURS.get(severity)),
                    (alert.get("id", "?"), None),
                    (alert_value(alert.get("value"), unit, style), None),
                    (alert_value(alert.get("threshold"), unit, style), None),
                    (alert.get("since") or "-", None),
                ]
            )
        lines.extend(grid(style, rows, frozenset({2, 3}), sep="  "))
    else:
        lines.append(style.paint("no alerts firing", "green"))

    history = result.get("history") or []
    if not history:
        lines.extend(["", style.paint("no alert history", "dim")])
        return "\n".join(lines)
    shown = history if history_limit is None else history[:history_limit]
    rows = [[(h, None) for h in ("TIME", "EVENT", "ID", "SEVERITY", "VALUE")]]
    for entry in shown:
        event = str(entry.get("event", "?")).removeprefix("alert.")
        if entry.get("repeat"):
            event += f" (repeat {entry['repeat']})"
        severity = entry.get("severity") or "-"
        rows.append(
            [
                (entry.get("at") or "-", None),
                (event, "green" if event == "resolved" else None),
                (entry.get("id", "?"), None),
                (severity, _SEVERITY_COLOURS.get(severity)),
                (alert_value(entry.get("value"), entry.get("unit", ""), style), None),
            ]
        )
    lines.extend(["", "history, newest first:"])
    lines.extend(grid(style, rows, frozenset({4}), sep="  "))
    if len(shown) < len(history):
        more = len(history) - len(shown)
        lines.append(style.paint(f"{more} older; perfctl alerts --all shows them", "dim"))
    return "\n".join(lines)
