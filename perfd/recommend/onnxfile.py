"""ONNX model files read by their headers alone: the bytes of the graph's initializers.

An ONNX file is one protobuf message, ``ModelProto``. This module walks its wire format with
the standard library (no ``onnx`` package, no onnxruntime): ``ModelProto.graph`` (field 7) ->
``GraphProto.initializer`` (field 5, ``TensorProto``) and ``sparse_initializer`` (field 15,
``SparseTensorProto``). Of each tensor it reads ``dims`` (1), ``data_type`` (2), ``name`` (8),
``data_location`` (14) and ``external_data`` (13); its payload (``raw_data``, 9, or the typed
``*_data`` fields) is skipped by its length with a seek, never read, so a file of many GB costs
a few reads of 64 KiB. Every other field (nodes, inputs, doc strings...) is skipped the same way.

A tensor's bytes are its element count times its element size (``ELEMENT_BITS``, sub-byte
types packed and rounded up per tensor, as onnxruntime holds them: int4 ``[5]`` is 3 bytes);
strings count their UTF-8 bytes. ``raw_data`` and an external ``length`` must agree with that
figure, else the file is refused as corrupt. Data stored outside the file (``data_location =
EXTERNAL``: the ``location`` entry, relative to the model's folder) counts the same, and the
file it names must exist. A sparse initializer counts as its dense size: onnxruntime turns
sparse initializers into dense ones when it loads the graph.

Not counted: tensors held in node attributes (``Constant`` nodes, subgraphs of ``If`` and
``Loop``) and training-only graphs; onnxruntime's own arenas and buffers (the cache measures
those around the load).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

# TensorProto.DataType -> (name, bits per element); STRING (8) is sized by its strings.
ELEMENT_BITS: dict[int, tuple[str, int]] = {
    1: ("float", 32), 2: ("uint8", 8), 3: ("int8", 8), 4: ("uint16", 16), 5: ("int16", 16),
    6: ("int32", 32), 7: ("int64", 64), 9: ("bool", 8), 10: ("float16", 16),
    11: ("double", 64), 12: ("uint32", 32), 13: ("uint64", 64), 14: ("complex64", 64),
    15: ("complex128", 128), 16: ("bfloat16", 16), 17: ("float8e4m3fn", 8),
    18: ("float8e4m3fnuz", 8), 19: ("float8e5m2", 8), 20: ("float8e5m2fnuz", 8),
    21: ("uint4", 4), 22: ("int4", 4), 23: ("float4e2m1", 4), 24: ("float8e8m0", 8),
    25: ("uint2", 2), 26: ("int2", 2), 27: ("float6e2m3", 6), 28: ("float6e3m2", 6),
}  # fmt: skip
STRING = 8
EXTERNAL = 1  # TensorProto.DataLocation

_CHUNK = 64 << 10
_MAX_TEXT = 1 << 16  # a name or an external_data value longer than this is corrupt
_MAX_DIMS = 64
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class OnnxFileError(ValueError):
    """An ONNX file that cannot be read: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class OnnxInfo:
    """What an ONNX file's headers say: the initializers' bytes, in all and by dtype, and
    where they live (inside the file, or in external data files)."""

    path: str
    bytes: int  # every initializer, sparse ones at their dense size
    tensors: int
    sparse: int  # of which sparse initializers
    dtypes: dict[str, int]  # dtype name -> bytes, largest first
    external_bytes: int  # of ``bytes``, held in external data files
    external_files: tuple[str, ...]
    ir_version: int
    file_bytes: int  # the .onnx file itself
    largest: tuple[str, int] = ("", 0)  # the biggest initializer: name, bytes
    opsets: dict[str, int] = field(default_factory=dict)


@dataclass
class _Tensor:
    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 0
    raw_bytes: int | None = None  # raw_data's length
    string_bytes: int = 0
    strings: int = 0
    location: int = 0
    external: dict[str, str] = field(default_factory=dict)


