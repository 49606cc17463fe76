"""Bits per weight and per KV element: weight formats, KV cache formats, GGML tensor types.

Weight formats (``--quant``) give bits for three kinds of parameter: the linear layers, the
embeddings with the lm_head, and the rest (norms, biases). 16/32-bit formats and the GGUF
file types apply one figure to everything; fp8, int8, int4, GPTQ and AWQ quantize only the
linear layers and keep embeddings and lm_head in 16 bits, as vLLM, bitsandbytes and AutoAWQ do.

Sources (see /work/shared/data/model_gpu_facts.json ``quant_bits_per_weight``):

- GGML block types: bytes per block / weights per block from ggml's block structs
  (Q4_0 18 B/32 = 4.5 bits, Q8_0 34 B/32 = 8.5, Q4_K 144 B/256 = 4.5, Q6_K 210 B/256 = 6.5625).
- GGUF mixes (Q4_K_M, Q5_K_M, Q3_K_*...) are whole-file averages derived from the sizes in
  llama.cpp's ``tools/quantize/quantize.cpp`` table (LLaMA-7B and Llama-3-8B rows), e.g. Q4_K_M
  3.80 GiB for 6.74 B params = 4.84 bits and 4.58 GiB for 8.03 B = 4.90: we use 4.85.
  Approximate: a real file's tensor types (``weights.read_gguf``) are exact.
- GPTQ/AWQ 4-bit, group 128: 4 bits + an fp16 scale and zero per 128 weights = 4.25 bits.
- KV cache: fp16/bf16 2 bytes, fp8 1 byte, llama.cpp q8_0 34 B/32 (8.5 bits) and q4_0 18 B/32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from perfd.recommend.request import RecommendError


@dataclass(frozen=True)
class ParamGroups:
    """Parameter counts by kind: ``embed`` (token and learned position embeddings),
    ``lm_head`` (0 when tied), ``linear`` (matrices in the layers), ``other`` (norms, biases)."""

    embed: int
    lm_head: int
    linear: int
    other: int

    @property
    def total(self) -> int:
        return self.embed + self.lm_head + self.linear + self.other


@dataclass(frozen=True)
class WeightFormat:
    name: str
    linear_bits: float
    embed_bits: float  # embeddings and lm_head
    other_bits: float
    gguf: bool = False  # a llama.cpp file type
    note: str = ""

    def bytes_for(self, groups: ParamGroups) -> int:
        bits = (
            groups.linear * self.linear_bits
            + (groups.embed + groups.lm_head) * self.embed_bits
            + groups.other * self.other_bits
        )
        return math.ceil(bits / 8)


def _uniform(name: str, bits: float, note: str = "", gguf: bool = False) -> WeightFormat:
    return WeightFormat(name, bits, bits, bits, gguf, note)


def _linear(name: str, bits: float, note: str) -> WeightFormat:
    return WeightFormat(name, bits, 16.0, 16.0, False, note)


WEIGHT_FORMATS: dict[str, WeightFormat] = {
    f.name.lower(): f
    for f in (
        _uniform("fp32", 32.0),
        _uniform("bf16", 16.0),
        _uniform("fp16", 16.0),
        _linear("fp8", 8.0, "fp8 e4m3 linear layers; embeddings and lm_head in 16 bits"),
        _linear("int8", 8.0, "int8 linear layers (bitsandbytes LLM.int8, W8A16)"),
        _linear("int4", 4.0, "4-bit linear layers (bitsandbytes nf4), no scales counted"),
        _linear("gptq", 4.25, "GPTQ 4-bit g128: fp16 scale and zero per 128 weights"),
        _linear("awq", 4.25, "AWQ 4-bit g128: fp16 scale and zero per 128 weights"),
        _uniform("F32", 32.0, gguf=True),
        _uniform("F16", 16.0, gguf=True),
        _uniform("Q8_0", 8.5, "block 34 B / 32", gguf=True),
        _uniform("Q6_K", 6.5625, "block 210 B / 256", gguf=True),
        _uniform("Q5_K_M", 5.7, "mix, file average (approx.)", gguf=True),
        _uniform("Q5_K_S", 5.55, "mix, file average (approx.)", gguf=True),
        _uniform("Q5_1", 6.0, "block 24 B / 32", gguf=True),
        _uniform("Q5_0", 5.5, "block 22 B / 32", gguf=True),
        _uniform("Q4_K_M", 4.85, "mix, file average (approx.)", gguf=True),
        _uniform("Q4_K_S", 4.6, "mix, file average (approx.)", gguf=True),
        _uniform("Q4_1", 5.0, "block 20 B / 32", gguf=True),
        _uniform("Q4_0", 4.5, "block 18 B / 32", gguf=True),
        _uniform("Q3_K_L", 4.3, "mix, file average (approx.)", gguf=True),
        _uniform("Q3_K_M", 3.95, "mix, file average (approx.)", gguf=True),
        _uniform("Q3_K_S", 3.6, "mix, file average (approx.)", gguf=True),
        _uniform("Q2_K", 3.3, "mix, file average (approx.)", gguf=True),
    )
}
_WEIGHT_ALIASES = {
    "float32": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "fp8_e4m3": "fp8",
    "nf4": "int4",
    "q4_k": "q4_k_m",
    "q5_k": "q5_k_m",
    "q3_k": "q3_k_m",
}


def weight_format(name: str) -> WeightFormat:
    """The weight format called ``name`` (case-insensitive); RecommendError if unknown."""
    key = name.strip().lower()
    found = WEIGHT_FORMATS.get(_WEIGHT_ALIASES.get(key, key))
    if found is None:
        allowed = tuple(f.name for f in WEIGHT_FORMATS.values())
        raise RecommendError(
            f"unknown weight format {name!r}: use one of {', '.join(allowed)}",
            option="quant",
            value=name,
            allowed=allowed,
        )
    return found


@dataclass(frozen=True)
class KvFormat:
    """A KV cache element format: ``block_bytes`` per ``block_elements`` elements."""

    name: str
    block_bytes: int
    block_elements: int

    @property
    def bits(self) -> float:
        return 8 * self.block_bytes / self.block_elements

    def bytes_for(self, elements: int) -> int:
        return -(-elements * self.block_bytes // self.block_elements)


KV_FORMATS: dict[str, KvFormat] = {
    f.name: f
    for f in (
        KvFormat("fp16", 2, 1),
        KvFormat("bf16", 2, 1),
        KvFormat("fp8", 1, 1),
        KvFormat("q8_0", 34, 32),
        KvFormat("q4_0", 18, 32),
        KvFormat("fp32", 4, 1),
    )
}
_KV_ALIASES = {
    "float16": "fp16",
    "f16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "f32": "fp32",
    "float32": "fp32",
}


def kv_format(name: str) -> KvFormat:
    """The KV cache format called ``name``; RecommendError if unknown."""
    key = name.strip().lower()
    found = KV_FORMATS.get(_KV_ALIASES.get(key, key))
    if found is None:
        allowed = tuple(KV_FORMATS)
        raise RecommendError(
            f"unknown KV cache dtype {name!r}: use one of {', '.join(allowed)}",
            option="kv_dtype",
            value=name,
            allowed=allowed,
        )
    return found


# GGML tensor types the GGUF reader sizes: id -> (name, bytes per block, weights per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 4, 1),
    1: ("F16", 2, 1),
    2: ("Q4_0", 18, 32),
    3: ("Q4_1", 20, 32),
    6: ("Q5_0", 22, 32),
    7: ("Q5_1", 24, 32),
    8: ("Q8_0", 34, 32),
    10: ("Q2_K", 84, 256),
    11: ("Q3_K", 110, 256),
    12: ("Q4_K", 144, 256),
    13: ("Q5_K", 176, 256),
    14: ("Q6_K", 210, 256),
    15: ("Q8_K", 292, 256),
    30: ("BF16", 2, 1),
}
# Types ggml defines that the reader does not size: named in the error message.
GGML_UNSIZED: dict[int, str] = {
    4: "Q4_2 (removed)",
    5: "Q4_3 (removed)",
    9: "Q8_1",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}


def ggml_tensor_bytes(type_id: int, elements: int, tensor: str) -> int:
    """Bytes of a GGML tensor of ``elements`` weights; RecommendError for unsized types."""
    known = GGML_TYPES.get(type_id)
    if known is None:
        name = GGML_UNSIZED.get(type_id, "unknown")
        sized = ", ".join(n for n, _, _ in GGML_TYPES.values())
        raise RecommendError(
            f"GGUF tensor {tensor!r} has ggml type {type_id} ({name}), which this reader "
            f"cannot size; supported types: {sized}",
            option="weights_path",
            value=tensor,
        )
    _, block_bytes, block_elements = known
    return -(-elements // block_elements) * block_bytes
