"""Models holding real tensors, for the cache's memory tests: a torch model inside a wrapper
(as sentence-transformers and most wrappers hold their modules) with a tied weight and a
buffer, and a numpy model of arrays and views. The tests compute the bytes these hold from
their shapes (``torch_model_bytes``, ``numpy_model_bytes``) and compare perfd's figures.

torch and numpy are imported inside the factories: perfd's first load imports them, as a
real model's first load does.
"""

from __future__ import annotations

from typing import Any

FP32 = 4


def torch_model_bytes(layers: int, width: int) -> int:
    """The bytes ``make_torch_model(layers, width)`` holds: each layer's weight and bias, the
    head's own bias (its weight is layer 0's), and the scale buffer."""
    return layers * (width * width + width) * FP32 + width * FP32 + width * FP32


class Wrapper:
    """A model object that holds its torch module among other things, like a
    SentenceTransformer or a pipeline: perfd has to find the module inside it."""

    def __init__(self, module: Any, head: Any) -> None:
        self.module = module
        self.parts = {"head": head, "config": {"width": head.in_features}}
        self.name = "toy-torch"

    def __call__(self, inputs: Any) -> Any:
        import torch

        with torch.no_grad():
            x = torch.tensor(inputs, dtype=torch.float32)
            return self.parts["head"](self.module(x)).sum().item()


def make_torch_model(layers: int = 4, width: int = 2048) -> Wrapper:
    """``layers`` x Linear(width, width) fp32, a head tied to layer 0's weight, a buffer."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    module.register_buffer("scale", torch.ones(width))
    head = torch.nn.Linear(width, width)
    head.weight = module[0].weight  # tied: the same storage, counted once
    return Wrapper(module, head)


def numpy_model_bytes(arrays: int, rows: int, cols: int) -> int:
    """The bytes ``make_numpy_model(arrays, rows, cols)`` holds (its views add nothing)."""
    return arrays * rows * cols * FP32


class Tables:
    """Lookup tables of float32 arrays, with views onto them."""

    def __init__(self, arrays: int, rows: int, cols: int) -> None:
        import numpy as np

        self.tables = [np.full((rows, cols), i, dtype=np.float32) for i in range(arrays)]
        self.views = [table[: rows // 2] for table in self.tables]
        self.first = self.tables[0].T

    def __call__(self, inputs: Any) -> Any:
        return float(self.tables[int(inputs) % len(self.tables)][0, 0])


def make_numpy_model(arrays: int = 4, rows: int = 2048, cols: int = 2048) -> Tables:
    return Tables(arrays, rows, cols)
