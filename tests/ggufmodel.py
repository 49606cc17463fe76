"""A tiny random Llama model written as GGUF by the ``gguf`` package: nothing is downloaded.

The shapes are small but real (grouped-query attention: fewer KV heads than query heads), the
tensors random, and the vocabulary a SentencePiece-style one that llama.cpp's "llama"
tokenizer accepts: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF> (so any text can be
tokenized) and a few hundred word pieces. The replies are gibberish, which is all a memory
test needs. ``true_bytes`` reads the written file back with gguf.GGUFReader, independently
of perfd's own header reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# SentencePiece token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
_WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this "
    "from or had by hot word but what some we can out other were all there when up use your "
    "how said an each she which do their time if will way about many then them write would "
    "like so these her long make thing see him two has look more day could go come did my "
    "sound no most number who over know water than call first people may down side been now "
    "find any new work part take get place made live where after back little only round man "
    "year came show every good me give our under name very through just form much great think"
)


@dataclass(frozen=True)
class TinyLlama:
    """The shape of the model ``write_tiny_llama`` writes."""

    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 768
    context_length: int = 2048
    dtype: str = "f16"  # the matrices' type: "f16" or "f32" (norms are always f32)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def kv_bytes(self, n_ctx_cells: int, element_bytes: int = 2) -> int:
        """The K and V cache for ``n_ctx_cells`` cells, the textbook formula (f16 by default)."""
        n_embd_kv = self.n_head_kv * self.head_dim
        return self.n_layer * n_ctx_cells * 2 * n_embd_kv * element_bytes


def vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and token types of the tiny SentencePiece vocabulary."""
    tokens = [b"<unk>", b"<s>", b"</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    tokens += [f"<0x{b:02X}>".encode() for b in range(256)]
    types += [BYTE] * 256
    pieces: list[str] = ["\u2581"]
    pieces += [f"\u2581{word}" for word in _WORDS.split()]
    pieces += list("abcdefghijklmnopqrstuvwxyz.,!?")
    for piece in pieces:
        if piece.encode() not in tokens:
            tokens.append(piece.encode())
            types.append(NORMAL)
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def write_tiny_llama(path: Path, shape: TinyLlama | None = None, seed: int = 0) -> Path:
    """Write a random Llama GGUF of ``shape`` at ``path``; returns the path."""
    import gguf

    shape = shape or TinyLlama()
    rng = np.random.default_rng(seed)
    matrix_type = np.float16 if shape.dtype == "f16" else np.float32
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("perfd-tiny-llama")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(1 if shape.dtype == "f16" else 0)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(matrix_type)

    def norm() -> np.ndarray:
        return np.ones(shape.n_embd, dtype=np.float32)

    q_width = shape.n_head * shape.head_dim
    kv_width = shape.n_head_kv * shape.head_dim
    # numpy shape (rows, cols) is stored as ggml ne = (cols, rows): token_embd {n_embd, n_vocab}
    writer.add_tensor("token_embd.weight", matrix(n_vocab, shape.n_embd))
    for i in range(shape.n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", matrix(q_width, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", matrix(kv_width, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", matrix(kv_width, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", matrix(shape.n_embd, q_width))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(shape.n_embd, shape.n_ff))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(shape.n_ff, shape.n_embd))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", matrix(n_vocab, shape.n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def true_bytes(path: Path) -> int:
    """The bytes of every tensor in the file, as gguf.GGUFReader (not perfd) reads them."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return sum(int(tensor.n_bytes) for tensor in reader.tensors)
