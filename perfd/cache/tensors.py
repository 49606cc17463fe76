"""The bytes a loaded model's own tensors hold, per device, found by walking the object.

After a load whose loader did not report them (``Loaded.tensor_bytes`` is None), the cache
walks what the loader returned: torch modules (their parameters and buffers, however deep),
bare torch tensors and numpy arrays, inside objects' ``__dict__``, lists, tuples, sets and
dicts, a bounded number of levels and objects deep. Each storage counts once: tied weights,
views and a numpy array sharing a tensor's memory are one storage, keyed by device and address.

torch and numpy are never imported here: only a library the process already imported (the
load did) can have made the tensors, so the classes come from ``sys.modules``. A fake module
there (the tests' fake torch with cuda tensors) is walked the same way.
"""

from __future__ import annotations

import collections
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

MAX_DEPTH: Final = 8  # containers and attributes below the loaded object (modules: any depth)
MAX_OBJECTS: Final = 200_000  # objects looked at, at most, in one walk

_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None), memoryview, range)
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


@dataclass(frozen=True)
class Counted:
    """What a walk found: bytes per device ("cpu", "cuda:N"), and which libraries' tensors
    ("torch", "numpy" or "torch+numpy"); ``truncated`` when a bound stopped the walk."""

    by_device: dict[str, int]
    counted_by: str
    truncated: bool = False


def device_name(device: Any) -> str:
    """A torch device as the cache names devices: "cpu", "cuda:N" (index 0 when unset)."""
    kind = str(getattr(device, "type", device))
    if kind == "cuda":
        index = getattr(device, "index", None)
        return f"cuda:{index if index is not None else 0}"
    return kind


class _Walk:
    def __init__(self, max_depth: int, max_objects: int) -> None:
        torch, numpy = sys.modules.get("torch"), sys.modules.get("numpy")
        self.tensor = getattr(torch, "Tensor", None) if torch is not None else None
        nn = getattr(torch, "nn", None) if torch is not None else None
        self.module = getattr(nn, "Module", None) if nn is not None else None
        self.ndarray = getattr(numpy, "ndarray", None) if numpy is not None else None
        self.max_depth, self.max_objects = max_depth, max_objects
        self.seen: set[int] = set()
        self.storages: dict[tuple[str, int], int] = {}  # (device, address) -> bytes
        self.libraries: set[str] = set()
        self.looked = 0  # children looked at, scalars included
        self.truncated = False

    def visit(self, obj: Any, depth: int) -> None:
        """Breadth first: an object is walked from its shallowest place, so a deep path to
        it first cannot leave it unwalked at the depth bound."""
        queue = collections.deque([(obj, depth)])
        while queue:
            obj, depth = queue.popleft()
            if self.skip(obj):
                continue
            self.seen.add(id(obj))
            if self.tensor is not None and isinstance(obj, self.tensor):
                self.add_tensor(obj)
                continue
            if self.ndarray is not None and isinstance(obj, self.ndarray):
                self.add_array(obj)
                continue
            if self.module is not None and isinstance(obj, self.module):
                self.add_module(obj)  # the registered tensors at any depth, then the rest
            for child in _children(obj):
                self.looked += 1
                if self.looked > 10 * self.max_objects:
                    self.truncated = True  # enough looking: a list of a million floats
                    return
                if self.skip(child):
                    continue
                if depth >= self.max_depth:
                    self.truncated = True  # something left unwalked below this object
                    break
                if len(self.seen) + len(queue) >= self.max_objects:
                    self.truncated = True
                    return
                queue.append((child, depth + 1))

    def skip(self, obj: Any) -> bool:
        """Nothing to count in it (numbers, text, classes, modules, functions), or seen."""
        return isinstance(obj, (*_SCALARS, *_OPAQUE)) or id(obj) in self.seen

    def add_tensor(self, tensor: Any) -> None:
        try:
            device = device_name(tensor.device)
            if device == "meta":
                return
            storage = tensor.untyped_storage()
            key, size = (device, int(storage.data_ptr())), int(storage.nbytes())
        except Exception:  # sparse, quantized or otherwise storage-less tensors
            return
        if size > 0:
            self.storages[key] = max(size, self.storages.get(key, 0))
            self.libraries.add("torch")

    def add_array(self, array: Any) -> None:
        root, ndarray = array, self.ndarray or type(array)
        while isinstance(getattr(root, "base", None), ndarray):
            root = root.base  # a view: count the array that owns the memory, once
        try:
            address = int(root.__array_interface__["data"][0])
            size = int(root.nbytes)
        except Exception:
            return
        if size > 0:
            key = ("cpu", address)
            self.storages[key] = max(size, self.storages.get(key, 0))
            self.libraries.add("numpy")

    def add_module(self, module: Any) -> None:
        try:
            tensors = [*module.parameters(), *module.buffers()]
        except Exception:
            return
        for tensor in tensors:
            if id(tensor) not in self.seen:
                self.seen.add(id(tensor))
                self.add_tensor(tensor)


def _children(obj: Any) -> Iterator[Any]:
    """What ``obj`` holds: a dict's values, a sequence's or set's items, an object's
    attributes (``__dict__`` and ``__slots__``), lazily."""
    if isinstance(obj, dict):
        yield from obj.values()
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
        return
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        yield from list(attributes.values())
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()) if isinstance(cls, type) else ():
            if isinstance(name, str) and name not in ("__dict__", "__weakref__"):
                value = getattr(obj, name, None)
                if value is not None:
                    yield value


def count(
    obj: Any, *, max_depth: int = MAX_DEPTH, max_objects: int = MAX_OBJECTS
) -> Counted | None:
    """The tensors ``obj`` holds, or None when it holds none that torch or numpy made (or
    neither library is imported). Never raises."""
    walk = _Walk(max_depth, max_objects)
    if walk.tensor is None and walk.ndarray is None:
        return None
    try:
        walk.visit(obj, 0)
    except Exception:  # a property that raises, a container changed under the walk
        walk.truncated = True
    if not walk.storages:
        return None
    by_device: dict[str, int] = {}
    for (device, _address), size in walk.storages.items():
        by_device[device] = by_device.get(device, 0) + size
    libraries = [name for name in ("torch", "numpy") if name in walk.libraries]
    return Counted(by_device, "+".join(libraries), walk.truncated)
