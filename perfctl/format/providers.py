"""Human output for the remote model providers: ``perfctl providers`` and the providers line of
``perfctl stats`` (pure functions)."""

from __future__ import annotations

from typing import Any

from perfctl.format.base import PLAIN, Cell, Style, grid

HEADER = ("NAME", "BASE URL", "REQUESTS", "RETRIES", "FAILURES", "p50/p95 ms", "CONNS", "REUSE")
_NUMBERS = frozenset(range(2, len(HEADER)))  # right-aligned columns


def ms(value: float | None) -> str:
    """A latency in ms: ``0.42``, ``12.3``, ``1840``; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def failures(facts: dict[str, Any]) -> int:
    """A provider's failed calls, all kinds together."""
    by_kind = facts.get("failures") or {}
    return sum(by_kind.values()) if isinstance(by_kind, dict) else int(by_kind)


def reuse(facts: dict[str, Any]) -> str:
    """Requests per connection opened: ``25.0x`` (1.0x: no connection was reused)."""
    ratio = facts.get("reuse_ratio")
    return "-" if ratio is None else f"{ratio:.1f}x"


def format_providers(result: dict[str, Any], style: Style = PLAIN) -> str:
    """One row per configured provider, then a line for each problem: a key that is not set,
    the failures by kind."""
    providers: dict[str, dict[str, Any]] = result.get("providers") or {}
    if not providers:
        return style.paint(
            "no providers configured: add [providers.NAME] tables to perfd.toml", "dim"
        )
    rows: list[list[Cell]] = [[(h, None) for h in HEADER]]
    notes: list[str] = []
    for name, facts in providers.items():
        rows.append(_row(name, facts))
        notes.extend(_notes(name, facts, style))
    return "\n".join([*grid(style, rows, _NUMBERS, sep="  "), *notes])


def _row(name: str, facts: dict[str, Any]) -> list[Cell]:
    url: Cell = (facts.get("base_url") or "-", None)
    if not facts.get("used"):
        return [(name, None), url, *[("-", None)] * 5, ("not used yet", "dim")]
    latency = facts.get("latency_ms") or {}
    failed = failures(facts)
    return [
        (name, None),
        url,
        (str(facts.get("requests", 0)), None),
        (str(facts.get("retries", 0)), "yellow" if facts.get("retries") else None),
        (str(failed), "red" if failed else None),
        (f"{ms(latency.get('p50'))}/{ms(latency.get('p95'))}", None),
        (str(facts.get("connections_opened", 0)), None),
        (reuse(facts), None),
    ]


def _notes(name: str, facts: dict[str, Any], style: Style) -> list[str]:
    notes = []
    key_from = facts.get("key_from")
    if key_from and not facts.get("key_set"):
        if key_from.startswith("env "):
            problem = f"{key_from[4:]} is not set in perfd's environment"
        else:
            problem = f"{key_from[5:]} is missing, empty or unreadable"
        notes.append(style.paint(f"{name}: no API key: {problem}", "yellow"))
    by_kind = facts.get("failures")
    if isinstance(by_kind, dict) and by_kind:
        kinds = ", ".join(f"{kind} {n}" for kind, n in by_kind.items())
        notes.append(style.paint(f"{name}: failures: {kinds}", "red"))
    return notes


def provider_items(providers: dict[str, dict[str, Any]]) -> list[str]:
    """The items of ``perfctl stats``'s providers line, one per provider used (plain text: the
    line is wrapped by length): ``openrouter 120 req, 3 retries, 1 failed, p50 212 ms``."""
    items = []
    for name, facts in providers.items():
        retries, failed = facts.get("retries", 0), failures(facts)
        p50 = (facts.get("latency_ms") or {}).get("p50")
        text = (
            f"{name} {facts.get('requests', 0)} req, {retries} "
            f"{'retry' if retries == 1 else 'retries'}, {failed} failed, p50 {ms(p50)} ms"
        )
        items.append(text)
    return items
