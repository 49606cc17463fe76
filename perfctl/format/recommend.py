"""Human output for `perfctl recommend`: pure functions of its result (``perfd.recommend``
describes every key) and of the model and GPU lists.

Every line fits 80 columns except the engine settings: each is printed whole, alone on its
line and undecorated, so that it pastes as is (a wrapped command would not).
"""

from __future__ import annotations

import textwrap
from typing import Any

from perfctl.format.base import PLAIN, WIDTH, Cell, Style, glyph, grid, size

GiB = 1 << 30
_LABEL = 10  # "hardware  ", "limit     "
_ENGINES = {"vllm": "vLLM", "llama.cpp": "llama.cpp", "ollama": "Ollama"}


def gib(n: float) -> str:
    """Bytes in GiB with two decimals, no unit: ``55.36``."""
    return f"{n / GiB:.2f}"


def params(n: int | None) -> str:
    """``8.03B``, ``124M``; ``?`` when unknown."""
    if not n:
        return "?"
    if n >= 10**9:
        return f"{n / 1e9:.2f}B"
    if n >= 10**6:
        return f"{n / 1e6:.0f}M"
    return f"{n / 1e3:.0f}K"


def _prose(head: str, text: str, indent: int = _LABEL) -> list[str]:
    """``head`` then ``text``, word-wrapped to 80 columns, continuation lines indented."""
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=head,
        subsequent_indent=" " * indent,
        break_on_hyphens=False,
    ) or [head.rstrip()]


def _items(head: str, items: list[str], style: Style) -> list[str]:
    """``head`` then ``items`` joined by `` · ``, wrapped to 80 columns between items."""
    sep = f" {glyph(style, '·')} "
    lines, current = [], head
    for item in items:
        piece = item if current == head else sep + item
        if current != head and len(current) + len(piece) > WIDTH:
            lines.append(current)
            current, piece = " " * len(head), item
        current += piece
    lines.append(current)
    return [_clip(line, len(head), style) for line in lines]


def _clip(line: str, keep: int, style: Style) -> str:
    """A line over 80 columns loses the middle of its text, after its first ``keep``
    characters: a long path keeps its file name."""
    if len(line) <= WIDTH:
        return line
    dots = glyph(style, "…")
    return line[:keep] + dots + line[len(line) - (WIDTH - keep - len(dots)) :]


# -- the plan ---------------------------------------------------------------------------------


def format_recommend(result: dict[str, Any], style: Style = PLAIN) -> str:
    """The model, the hardware, the budget, the binding limit, the context table with the
    recommended point, the tips, then the settings for vLLM, llama.cpp and Ollama; when the
    model does not fit, why (with the shortfall) and the smallest change that fits."""
    lines = _model_lines(result, style)
    lines += _hardware_lines(result, style)
    lines += _budget_lines(result)
    fits, point = result.get("fits"), result.get("recommended")
    if fits and point:
        verdict = f"{_point(point)} (up to {result.get('max_model_len', 0)} tokens for one)"
        lines.append(style.paint("fits", "green") + " " * (_LABEL - len("fits")) + verdict)
    else:
        lines += _shortfall_lines(result, style)
    limit = result.get("binding_limit")
    detail = result.get("binding_detail") or ""
    if limit and (fits or detail != result.get("reason")):
        lines += _prose(f"{'limit':<{_LABEL}}", f"{limit}: {detail}" if detail else limit)
    elif limit:
        lines.append(f"{'limit':<{_LABEL}}{limit}")
    for note in result.get("notes") or []:
        lines += [style.paint(line, "dim") for line in _prose(f"{'note':<{_LABEL}}", note)]
    lines += _table_lines(result, style)
    lines += _tip_lines(result, style)
    if fits and point:
        lines += [
            "",
            f"settings for {_point(point)} (each line below pastes as is):",
        ]
        lines += settings_lines(result.get("flags") or {}, style)
    else:
        lines += _smallest_change_lines(result, style)
    return "\n".join(lines)


def _model_lines(result: dict[str, Any], style: Style) -> list[str]:
    model = result.get("model") or {}
    count = f"{params(model.get('params'))} params"
    active = model.get("active_params")
    if active and active != model.get("params"):
        count += f" ({params(active)} active)"
    name = str(model.get("name") or "?")
    items = [
        name,
        count,
        f"{model.get('layers', '?')} layers",
        f"{model.get('kv_heads', '?')} KV heads",
        f"head_dim {model.get('head_dim', '?')}",
        _attention(model),
    ]
    precision = result.get("precision") or {}
    weights, kv = precision.get("weights"), precision.get("kv_cache")
    if weights:
        items.append(
            f"{weights} weights and KV" if weights == kv else f"{weights} weights, {kv} KV"
        )
    if model.get("moe"):
        moe = model["moe"]
        items.append(f"MoE {moe.get('experts_per_token')} of {moe.get('experts')} experts")
    source = model.get("source")
    if source and source != "catalog":
        items.append(f"from {source}")
    lines = _items(f"{'model':<{_LABEL}}", items, style)  # wrapped by the plain widths
    lines[0] = lines[0][:_LABEL] + lines[0][_LABEL:].replace(name, style.paint(name, "bold"), 1)
    return lines


