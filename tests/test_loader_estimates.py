"""Loader estimates before a load, from the weights files' headers: the python loader with a
``path`` (safetensors, GGUF, ONNX) and the onnx loader; each figure checked against the tensors
the test wrote (numpy's nbytes) or the onnx package's reading of the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from structlog.testing import capture_logs

from perfd.loaders import LoaderError, ModelSpec
from perfd.loaders.onnx import OnnxLoader
from perfd.loaders.python import PythonLoader, PythonModel
from tests.models import onnx_toy

ECHO = "tests.models.toy:make_echo"
SAFETENSORS_DTYPES = {np.float32: "F32", np.float16: "F16", np.int8: "I8", np.int64: "I64"}


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "embed_tokens.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "layers.0.mlp.weight": rng.standard_normal((32, 48)).astype(np.float16),
        "layers.0.norm.weight": np.ones(32, dtype=np.float32),
        "layers.0.q.weight": np.arange(96, dtype=np.int8).reshape(8, 12),
        "step": np.array([7], dtype=np.int64),
    }


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A safetensors file holding these arrays (header JSON, then their bytes)."""
    header: dict[str, object] = {"__metadata__": {"format": "np"}}
    offset, blobs = 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[array.dtype.type],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return path


def write_gguf(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A GGUF file written by the gguf package holding these arrays (f32 and f16)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def python_spec(path: Path | str = "", size_hint: int | None = None) -> ModelSpec:
    return ModelSpec(name="m", loader="python", target=ECHO, path=str(path), size_hint=size_hint)


def test_python_estimate_from_a_safetensors_file_and_folder(tmp_path: Path) -> None:
    """A .safetensors file, and a folder of two: the bytes of the tensors written."""
    tensors = arrays()
    truth = sum(a.nbytes for a in tensors.values())
    path = write_safetensors(tmp_path / "model.safetensors", tensors)
    assert path.stat().st_size > truth  # the header is not counted
    assert PythonLoader().estimate(python_spec(path)) == truth
    folder = tmp_path / "sharded"
    folder.mkdir()
    names = list(tensors)
    write_safetensors(folder / "a.safetensors", {n: tensors[n] for n in names[:2]})
    write_safetensors(folder / "b.safetensors", {n: tensors[n] for n in names[2:]})
    assert PythonLoader().estimate(python_spec(folder)) == truth


def test_python_estimate_from_a_gguf_file(tmp_path: Path) -> None:
    """A GGUF file written by the gguf package: the bytes of its f32 and f16 tensors."""
    tensors = {
        "token_embd.weight": np.ones((40, 16), dtype=np.float32),
        "blk.0.ffn_up.weight": np.ones((16, 24), dtype=np.float16),
        "output_norm.weight": np.ones(16, dtype=np.float32),
    }
    path = write_gguf(tmp_path / "tiny.gguf", tensors)
    assert PythonLoader().estimate(python_spec(path)) == sum(a.nbytes for a in tensors.values())


def test_python_estimate_from_an_onnx_file(tmp_path: Path) -> None:
    """An .onnx path: its initializers' bytes as the onnx package reads them."""
    path = onnx_toy.write_linear(tmp_path / "linear.onnx", width=40, layers=2)
    truth = onnx_toy.initializer_bytes(path)
    assert PythonLoader().estimate(python_spec(path)) == truth == 2 * (40 * 40 + 40) * 4
    assert PythonLoader().load(python_spec(path)).estimate_bytes == truth


def test_python_size_hint_wins_over_the_path(tmp_path: Path) -> None:
    """An explicit size_hint is the operator's word: it wins over the file's headers."""
    path = write_safetensors(tmp_path / "model.safetensors", arrays())
    spec = python_spec(path, size_hint=12345)
    assert PythonLoader().estimate(spec) == 12345
    assert PythonLoader().load(spec).estimate_bytes == 12345
    assert PythonLoader().estimate(python_spec()) is None  # neither: no estimate


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.safetensors", None, "no such file or directory"),
        ("weights.bin", b"\0" * 64, "not a .gguf or .safetensors file"),
        ("bad.gguf", b"GGML" + b"\0" * 60, "not a GGUF file (no GGUF magic)"),
        ("bad.safetensors", struct.pack("<Q", 10) + b"not json!!", "not JSON"),
        ("odd.safetensors", None, "unreadable header (ValueError"),
        ("bad.onnx", b"\xff" * 64, "not an ONNX model"),
        ("missing.onnx", None, "no such file"),
    ],
)
def test_python_estimate_of_a_bad_path_is_a_clear_error_and_the_load_goes_on(
    tmp_path: Path, name: str, content: bytes | None, problem: str
) -> None:
    """estimate raises LoaderError naming the model, the file and why; load logs
    loader.estimate_failed and loads the model without an estimate."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    if name == "odd.safetensors":  # a header the reader did not foresee: a dim that is text
        header = json.dumps({"w": {"dtype": "F32", "shape": ["x"]}}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(LoaderError) as caught:
        PythonLoader().estimate(python_spec(path))
    message = str(caught.value)
    assert message.startswith(f"model 'm': cannot estimate its size from path: {path}")
    assert problem in message
    assert message.endswith("or set size_hint")
    with capture_logs() as logs:
        loaded = PythonLoader().load(python_spec(path))
    assert isinstance(loaded.model, PythonModel)
    assert loaded.estimate_bytes is None
    (warning,) = [line for line in logs if line["event"] == "loader.estimate_failed"]
    assert warning["log_level"] == "warning"
    assert (warning["model"], warning["path"], warning["error"]) == ("m", str(path), message)


def test_onnx_load_reports_the_initializers_as_its_tensor_bytes(tmp_path: Path) -> None:
    """onnx: estimate, tensor_bytes and parts are the initializer bytes, beside the file size."""
    path = onnx_toy.write_linear(tmp_path / "linear.onnx", width=48, layers=3)
    truth = onnx_toy.initializer_bytes(path)
    spec = ModelSpec(name="lin", loader="onnx", path=str(path))
    assert OnnxLoader().estimate(spec) == truth < path.stat().st_size
    loaded = OnnxLoader().load(spec)
    assert loaded.estimate_bytes == truth
    assert loaded.tensor_bytes == {"cpu": truth}
    assert loaded.parts == {"initializers": truth}
