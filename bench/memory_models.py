"""Models of a known size for benchmark 14 (``memory_truth``), loaded by a real perfd through
its python loader (``target = "bench.memory_models:make_torch"``, the repository on PYTHONPATH).

Their weights live in a safetensors file written here with numpy (an 8-byte header length, the
JSON header, then the tensors' bytes), so perfd can estimate them from the file's header before
the load. ``make_torch`` builds ``torch.nn.Linear`` layers from that file, ``make_numpy`` keeps
plain numpy arrays; both copy the weights into the process's own (anonymous) memory, as a real
framework does, rather than mapping the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16}


def linear_arrays(width: int, layers: int, seed: int = 3) -> dict[str, np.ndarray]:
    """``layers`` float32 weights [width, width] and biases [width], He-scaled."""
    rng = np.random.default_rng(seed)
    scale = np.float32((2 / width) ** 0.5)
    out: dict[str, np.ndarray] = {}
    for i in range(layers):
        out[f"layers.{i}.weight"] = rng.standard_normal((width, width), dtype=np.float32) * scale
        out[f"layers.{i}.bias"] = np.full(width, 0.01, dtype=np.float32)
    return out


def write_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> int:
    """Write ``arrays`` as a safetensors file; the bytes of their data."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    header: dict[str, Any] = {"__metadata__": {"format": "np"}}
    offset = 0
    for name, array in arrays.items():
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    raw = json.dumps(header).encode()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for array in arrays.values():
            f.write(np.ascontiguousarray(array).tobytes())
    return offset


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The arrays of a file ``write_safetensors`` wrote, each copied into its own memory."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        start = 8 + length
        out: dict[str, np.ndarray] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            f.seek(start + begin)
            dtype = np.dtype(_DTYPES[entry["dtype"]])
            data = np.frombuffer(f.read(end - begin), dtype=dtype)
            out[name] = data.reshape(entry["shape"]).copy()
    return out


def make_torch(path: str) -> Any:
    """A ``torch.nn.Sequential`` of Linear layers holding the weights of ``path``."""
    import torch

    arrays = read_safetensors(path)
    layers = []
    for i in range(len(arrays) // 2):
        weight, bias = arrays[f"layers.{i}.weight"], arrays[f"layers.{i}.bias"]
        layer = torch.nn.utils.skip_init(torch.nn.Linear, weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))
        layers.append(layer)
    del arrays
    return torch.nn.Sequential(*layers).eval()


class NumpyLinears:
    """Linear layers as numpy arrays: a request multiplies its inputs through them."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights = arrays

    def __call__(self, inputs: Any) -> Any:
        x = np.asarray(inputs, dtype=np.float32)
        for i in range(len(self.weights) // 2):
            x = x @ self.weights[f"layers.{i}.weight"].T + self.weights[f"layers.{i}.bias"]
        return x


def make_numpy(path: str) -> NumpyLinears:
    """A numpy model holding the arrays of ``path``."""
    return NumpyLinears(read_safetensors(path))