def _attention(model: dict[str, Any]) -> str:
    """``gqa``, ``gqa, window 4096 on 21 layers``, ``mla (kv_lora_rank 512)``."""
    text = str(model.get("attention") or "?")
    window = model.get("sliding_window")
    if window:
        layers = model.get("windowed_layers")
        text += f", window {window}" + (f" on {layers} layers" if layers else "")
    mla = model.get("mla")
    if mla:
        text += f" (kv_lora_rank {mla.get('kv_lora_rank')})"
    return text


def _hardware_lines(result: dict[str, Any], style: Style) -> list[str]:
    hardware = result.get("hardware") or {}
    engine = str(result.get("engine") or "vllm")
    head = f"{'hardware':<{_LABEL}}"
    source = hardware.get("source") or "?"
    if source == "kv_budget":
        budget = (result.get("budget") or {}).get("usable_bytes") or 0
        return _items(
            head, [f"none: a {gib(budget)} GiB KV cache budget", f"engine {engine}"], style
        )
    items = []
    gpus = hardware.get("gpus") or []
    if gpus:
        items.append(_gpus_text(gpus))
        tensor_parallel = hardware.get("tensor_parallel") or 1
        if tensor_parallel > 1:
            items.append(f"tensor parallel {tensor_parallel}")
    else:
        items.append("CPU only")
    ram = hardware.get("ram_total_bytes") or 0
    available = hardware.get("ram_available_bytes") or 0
    if ram:
        items.append(
            f"RAM {gib(ram)} GiB" + (f" ({gib(available)} available)" if available != ram else "")
        )
    if hardware.get("cgroup_limit_bytes") is not None:
        items.append(f"cgroup limit {gib(hardware['cgroup_limit_bytes'])} GiB")
    if source != "planned" and hardware.get("cpu_count"):
        items.append(f"{hardware['cpu_count']} cpus")
    items += [source, f"engine {engine}"]
    return _items(head, items, style)


def _gpus_text(gpus: list[dict[str, Any]]) -> str:
    """``1 x H100-80GB, 79.65 GiB`` (``, 75.20 free`` when less is free); mixed: one by one."""
    first = gpus[0]
    same = all(
        (g.get("name"), g.get("total_bytes"), g.get("free_bytes"))
        == (first.get("name"), first.get("total_bytes"), first.get("free_bytes"))
        for g in gpus
    )
    shown = [first] if same else gpus
    parts = []
    for gpu in shown:
        total, free = gpu.get("total_bytes") or 0, gpu.get("free_bytes") or 0
        text = f"{gpu.get('name', 'GPU')}, {gib(total)} GiB"
        if free != total:
            text += f" ({gib(free)} free)"
        parts.append(f"{len(gpus)} x {text}" if same else f"GPU {gpu.get('index', '?')} {text}")
    return "; ".join(parts)


def _budget_lines(result: dict[str, Any]) -> list[str]:
    """free -> usable -> weights -> overhead -> KV cache, per device, in GiB."""
    budget = result.get("budget") or {}
    device = budget.get("device")
    per_token = budget.get("kv_bytes_per_token") or result.get("kv_bytes_per_token") or 0
    tokens = f"{result.get('max_tokens', 0)} tokens of {size(per_token)}"
    if device == "kv_budget":
        return [
            f"{'budget':<{_LABEL}}KV cache {gib(budget.get('usable_bytes') or 0)} GiB "
            f"(--kv-budget): {tokens}"
        ]
    devices = budget.get("devices") or 1
    where = "of RAM" if device == "cpu" else ("per GPU" if devices > 1 else "of the GPU")
    utilization = budget.get("utilization", 0.9)
    if result.get("engine") == "vllm" and device == "gpu":
        usable_note = f"total x {utilization:g} (--gpu-memory-utilization)"
    else:
        usable_note = f"free less {gib(budget.get('margin_bytes') or 0)} GiB margin"
    weights_note = ""
    if budget.get("ram_weights_bytes"):
        weights_note = f"+ {gib(budget['ram_weights_bytes'])} GiB kept in RAM"
    overhead = budget.get("overhead") or {}
    overhead_note = ", ".join(
        f"{name.removesuffix('_bytes').replace('_', ' ')} {gib(n)}" for name, n in overhead.items()
    )
    rows = [
        ("free", budget.get("free_bytes") or 0, f"of {gib(budget.get('total_bytes') or 0)} GiB"),
        ("usable", budget.get("usable_bytes") or 0, usable_note),
        ("weights", -(budget.get("weights_bytes") or 0), weights_note),
        ("overhead", -(budget.get("overhead_bytes") or 0), overhead_note),
        ("KV cache", budget.get("kv_budget_bytes") or 0, tokens),
    ]
    lines = [f"{'budget':<{_LABEL}}in GiB {where}:"]
    for name, n, note in rows:
        lines.append(f"{'':<{_LABEL}}  {name:<9}{gib(n):>8}  {note}".rstrip()[:WIDTH])
    return lines


