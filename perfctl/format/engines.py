"""Human output for the inference engines: ``perfctl engines`` (a table), ``perfctl engines
NAME`` (one engine in detail, with its plan check) and the engines lines of ``perfctl stats``
(pure functions of the reply; docs/protocol.md, ``engines``)."""

from __future__ import annotations

from typing import Any

from perfctl.format.base import PLAIN, Cell, Style, grid, size, table

HEADER = ("NAME", "KIND", "MODEL", "CTX", "KV%", "RUN/WAIT", "PREEMPT/min", "GPU-MEM", "STATE")
_NUMBERS = frozenset({3, 4, 6, 7})  # right-aligned columns
_STATE_COLOURS = {"up": "green", "starting": "yellow", "down": "red", "timeout": "red"}
WIDTH = 100


def kv_percent(engine: dict[str, Any]) -> float | None:
    """The engine's KV cache use in percent: its ratio, else used / capacity tokens."""
    ratio = engine.get("kv_usage_ratio")
    used, capacity = engine.get("kv_used_tokens"), engine.get("kv_capacity_tokens")
    if ratio is None and used is not None and capacity:
        ratio = used / capacity
    return None if ratio is None else 100.0 * ratio


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def model(engine: dict[str, Any]) -> str:
    models = engine.get("models") or []
    if not models:
        return "-"
    first = str(models[0].get("name") or "?")
    return first if len(models) == 1 else f"{first} +{len(models) - 1}"


def context(engine: dict[str, Any]) -> str:
    contexts = [m.get("context") for m in engine.get("models") or [] if m.get("context")]
    return "-" if not contexts else str(max(contexts))


def row(engine: dict[str, Any]) -> list[Cell]:
    kv = kv_percent(engine)
    running, waiting = engine.get("requests_running"), engine.get("requests_waiting")
    memory = engine.get("gpu_memory_bytes")
    state = str(engine.get("state") or "?")
    return [
        (str(engine.get("name") or "?"), None),
        (str(engine.get("kind") or "?"), None),
        (model(engine)[:32], None),
        (context(engine), None),
        ("-" if kv is None else f"{kv:.1f}", None),
        (f"{_num(running)}/{_num(waiting)}", None),
        (_num(engine.get("preemptions_per_min"), 1), None),
        ("-" if memory is None else size(memory), None),
        (state, _STATE_COLOURS.get(state, "red")),
    ]


def format_engines(result: dict[str, Any], style: Style = PLAIN) -> str:
    """One row per engine, then the reason of each engine that is not up."""
    engines: list[dict[str, Any]] = result.get("engines") or []
    discovery = result.get("discovery") or {}
    if not engines:
        how = (
            "discovery found none yet" if discovery.get("enabled") else "discovery is off"
        ) + "; add [engines.NAME] tables to perfd.toml"
        return style.paint(f"no engines: {how}", "dim")
    rows: list[list[Cell]] = [[(h, None) for h in HEADER]]
    rows.extend(row(e) for e in engines)
    lines = grid(style, rows, _NUMBERS, sep="  ")
    for e in engines:
        if e.get("state") != "up" and e.get("reason"):
            lines.append(style.paint(f"  {e.get('name')}: {e.get('state')}: {e['reason']}", "dim"))
    return "\n".join(lines)


