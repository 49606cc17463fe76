"""Human output for the cache commands: ps, load, pin, evict, infer (pure functions)."""

from __future__ import annotations

import json
from typing import Any

from perfctl.format import safe
from perfctl.format.base import PLAIN, WIDTH, Cell, Style, glyph, grid, size, wrap
from perfd.wire.values import FOREVER, LOADING, READY, UNLOADING

_STATE_COLOURS = {READY: "green", LOADING: "yellow", UNLOADING: "dim"}


def clock(stamp: str | None) -> str:
    """``2027-01-15T08:02:40Z`` -> ``08:02:40 UTC``; anything else as given."""
    if stamp and len(stamp) == 20 and stamp[10] == "T" and stamp.endswith("Z"):
        return f"{stamp[11:19]} UTC"
    return stamp or "-"


def model_size(model: dict[str, Any]) -> str:
    """Estimated / measured: ``64.0 MiB / 64.1 MiB rss``; ``-`` for what is not known."""
    estimate, measured = model.get("estimated_bytes"), model.get("measured_bytes")
    if estimate is None and measured is None:
        return "-"
    left = "-" if estimate is None else size(estimate)
    right = "-" if measured is None else f"{size(measured)} {model.get('measured_by') or ''}"
    return f"{left} / {right}".rstrip()


def until_cell(model: dict[str, Any]) -> Cell:
    """How long a model stays: PINNED, FOREVER, IN USE (leases held), or its expiry time."""
    if model.get("state") != READY:
        return ("-", None)
    if model.get("pinned"):
        return ("PINNED", "bold")
    if model.get("keep_alive_s") == FOREVER:
        return ("FOREVER", None)
    if model.get("leases"):
        return ("IN USE", "yellow")
    return (clock(model.get("expires_at")), None)


def _stays(model: dict[str, Any]) -> str:
    """``until_cell`` as words: "stays loaded until unpinned", "until 08:02:40 UTC"."""
    text, _ = until_cell(model)
    return {
        "-": model.get("state") or "-",
        "PINNED": "stays loaded until unpinned",
        "FOREVER": "stays loaded (keep_alive forever)",
        "IN USE": "in use",
    }.get(text, f"until {text}")


def format_ps(result: dict[str, Any], style: Style = PLAIN) -> str:
    """Loaded models, most recently used first, like ``ollama ps``; then the configured models
    that are not loaded."""
    models = result.get("models") or []
    lines: list[str] = []
    if models:
        header = ("NAME", "STATE", "SIZE", "DEVICE", "HITS", "UNTIL")
        rows: list[list[Cell]] = [[(h, None) for h in header]]
        for model in models:
            state = model.get("state") or "?"
            rows.append(
                [
                    (model.get("name") or "?", None),
                    (state, _STATE_COLOURS.get(state)),
                    (model_size(model), None),
                    (model.get("device") or "-", None),
                    (str(model.get("hits", 0)), None),
                    until_cell(model),
                ]
            )
        lines.extend(grid(style, rows, frozenset({4}), width=WIDTH, shrink=0, sep="  "))
    else:
        lines.append("no models loaded")
    loaded = {model.get("name") for model in models}
    configured = result.get("configured") or []
    idle = [name for name in configured if name not in loaded]
    if idle:
        lines.extend(style.paint(text, "dim") for text in wrap("not loaded: ", idle))
    elif not configured and not models:
        lines.append(style.paint("none configured: add [models.NAME] tables to perfd.toml", "dim"))
    return "\n".join(lines)


def format_load(result: dict[str, Any], style: Style = PLAIN, name: str = "") -> str:
    """``loaded ballast on cpu in 0.07s · 64.0 MiB / 64.1 MiB rss · until 08:07:40 UTC``."""
    if not result:  # keep_alive = 0: unloaded as soon as the load's own lease ended
        return f"{style.paint('loaded', 'green')} {name}, and unloaded at once (keep_alive 0)"
    head = f"{style.paint('loaded', 'green')} {result.get('name', name)} on {result.get('device')}"
    last = (result.get("load_seconds") or {}).get("last")
    if last is not None:
        head += f" in {last:.2f}s"
    dot = f" {glyph(style, '·')} "
    return dot.join([head, model_size(result), _stays(result)])


def format_pin(result: dict[str, Any], style: Style = PLAIN) -> str:
    """``pinned echo · stays loaded until unpinned`` or ``unpinned echo · until ...``."""
    verb = "pinned" if result.get("pinned") else "unpinned"
    dot = f" {glyph(style, '·')} "
    return f"{style.paint(verb, 'green')} {result.get('name', '?')}{dot}{_stays(result)}"


def format_evict(result: dict[str, Any], style: Style = PLAIN) -> str:
    """One line per evicted model with what it freed; a dry run lists what would go."""
    names = result.get("evicted") or []
    skipped = [f"{s.get('model')} ({s.get('why')})" for s in result.get("skipped") or []]
    kept = [style.paint(line, "dim") for line in wrap("skipped:", skipped)] if skipped else []
    if result.get("dry_run"):
        head = f"would evict: {', '.join(names)}" if names else "nothing to evict"
        return "\n".join([head, *kept])
    if not names:
        return "\n".join(["nothing to evict", *kept])
    records = {r.get("model"): r for r in result.get("records") or []}
    dot = f" {glyph(style, '·')} "
    lines = []
    for name in names:
        text = f"{style.paint('evicted', 'green')} {name}"
        record = records.get(name)
        if record is not None:
            freed = max(record.get("freed_rss_bytes") or 0, 0)
            text += (
                f" from {record.get('device', '?')}{dot}{size(record.get('bytes') or 0)}"
                f"{dot}{size(freed)} rss freed"
            )
        lines.append(text)
    return "\n".join(lines + kept)


def format_infer(result: dict[str, Any], style: Style = PLAIN, pretty: bool = False) -> str:
    """The model's outputs as JSON: indented when ``pretty`` (a TTY), else on one line; \\u
    escapes when the stream cannot encode unicode (never a lossy replacement), and for every
    character unsafe on a terminal (controls, bidi overrides: ``safe.json_text``).

    It takes the reply as perfd sent it (not through ``safe.tree``): the JSON stays faithful."""
    text = json.dumps(
        result.get("outputs"), indent=2 if pretty else None, ensure_ascii=not style.unicode
    )
    return safe.json_text(text)
