"""Weight files read by their headers: GGUF v3 files and safetensors files and directories,
all written by the tests themselves in tmp_path."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from perfd.recommend import Gpu, Hardware, Query, RecommendError, recommend
from perfd.recommend.weights import config_from_gguf, read_gguf, read_safetensors, read_weights

GiB = 1 << 30
F32, F16, Q4_0, Q8_0, Q4_K, Q6_K, IQ2_XXS = 0, 1, 2, 8, 12, 14, 16
UINT32, FLOAT32, BOOL, STRING, ARRAY = 4, 6, 7, 8, 9


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, value: Any) -> bytes:
    out = _str(key) + struct.pack("<I", vtype)
    if vtype == UINT32:
        return out + struct.pack("<I", value)
    if vtype == FLOAT32:
        return out + struct.pack("<f", value)
    if vtype == BOOL:
        return out + struct.pack("<?", value)
    if vtype == STRING:
        return out + _str(value)
    item_type, items = value
    out += struct.pack("<IQ", item_type, len(items))
    for item in items:
        out += _str(item) if item_type == STRING else struct.pack("<I", item)
    return out


def write_gguf(path: Path, kvs: list[bytes], tensors: list[tuple[str, list[int], int]]) -> Path:
    """A GGUF v3 header with these metadata pairs and tensor infos, and no tensor data."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    for name, dims, ggml_type in tensors:
        out += _str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ggml_type, 0)
    out += b"\0" * (-len(out) % 32)  # alignment padding; the data section is left out
    path.write_bytes(out)
    return path


def tiny_llama_gguf(path: Path, tensor_types: tuple[int, int, int] = (F16, Q4_K, Q8_0)) -> Path:
    """A 2-layer Llama-shaped GGUF: hidden 256, 4 heads, 2 KV heads, vocab 32."""
    embd, attn, ffn = tensor_types
    kvs = [
        _kv("general.architecture", STRING, "llama"),
        _kv("general.name", STRING, "tiny"),
        _kv("general.quantized", BOOL, True),
        _kv("llama.block_count", UINT32, 2),
        _kv("llama.embedding_length", UINT32, 256),
        _kv("llama.feed_forward_length", UINT32, 512),
        _kv("llama.attention.head_count", UINT32, 4),
        _kv("llama.attention.head_count_kv", UINT32, 2),
        _kv("llama.context_length", UINT32, 2048),
        _kv("llama.rope.freq_base", FLOAT32, 10000.0),
        _kv("tokenizer.ggml.tokens", ARRAY, (STRING, [f"t{i}" for i in range(32)])),
        _kv("llama.layer_kinds", ARRAY, (UINT32, [1, 1])),
    ]
    tensors = [("token_embd.weight", [256, 32], embd)]
    for layer in range(2):
        tensors += [
            (f"blk.{layer}.attn_q.weight", [256, 256], attn),
            (f"blk.{layer}.ffn_down.weight", [512, 256], ffn),
            (f"blk.{layer}.attn_norm.weight", [256], F32),
        ]
    return write_gguf(path, kvs, tensors)


def test_gguf_header_sizes_each_type(tmp_path: Path) -> None:
    """F16, Q4_K, Q8_0 and F32 tensors are sized from their block sizes."""
    info = read_gguf(tiny_llama_gguf(tmp_path / "tiny.gguf"))
    embd = 256 * 32 * 2  # F16
    q = 256 * 256 // 256 * 144  # Q4_K: 144 B per 256
    down = 512 * 256 // 32 * 34  # Q8_0: 34 B per 32
    norm = 256 * 4
    assert info.bytes == embd + 2 * (q + down + norm)
    assert info.params == 256 * 32 + 2 * (256 * 256 + 512 * 256 + 256)
    assert info.dtypes == {"Q8_0": 2 * down, "Q4_K": 2 * q, "F16": embd, "F32": 2 * norm}
    assert info.embedding_bytes == embd
    assert (info.tensors, info.kind) == (7, "gguf")


def test_gguf_metadata_gives_the_architecture(tmp_path: Path) -> None:
    """general.architecture and <arch>.* keys become a config; the tokens array gives the vocab."""
    info = read_gguf(tiny_llama_gguf(tmp_path / "tiny.gguf"))
    assert info.metadata["general.name"] == "tiny"
    assert info.metadata["llama.rope.freq_base"] == pytest.approx(10000.0)
    config = config_from_gguf(info)
    assert config["num_hidden_layers"] == 2
    assert config["num_key_value_heads"] == 2
    assert config["vocab_size"] == 32
    assert config["max_position_embeddings"] == 2048
    assert config["tie_word_embeddings"] is True  # no output.weight


def test_gguf_reader_never_needs_tensor_data(tmp_path: Path) -> None:
    """The file holds headers only (no data section), and reads fine: no tensor data is read."""
    path = tiny_llama_gguf(tmp_path / "tiny.gguf")
    info = read_gguf(path)
    assert path.stat().st_size < info.bytes  # the data the header describes is not there


def test_gguf_unknown_type_is_named(tmp_path: Path) -> None:
    """A tensor of an unsized ggml type raises an error naming the type and the tensor."""
    path = tiny_llama_gguf(tmp_path / "iq.gguf", (F16, IQ2_XXS, Q8_0))
    with pytest.raises(RecommendError, match=r"IQ2_XXS.*supported types"):
        read_gguf(path)