def format_engine(result: dict[str, Any], style: Style = PLAIN) -> str:
    """One engine in detail: where it is, what it serves, its KV cache and queue, its
    settings, the metric names it fell back to, and the plan check."""
    engines: list[dict[str, Any]] = result.get("engines") or []
    if len(engines) != 1:
        return format_engines(result, style)
    e = engines[0]
    kv = kv_percent(e)
    memory = e.get("gpu_memory_bytes")
    state = str(e.get("state"))
    facts = [
        ("engine", f"{e.get('name')} ({e.get('kind')}, {e.get('source')})"),
        ("url", str(e.get("url"))),
        ("state", state + (f": {e['reason']}" if e.get("reason") else "")),
        ("since", str(e.get("since") or "-")),
        ("read at", str(e.get("read_at") or "-")),
        ("pids", " ".join(str(p) for p in e.get("pids") or []) or "-"),
        ("unit", str(e.get("unit") or "-")),
    ]
    for m in e.get("models") or []:
        extra = [f"context {m['context']}" if m.get("context") else ""]
        if m.get("vram_bytes") is not None:
            extra.append(f"vram {size(m['vram_bytes'])}")
        if m.get("path"):
            extra.append(str(m["path"]))
        facts.append(("model", " · ".join([str(m.get("name")), *[x for x in extra if x]])))
    used, capacity = e.get("kv_used_tokens"), e.get("kv_capacity_tokens")
    facts += [
        (
            "kv cache",
            ("-" if kv is None else f"{kv:.1f}%") + f"  {_num(used)} / {_num(capacity)} tokens",
        ),
        (
            "requests",
            f"{_num(e.get('requests_running'))} running, {_num(e.get('requests_waiting'))} waiting",
        ),
        (
            "preemptions",
            f"{_num(e.get('preemptions_total'))} total, "
            f"{_num(e.get('preemptions_per_min'), 1)}/min",
        ),
        ("prefix hits", _ratio(e.get("prefix_cache_hit_ratio"))),
        ("gpu memory", "-" if memory is None else size(memory)),
    ]
    if e.get("slots_total") is not None:
        facts.append(("slots", f"{_num(e.get('slots_busy'))} busy of {e['slots_total']}"))
    for key, value in sorted((e.get("settings") or {}).items()):
        facts.append((f"  {key}", str(value)))
    if e.get("fallbacks"):
        facts.append(("fell back to", ", ".join(e["fallbacks"])))
    lines = [table(facts)]
    lines.extend(_plan_lines(e.get("plan"), style, e.get("plan_reason")))
    return "\n".join(lines)


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _plan_lines(plan: Any, style: Style, reason: Any = None) -> list[str]:
    """The plan check: the engine's figures beside perfd's, then the flags and notes."""
    if plan is None:
        return [style.paint(f"plan      not checked: {reason}", "dim") if reason else "plan      -"]
    if not isinstance(plan, dict):
        return [f"plan      {plan}"]
    if set(plan) == {"error"}:
        return [style.paint(f"plan      not checked: {plan['error']}", "dim")]
    error = plan.get("kv_error_percent")
    kv_bytes = plan.get("predicted_kv_bytes")
    rows = [
        ("", "engine", "perfd"),
        (
            "kv tokens",
            _num(plan.get("engine_kv_tokens")),
            _num(plan.get("predicted_kv_tokens")) + ("" if error is None else f"  ({error:+.2f}%)"),
        ),
        ("kv bytes", "-", "-" if kv_bytes is None else f"{kv_bytes} ({size(kv_bytes)})"),
        ("context", _num(plan.get("served_context")), _num(plan.get("recommended_context"))),
        (
            "concurrency",
            _num(plan.get("concurrency")),
            _num(plan.get("recommended_concurrency")),
        ),
        ("gpu memory", _bytes(plan.get("gpu_memory_bytes")), _bytes(plan.get("plan_bytes"))),
    ]
    width = max(len(a) for a, _, _ in rows)
    middle = max(len(b) for _, b, _ in rows)
    out = ["plan check"]
    out += [f"  {a:<{width}}  {b:>{middle}}  {c}".rstrip() for a, b, c in rows]
    for flag in plan.get("flags") or []:
        if isinstance(flag, dict):
            out.append(style.paint(f"  ! {flag.get('message')}", "yellow"))
            if flag.get("hint"):
                out.append(f"    {flag['hint']}")
        else:
            out.append(style.paint(f"  ! {flag}", "yellow"))
    out += [style.paint(f"  {note}", "dim") for note in plan.get("notes") or []]
    return out


def _bytes(value: Any) -> str:
    return "-" if not isinstance(value, int) else size(value)


def stats_lines(engines: list[dict[str, Any]], label: int, style: Style) -> list[str]:
    """``engine vllm-8000 up kv 42% 3/0 · ollama-11434 down`` for ``perfctl stats``."""
    if not engines:
        return []
    items = []
    for e in engines:
        state = str(e.get("state"))
        if state != "up":
            items.append(style.paint(f"{e.get('name')} {state}", _STATE_COLOURS.get(state, "red")))
            continue
        kv = kv_percent(e)
        text = f"{e.get('name')} up"
        if kv is not None:
            text += f" kv {kv:.0f}%"
        text += f" {_num(e.get('requests_running'))}/{_num(e.get('requests_waiting'))}"
        items.append(text)
    return [f"{'engine':<{label}}" + " · ".join(items)]


def owner_text(owner: dict[str, Any] | None) -> str:
    """A GPU process's owner: ``engine vllm-8000 (Qwen/Qwen3-8B)``, ``unit vllm.service``."""
    if not owner:
        return "-"
    kind, name = owner.get("kind", "?"), owner.get("name", "?")
    text = str(kind) if name == kind else f"{kind} {name}"
    if owner.get("model"):
        text += f" ({owner['model']})"
    return text