def _shortfall_lines(result: dict[str, Any], style: Style) -> list[str]:
    short = result.get("shortfall_bytes")
    head = "does not fit" + (f": short by {gib(short)} GiB" if short else "")
    lines = [style.paint(head, "red")]
    reason = result.get("reason")
    if reason:
        lines += _prose("  ", str(reason), 2)
    return lines


def _table_lines(result: dict[str, Any], style: Style) -> list[str]:
    """CONTEXT, SEQUENCES (that fit), KV PER SEQUENCE; the recommended row marked."""
    table = result.get("table") or []
    if not table:
        return []
    if not any(row.get("max_sequences") for row in table):
        return [
            "",
            f"no context in {table[0]['context']}..{table[-1]['context']} holds even one sequence",
        ]
    point = result.get("recommended") or {}
    mark = glyph(style, "→")
    rows: list[list[Cell]] = [
        [("", None), ("CONTEXT", None), ("SEQUENCES", None), ("KV PER SEQUENCE", None), ("", None)]
    ]
    for row in table:
        chosen = row.get("context") == point.get("context")
        fits_n = int(row.get("max_sequences") or 0)
        note = ""
        if chosen:
            note = "recommended"
            if point.get("max_sequences") != fits_n:
                note += f": {point.get('max_sequences')} (max_num_seqs cap)"
        colour = "bold" if chosen else ("dim" if fits_n == 0 else None)
        rows.append(
            [
                (mark if chosen else "", colour),
                (str(row.get("context")), colour),
                (str(fits_n), colour),
                (size(row.get("kv_bytes") or 0), colour),
                (note, "green" if chosen else None),
            ]
        )
    return ["", *grid(style, rows, frozenset({1, 2, 3}), sep="  ")]


def _tip_lines(result: dict[str, Any], style: Style) -> list[str]:
    tips = result.get("tips") or []
    if not tips:
        return []
    budget = result.get("budget") or {}
    saved = {"cpu": "RAM saved", "gpu": "memory saved per GPU"}.get(budget.get("device") or "")
    arrow = glyph(style, "→")
    lines = ["", f"tips, largest saving first ({saved or 'memory saved'} {arrow} what then fits):"]
    width = max(len(gib(tip.get("bytes_saved") or 0)) for tip in tips) + 4
    for tip in tips:
        head = f"  {gib(tip.get('bytes_saved') or 0) + ' GiB':>{width}}  "
        text = f"{tip.get('change', '?')} {arrow} {_outcome(tip.get('result'))}"
        lines += _prose(head, text, len(head))
    return lines


def _outcome(numbers: dict[str, Any] | None) -> str:
    """What a changed plan gives: ``65536 tokens x 15 sequences``, or ``still does not fit``."""
    point = (numbers or {}).get("recommended")
    if not numbers or not numbers.get("fits") or not point:
        return "still does not fit"
    return _point(point)


def _point(point: dict[str, Any]) -> str:
    """``32768 tokens x 13 sequences``."""
    return f"{point['context']} tokens x {_plural(point['max_sequences'], 'sequence')}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _smallest_change_lines(result: dict[str, Any], style: Style) -> list[str]:
    change = result.get("smallest_change")
    if not change:
        return []
    lines = [""]
    if change.get("kind") == "none" or not change.get("result"):
        lines += _prose("smallest change: ", str(change.get("change") or "none found"), 2)
        return lines
    head = "smallest change that fits:"
    changed = _prose(f"{head} ", str(change.get("change")), 2)
    changed[0] = changed[0].replace(head, style.paint(head, "bold"), 1)
    lines += changed
    lines.append(f"  gives {_outcome(change.get('result'))}; its settings (each pastes as is):")
    lines += settings_lines(change.get("flags") or {}, style)
    return lines


def settings_lines(flags: dict[str, Any], style: Style = PLAIN) -> list[str]:
    """Each engine's settings alone on a line, exactly as given, under a ``#`` comment line
    saying where it goes (comments paste harmlessly into a shell too)."""
    lines: list[str] = []

    def comment(text: str) -> None:
        lines.append(style.paint(f"# {text}", "dim"))

    if flags.get("vllm"):
        if flags.get("vllm_env"):
            comment("vLLM: the environment, then the flags of vllm serve MODEL")
            lines.append(flags["vllm_env"])
        else:
            comment("vLLM: vllm serve MODEL with")
        lines.append(flags["vllm"])
    if flags.get("llama.cpp"):
        comment("llama.cpp: llama-server -m MODEL.gguf with")
        lines.append(flags["llama.cpp"])
    if flags.get("ollama"):
        comment("Ollama: the environment of ollama serve")
        lines.append(flags["ollama"])
    if flags.get("ollama_modelfile"):
        comment("Ollama: the Modelfile line")
        lines.append(flags["ollama_modelfile"])
    if flags.get("note"):
        comment(f"note: {flags['note']}")
    return lines
