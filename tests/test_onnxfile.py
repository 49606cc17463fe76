"""perfd.recommend.onnxfile: ONNX initializer bytes from the file's headers, checked against
the onnx package's own reading of the same files (onnx.load + numpy_helper)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from perfd.recommend.onnxfile import ELEMENT_BITS, OnnxFileError, read_onnx
from tests.models import onnx_toy
from tests.models.onnx_toy import initializer_bytes

MiB = 1 << 20


def write_initializers(path: Path, *tensors: onnx.TensorProto, sparse: tuple = ()) -> Path:
    """A model holding only these initializers (onnx.load reads it; nothing runs it)."""
    graph = helper.make_graph(
        [], "inits", [], [], initializer=list(tensors), sparse_initializer=list(sparse)
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_the_toy_models_match_the_onnx_package(tmp_path: Path) -> None:
    """The loader tests' toy models and a linear model: bytes and counts as onnx reads them."""
    for path in (
        onnx_toy.write_toy(tmp_path / "toy.onnx"),
        onnx_toy.write_toy(tmp_path / "two.onnx", with_counts=True),
        onnx_toy.write_linear(tmp_path / "linear.onnx", width=96, layers=3),
    ):
        info = read_onnx(path)
        model = onnx.load(str(path))
        assert info.bytes == initializer_bytes(path)
        assert info.tensors == len(model.graph.initializer)
        assert info.file_bytes == path.stat().st_size
        assert (info.external_bytes, info.external_files) == (0, ())
        assert info.ir_version == model.ir_version
    assert read_onnx(tmp_path / "toy.onnx").bytes == onnx_toy.TOY_INITIALIZER_BYTES
    linear = read_onnx(tmp_path / "linear.onnx")
    assert linear.largest == ("W0", 96 * 96 * 4)
    assert linear.dtypes == {"float": 3 * (96 * 96 + 96) * 4}


NUMPY_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT8: np.int8,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.BOOL: np.bool_,
    TensorProto.FLOAT16: np.float16,
    TensorProto.DOUBLE: np.float64,
    TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64,
    TensorProto.COMPLEX64: np.complex64,
    TensorProto.COMPLEX128: np.complex128,
}
# Types numpy has no dtype of its own for: made by onnx.helper from small values.
HELPER_TYPES = sorted(set(ELEMENT_BITS) - set(NUMPY_TYPES))


@pytest.mark.parametrize("data_type", sorted(NUMPY_TYPES), ids=helper.tensor_dtype_to_string)
def test_numpy_types_match_the_onnx_package(tmp_path: Path, data_type: int) -> None:
    """Each numpy-backed dtype, as raw_data and as the typed *_data field."""
    dtype = NUMPY_TYPES[data_type]
    values = np.arange(15).reshape(3, 5).astype(dtype)
    raw = numpy_helper.from_array(values, "raw")
    typed = helper.make_tensor("typed", data_type, [7], np.arange(7).astype(dtype).tolist())
    scalar = numpy_helper.from_array(np.array(1, dtype=dtype), "scalar")
    path = write_initializers(tmp_path / "m.onnx", raw, typed, scalar)
    info = read_onnx(path)
    assert info.bytes == initializer_bytes(path) == values.nbytes + 8 * values.itemsize
    assert info.tensors == 3


@pytest.mark.parametrize("data_type", HELPER_TYPES, ids=helper.tensor_dtype_to_string)
def test_sub_byte_and_float8_types_match_the_onnx_package(tmp_path: Path, data_type: int) -> None:
    """bfloat16, float8s, int4/uint4/float4 (packed, rounded up per tensor), int2, float6."""
    tensors = [
        helper.make_tensor(f"t{n}", data_type, [n], [0] * n, raw=False) for n in (1, 5, 7, 16)
    ]
    tensors.append(helper.make_tensor("matrix", data_type, [3, 3], [1] * 9))
    path = write_initializers(tmp_path / "m.onnx", *tensors)
    assert read_onnx(path).bytes == initializer_bytes(path)
    bits = ELEMENT_BITS[data_type][1]
    assert read_onnx(path).bytes == sum(math.ceil(n * bits / 8) for n in (1, 5, 7, 16, 9))


def test_int4_packing_matches_raw_data(tmp_path: Path) -> None:
    """An int4 [5] tensor is 3 bytes: what onnx itself packs into raw_data."""
    tensor = helper.make_tensor("q", TensorProto.INT4, [5], [1, -2, 3, -4, 5], raw=False)
    path = write_initializers(tmp_path / "m.onnx", tensor)
    unpacked = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    packed = numpy_helper.from_array(unpacked)  # onnx packs two int4 per byte into raw_data
    assert read_onnx(path).bytes == len(packed.raw_data) == 3


def test_strings_count_their_bytes(tmp_path: Path) -> None:
    """A string initializer counts the bytes of its strings."""
    tensor = helper.make_tensor("s", TensorProto.STRING, [3], [b"ab", b"cde", "é".encode()])
    path = write_initializers(tmp_path / "m.onnx", tensor)
    assert read_onnx(path).bytes == initializer_bytes(path) == 7
    assert read_onnx(path).dtypes == {"string": 7}


