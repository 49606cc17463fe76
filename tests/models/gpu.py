"""A model "on cuda:0" for hosts without a GPU: a fake torch with cuda tensors, and a model
whose load and release move perfd's own NVML figure.

``fake_torch(cuda)`` is a module perfd can walk like torch: ``torch.Tensor`` (tensors with a
``device`` and an ``untyped_storage()``), ``torch.nn.Module`` (``parameters()``,
``buffers()``) and ``torch.cuda`` (``is_available``, ``memory_allocated``, ``empty_cache``).
The in-process tests put it in sys.modules themselves; ``make_cuda_model`` (a python-loader
target for a perfd started through tests/launcher.py with a controlled NVML) puts it there
as a real first load imports torch, and writes perfd's per-process memory on GPU 0 into the
NVML control file: the load's delta on load, what the release gives back on empty_cache().

The figures default to the issue's H200 run: 8 x Linear(8192, 8192) bf16 (1,073,741,824
bytes of parameters), a first load that grew perfd's NVML figure by 1,621,098,496 bytes, an
eviction that left 1,050,000,000 of them.
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LAYER = 8192 * 8192 * 2  # one Linear(8192, 8192) bf16 weight, bytes
FIRST_DELTA = 1_621_098_496
KEPT = 1_050_000_000


class FakeStorage:
    def __init__(self, address: int, size: int) -> None:
        self.address, self.size = address, size

    def data_ptr(self) -> int:
        return self.address

    def nbytes(self) -> int:
        return self.size


class FakeTensor:
    def __init__(self, storage: FakeStorage, device: str = "cuda:0") -> None:
        kind, _, index = device.partition(":")
        self.device = types.SimpleNamespace(type=kind, index=int(index) if index else None)
        self._storage = storage

    def untyped_storage(self) -> FakeStorage:
        return self._storage


class FakeModule:
    def __init__(self, *weights: FakeTensor) -> None:
        self.weights = list(weights)

    def parameters(self) -> Iterator[FakeTensor]:
        return iter(self.weights)

    def buffers(self) -> Iterator[FakeTensor]:
        return iter(())


class FakeCuda:
    """torch.cuda's count of allocated bytes; ``on_empty`` runs at each empty_cache()."""

    def __init__(self) -> None:
        self.allocated = 0
        self.on_empty: Callable[[], None] | None = None

    def is_available(self) -> bool:
        return True

    def memory_allocated(self, index: int = 0) -> int:
        return self.allocated

    def empty_cache(self) -> None:
        if self.on_empty is not None:
            self.on_empty()


def fake_torch(cuda: FakeCuda) -> types.ModuleType:
    module = types.ModuleType("torch")
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.nn = types.SimpleNamespace(Module=FakeModule)  # type: ignore[attr-defined]
    module.cuda = cuda  # type: ignore[attr-defined]
    return module


def cuda_layers(count: int, size: int = LAYER) -> list[FakeModule]:
    """``count`` layers on cuda:0, each with two weights tied to one storage (counted once)."""
    storages = [FakeStorage(0x7F0000000000 + i * size, size) for i in range(count)]
    return [FakeModule(FakeTensor(s), FakeTensor(s)) for s in storages]


# -- inside a perfd started through tests/launcher.py -----------------------------------------

CUDA = FakeCuda()
LOADS = [0]


def _add_to_own_nvml(control: str, delta: int) -> None:
    """Move this process's memory on GPU 0 in the NVML control file (and the GPU's use)."""
    path = Path(control)
    script = json.loads(path.read_text())
    gpu = script["gpus"][0]
    pid = os.getpid()
    processes = dict(gpu.get("compute_processes", []))
    processes[pid] = processes.get(pid, 0) + delta
    gpu["compute_processes"] = [[p, used] for p, used in processes.items()]
    gpu["used"] = gpu.get("used", 0) + delta
    tmp = path.with_suffix(".model.tmp")
    tmp.write_text(json.dumps(script))
    os.replace(tmp, path)


class CudaModel:
    """The layers "on cuda:0"; close() drops them, and the next empty_cache() gives back
    ``frees`` bytes of perfd's NVML figure."""

    def __init__(self, control: str, count: int, frees: int) -> None:
        self.layers = cuda_layers(count)
        self.parts = {"head": self.layers[-1]}  # held twice: a wrapper's own reference
        self.control, self.frees = control, frees

    def __call__(self, inputs: Any) -> Any:
        return inputs

    def close(self) -> None:
        CUDA.allocated -= LAYER * len(self.layers)
        self.layers = []
        frees, control = self.frees, self.control

        def give_back() -> None:
            CUDA.on_empty = None
            _add_to_own_nvml(control, -frees)

        CUDA.on_empty = give_back


def make_cuda_model(
    control: str,
    layers: int = 8,
    first_delta: int = FIRST_DELTA,
    kept: int = KEPT,
    reload_delta: int = 1_070_000_000,
) -> CudaModel:
    """Load the model: import (fake) torch, allocate its tensors, and grow perfd's NVML
    figure by ``first_delta`` (the first load: the CUDA context too) or ``reload_delta``."""
    sys.modules.setdefault("torch", fake_torch(CUDA))
    first = LOADS[0] == 0
    LOADS[0] += 1
    CUDA.allocated += LAYER * layers
    _add_to_own_nvml(control, first_delta if first else reload_delta)
    frees = first_delta - kept if first else reload_delta
    return CudaModel(control, layers, frees)