class _Wire:
    """Protobuf wire-format reads at absolute file offsets, a 64 KiB chunk at a time; a skip
    only moves the offset (the next read seeks)."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self._f, self.path, self.size = f, path, size
        self._buf, self._start = b"", 0
        self.pos = 0

    def bad(self, why: str) -> OnnxFileError:
        return OnnxFileError(self.path, f"{why} at byte {self.pos}: not an ONNX model, or corrupt")

    def _byte(self, end: int) -> int:
        if self.pos >= end:
            raise self.bad("a field runs past its message")
        offset = self.pos - self._start
        if not 0 <= offset < len(self._buf):
            self._f.seek(self.pos)
            self._buf, self._start, offset = self._f.read(_CHUNK), self.pos, 0
            if not self._buf:
                raise self.bad("truncated file")
        self.pos += 1
        return self._buf[offset]

    def varint(self, end: int) -> int:
        value = shift = 0
        while True:
            byte = self._byte(end)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift >= 70:
                raise self.bad("a varint longer than 10 bytes")

    def tag(self, end: int) -> tuple[int, int]:
        key = self.varint(end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise self.bad("field number 0")
        return number, wire_type

    def length(self, end: int) -> int:
        """A length-delimited field's length, checked to fit in its message."""
        n = self.varint(end)
        if n > end - self.pos:
            raise self.bad(f"a field of {n} bytes runs past its message")
        return n

    def end_of(self, end: int) -> int:
        """Where the length-delimited field starting here ends."""
        n = self.length(end)
        return self.pos + n

    def skip(self, n: int, end: int) -> None:
        if n > end - self.pos:
            raise self.bad(f"a field of {n} bytes runs past its message")
        self.pos += n

    def text(self, end: int) -> str:
        n = self.length(end)
        if n > _MAX_TEXT:
            raise self.bad(f"a name of {n} bytes")
        offset = self.pos - self._start
        if not (offset >= 0 and offset + n <= len(self._buf)):
            self._f.seek(self.pos)
            self._buf, self._start, offset = self._f.read(max(n, _CHUNK)), self.pos, 0
            if len(self._buf) < n:
                raise self.bad("truncated file")
        self.pos += n
        return self._buf[offset : offset + n].decode("utf-8", "replace")

    def skip_value(self, wire_type: int, end: int) -> None:
        if wire_type == _VARINT:
            self.varint(end)
        elif wire_type == _FIXED64:
            self.skip(8, end)
        elif wire_type == _LENGTH:
            self.skip(self.length(end), end)
        elif wire_type == _FIXED32:
            self.skip(4, end)
        else:
            raise self.bad(f"wire type {wire_type}")

    def ints(self, wire_type: int, end: int, into: list[int]) -> None:
        """A repeated int64 field, packed or not; negative values are refused (dims)."""
        if wire_type == _VARINT:
            into.append(self.varint(end))
        elif wire_type == _LENGTH:
            stop = self.end_of(end)
            while self.pos < stop:
                into.append(self.varint(stop))
        else:
            raise self.bad(f"dims with wire type {wire_type}")
        if len(into) > _MAX_DIMS:
            raise self.bad(f"a tensor with over {_MAX_DIMS} dims")
        if any(dim >= 1 << 63 for dim in into):
            raise self.bad("a negative dim")


class _Tally:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.bytes = self.tensors = self.sparse = self.external_bytes = 0
        self.dtypes: dict[str, int] = {}
        self.external_files: dict[str, None] = {}
        self.largest = ("", 0)

    def add(self, tensor: _Tensor, size: int, name: str) -> None:
        dtype = ELEMENT_BITS[tensor.data_type][0] if tensor.data_type != STRING else "string"
        self.bytes += size
        self.tensors += 1
        self.dtypes[dtype] = self.dtypes.get(dtype, 0) + size
        if size > self.largest[1]:
            self.largest = (name, size)


