"""The ranges a model description must be in, checked before any arithmetic is done with it.

Anyone who can reach perfd's read-only socket can send ``recommend`` a config.json's contents,
so every number the recommender reads from one is checked here first: a whole number (an int,
or a float with no fraction such as 4096.0; never a boolean, NaN or infinity) within the range
below, else a ``RecommendError`` that names the key, the value and the range. The ranges hold
every published decoder-only model with room to spare (the largest today have 126 layers,
a hidden size of 25,600, 512 experts and 10 M tokens of context) and keep every figure the
plan computes far below 2**80, so no request can make perfd compute for long or answer at
length. docs/recommend.md lists them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from perfd.recommend.request import MAX_CONTEXT, MAX_WORD, RecommendError, shown

MAX_LAYERS: Final = 4096
MAX_LIST: Final = MAX_LAYERS  # entries in layer_types and mlp_only_layers
_WIDTH: Final = 1 << 20  # hidden sizes
_FFN: Final = 1 << 22  # MLP widths
_HEADS: Final = 4096
_HEAD_DIM: Final = 16384
_EXPERTS: Final = 1 << 16

# The allowed range of each key, under the first of its names (the aliases share it).
RANGES: Final[dict[str, tuple[int, int]]] = {
    "num_hidden_layers": (1, MAX_LAYERS),
    "hidden_size": (1, _WIDTH),
    "num_attention_heads": (1, _HEADS),
    "num_key_value_heads": (1, _HEADS),
    "head_dim": (1, _HEAD_DIM),
    "intermediate_size": (1, _FFN),
    "max_position_embeddings": (1, MAX_CONTEXT),
    "vocab_size": (1, 1 << 24),
    "word_embed_proj_dim": (1, _WIDTH),
    "num_local_experts": (0, _EXPERTS),
    "num_experts_per_tok": (1, _EXPERTS),
    "moe_intermediate_size": (1, _FFN),
    "first_k_dense_replace": (0, MAX_LAYERS),
    "moe_layer_freq": (0, MAX_LAYERS),  # 0 counts as 1
    "n_shared_experts": (0, _EXPERTS),
    "decoder_sparse_step": (0, MAX_LAYERS),  # 0 counts as 1
    "shared_expert_intermediate_size": (0, _FFN),
    "sliding_window_pattern": (0, MAX_LAYERS),  # 0 counts as 6
    "max_window_layers": (0, MAX_LAYERS),
    "kv_lora_rank": (1, _HEAD_DIM),
    "q_lora_rank": (0, _WIDTH),  # 0: no q compression
    "qk_rope_head_dim": (0, _HEAD_DIM),
    "qk_nope_head_dim": (0, _HEAD_DIM),
    "v_head_dim": (1, _HEAD_DIM),
}


def _first(cfg: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    for key in keys:
        if cfg.get(key) is not None:
            return key, cfg[key]
    return keys[0], None


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (4096 or 4096.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def config_int(cfg: Mapping[str, Any], where: str, *keys: str, default: int | None = None) -> int:
    """The first of ``keys`` that ``cfg`` holds, checked against RANGES[keys[0]]; ``default``
    when none is there; RecommendError when none is there and there is no default."""
    key, value = _first(cfg, keys)
    if value is None:
        if default is not None:
            return default
        raise RecommendError(
            f"{where}: no {' / '.join(keys)} in the config; a Hugging Face config.json "
            "of a decoder-only transformer is expected",
            option="config_json",
            value=keys[0],
        )
    low, high = RANGES[keys[0]]
    number = _whole(value)
    if number is None or not low <= number <= high:
        raise RecommendError(
            f"{where}: {key} must be a whole number from {low} to {high}, not {shown(value)}",
            option="config_json",
            value=key,
        )
    return number


def config_text(cfg: Mapping[str, Any], where: str, key: str) -> str:
    """A short text value such as ``model_type`` ("" when absent)."""
    value = cfg.get(key)
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_WORD:
        raise RecommendError(
            f"{where}: {key} must be a string of at most {MAX_WORD} characters, not {shown(value)}",
            option="config_json",
            value=key,
        )
    return value


def config_list(cfg: Mapping[str, Any], where: str, key: str) -> list[Any]:
    """A list such as ``layer_types`` ([] when absent), at most MAX_LIST entries."""
    value = cfg.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise RecommendError(
            f"{where}: {key} must be a list of at most {MAX_LIST} entries, not {shown(value)}",
            option="config_json",
            value=key,
        )
    return value


def layer_indexes(cfg: Mapping[str, Any], where: str, key: str) -> frozenset[int]:
    """A list of layer indexes such as ``mlp_only_layers``: whole numbers from 0 to
    MAX_LAYERS - 1."""
    found: set[int] = set()
    for item in config_list(cfg, where, key):
        index = _whole(item)
        if index is None or not 0 <= index < MAX_LAYERS:
            raise RecommendError(
                f"{where}: {key} must list layer indexes from 0 to {MAX_LAYERS - 1}, "
                f"not {shown(item)}",
                option="config_json",
                value=key,
            )
        found.add(index)
    return frozenset(found)


def multiples_below(count: int, step: int) -> int:
    """How many of 0, 1, ..., count - 1 are multiples of ``step`` (>= 1), without a loop."""
    return -(-max(0, count) // step)
