"""The python loader: a model is whatever a ``module:callable`` factory returns.

``target = "pkg.module:factory"`` (dotted attributes are allowed after the colon, so
``"pkg.module:Class.from_config"`` works). Loading imports the module and calls the factory
with the model's options as keyword arguments, except the reserved option ``method``: when it
is set (``method = "encode"``) a request runs ``model.encode(inputs, **options)``, otherwise
``model(inputs, **options)``. Unloading calls ``model.close()`` when the model has one.

Estimate: a python object cannot be sized before it exists, but the weights it will load can.
``size_hint``, when given, is the estimate (the operator's word wins); else, when ``path`` names
the weights (a ``.safetensors`` file or a folder of them, a ``.gguf`` file, an ``.onnx`` file),
their bytes from the file's headers (``perfd.recommend.weights``, ``perfd.recommend.onnxfile``:
nothing is loaded); else None. ``path`` is not passed to the factory (put it in ``options`` too
when the factory needs it). A path whose headers cannot be read: ``estimate`` raises
LoaderError saying why, and ``load`` logs ``loader.estimate_failed`` and loads without an
estimate. The cache measures the real cost around ``load`` either way.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from perfd import log
from perfd.loaders.base import Loaded, LoaderError, ModelSpec

_log = log.get("perfd.loaders")

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
        """``size_hint``, else the weights' bytes from ``path``'s headers, else None."""
        if spec.size_hint:
            return spec.size_hint
        if not spec.path:
            return None
        return weights_bytes(spec.name, spec.path)

    def load(self, spec: ModelSpec) -> Loaded:
        factory = resolve(spec.target)
        method = spec.options.get("method")
        if method is not None and (not isinstance(method, str) or not method.isidentifier()):
            raise LoaderError(
                f"model {spec.name!r}: option method must be a method name, got {method!r}"
            )
        kwargs = {k: v for k, v in spec.options.items() if k not in RESERVED_OPTIONS}
        try:
            estimate = self.estimate(spec)
        except LoaderError as exc:  # an estimate is help, not a condition of the load
            _log.warning("loader.estimate_failed", model=spec.name, path=spec.path, error=str(exc))
            estimate = None
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
        return Loaded(model=model, estimate_bytes=estimate)

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


WEIGHT_FILES = "a .safetensors file or a folder of them, a .gguf file or an .onnx file"


def weights_bytes(model: str, path: str) -> int:
    """The bytes of the weights at ``path``, from their headers; LoaderError says why not."""
    from perfd.recommend.onnxfile import OnnxFileError, read_onnx
    from perfd.recommend.request import RecommendError
    from perfd.recommend.weights import read_weights

    try:
        if path.lower().endswith(".onnx"):
            return read_onnx(path).bytes
        return read_weights(path).bytes
    except (OnnxFileError, RecommendError) as exc:
        why = str(exc)
    except Exception as exc:  # a header the readers did not foresee (a dim that is a string)
        why = f"{path}: unreadable header ({type(exc).__name__}: {exc})"
    raise LoaderError(
        f"model {model!r}: cannot estimate its size from path: {why}; path names the"
        f" weights ({WEIGHT_FILES}), or set size_hint"
    )


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
