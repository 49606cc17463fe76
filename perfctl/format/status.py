"""Human output for ping, status, reload and config (pure functions)."""

from __future__ import annotations

from typing import Any

from perfctl.format import toml
from perfctl.format.base import PLAIN, Style, duration, table


def format_ping(result: dict[str, Any], style: Style = PLAIN, elapsed_ms: float = 0.0) -> str:
    ok = style.paint("pong", "green")
    return f"{ok} from perfd {result['version']} (pid {result['pid']}) in {elapsed_ms:.2f} ms"


def format_status(result: dict[str, Any], style: Style = PLAIN, socket: str | None = None) -> str:
    """perfd's status; the head line and ``socket`` (where perfctl asked) say whose perfd
    answered."""
    user = f" · user {result['user']}" if "user" in result else ""
    head = (
        f"perfd {result['version']} · {style.paint('running', 'green')} · pid {result['pid']}"
        f"{user} · up {duration(result['uptime_s'])}"
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
        *([("socket", socket.removeprefix("ipc://"))] if socket else []),
        ("components", components),
        ("requests", f"{req['total']} total, {req['errors']} errors, {req['dropped']} dropped"),
    ]
    return head + "\n" + table(rows)


def format_reload(result: dict[str, Any], style: Style = PLAIN) -> str:
    changed = ", ".join(result["changed"]) or "nothing changed"
    text = f"{style.paint('reloaded', 'green')} {result['path']}: {changed}"
    if result["restart_required"]:
        keys = ", ".join(result["restart_required"])
        text += "\n" + style.paint(f"restart perfd to apply: {keys}", "yellow")
    return text


def format_config(result: dict[str, Any], style: Style = PLAIN) -> str:
    """The effective config as TOML, ready to paste into a config file."""
    note = "" if result["file_present"] else " (no file: defaults)"
    lines = [style.paint(f"# {result['path']}{note}", "dim")]
    toml.document(result["config"], lines)
    return "\n".join(lines)