def test_a_sparse_initializer_counts_its_dense_size(tmp_path: Path) -> None:
    """onnxruntime densifies sparse initializers: [100, 50] float32 with 3 values is 20000 bytes."""
    values = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0, 77, 4999], dtype=np.int64), "sp_i")
    sparse = helper.make_sparse_tensor(values, indices, [100, 50])
    dense = numpy_helper.from_array(np.zeros(4, dtype=np.float16), "d")
    path = write_initializers(tmp_path / "m.onnx", dense, sparse=(sparse,))
    info = read_onnx(path)
    assert info.bytes == initializer_bytes(path) == 100 * 50 * 4 + 8
    assert (info.tensors, info.sparse) == (2, 1)


def test_external_data_counts_and_the_model_file_is_tiny(tmp_path: Path) -> None:
    """Weights in an external data file: counted, and far above the .onnx file's own size."""
    path = onnx_toy.write_linear(tmp_path / "ext.onnx", width=128, layers=2, external=True)
    info = read_onnx(path)
    assert info.bytes == initializer_bytes(path) == 2 * (128 * 128 + 128) * 4
    assert info.external_bytes == info.bytes
    assert info.external_files == ("ext.onnx.data",)
    assert path.stat().st_size < info.bytes / 50


def test_external_data_without_length_entries(tmp_path: Path) -> None:
    """Without ``length`` entries the dims give the bytes, checked to fit in the data file."""
    path = onnx_toy.write_linear(tmp_path / "ext.onnx", width=64, layers=1, external=True)
    truth = initializer_bytes(path)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        kept = [e for e in tensor.external_data if e.key != "length"]
        del tensor.external_data[:]
        tensor.external_data.extend(kept)
    onnx.save(model, str(path))
    assert read_onnx(path).bytes == truth
    (tmp_path / "ext.onnx.data").write_bytes(b"\0" * 100)  # shorter than the weights
    with pytest.raises(OnnxFileError, match="truncated"):
        read_onnx(path)


def test_a_missing_external_data_file_is_a_clear_error(tmp_path: Path) -> None:
    """The error names the tensor and the file it needs."""
    path = onnx_toy.write_linear(tmp_path / "ext.onnx", width=16, layers=1, external=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(OnnxFileError) as caught:
        read_onnx(path)
    assert "initializer 'W0': its external data file ext.onnx.data is missing" in str(caught.value)
    assert caught.value.path == str(path)


def _read_bytes() -> int:
    """This process's read() bytes so far (the kernel's rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_big_initializer_is_skipped_not_read(tmp_path: Path) -> None:
    """A 96 MiB raw_data payload is sought over: the read costs well under 1 MiB of reads."""
    weight = np.ones((96, MiB // 4), dtype=np.float32)
    bias = numpy_helper.from_array(np.ones(3, dtype=np.float32), "bias")
    path = write_initializers(tmp_path / "big.onnx", numpy_helper.from_array(weight, "w"), bias)
    del weight
    before = _read_bytes()
    info = read_onnx(path)
    read = _read_bytes() - before
    assert info.bytes == 96 * MiB + 12
    assert info.largest == ("w", 96 * MiB)
    assert read < MiB, f"read_onnx read {read} bytes of a {path.stat().st_size}-byte file"
    assert info.bytes == initializer_bytes(path)


def test_raw_data_that_disagrees_with_dims_is_corrupt(tmp_path: Path) -> None:
    """float32 [4] with 8 bytes of raw_data: refused, naming the tensor and both figures."""
    tensor = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "w")
    tensor.raw_data = b"\0" * 8  # onnx.helper refuses to make it; a damaged file holds it
    path = write_initializers(tmp_path / "m.onnx", tensor)
    with pytest.raises(OnnxFileError, match=r"'w': raw_data holds 8 bytes but dims \[4\]"):
        read_onnx(path)


def test_not_onnx_files_are_refused(tmp_path: Path) -> None:
    """Missing, a folder, empty, text, random bytes, a truncated model: OnnxFileError each."""
    model = onnx_toy.write_linear(tmp_path / "m.onnx", width=32, layers=1).read_bytes()
    cases = {
        "empty.onnx": b"",
        "text.onnx": b"this is not a model\n" * 20,
        "random.onnx": np.random.default_rng(3).bytes(4096),
        "cut.onnx": model[: len(model) // 2],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OnnxFileError) as caught:
            read_onnx(tmp_path / name)
        assert caught.value.path == str(tmp_path / name), name
        assert "ONNX" in caught.value.reason or "truncated" in caught.value.reason, name
    with pytest.raises(OnnxFileError, match="no such file"):
        read_onnx(tmp_path / "missing.onnx")
    with pytest.raises(OnnxFileError, match="not a file"):
        read_onnx(tmp_path)
