"""Human output for each command: pure ``format_<command>(result, style) -> str`` functions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from perfctl import format_toml

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


def format_config(result: dict[str, Any], style: Style = PLAIN) -> str:
    """The effective config as TOML, ready to paste into a config file."""
    note = "" if result["file_present"] else " (no file: defaults)"
    lines = [style.paint(f"# {result['path']}{note}", "dim")]
    format_toml.document(result["config"], lines)
    return "\n".join(lines)


def format_reload(result: dict[str, Any], style: Style = PLAIN) -> str:
    changed = ", ".join(result["changed"]) or "nothing changed"
    text = f"{style.paint('reloaded', 'green')} {result['path']}: {changed}"
    if result["restart_required"]:
        keys = ", ".join(result["restart_required"])
        text += "\n" + style.paint(f"restart perfd to apply: {keys}", "yellow")
    return text


# -- stats and alerts -----------------------------------------------------------------------

WIDTH = 80  # the stats screen fits an 80-column terminal

Cell = tuple[str, str | None]  # text, and its colour (None: plain)

_VERDICT_COLOURS = {
    "healthy": "green",
    "full_but_healthy": "green",
    "pressure": "yellow",
    "critical": "red",
}
_SEVERITY_COLOURS = {"warning": "yellow", "critical": "red"}
_ARROWS = {"increasing": "↑", "decreasing": "↓", "stable": "→"}
# What the screen draws when the stream cannot encode the unicode glyphs.
_ASCII = {"█": "#", "░": ".", "↑": "^", "↓": "v", "→": "->", "·": "|", "°C": "C", "…": "..."}
_UNITS = ("KiB", "MiB", "GiB", "TiB")
_GPU_NAME_NOISE = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")
_GPU_NAME_SUFFIXES = (" HBM3e", " HBM3", " HBM2e", " HBM2", " Generation")
_GPU_NAME_MAX = 14
_LABEL = 7  # width of the host lines' labels: "mem", "swap", "psi", ...


def glyph(style: Style, text: str) -> str:
    return text if style.unicode else _ASCII.get(text, text)


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


def until(seconds: float) -> str:
    """A short time ahead, rounded down: 45s, 15m, 2.5h, 3.1d."""
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def bar(percent: float | None, cells: int, style: Style = PLAIN) -> str:
    """``[██████░░░░]``, or ``[######....]`` without unicode; rounded to the nearest cell."""
    filled = round(min(max(percent or 0.0, 0.0), 100.0) / 100 * cells)
    return f"[{glyph(style, '█') * filled}{glyph(style, '░') * (cells - filled)}]"


def trend_text(trend: dict[str, Any] | None, style: Style = PLAIN, rate: bool = True) -> str:
    """``↑ 1.2 MiB/s  42m to full``: the arrow, the rate unless stable, time to full if known."""
    if trend is None:
        return ""
    direction = trend.get("direction", "stable")
    text = glyph(style, _ARROWS.get(direction, "?"))
    if rate and direction != "stable":
        text += f" {size(abs(trend.get('rate_bytes_per_s') or 0.0))}/s"
    ttf = trend.get("time_to_full_s")
    if ttf is not None:
        text += f"{'  ' if rate else ' '}{until(ttf)} to full"
    return text


def short_gpu_name(name: str | None) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100 80GB``: no vendor or memory-type words, 14 at most."""
    text = (name or "").strip()
    for word in _GPU_NAME_NOISE:
        text = text.replace(word, "")
    for suffix in _GPU_NAME_SUFFIXES:
        text = text.removesuffix(suffix)
    return text.strip()[:_GPU_NAME_MAX] or "?"


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


def _clip(text: str, room: int, style: Style) -> str:
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
) -> list[str]:
    """Cells aligned in columns ``sep`` apart; colour never counts towards a width.

    A row's last cell is not padded and may be shorter than the row above (a lost GPU's
    state spans the rest of its line). With ``width``, column ``shrink`` narrows until lines
    fit, then a last cell that still overflows is clipped.
    """
    widths = [0] * max((len(row) for row in rows), default=0)
    for row in rows:
        for i, (text, _) in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(text))
    if width is not None and shrink is not None:
        longest = max(
            sum(widths[: len(r) - 1]) + len(sep) * (len(r) - 1) + len(r[-1][0]) for r in rows
        )
        widths[shrink] = max(4, widths[shrink] - max(0, longest - width))
    lines = []
    for row in rows:
        parts, offset = [], 0
        for i, (cell, colour) in enumerate(row):
            if i == len(row) - 1:
                text, pad = cell if width is None else _clip(cell, width - offset, style), ""
            else:
                text = cell[: widths[i]]
                pad = " " * (widths[i] - len(text))
                offset += widths[i] + len(sep)
            shown = style.paint(text, colour) if colour and text else text
            parts.append(pad + shown if i in right else shown + pad)
        lines.append(sep.join(parts).rstrip())
    return lines


def _join(style: Style, cells: list[Cell], sep: str = "  ") -> str:
    return sep.join(style.paint(t, c) if c else t for t, c in cells if t)


def _width(cells: list[Cell], sep: str = "  ") -> int:
    shown = [t for t, _ in cells if t]
    return sum(map(len, shown)) + len(sep) * max(len(shown) - 1, 0)


def _meter(label: str, percent: float | None, used: float, total: float, style: Style) -> str:
    """``mem    [██████░░░░]  63.2%  40.4/64.0 GiB``."""
    return (
        f"{label:<{_LABEL}}{bar(percent, 10, style)} {_pct(percent):>6}  {size_pair(used, total)}"
    )


def format_stats(result: dict[str, Any], style: Style = PLAIN, redraw: float | None = None) -> str:
    """The operator's screen: headline, host memory and CPU, GPUs, top processes, the model
    cache, perfd itself. ``redraw``: `--watch`'s interval, shown beside perfd's sample interval.

    Fits 80 columns; timestamps are shown as perfd gave them.
    """
    host = result["host"]
    lines = [_headline(result, style, redraw)]
    lines.extend(_host_lines(host, result.get("trends", {}).get("host_memory"), style))
    lines.extend(_gpu_lines(result, style))
    lines.extend(_process_lines(host, style))
    if result.get("cache") is not None:  # perfd before the model cache sends none
        lines.extend(_cache_lines(result["cache"], style))
    if result.get("providers"):  # only once a remote provider has been used
        from perfctl.format_providers import provider_items

        head = f"{'providers':<{_LABEL}}"
        lines.extend(wrap(head, provider_items(result["providers"]), f" {glyph(style, '·')} "))
    own = result.get("perfd") or {}
    rss = own.get("rss_bytes")
    lines.append(
        f"{'perfd':<{_LABEL}}rss {'-' if rss is None else size(rss)}"
        f"  cpu {_pct(own.get('cpu_percent'))}"
    )
    return "\n".join(lines)


def _headline(result: dict[str, Any], style: Style, redraw: float | None = None) -> str:
    parts: list[Cell] = [
        ("perfd stats", "bold"),
        (result.get("sampled_at") or "-", None),
        (f"every {result.get('interval_s', 0):g}s", None),  # perfd's sample interval
    ]
    if redraw is not None:
        parts.append((f"redraw {redraw:g}s", None))
    gpu_state = result.get("gpu_state")
    if gpu_state not in (None, "ok"):
        quiet = gpu_state in ("absent", "disabled")
        parts.append((f"gpu {gpu_state}", "dim" if quiet else "red"))
    counts = result.get("alerts") or {}
    firing, critical = counts.get("firing", 0), counts.get("critical", 0)
    if not firing:
        parts.append(("no alerts firing", "green"))
    else:
        text = f"{firing} alert{'s' if firing != 1 else ''} firing"
        if critical:
            text += f" ({critical} critical)"
        parts.append((text, "red" if critical else "yellow"))
    return _join(style, parts, f" {glyph(style, '·')} ")


def _host_lines(host: dict[str, Any], trend: dict[str, Any] | None, style: Style) -> list[str]:
    memory = host["memory"]
    verdict = memory.get("verdict")
    cells: list[Cell] = [
        (
            _meter(
                "mem", memory["used_percent"], memory["used_bytes"], memory["total_bytes"], style
            ),
            None,
        ),
        (verdict or "-", _VERDICT_COLOURS.get(verdict or "")),
        (trend_text(trend, style), None),
    ]
    if _width(cells) > WIDTH:  # full_but_healthy and a time to full: drop the rate
        cells[-1] = (trend_text(trend, style, rate=False), None)
    lines = [_join(style, cells)]

    swap = host.get("swap") or {}
    if swap.get("total_bytes"):
        lines.append(
            _meter("swap", swap["used_percent"], swap["used_bytes"], swap["total_bytes"], style)
        )
    else:
        lines.append(f"{'swap':<{_LABEL}}none")

    cgroup = host.get("cgroup")
    if cgroup:
        limit, current = cgroup["limit_bytes"], cgroup.get("current_bytes")
        if current is None:
            head = f"{'cgroup':<{_LABEL}}limit {size(limit)}"
        else:
            head = _meter("cgroup", cgroup.get("used_percent"), current, limit, style)
        lines.append(f"{head}  {_clip(cgroup.get('path') or '', WIDTH - len(head) - 2, style)}")

    psi = host.get("psi") or {}
    if psi.get("available"):
        lines.append(
            f"{'psi':<{_LABEL}}some {_pct(psi.get('some_percent'))}"
            f"  full {_pct(psi.get('full_percent'))}"
        )
    else:
        lines.append(f"{'psi':<{_LABEL}}absent")

    load = " ".join(f"{x:.2f}" for x in host.get("load_avg") or ())
    cpus = host.get("cpu_count")
    lines.append(
        f"{'cpu':<{_LABEL}}{_pct(host.get('cpu_percent'))}  load {load or '-'}"
        + (f"  ({cpus} cpus)" if cpus else "")
    )
    return lines


def _gpu_lines(result: dict[str, Any], style: Style) -> list[str]:
    gpus = result.get("gpus") or []
    if not gpus:
        state = result.get("gpu_state") or "none"
        text = "none found" if state == "ok" else state
        error = result.get("gpu_error")
        return [f"{'gpu':<{_LABEL}}{text}" + (style.paint(f"  {error}", "dim") if error else "")]
    header = ["GPU", "MEMORY", "", "", "UTIL", "TEMP", "PWR", "VERDICT", "TREND"]
    rows: list[list[Cell]] = [[(h, None) for h in header]]
    rows.extend(_gpu_row(gpu, style) for gpu in gpus)
    return grid(style, rows, frozenset({2, 3, 4, 5, 6}), width=WIDTH, shrink=0)


def _gpu_row(gpu: dict[str, Any], style: Style) -> list[Cell]:
    label = f"{gpu.get('index', '?')} {short_gpu_name(gpu.get('name'))}"
    if gpu.get("state", "ok") != "ok":
        error = gpu.get("error")
        return [(label, None), (f"{gpu['state']}" + (f": {error}" if error else ""), "red")]
    memory = gpu["memory"]
    temp, power, util = (
        gpu.get("temperature_c"),
        gpu.get("power_watts"),
        gpu.get("utilization_percent"),
    )
    verdict = gpu.get("verdict")
    return [
        (label, None),
        (bar(memory["used_percent"], 8, style), None),
        (_pct(memory["used_percent"]), None),
        (size_pair(memory["used_bytes"], memory["total_bytes"]), None),
        (_pct(util, 0), None),
        ("-" if temp is None else f"{temp:.0f}{glyph(style, '°C')}", None),
        ("-" if power is None else f"{power:.0f}W", None),
        (verdict or "-", _VERDICT_COLOURS.get(verdict or "")),
        (trend_text(gpu.get("trend"), style, rate=False), None),
    ]


def _process_lines(host: dict[str, Any], style: Style) -> list[str]:
    processes = host.get("top_processes") or []
    if not processes:
        return [f"{'procs':<{_LABEL}}none listed"]
    rows: list[list[Cell]] = [[("PID", None), ("NAME", None), ("RSS", None), ("UNIT", None)]]
    for proc in processes:
        rows.append(
            [
                (str(proc.get("pid", "?")), None),
                ((proc.get("name") or "?")[:24], None),
                (size(proc.get("rss_bytes") or 0), None),
                (proc.get("unit") or "-", None),
            ]
        )
    return grid(style, rows, frozenset({0, 2}), width=WIDTH, sep="  ")


def _cache_lines(cache: dict[str, Any], style: Style) -> list[str]:
    """``cache  3 loaded · hits 12 · ...``, the evictions by reason, then each device's use of
    its budget (what the cache accounts: measured sizes, estimates until measured)."""
    label = f"{'cache':<{_LABEL}}"
    if not cache.get("started"):
        return [label + "not started"]
    ratio = cache.get("hit_ratio")
    counts = [
        f"{cache.get('loaded', 0)} loaded",
        f"hits {cache.get('hits', 0)}",
        f"misses {cache.get('misses', 0)}",
        f"hit ratio {'-' if ratio is None else f'{ratio * 100:.0f}%'}",
    ]
    lines = wrap(label, counts, f" {glyph(style, '·')} ")
    reasons = [f"{reason} {n}" for reason, n in (cache.get("evictions") or {}).items()]
    lines.extend(wrap(f"{'':<{_LABEL}}evictions ", reasons or ["none"], " "))
    devices = cache.get("devices") or {}
    width = max((len(name) for name in devices), default=0)
    for device in sorted(devices, key=_device_order):
        figures = devices[device]
        on_device = [m for m in cache.get("models") or [] if m.get("device") == device]
        used = (
            sum(_accounted(m) for m in on_device)
            if on_device
            else figures.get("measured_bytes") or figures.get("estimated_bytes") or 0
        )
        budget = figures.get("budget_bytes") or 0
        name = f"{'':<{_LABEL}}{device:<{width}}  "
        if budget:
            percent = 100 * used / budget
            lines.append(
                f"{name}{bar(percent, 10, style)} {_pct(percent):>6}  "
                f"{size_pair(used, budget)} budget"
            )
        else:
            lines.append(f"{name}{size(used)}  (no budget)")
    return lines


def _device_order(device: str) -> tuple[int, int, str]:
    """cpu first, then cuda:0, cuda:1, ..., cuda:10 in numeric order."""
    kind, _, index = device.partition(":")
    return (kind != "cpu", int(index) if index.isdigit() else 0, device)


def _accounted(model: dict[str, Any]) -> int:
    """The bytes the cache counts for a model: measured once known, else the estimate."""
    measured = model.get("measured_bytes")
    return int(measured if measured is not None else model.get("estimated_bytes") or 0)


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


# -- the model cache ------------------------------------------------------------------------


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
