"""Human output for ``perfctl stats``: the operator's screen (headline, host, GPUs, processes,
the model cache, providers, perfd itself), 80 columns wide. Pure functions of the reply."""

from __future__ import annotations

from typing import Any

from perfctl.format import engines
from perfctl.format.base import (
    LABEL,
    PLAIN,
    WIDTH,
    Cell,
    Style,
    bar,
    clip,
    glyph,
    grid,
    join,
    line_width,
    pct,
    size,
    size_pair,
    until,
    wrap,
)
from perfctl.format.providers import provider_items

_VERDICT_COLOURS = {
    "healthy": "green",
    "full_but_healthy": "green",
    "pressure": "yellow",
    "critical": "red",
}

_ARROWS = {"increasing": "↑", "decreasing": "↓", "stable": "→"}

_GPU_NAME_NOISE = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")

_GPU_NAME_SUFFIXES = (" HBM3e", " HBM3", " HBM2e", " HBM2", " Generation")

_GPU_NAME_MAX = 14


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


def _meter(label: str, percent: float | None, used: float, total: float, style: Style) -> str:
    """``mem    [██████░░░░]  63.2%  40.4/64.0 GiB``."""
    return f"{label:<{LABEL}}{bar(percent, 10, style)} {pct(percent):>6}  {size_pair(used, total)}"


def format_stats(result: dict[str, Any], style: Style = PLAIN, redraw: float | None = None) -> str:
    """The operator's screen: headline, host memory and CPU, GPUs, top processes, the model
    cache, perfd itself. ``redraw``: `--watch`'s interval, shown beside perfd's sample interval.

    Fits 80 columns; timestamps are shown as perfd gave them.
    """
    host = result["host"]
    lines = [_headline(result, style, redraw)]
    lines.extend(_host_lines(host, result.get("trends", {}).get("host_memory"), style))
    lines.extend(_gpu_lines(result, style))
    lines.extend(_gpu_process_lines(result, style))
    lines.extend(engines.stats_lines(result.get("engines") or [], LABEL, style))
    lines.extend(_process_lines(host, style))
    if result.get("cache") is not None:  # perfd before the model cache sends none
        lines.extend(_cache_lines(result["cache"], style))
    if result.get("providers"):  # only once a remote provider has been used
        head = f"{'providers':<{LABEL}}"
        lines.extend(wrap(head, provider_items(result["providers"]), f" {glyph(style, '·')} "))
    own = result.get("perfd") or {}
    rss = own.get("rss_bytes")
    lines.append(
        f"{'perfd':<{LABEL}}rss {'-' if rss is None else size(rss)}"
        f"  cpu {pct(own.get('cpu_percent'))}"
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
    return join(style, parts, f" {glyph(style, '·')} ")


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
    if line_width(cells) > WIDTH:  # full_but_healthy and a time to full: drop the rate
        cells[-1] = (trend_text(trend, style, rate=False), None)
    lines = [join(style, cells)]

    swap = host.get("swap") or {}
    if swap.get("total_bytes"):
        lines.append(
            _meter("swap", swap["used_percent"], swap["used_bytes"], swap["total_bytes"], style)
        )
    else:
        lines.append(f"{'swap':<{LABEL}}none")

    cgroup = host.get("cgroup")
    if cgroup:
        limit, current = cgroup["limit_bytes"], cgroup.get("current_bytes")
        if current is None:
            head = f"{'cgroup':<{LABEL}}limit {size(limit)}"
        else:
            head = _meter("cgroup", cgroup.get("used_percent"), current, limit, style)
        lines.append(f"{head}  {clip(cgroup.get('path') or '', WIDTH - len(head) - 2, style)}")

    psi = host.get("psi") or {}
    if psi.get("available"):
        lines.append(
            f"{'psi':<{LABEL}}some {pct(psi.get('some_percent'))}"
            f"  full {pct(psi.get('full_percent'))}"
        )
    else:
        lines.append(f"{'psi':<{LABEL}}absent")

    load = " ".join(f"{x:.2f}" for x in host.get("load_avg") or ())
    cpus = host.get("cpu_count")
    lines.append(
        f"{'cpu':<{LABEL}}{pct(host.get('cpu_percent'))}  load {load or '-'}"
        + (f"  ({cpus} cpus)" if cpus else "")
    )
    return lines


def _gpu_lines(result: dict[str, Any], style: Style) -> list[str]:
    gpus = result.get("gpus") or []
    if not gpus:
        state = result.get("gpu_state") or "none"
        text = "none found" if state == "ok" else state
        error = result.get("gpu_error")
        return [f"{'gpu':<{LABEL}}{text}" + (style.paint(f"  {error}", "dim") if error else "")]
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
        (pct(memory["used_percent"]), None),
        (size_pair(memory["used_bytes"], memory["total_bytes"]), None),
        (pct(util, 0), None),
        ("-" if temp is None else f"{temp:.0f}{glyph(style, '°C')}", None),
        ("-" if power is None else f"{power:.0f}W", None),
        (verdict or "-", _VERDICT_COLOURS.get(verdict or "")),
        (trend_text(gpu.get("trend"), style, rate=False), None),
    ]