def read_onnx(path: str | Path) -> OnnxInfo:
    """The initializers of an ONNX model file, from its headers (module docstring)."""
    where = Path(path).expanduser()
    if not where.exists():
        raise OnnxFileError(where, "no such file")
    if not where.is_file():
        raise OnnxFileError(where, "not a file (an .onnx model file is needed)")
    try:
        with where.open("rb") as f:
            wire = _Wire(f, where, os.fstat(f.fileno()).st_size)
            return _model(wire, _Tally(where))
    except OSError as exc:
        raise OnnxFileError(where, exc.strerror or str(exc)) from None


def _model(wire: _Wire, tally: _Tally) -> OnnxInfo:
    end = wire.size
    ir_version: int | None = None
    graphs = 0
    opsets: dict[str, int] = {}
    while wire.pos < end:
        number, wire_type = wire.tag(end)
        if number == 1 and wire_type == _VARINT:
            ir_version = wire.varint(end)
        elif number == 7 and wire_type == _LENGTH:
            stop = wire.end_of(end)
            _graph(wire, stop, tally)
            graphs += 1
        elif number == 8 and wire_type == _LENGTH:
            stop = wire.end_of(end)
            domain, version = _opset(wire, stop)
            opsets[domain or "ai.onnx"] = version
        else:
            wire.skip_value(wire_type, end)
    if ir_version is None or not graphs:
        missing = "ir_version" if ir_version is None else "graph"
        raise OnnxFileError(wire.path, f"no {missing} field: not an ONNX model")
    return OnnxInfo(
        path=str(wire.path),
        bytes=tally.bytes,
        tensors=tally.tensors,
        sparse=tally.sparse,
        dtypes=dict(sorted(tally.dtypes.items(), key=lambda item: -item[1])),
        external_bytes=tally.external_bytes,
        external_files=tuple(tally.external_files),
        ir_version=ir_version,
        file_bytes=wire.size,
        largest=tally.largest,
        opsets=opsets,
    )


def _opset(wire: _Wire, end: int) -> tuple[str, int]:
    domain, version = "", 0
    while wire.pos < end:
        number, wire_type = wire.tag(end)
        if number == 1 and wire_type == _LENGTH:
            domain = wire.text(end)
        elif number == 2 and wire_type == _VARINT:
            version = wire.varint(end)
        else:
            wire.skip_value(wire_type, end)
    return domain, version


def _graph(wire: _Wire, end: int, tally: _Tally) -> None:
    while wire.pos < end:
        number, wire_type = wire.tag(end)
        if number == 5 and wire_type == _LENGTH:
            stop = wire.end_of(end)
            tensor = _tensor(wire, stop)
            tally.add(tensor, _dense_bytes(wire, tensor, tally), tensor.name)
        elif number == 15 and wire_type == _LENGTH:
            stop = wire.end_of(end)
            _sparse(wire, stop, tally)
        else:
            wire.skip_value(wire_type, end)


def _tensor(wire: _Wire, end: int) -> _Tensor:
    tensor = _Tensor()
    while wire.pos < end:
        number, wire_type = wire.tag(end)
        if number == 1:
            wire.ints(wire_type, end, tensor.dims)
        elif number == 2 and wire_type == _VARINT:
            tensor.data_type = wire.varint(end)
        elif number == 8 and wire_type == _LENGTH:
            tensor.name = wire.text(end)
        elif number == 9 and wire_type == _LENGTH:
            tensor.raw_bytes = wire.length(end)
            wire.skip(tensor.raw_bytes, end)
        elif number == 6 and wire_type == _LENGTH:
            n = wire.length(end)
            tensor.string_bytes += n
            tensor.strings += 1
            wire.skip(n, end)
        elif number == 13 and wire_type == _LENGTH:
            stop = wire.end_of(end)
            key, value = _entry(wire, stop)
            tensor.external[key] = value
        elif number == 14 and wire_type == _VARINT:
            tensor.location = wire.varint(end)
        else:
            wire.skip_value(wire_type, end)
    return tensor


