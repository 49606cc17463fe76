"""ONNX toy models written with ``onnx.helper`` (nothing downloaded), and their true
initializer bytes as the ``onnx`` package itself reads them (``onnx.load`` + ``numpy_helper``).

``write_toy`` is the loader tests' model: Y = X * 2 + B and Z = X + B for X: float32 [N, 4]
(initializers ``two``, a float32 scalar, and ``B``, float32 [4]: 20 bytes); ``with_counts``
adds K2 = K + K (int64). ``write_linear`` is a bigger one: ``layers`` MatMul + Add of float32
[width, width] weights, optionally stored as external data beside the model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BIAS = [1.0, 2.0, 3.0, 4.0]
TOY_INITIALIZER_BYTES = 4 + 4 * 4  # "two" (a float32 scalar) and "B" (float32 [4])

# Element widths in bits of the packed sub-byte types: numpy_helper unpacks them to one byte
# per element, onnxruntime keeps them packed (as raw_data holds them).
SUB_BYTE_BITS = {
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
    TensorProto.FLOAT4E2M1: 4,
    TensorProto.INT2: 2,
    TensorProto.UINT2: 2,
    TensorProto.FLOAT6E2M3: 6,
    TensorProto.FLOAT6E3M2: 6,
}


def _save(model: onnx.ModelProto, path: Path, **save: object) -> Path:
    model.ir_version = 8  # old enough for every onnxruntime >= 1.17
    onnx.checker.check_model(model)
    onnx.save(model, str(path), **save)  # type: ignore[arg-type]
    return path


def write_toy(path: Path, *, with_counts: bool = False) -> Path:
    """The loader tests' toy model (module docstring)."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])
    z = helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("Mul", ["X", "two"], ["X2"]),
        helper.make_node("Add", ["X2", "B"], ["Y"]),
        helper.make_node("Add", ["X", "B"], ["Z"]),
    ]
    inputs, outputs = [x], [y, z]
    if with_counts:
        inputs.append(helper.make_tensor_value_info("K", TensorProto.INT64, ["N"]))
        outputs.append(helper.make_tensor_value_info("K2", TensorProto.INT64, ["N"]))
        nodes.append(helper.make_node("Add", ["K", "K"], ["K2"]))
    graph = helper.make_graph(
        nodes,
        "toy",
        inputs,
        outputs,
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("B", TensorProto.FLOAT, [4], BIAS),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def write_linear(path: Path, *, width: int = 256, layers: int = 2, external: bool = False) -> Path:
    """``layers`` x (MatMul by a float32 [width, width] weight, Add a float32 [width] bias),
    input and output float32 [1, width]; ``external`` stores the tensors in ``<name>.data``."""
    rng = np.random.default_rng(11)
    nodes, initializers = [], []
    previous = "X"
    for i in range(layers):
        weight = rng.standard_normal((width, width), dtype=np.float32) / np.float32(width)
        initializers += [
            numpy_helper.from_array(weight, f"W{i}"),
            numpy_helper.from_array(np.full(width, 0.01, dtype=np.float32), f"B{i}"),
        ]
        out = "Y" if i == layers - 1 else f"H{i}"
        nodes += [
            helper.make_node("MatMul", [previous, f"W{i}"], [f"M{i}"]),
            helper.make_node("Add", [f"M{i}", f"B{i}"], [out]),
        ]
        previous = out
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if not external:
        return _save(model, path)
    return _save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )


def initializer_bytes(path: Path) -> int:
    """The graph's initializer bytes as the onnx package reads them: each dense initializer's
    numpy array (packed sub-byte types at their packed size), strings by their bytes, and each
    sparse initializer at its dense size (onnxruntime densifies them)."""
    model = onnx.load(str(path))  # loads external data from beside the model
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.STRING:
            total += sum(len(s) for s in tensor.string_data)
            continue
        array = numpy_helper.to_array(tensor)
        bits = SUB_BYTE_BITS.get(tensor.data_type)
        total += array.nbytes if bits is None else math.ceil(array.size * bits / 8)
    for sparse in model.graph.sparse_initializer:
        itemsize = helper.tensor_dtype_to_np_dtype(sparse.values.data_type).itemsize
        total += math.prod(sparse.dims) * itemsize
    return total
