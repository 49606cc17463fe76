"""Loader names to Loader instances: the built-ins, then third-party entry points.

Built-in: ``python``, ``onnx`` and ``llama_cpp`` (each imports its engine, onnxruntime or
llama_cpp, only when a model loads); ``openai`` (perfd.loaders.openai) needs the daemon's
providers, so the daemon passes it in ``extra``. Third-party packages add loaders through the
entry-point group ``perfd.loaders`` (in their pyproject.toml)::

    [project.entry-points."perfd.loaders"]
    vllm = "perfd_vllm:VllmLoader"

The group is scanned only when a name that is not built in is asked for (importlib.metadata is
slow to import and to scan), and each entry point is imported only when its name is asked for.
A built-in name wins over an entry point of the same name; ``extra`` loaders win over both.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from perfd.loaders.base import Loader, LoaderError
from perfd.loaders.llama import LlamaCppLoader
from perfd.loaders.onnx import OnnxLoader
from perfd.loaders.python import PythonLoader

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

GROUP = "perfd.loaders"

# Built-in loaders that need a part of the daemon, which passes them in ``extra``: name -> why
# a bare Registry() cannot give one.
WIRED_BY_DAEMON = {
    "openai": "the \"openai\" loader needs perfd's providers: perfd's daemon passes it in as "
    'Registry(extra={"openai": OpenAILoader(lambda: providers)}) (see perfd.loaders.openai)',
}

LOADER_METHODS = ("estimate", "load", "infer", "unload")


class Registry:
    """Find the Loader for a name; thread-safe, one instance of each loader."""

    def __init__(self, extra: Mapping[str, Loader] | None = None, *, group: str = GROUP) -> None:
        self._group = group
        self._loaders: dict[str, Loader] = {
            "python": PythonLoader(),
            "onnx": OnnxLoader(),
            "llama_cpp": LlamaCppLoader(),
        }
        self._loaders.update(extra or {})
        self._entry_points: dict[str, EntryPoint] | None = None  # None: not scanned yet
        self._lock = threading.Lock()

    def get(self, name: str) -> Loader:
        """The loader called ``name``; LoaderError says why there is none."""
        with self._lock:
            loader = self._loaders.get(name)
            if loader is not None:
                return loader
            entry_point = self._discover().get(name)
            if entry_point is not None:
                loader = _load_entry_point(entry_point)
                self._loaders[name] = loader
                return loader
        if name in WIRED_BY_DAEMON:
            raise LoaderError(WIRED_BY_DAEMON[name])
        raise LoaderError(f"unknown loader {name!r}; known loaders: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Every loader name: built-in, injected and discovered entry points (not imported)."""
        with self._lock:
            return sorted({*self._loaders, *self._discover()})

    def _discover(self) -> dict[str, EntryPoint]:
        """Scan the entry-point group once; the first distribution to claim a name wins."""
        if self._entry_points is None:
            from importlib.metadata import entry_points

            found: dict[str, EntryPoint] = {}
            for entry_point in entry_points(group=self._group):
                found.setdefault(entry_point.name, entry_point)
            self._entry_points = found
        return self._entry_points


def _load_entry_point(entry_point: EntryPoint) -> Loader:
    """Import an entry point; a class is instantiated with no arguments."""
    label = f"{GROUP} entry point {entry_point.name!r} ({entry_point.value})"
    dist = getattr(entry_point, "dist", None)
    if dist is not None:
        label += f" from {dist.name}"
    try:
        obj: Any = entry_point.load()
        if isinstance(obj, type):
            obj = obj()
    except Exception as exc:
        raise LoaderError(f"{label} is broken: {type(exc).__name__}: {exc}") from exc
    missing = [method for method in LOADER_METHODS if not callable(getattr(obj, method, None))]
    if missing:
        raise LoaderError(
            f"{label} is broken: its {type(obj).__name__} has no {', '.join(missing)}"
            f" (a loader needs {', '.join(LOADER_METHODS)}; see perfd.loaders.base.Loader)"
        )
    loader: Loader = obj
    return loader
