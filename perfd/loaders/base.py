"""The loader interface: how the model cache loads, runs and unloads one kind of model.

A loader is small and stateless: ``load`` returns a Loaded (the model object plus a size
estimate), ``infer`` runs one request on it, ``unload`` releases what only the loader knows
about (sessions, file handles). The cache owns everything else: budgets, leases, eviction,
measuring the real memory cost and checking it came back after unload.

Third-party loaders register through the entry-point group ``perfd.loaders``: the entry
point's name is the loader name used in ``[models.NAME] loader = "..."``, and its object is a
class (called with no arguments) or an instance implementing Loader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ModelSpec:
    """What to load: one `[models.NAME]` table, or a model named at run time."""

    name: str
    loader: str
    target: str = ""  # python: "module:callable"
    path: str = ""  # onnx (and file-based loaders): the model file
    device: str = "cpu"  # "cpu" or "cuda:N"
    options: dict[str, Any] = field(default_factory=dict)
    size_hint: int | None = None  # bytes, from config, when the loader cannot estimate
    provider: str = ""  # openai: the [providers.NAME] to call
    remote_model: str = ""  # openai: the provider's model id


@dataclass
class Loaded:
    """A loaded model: the object the loader infers with, its size estimate in bytes, and,
    when the loader knows them exactly, the bytes the model's own tensors hold.

    ``tensor_bytes`` maps a device ("cpu", "cuda:N") to the bytes of the model's tensors
    there (GGUF tensor sizes, ONNX initializers, a KV cache the loader allocated); None lets
    perfd count the tensors it finds in ``model`` itself (torch modules, numpy arrays).
    ``parts`` names what those bytes are made of, for ``ps`` (``{"weights": ...,
    "kv_cache": ...}``); optional.
    """

    model: Any
    estimate_bytes: int | None
    tensor_bytes: dict[str, int] | None = None
    parts: dict[str, int] | None = None


class LoaderError(Exception):
    """A model cannot be resolved, loaded or run; the message says why and what to check."""


def model_file(spec: ModelSpec, needs: str) -> str:
    """``spec.path``, checked to be an existing file; ``needs`` says what the loader wants
    when there is none ("the onnx loader needs path (the .onnx file)")."""
    if not spec.path:
        raise LoaderError(f"model {spec.name!r}: {needs}")
    if not os.path.isfile(spec.path):
        problem = "is not a file" if os.path.exists(spec.path) else "does not exist"
        raise LoaderError(f"model {spec.name!r}: path {spec.path} {problem}")
    return spec.path


class Loader(Protocol):
    """``name``; optionally ``local_memory = False`` for loaders whose models live elsewhere
    (remote APIs): the cache then charges them no memory."""

    name: str

    def estimate(self, spec: ModelSpec) -> int | None:
        """Bytes the model will take once loaded, known before loading (file sizes...)."""
        ...

    def load(self, spec: ModelSpec) -> Loaded: ...

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        """Run one request; ``inputs`` are JSON values or numpy arrays."""
        ...

    def unload(self, model: Any) -> None: ...