def test_gguf_bad_magic_and_truncation(tmp_path: Path) -> None:
    """Not GGUF, an unsupported version or a truncated header give clear errors."""
    (tmp_path / "x.gguf").write_bytes(b"GGML" + b"\0" * 40)
    with pytest.raises(RecommendError, match="magic"):
        read_gguf(tmp_path / "x.gguf")
    (tmp_path / "v1.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(RecommendError, match="version 1"):
        read_gguf(tmp_path / "v1.gguf")
    whole = tiny_llama_gguf(tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:200])
    with pytest.raises(RecommendError, match="truncated"):
        read_gguf(tmp_path / "cut.gguf")


def test_recommend_from_a_gguf_file(tmp_path: Path) -> None:
    """A GGUF file plans with its own bytes and parameters, and its metadata's KV shape."""
    path = tiny_llama_gguf(tmp_path / "tiny.gguf")
    hardware = Hardware((Gpu(0, "GPU", 8 * GiB, 8 * GiB),), 0, 0, None, 4, "planned")
    result = recommend(Query(weights_path=str(path), engine="llama.cpp"), hardware)
    info = read_weights(str(path))
    assert result["weights_bytes"] == info.bytes
    assert result["model"]["params"] == info.params
    assert result["model"]["source"].startswith("gguf: ")
    assert result["kv_bytes_per_token"] == 2 * 2 * 2 * 64 * 2  # layers x K,V x kv heads x 64
    assert result["fits"] is True


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors file with zero-filled data; returns its data bytes."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2, "I8": 1}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = sizes[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return offset


def test_safetensors_file_header(tmp_path: Path) -> None:
    """Bytes by dtype and parameter counts come from the header's shapes and offsets."""
    data = write_safetensors(
        tmp_path / "model.safetensors",
        {
            "model.embed_tokens.weight": ("BF16", [32, 16]),
            "model.layers.0.self_attn.q_proj.weight": ("BF16", [16, 16]),
            "model.layers.0.input_layernorm.weight": ("F32", [16]),
            "lm_head.weight": ("BF16", [32, 16]),
        },
    )
    info = read_safetensors(tmp_path / "model.safetensors")
    assert info.bytes == data == (32 * 16 + 256 + 32 * 16) * 2 + 16 * 4
    assert info.groups.embed == info.groups.lm_head == 32 * 16
    assert (info.groups.linear, info.groups.other) == (256, 16)
    assert info.dtypes == {"BF16": (32 * 16 * 2 + 256) * 2, "F32": 64}
    assert info.config is None


def test_sharded_safetensors_directory(tmp_path: Path) -> None:
    """A directory's index.json names the shards; config.json beside them gives the shape."""
    one = write_safetensors(tmp_path / "a.safetensors", {"x.weight": ("F16", [8, 8])})
    two = write_safetensors(tmp_path / "b.safetensors", {"y.weight": ("F16", [8, 4])})
    write_safetensors(tmp_path / "stray.safetensors", {"z.weight": ("F16", [100, 100])})
    index = {
        "metadata": {},
        "weight_map": {"x.weight": "a.safetensors", "y.weight": "b.safetensors"},
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    info = read_weights(str(tmp_path))
    assert (info.bytes, info.files, info.params) == (one + two, 2, 96)
    assert info.config == {"model_type": "llama"}


def test_safetensors_without_config_asks_for_one(tmp_path: Path) -> None:
    """Safetensors alone cannot give the architecture: the error says what to add."""
    write_safetensors(tmp_path / "m.safetensors", {"x.weight": ("F16", [4, 4])})
    hardware = Hardware((), 8 * GiB, 8 * GiB, None, 4, "planned")
    with pytest.raises(RecommendError, match=r"config\.json"):
        recommend(Query(weights_path=str(tmp_path / "m.safetensors")), hardware)


def test_safetensors_bad_header(tmp_path: Path) -> None:
    """A header that is not JSON, or too long to be one, is rejected with the file named."""
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(RecommendError, match="not JSON"):
        read_safetensors(tmp_path / "bad.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(RecommendError, match="100 MiB"):
        read_safetensors(tmp_path / "huge.safetensors")


def test_recommend_from_safetensors_with_config(tmp_path: Path) -> None:
    """Weights bytes come from the headers; the KV shape from the config beside them."""
    config = {
        "model_type": "llama",
        "num_hidden_layers": 1,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 32,
        "max_position_embeddings": 1024,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    data = write_safetensors(tmp_path / "model.safetensors", {"w": ("BF16", [16, 16])})
    hardware = Hardware((), 8 * GiB, 8 * GiB, None, 4, "planned")
    result = recommend(Query(weights_path=str(tmp_path)), hardware)
    assert result["weights_bytes"] == data
    assert result["kv_bytes_per_token"] == 2 * 1 * 8 * 2
    assert result["model"]["name"] == tmp_path.name


def test_missing_or_odd_path(tmp_path: Path) -> None:
    """A missing path or an unknown suffix says what is expected."""
    with pytest.raises(RecommendError, match="no such file"):
        read_weights(str(tmp_path / "nothing.gguf"))
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(RecommendError, match=r"\.gguf or \.safetensors"):
        read_weights(str(tmp_path / "model.bin"))
