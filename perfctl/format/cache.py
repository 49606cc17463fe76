"""Human output for the cache commands: ps, load, pin, evict, infer (pure functions)."""

from __future__ import annotations

import json
from typing import Any

from perfctl.format import safe
from perfctl.format.base import PLAIN, WIDTH, Cell, Style, glyph, grid, size, wrap
from perfd.wire.values import FOREVER, LOADING, READY, UNLOADING

_STATE_COLOURS = {READY: "green", LOADING: "yellow", UNLOADING: "dim"}
NAME_FLOOR = 32  # ps' NAME column is never cut shorter than this


def clock(stamp: str | None) -> str:
    """``2027-01-15T08:02:40Z`` -> ``08:02:40 UTC``; anything else as given."""
    if stamp and len(stamp) == 20 and stamp[10] == "T" and stamp.endswith("Z"):
        return f"{stamp[11:19]} UTC"
    return stamp or "-"


def model_size(model: dict[str, Any]) -> str:
    """Estimated / tensors / measured: ``64.0 MiB / 64.0 MiB tensors / 64.1 MiB rss`` (the
    tensors only when counted); ``-`` for what is not known."""
    estimate, measured = model.get("estimated_bytes"), model.get("measured_bytes")
    tensors = model.get("tensor_bytes")
    if estimate is None and measured is None and tensors is None:
        return "-"
    left = "-" if estimate is None else size(estimate)
    middle = [] if tensors is None else [f"{size(tensors)} tensors"]
    right = "-" if measured is None else f"{size(measured)} {model.get('measured_by') or ''}"
    return " / ".join([left, *middle, right.rstrip()])


def error_cell(model: dict[str, Any]) -> str:
    """The estimate's error in percent of the model's bytes (the ERR% column): ``+4.2``;
    ``-`` when unknown."""
    error = model.get("estimate_error_percent")
    return "-" if not isinstance(error, (int, float)) else f"{error:+.1f}"


def measured_cell(model: dict[str, Any]) -> str:
    """The MEASURED column: the process delta, with what measured it unless that is the
    device's own figure (RSS on cpu, NVML on a GPU): ``64.1 MiB``, ``1.0 GiB torch``."""
    measured, by = model.get("measured_bytes"), model.get("measured_by") or ""
    if not isinstance(measured, int):
        return "-"
    natural = "rss" if model.get("device") == "cpu" else "nvml"
    return size(measured) if by in ("", natural) else f"{size(measured)} {by}"


def _size_or_dash(value: Any) -> str:
    return size(value) if isinstance(value, int) else "-"


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
    """Loaded models, most recently used first, like ``ollama ps``, each with its estimate,
    its tensors' bytes, the measured process delta and the estimate's error; then perfd's own
    line per device (its runtime overhead, charged to no model); then the configured models
    that are not loaded."""
    models = result.get("models") or []
    runtime = [r for r in result.get("runtime") or [] if isinstance(r, dict)]
    lines: list[str] = []
    if models:
        header = ("NAME", "STATE", "ESTIMATE", "TENSORS", "MEASURED", "ERR%", "DEVICE", "UNTIL")
        rows: list[list[Cell]] = [[(h, None) for h in header]]
        for model in models:
            state = model.get("state") or "?"
            rows.append(
                [
                    (model.get("name") or "?", None),
                    (state, _STATE_COLOURS.get(state)),
                    (_size_or_dash(model.get("estimated_bytes")), None),
                    (_size_or_dash(model.get("tensor_bytes")), None),
                    (measured_cell(model), None),
                    (error_cell(model), None),
                    (model.get("device") or "-", None),
                    until_cell(model),
                ]
            )
        for row in runtime:
            overhead = _size_or_dash(row.get("runtime_overhead_bytes"))
            cells = ["perfd", "runtime", "-", "-", overhead, "-", str(row.get("device") or "-")]
            rows.append([*((text, "dim") for text in cells), ("-", "dim")])
        # NAME narrows to fit 80 columns, but not below NAME_FLOOR: a model's name is what the
        # operator types next (evict, pin), so a long one widens the table instead.
        lines.extend(
            grid(style, rows, frozenset({5}), width=WIDTH, shrink=0, sep="  ", floor=NAME_FLOOR)
        )
    else:
        lines.append("no models loaded")
        if runtime:
            held = ", ".join(
                f"{r.get('device')} {_size_or_dash(r.get('runtime_overhead_bytes'))}"
                for r in runtime
            )
            lines.append(style.paint(f"perfd runtime overhead: {held}", "dim"))
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
            device = record.get("device", "?")
            figure, measurer = record.get("freed_bytes"), "rss"
            if figure is None:  # not measured on the device: RSS when known
                figure = record.get("freed_rss_bytes")
            elif str(device).startswith("cuda:"):
                measurer = "nvml"
            freed = (
                "freed not measured"
                if figure is None
                else f"{size(max(figure, 0))} {measurer} freed"
            )
            text += f" from {device}{dot}{size(record.get('bytes') or 0)}{dot}{freed}"
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
