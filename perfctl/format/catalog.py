"""Human output for ``perfctl recommend --list-models`` and ``--list-gpus``: the built-in
models and GPUs the recommender knows (pure functions)."""

from __future__ import annotations

from typing import Any

from perfctl.format.base import PLAIN, WIDTH, Cell, Style, grid
from perfctl.format.recommend import gib


def format_models(result: dict[str, Any], style: Style = PLAIN) -> str:
    """The built-in models: NAME, PARAMS(B), LAYERS, KV HEADS, HEAD DIM, MAX CTX, ATTENTION
    (``swa`` for a sliding window, ``MoE`` for a mixture of experts)."""
    header = ("NAME", "PARAMS(B)", "LAYERS", "KV HEADS", "HEAD DIM", "MAX CTX", "ATTENTION")
    rows: list[list[Cell]] = [[(h, None) for h in header]]
    for model in result.get("models") or []:
        attention = str(model.get("attention") or "?")
        if model.get("sliding_window"):
            attention += f", swa {model['sliding_window']}"
        total, active = model.get("params") or 0, model.get("active_params")
        if active and active != total:
            attention += ", MoE"
        rows.append(
            [
                (str(model.get("name") or "?"), None),
                (f"{total / 1e9:.2f}", None),
                (str(model.get("layers", "?")), None),
                (str(model.get("kv_heads", "?")), None),
                (str(model.get("head_dim", "?")), None),
                (str(model.get("max_context", "?")), None),
                (attention, None),
            ]
        )
    lines = grid(style, rows, frozenset({1, 2, 3, 4, 5}), sep="  ")
    lines.append(
        style.paint("names are case-insensitive; --json adds aliases, active params", "dim")
    )
    return "\n".join(lines)


def format_gpus(result: dict[str, Any], style: Style = PLAIN) -> str:
    """The built-in GPUs: NAME, MEMORY (GiB), compute capability, aliases."""
    rows: list[list[Cell]] = [[(h, None) for h in ("NAME", "MEMORY", "CC", "ALIASES")]]
    for gpu in result.get("gpus") or []:
        rows.append(
            [
                (str(gpu.get("name") or "?"), None),
                (f"{gib(gpu.get('total_bytes') or 0)} GiB", None),
                (str(gpu.get("compute_capability") or "-"), None),
                (", ".join(gpu.get("aliases") or []) or "-", None),
            ]
        )
    lines = grid(style, rows, frozenset({1}), width=WIDTH, sep="  ")
    lines.append(style.paint("--gpu takes a name, an alias or a size (48GiB)", "dim"))
    return "\n".join(lines)