def _entry(wire: _Wire, end: int) -> tuple[str, str]:
    key = value = ""
    while wire.pos < end:
        number, wire_type = wire.tag(end)
        if number in (1, 2) and wire_type == _LENGTH:
            text = wire.text(end)
            key, value = (text, value) if number == 1 else (key, text)
        else:
            wire.skip_value(wire_type, end)
    return key, value


def _sparse(wire: _Wire, end: int, tally: _Tally) -> None:
    values: _Tensor | None = None
    dims: list[int] = []
    while wire.pos < end:
        number, wire_type = wire.tag(end)
        if number == 1 and wire_type == _LENGTH:
            stop = wire.end_of(end)
            values = _tensor(wire, stop)
        elif number == 3:
            wire.ints(wire_type, end, dims)
        else:  # the indices (2): gone once onnxruntime makes the tensor dense
            wire.skip_value(wire_type, end)
    if values is None:
        raise OnnxFileError(wire.path, "a sparse initializer without values")
    dense = _Tensor(name=values.name, dims=dims, data_type=values.data_type)
    if values.data_type == STRING:
        raise OnnxFileError(wire.path, f"sparse initializer {values.name!r} holds strings")
    tally.add(dense, _count(wire.path, dense), values.name)
    tally.sparse += 1


def _count(path: Path, tensor: _Tensor) -> int:
    """Element count x element size, sub-byte types rounded up to whole bytes."""
    if tensor.data_type not in ELEMENT_BITS:
        raise OnnxFileError(
            path,
            f"initializer {tensor.name!r} has data_type {tensor.data_type}, which this reader"
            f" does not know (known: {', '.join(map(str, sorted(ELEMENT_BITS)))} and {STRING})",
        )
    bits = ELEMENT_BITS[tensor.data_type][1]
    return (math.prod(tensor.dims) * bits + 7) // 8


def _dense_bytes(wire: _Wire, tensor: _Tensor, tally: _Tally) -> int:
    """A tensor's bytes, checked against raw_data's or the external data's length."""
    label = f"initializer {tensor.name!r}"
    if tensor.data_type == STRING:
        if tensor.location == EXTERNAL:
            raise OnnxFileError(wire.path, f"{label}: strings in external data")
        return tensor.string_bytes
    size = _count(wire.path, tensor)
    if tensor.location == EXTERNAL:
        _external(wire.path, tensor, size, label, tally)
        return size
    if tensor.raw_bytes is not None and tensor.raw_bytes != size:
        raise OnnxFileError(
            wire.path,
            f"{label}: raw_data holds {tensor.raw_bytes} bytes but dims {tensor.dims} of"
            f" {ELEMENT_BITS[tensor.data_type][0]} make {size}: corrupt",
        )
    return size


def _external(path: Path, tensor: _Tensor, size: int, label: str, tally: _Tally) -> None:
    location = tensor.external.get("location", "")
    if not location:
        raise OnnxFileError(path, f"{label} is external but has no location entry")
    data = path.parent / location
    try:
        data_bytes = data.stat().st_size
    except OSError:
        raise OnnxFileError(
            path,
            f"{label}: its external data file {location} is missing (expected beside the"
            " model, in the same folder)",
        ) from None
    try:
        start = int(tensor.external.get("offset", "0"))
        length = tensor.external.get("length")
        stored = int(length) if length is not None else None
    except ValueError:
        raise OnnxFileError(path, f"{label}: external offset/length are not integers") from None
    if stored is not None and stored != size:
        raise OnnxFileError(
            path, f"{label}: external length {stored} but dims {tensor.dims} make {size}: corrupt"
        )
    if start + size > data_bytes:
        raise OnnxFileError(
            path,
            f"{label}: needs bytes {start}..{start + size} of {location}, which holds"
            f" {data_bytes}: truncated",
        )
    tally.external_bytes += size
    tally.external_files[location] = None
