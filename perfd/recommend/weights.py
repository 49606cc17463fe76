"""Weight files read by their headers alone: safetensors files or directories, GGUF files.

safetensors: an 8-byte little-endian header length N, then N bytes of JSON mapping each
tensor to its dtype, shape and data offsets. A directory is read through its
``model.safetensors.index.json`` (every shard it names) or else every ``*.safetensors`` in it;
a ``config.json`` beside the weights gives the architecture.

GGUF (v2 and v3): magic ``GGUF``, version (u32), tensor count (u64), metadata count (u64),
the metadata key/value pairs (values skipped by type, architecture keys kept), then each
tensor's name, dims, ggml type and offset. Bytes come from the ggml type's block size
(``precision.GGML_TYPES``); the reader stops at the end of the tensor infos and never reads
tensor data (it reads ahead at most one 64 KiB chunk). Split files (``-00001-of-00003.gguf``)
are read together.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from perfd.recommend.precision import GGML_TYPES, ParamGroups, ggml_tensor_bytes
from perfd.recommend.request import RecommendError

_SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
    "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors format's own limit
_EMBEDDING_NAMES = (
    "token_embd.weight",
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
)
_POSITION_NAMES = ("position_embd.weight", "wpe.weight", "embed_positions.weight")
_LM_HEAD_NAMES = ("output.weight", "lm_head.weight")


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file's headers say: total bytes and params, bytes by dtype, the input
    embedding's bytes (llama.cpp keeps it in RAM), the config or GGUF metadata found, and
    each tensor's bytes by name (where llama.cpp puts each layer follows from the names)."""

    path: str
    kind: str  # "safetensors" or "gguf"
    bytes: int
    groups: ParamGroups
    embedding_bytes: int
    dtypes: dict[str, int]
    tensors: int
    files: int
    config: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # tensor name -> bytes

    @property
    def params(self) -> int:
        return self.groups.total


class _Tally:
    def __init__(self) -> None:
        self.counts = {"embed": 0, "lm_head": 0, "linear": 0, "other": 0}
        self.bytes = 0
        self.embedding_bytes = 0
        self.tensors = 0
        self.dtypes: dict[str, int] = {}
        self.sizes: dict[str, int] = {}

    def add(self, name: str, shape: list[int], dtype: str, size: int) -> None:
        elements = math.prod(shape)
        if name.endswith(_EMBEDDING_NAMES):
            kind = "embed"
            self.embedding_bytes += size
        elif name.endswith(_POSITION_NAMES):
            kind = "embed"
        elif name.endswith(_LM_HEAD_NAMES):
            kind = "lm_head"
        else:
            kind = "linear" if len(shape) >= 2 else "other"
        self.counts[kind] += elements
        self.bytes += size
        self.tensors += 1
        self.dtypes[dtype] = self.dtypes.get(dtype, 0) + size
        self.sizes[name] = self.sizes.get(name, 0) + size

    def info(self, path: Path, kind: str, files: int, **extra: Any) -> WeightsInfo:
        return WeightsInfo(
            path=str(path),
            kind=kind,
            bytes=self.bytes,
            groups=ParamGroups(**self.counts),
            embedding_bytes=self.embedding_bytes,
            dtypes=dict(sorted(self.dtypes.items(), key=lambda item: -item[1])),
            tensors=self.tensors,
            files=files,
            sizes=self.sizes,
            **extra,
        )


def _bad(path: Path, why: str) -> RecommendError:
    return RecommendError(f"{path}: {why}", option="weights_path", value=str(path))


def read_weights(path: str) -> WeightsInfo:
    """The headers of a .gguf file, or of a .safetensors file or directory."""
    where = Path(path).expanduser()
    if not where.exists():
        raise _bad(where, "no such file or directory")
    if where.is_file() and where.suffix.lower() == ".gguf":
        return read_gguf(where)
    if where.is_dir() or where.suffix.lower() == ".safetensors":
        return read_safetensors(where)
    raise _bad(where, "not a .gguf or .safetensors file, nor a directory of safetensors")


def read_safetensors(path: Path) -> WeightsInfo:
    """Sizes and dtypes from the headers of a safetensors file or of a model directory."""
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = _load_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise _bad(index, "no weight_map")
            files = [path / name for name in sorted(set(weight_map.values()))]
        else:
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise _bad(path, "no model.safetensors.index.json and no *.safetensors files")
    else:
        files = [path]
    tally = _Tally()
    for file in files:
        for name, entry in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            dtype = str(entry.get("dtype", "?"))
            shape = [int(d) for d in entry.get("shape", [])]
            offsets = entry.get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2:
                size = int(offsets[1]) - int(offsets[0])
            elif dtype in _SAFETENSORS_DTYPE_BYTES:
                size = math.prod(shape) * _SAFETENSORS_DTYPE_BYTES[dtype]
            else:
                raise _bad(file, f"tensor {name!r} has no data_offsets and dtype {dtype!r}")
            tally.add(name, shape, dtype, size)
    config_path = folder / "config.json"
    config = _load_json(config_path) if config_path.is_file() else None
    return tally.info(path, "safetensors", len(files), config=config)