def _gpu_process_lines(result: dict[str, Any], style: Style) -> list[str]:
    """Each GPU process with its owner, then the memory no process accounts for."""
    rows: list[list[Cell]] = []
    for gpu in result.get("gpus") or []:
        for proc in gpu.get("processes") or []:
            used = proc.get("used_bytes")
            rows.append(
                [
                    (f"gpu{gpu.get('index', '?')}", None),
                    (str(proc.get("pid", "?")), None),
                    ("-" if used is None else size(used), None),
                    (engines.owner_text(proc.get("owner")), None),
                ]
            )
        unaccounted = gpu.get("unaccounted_bytes")
        if unaccounted:
            rows.append(
                [
                    (f"gpu{gpu.get('index', '?')}", None),
                    ("-", None),
                    (size(unaccounted), None),
                    ("unaccounted (no process holds it)", "dim"),
                ]
            )
    if not rows:
        return []
    head: list[Cell] = [("GPU", None), ("PID", None), ("GPU-MEM", None), ("OWNER", None)]
    return grid(style, [head, *rows], frozenset({1, 2}), width=WIDTH, sep="  ")


def _process_lines(host: dict[str, Any], style: Style) -> list[str]:
    processes = host.get("top_processes") or []
    if not processes:
        return [f"{'procs':<{LABEL}}none listed"]
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
    its budget (what the cache accounts: the models' bytes plus perfd's runtime overhead
    there, shown after the budget)."""
    label = f"{'cache':<{LABEL}}"
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
    lines.extend(wrap(f"{'':<{LABEL}}evictions ", reasons or ["none"], " "))
    devices = cache.get("devices") or {}
    width = max((len(name) for name in devices), default=0)
    dot = f" {glyph(style, '·')} "
    for device in sorted(devices, key=_device_order):
        figures = devices[device]
        on_device = [m for m in cache.get("models") or [] if m.get("device") == device]
        overhead = figures.get("runtime_overhead_bytes") or 0
        used = overhead + (
            sum(_accounted(m) for m in on_device)
            if on_device
            else figures.get("model_bytes")
            or figures.get("measured_bytes")
            or figures.get("estimated_bytes")
            or 0
        )
        budget = figures.get("budget_bytes") or 0
        name = f"{'':<{LABEL}}{device:<{width}}  "
        known = isinstance(figures.get("runtime_overhead_bytes"), int)  # from an older perfd: not
        runtime = f"{dot}runtime {size(overhead)}" if known else ""
        if budget:
            percent = 100 * used / budget
            lines.append(
                f"{name}{bar(percent, 10, style)} {pct(percent):>6}  "
                f"{size_pair(used, budget)} budget{runtime}"
            )
        else:
            lines.append(f"{name}{size(used)}  (no budget){runtime}")
    return lines


def _device_order(device: str) -> tuple[int, int, str]:
    """cpu first, then cuda:0, cuda:1, ..., cuda:10 in numeric order."""
    kind, _, index = device.partition(":")
    return (kind != "cpu", int(index) if index.isdigit() else 0, device)


def _accounted(model: dict[str, Any]) -> int:
    """The bytes the cache counts for a model: its ``bytes`` (tensors, else measured, else
    the estimate); from an older perfd, measured once known, else the estimate."""
    if isinstance(model.get("bytes"), int):
        return int(model["bytes"])
    measured = model.get("measured_bytes")
    return int(measured if measured is not None else model.get("estimated_bytes") or 0)
