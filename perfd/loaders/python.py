"""The python loader: a model is whatever a ``module:callable`` factory returns.

``target = "pkg.module:factory"`` (dotted attributes are allowed after the colon, so
``"pkg.module:Class.from_config"`` works). Loading imports the module and calls the factory
with the model's options as keyword arguments, except the reserved option ``method``: when it
is set (``method = "encode"``) a request runs ``model.encode(inputs, **options)``, otherwise
``model(inputs, **options)``. Unloading calls ``model.close()`` when the model has one.

Python objects cannot be sized before they exist, so ``estimate`` is the config's
``size_hint`` (or None); the cache measures the real cost around ``load``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from perfd.loaders.base import Loaded, LoaderError, ModelSpec

RESERVED_OPTIONS = frozenset({"method"})


@dataclass
class PythonModel:
    """A loaded python model: the factory's object and how requests call it."""

    obj: Any
    target: str
    method: str | None = None

    def entry(self) -> Any:
        """The callable one request runs: the object itself or its ``method``."""
        if self.method is None:
            return self.obj
        return getattr(self.obj, self.method)


def resolve(target: str) -> Any:
    """The callable that ``target`` ("module:attr.attr") names; LoaderError says what is wrong."""
    module_name, sep, attr_path = target.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not sep or not module_name or not attr_path:
        raise LoaderError(
            f"python target {target!r} must look like 'module:callable' (e.g. 'mypkg.models:load')"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise LoaderError(
                f"python target {target!r}: module {module_name!r} not found"
                " (is its package installed, or on PYTHONPATH?)"
            ) from exc
        raise LoaderError(
            f"python target {target!r}: importing {module_name!r} failed: {exc}"
        ) from exc
    except Exception as exc:
        raise LoaderError(
            f"python target {target!r}: importing {module_name!r} failed:"
            f" {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    walked = module_name
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoaderError(
                f"python target {target!r}: {walked!r} has no attribute {part!r}"
            ) from None
        walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
    if not callable(obj):
        raise LoaderError(
            f"python target {target!r} is a {type(obj).__name__}, not a callable factory"
        )
    return obj


class PythonLoader:
    """Load models by calling a python factory; see the module docstring."""

    name = "python"

    def estimate(self, spec: ModelSpec) -> int | None:
        return spec.size_hint

    def load(self, spec: ModelSpec) -> Loaded:
        factory = resolve(spec.target)
        method = spec.options.get("method")
        if method is not None and (not isinstance(method, str) or not method.isidentifier()):
            raise LoaderError(
                f"model {spec.name!r}: option method must be a method name, got {method!r}"
            )
        kwargs = {k: v for k, v in spec.options.items() if k not in RESERVED_OPTIONS}
        try:
            obj = factory(**kwargs)
        except Exception as exc:
            raise LoaderError(
                f"model {spec.name!r}: {spec.target}({_show(kwargs)}) raised"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        model = PythonModel(obj, spec.target, method)
        if method is not None and not callable(getattr(obj, method, None)):
            self.unload(model)
            raise LoaderError(
                f"model {spec.name!r}: the {type(obj).__name__} that {spec.target} returned"
                f" has no method {method!r} (option method)"
            )
        if method is None and not callable(obj):
            self.unload(model)
            raise LoaderError(
                f"model {spec.name!r}: the {type(obj).__name__} that {spec.target} returned"
                " is not callable; set option method to the method requests should call"
            )
        return Loaded(model=model, estimate_bytes=spec.size_hint)

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        if not isinstance(model, PythonModel):
            raise LoaderError(f"the python loader cannot run a {type(model).__name__}")
        entry = model.entry()
        try:
            return entry(inputs, **options)
        except Exception as exc:
            where = model.target if model.method is None else f"{model.target} (.{model.method})"
            raise LoaderError(f"{where} failed: {type(exc).__name__}: {exc}") from exc

    def unload(self, model: Any) -> None:
        obj = model.obj if isinstance(model, PythonModel) else model
        close = getattr(obj, "close", None)
        if not callable(close):
            return
        try:
            close()
        except Exception as exc:
            raise LoaderError(
                f"closing the {type(obj).__name__} failed: {type(exc).__name__}: {exc}"
            ) from exc


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