def _safetensors_header(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(file, "too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_SAFETENSORS_HEADER:
                raise _bad(file, f"header length {length} is over 100 MiB: not safetensors")
            raw = f.read(length)
    except OSError as exc:
        raise _bad(file, exc.strerror or str(exc)) from None
    if len(raw) < length:
        raise _bad(file, "truncated safetensors header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(file, f"the safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(file, "the safetensors header is not a JSON object")
    return header


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _bad(path, "not a JSON object")
    return data


# -- GGUF --------------------------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY = 4096  # numeric arrays up to this long are kept (per-layer head counts)
_CHUNK = 64 << 10
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class _Stream:
    """Sequential little-endian reads from a file, a chunk at a time."""

    def __init__(self, f: BinaryIO, path: Path) -> None:
        self._f, self._path = f, path
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            rest = self._buf[self._pos :]
            self._buf = rest + self._f.read(max(n - len(rest), _CHUNK))
            self._pos = 0
            if n > len(self._buf):
                raise _bad(self._path, "truncated GGUF header")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, limit: int) -> int:
        value = int(self.unpack("<Q"))
        if value > limit:
            raise _bad(self._path, f"{what} {value} is implausible: not a GGUF file, or corrupt")
        return value

    def string(self) -> str:
        return self.take(self.count("string length", 1 << 26)).decode("utf-8", "replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = int(self.unpack("<I"))
            length = self.count("array length", 1 << 32)
            if item_type in _SCALARS and length <= _KEEP_ARRAY:
                return [self.unpack(_SCALARS[item_type]) for _ in range(length)]
            for _ in range(length):
                self.value(item_type)
            return _ArrayLength(length)
        raise _bad(self._path, f"unknown GGUF metadata value type {vtype}")


class _ArrayLength(int):
    """A long array's length, kept in place of its values (tokenizer.ggml.tokens)."""


def read_gguf(path: Path) -> WeightsInfo:
    """Tensor sizes and architecture metadata from a GGUF v2/v3 header (and its splits)."""
    metadata, tally = _gguf_header(path, _Tally())
    match = _SPLIT.search(path.name)
    files = 1
    if match and int(match.group(2)) > 1:
        files = int(match.group(2))
        for number in range(1, files + 1):
            sibling = path.with_name(_SPLIT.sub(f"-{number:05d}-of-{files:05d}.gguf", path.name))
            if sibling != path:
                if not sibling.is_file():
                    raise _bad(path, f"split GGUF: {sibling.name} is missing")
                _gguf_header(sibling, tally)
    return tally.info(path, "gguf", files, metadata=metadata)


def _gguf_header(path: Path, tally: _Tally) -> tuple[dict[str, Any], _Tally]:
    try:
        with path.open("rb") as f:
            stream = _Stream(f, path)
            if stream.take(4) != b"GGUF":
                raise _bad(path, "not a GGUF file (no GGUF magic)")
            version = int(stream.unpack("<I"))
            if version not in (2, 3):
                raise _bad(path, f"GGUF version {version}: only versions 2 and 3 are read")
            n_tensors = stream.count("tensor count", 1 << 24)
            n_kv = stream.count("metadata count", 1 << 20)
            metadata: dict[str, Any] = {"GGUF.version": version}
            for _ in range(n_kv):
                key = stream.string()
                metadata[key] = stream.value(int(stream.unpack("<I")))
            for _ in range(n_tensors):
                name = stream.string()
                n_dims = int(stream.unpack("<I"))
                if n_dims > 8:
                    raise _bad(path, f"tensor {name!r} has {n_dims} dims: corrupt header")
                dims = [stream.count("tensor dim", 1 << 40) for _ in range(n_dims)]
                type_id = int(stream.unpack("<I"))
                stream.unpack("<Q")  # offset into the data section: not needed
                size = ggml_tensor_bytes(type_id, math.prod(dims), name)
                tally.add(name, dims, GGML_TYPES[type_id][0], size)
    except OSError as exc:
        raise _bad(path, exc.strerror or str(exc)) from None
    return metadata, tally


_GGUF_MODEL_TYPES = {"deepseek2": "deepseek_v2", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


def config_from_gguf(info: WeightsInfo) -> dict[str, Any]:
    """A Hugging Face style config built from a GGUF file's ``<arch>.*`` metadata."""
    meta = info.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise _bad(Path(info.path), "no general.architecture in the GGUF metadata")

    def get(key: str) -> Any:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer values (head counts): the largest
            return max(value) if value else None
        return value

    tokens = meta.get("tokenizer.ggml.tokens")
    key_length = get("attention.key_length_mla") or get("attention.key_length")
    config: dict[str, Any] = {
        "model_type": _GGUF_MODEL_TYPES.get(arch, arch),
        "num_hidden_layers": get("block_count"),
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": get("attention.head_count"),
        "num_key_value_heads": get("attention.head_count_kv"),
        "head_dim": key_length,
        "vocab_size": int(tokens) if isinstance(tokens, int) else get("vocab_size"),
        "max_position_embeddings": get("context_length"),
        "tie_word_embeddings": info.groups.lm_head == 0,
        "torch_dtype": "float16",  # llama.cpp's KV cache is f16 by default
    }
    if arch in ("gemma2", "gemma3"):
        config["sliding_window"] = get("attention.sliding_window")
    experts = get("expert_count")
    if experts:
        config |= {
            "num_experts": experts,
            "num_experts_per_tok": get("expert_used_count"),
            "moe_intermediate_size": get("expert_feed_forward_length"),
        }
    kv_lora = get("attention.kv_lora_rank")
    if kv_lora:
        rope = int(get("rope.dimension_count") or 0)
        config |= {
            "kv_lora_rank": kv_lora,
            "q_lora_rank": get("attention.q_lora_rank"),
            "qk_rope_head_dim": rope,
            "qk_nope_head_dim": int(key_length or 0) - rope,
            "v_head_dim": get("attention.value_length_mla") or get("attention.value_length"),
            "first_k_dense_replace": get("leading_dense_block_count") or 0,
            "n_shared_experts": get("expert_shared_count") or 0,
        }
        config["head_dim"] = None
    return config
