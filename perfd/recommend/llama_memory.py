"""What a GGUF model costs llama.cpp, computed by perfd from the file's header alone.

Pure arithmetic over the header that perfd.recommend.weights reads (tensor sizes, the
``<arch>.*`` metadata); llama.cpp is neither imported nor asked. Two parts:

- **weights**: the bytes of every tensor in the file, each from its ggml type's block size.
  Where they live follows llama.cpp's ``llama_model::load_tensors``: the input embedding
  (``token_embd``) always on the CPU; with ``n_gpu_layers = k`` the last ``k`` of the
  ``n_layer + 1`` layers on the GPU, where layer ``n_layer`` is the output layer
  (``output_norm``, ``output``): ``i_gpu_start = max(n_layer + 1 - k, 0)``. A model without
  ``output.weight`` (tied embeddings) gets a copy of ``token_embd`` on the output's device
  when that is a GPU.
- **kv_cache**: llama.cpp's ``llama_kv_cache`` allocates, for each layer ``il``, a K tensor of
  ``n_embd_k_gqa(il) x kv_size`` and a V tensor of ``n_embd_v_gqa(il) x kv_size`` elements of
  the cache types (f16 by default), where ``n_embd_k_gqa = n_head_kv(il) x n_embd_head_k``
  (``key_length``, else ``n_embd / n_head``) and likewise for V (``value_length``). The cells
  are ``kv_size = GGML_PAD(n_ctx, 256)`` (``llama_context``'s constructor pads the context to
  a multiple of 256; ``n_ctx = 0`` takes the model's ``context_length``), one stream. With
  ``n_seq_max = N`` sequences and no unified cache (llama-server's ``--parallel N``) there are
  N streams of ``GGML_PAD(n_ctx / N, 256)`` cells each: the bytes of ``N x`` that. MLA
  models (``key_length_mla`` in the header) cache K only. With offloading, each layer's cache
  lives on that layer's device. The ``llama_kv_cache: size = ... MiB`` line llama.cpp logs is
  the sum of those tensors' bytes.

Sliding-window layers (Gemma-2/3...) are counted at the full context, so for those models the
KV figure is an upper bound; recurrent models (Mamba, RWKV) hold no KV cache but a small
state that is not counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfd.recommend.precision import GGML_TYPES
from perfd.recommend.request import RecommendError
from perfd.recommend.weights import WeightsInfo, read_gguf

CTX_PAD = 256  # llama_context: cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256)
# KV cache types by llama.cpp's name -> (bytes per block, elements per block)
KV_TYPES = {name.lower(): (size, block) for name, size, block in GGML_TYPES.values()}
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_INPUT = ("token_embd.", "token_embd_norm.", "token_types.", "position_embd.")
_RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})


@dataclass(frozen=True)
class GgufFacts:
    """What the memory math needs of one GGUF file."""

    path: str
    arch: str
    n_layer: int
    n_ctx_train: int
    k_widths: tuple[int, ...]  # n_embd_k_gqa per layer
    v_widths: tuple[int, ...]  # n_embd_v_gqa per layer (0: no V cache, as for MLA)
    sizes: dict[str, int]  # tensor name -> bytes

    @property
    def weights_bytes(self) -> int:
        return sum(self.sizes.values())


def read_facts(path: str, model: str) -> GgufFacts:
    """The facts of the GGUF file at ``path``; RecommendError says what is wrong with it."""
    try:
        return facts_from(read_gguf(Path(path)))
    except RecommendError as exc:
        raise RecommendError(f"model {model!r}: {exc}", option="model", value=path) from None


def facts_from(info: WeightsInfo) -> GgufFacts:
    """GgufFacts from a GGUF header's metadata and tensor sizes."""
    meta = info.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise RecommendError(f"{info.path}: no general.architecture in the GGUF metadata")

    def number(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RecommendError(f"{info.path}: {arch}.{key} is {value!r}, not a count")
        return value

    n_layer = number("block_count")
    n_embd = number("embedding_length")
    heads = _per_layer(meta.get(f"{arch}.attention.head_count"), n_layer, info.path)
    kv_given = meta.get(f"{arch}.attention.head_count_kv")
    kv_heads = heads if kv_given is None else _per_layer(kv_given, n_layer, info.path)
    if arch in _RECURRENT:
        kv_heads = (0,) * n_layer
    n_head = heads[0] if heads else 0
    if n_head == 0 and any(kv_heads):
        raise RecommendError(f"{info.path}: {arch}.attention.head_count is missing or 0")
    head_k = number("attention.key_length", n_embd // n_head if n_head else 0)
    head_v = number("attention.value_length", n_embd // n_head if n_head else 0)
    mla = f"{arch}.attention.key_length_mla" in meta
    return GgufFacts(
        path=info.path,
        arch=arch,
        n_layer=n_layer,
        n_ctx_train=number("context_length", 0),
        k_widths=tuple(h * head_k for h in kv_heads),
        v_widths=tuple(0 if mla else h * head_v for h in kv_heads),
        sizes=dict(info.sizes),
    )


def _per_layer(value: Any, n_layer: int, path: str) -> tuple[int, ...]:
    """A head count given once or per layer, as one count per layer."""
    if isinstance(value, list):
        if len(value) != n_layer or not all(_count(v) for v in value):
            raise RecommendError(f"{path}: a per-layer head count is not {n_layer} counts")
        return tuple(value)
    if value is None:
        return (0,) * n_layer
    if not _count(value):
        raise RecommendError(f"{path}: a head count is {value!r}, not a count")
    return (value,) * n_layer


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def kv_cells(n_ctx: int, n_ctx_train: int) -> int:
    """The KV cache cells llama.cpp allocates for a context of ``n_ctx`` (0: the model's)."""
    wanted = n_ctx or n_ctx_train
    return -(-wanted // CTX_PAD) * CTX_PAD


def row_bytes(kv_type: str, elements: int) -> int:
    """Bytes of one cache row of ``elements`` values of ``kv_type`` (``ggml_row_size``)."""
    size, block = KV_TYPES[kv_type]
    return -(-elements // block) * size


def layer_devices(n_layer: int, n_gpu_layers: int, gpu: str | None) -> list[str]:
    """The device of each of the ``n_layer + 1`` layers (the last: the output layer)."""
    if gpu is None or n_gpu_layers == 0:
        return ["cpu"] * (n_layer + 1)
    wanted = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    start = n_layer + 1 - wanted
    return ["cpu" if il < start else gpu for il in range(n_layer + 1)]


def weights_by_device(facts: GgufFacts, n_gpu_layers: int, gpu: str | None) -> dict[str, int]:
    """The weights' bytes on each device (see the module docstring)."""
    devices = layer_devices(facts.n_layer, n_gpu_layers, gpu)
    out: dict[str, int] = {}
    for name, size in facts.sizes.items():
        block = _BLOCK.match(name)
        if block and int(block.group(1)) < facts.n_layer:
            device = devices[int(block.group(1))]
        elif name.startswith(_INPUT):
            device = "cpu"
        else:
            device = devices[facts.n_layer]
        out[device] = out.get(device, 0) + size
    output_device = devices[facts.n_layer]
    if output_device != "cpu" and "output.weight" not in facts.sizes:
        tied = facts.sizes.get("token_embd.weight", 0)  # duplicated onto the output's device
        out[output_device] = out.get(output_device, 0) + tied
    return {device: size for device, size in out.items() if size}


def kv_by_device(
    facts: GgufFacts,
    cells: int,
    n_gpu_layers: int,
    gpu: str | None,
    *,
    type_k: str = "f16",
    type_v: str = "f16",
) -> dict[str, int]:
    """The KV cache's bytes on each device for ``cells`` cells (see the module docstring)."""
    devices = layer_devices(facts.n_layer, n_gpu_layers, gpu)
    out: dict[str, int] = {}
    for il, (k_width, v_width) in enumerate(zip(facts.k_widths, facts.v_widths, strict=True)):
        if not k_width and not v_width:
            continue
        size = cells * (row_bytes(type_k, k_width) + row_bytes(type_v, v_width))
        out[devices[il]] = out.get(devices[il], 0) + size
    return out


def kv_bytes(facts: GgufFacts, cells: int, type_k: str = "f16", type_v: str = "f16") -> int:
    """The whole KV cache's bytes for ``cells`` cells."""
    return sum(kv_by_device(facts, cells, 0, None, type_k=type_k, type_v=type_v).values())


def estimate(facts: GgufFacts, n_ctx: int) -> int:
    """The bytes a load with context ``n_ctx`` will hold: the weights and the f16 KV cache."""
    return facts.weights_bytes + kv_bytes(facts, kv_cells(n_ctx, facts.n_ctx_train))
