"""What a GGUF model costs llama.cpp, for the llama loader: the pure math lives in
perfd.recommend.llama_memory (the engines' plan check uses it too); this module gives the
loader its names and turns a bad file into a LoaderError."""

from __future__ import annotations

from perfd.loaders.base import LoaderError
from perfd.recommend import llama_memory as _memory
from perfd.recommend.llama_memory import (
    CTX_PAD,
    KV_TYPES,
    GgufFacts,
    estimate,
    facts_from,
    kv_by_device,
    kv_bytes,
    kv_cells,
    layer_devices,
    row_bytes,
    weights_by_device,
)
from perfd.recommend.request import RecommendError

__all__ = [
    "CTX_PAD",
    "KV_TYPES",
    "GgufFacts",
    "estimate",
    "facts_from",
    "kv_by_device",
    "kv_bytes",
    "kv_cells",
    "layer_devices",
    "read_facts",
    "row_bytes",
    "weights_by_device",
]


def read_facts(path: str, model: str) -> GgufFacts:
    """The facts of the GGUF file at ``path``; LoaderError says what is wrong with it."""
    try:
        return _memory.read_facts(path, model)
    except RecommendError as exc:
        raise LoaderError(str(exc)) from None
