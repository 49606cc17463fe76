"""The onnx loader: an ONNX model file run by an onnxruntime InferenceSession.

onnxruntime and numpy come with the ``onnx`` extra (``pip install "perfd[onnx]"``) and are
imported only when a model loads or runs, so perfd starts without them.

Options, from the model's config table:

- ``intra_op_num_threads``: int, threads one operator may use (0: onnxruntime decides)
- ``graph_optimization_level``: "disable" | "basic" | "extended" | "all"

``device = "cpu"`` runs on the CPU provider; ``"cuda:N"`` on the CUDA provider for GPU N (with
the CPU provider for the operators CUDA lacks), which needs the onnxruntime-gpu build.

A request's inputs are a dict of input name to array (numpy, or nested lists converted to the
input's element type), or one bare array for a model with exactly one input. The reply is a
dict of output name to numpy array; the request option ``outputs`` (a list of names) picks a
subset.

``estimate`` is the bytes of the graph's initializers, read from the file's headers without
onnxruntime (``perfd.recommend.onnxfile``: external data included, sparse initializers at their
dense size), not the file's size. After a load the same figure is the model's ``tensor_bytes``
on its device (``parts = {"initializers": ...}``); onnxruntime's arenas and buffers are not in
it: the cache measures the process around the load for those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfd import log
from perfd.loaders import base
from perfd.loaders.base import Loaded, LoaderError, ModelSpec
from perfd.recommend.onnxfile import OnnxFileError, OnnxInfo, read_onnx

if TYPE_CHECKING:
    import numpy.typing as npt

_log = log.get("perfd.loaders")

INSTALL_HINT = 'install the onnx extra: pip install "perfd[onnx]"'

LOAD_OPTIONS = ("intra_op_num_threads", "graph_optimization_level")
INFER_OPTIONS = ("outputs",)

# option value -> name of the onnxruntime.GraphOptimizationLevel member
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# onnxruntime's input type -> the numpy dtype nested lists are converted to
INPUT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


@dataclass
class OnnxModel:
    """A loaded ONNX model: its session and the facts requests are checked against."""

    path: str
    session: Any  # onnxruntime.InferenceSession; None once unloaded
    inputs: dict[str, str] = field(default_factory=dict)  # name -> type, e.g. "tensor(float)"
    outputs: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)  # what the session really runs on


def model_file(spec: ModelSpec) -> str:
    """``spec.path``, checked to be an existing file."""
    return base.model_file(spec, "the onnx loader needs path (the .onnx file)")


def initializers(spec: ModelSpec) -> OnnxInfo:
    """The model file's initializers, from its headers; LoaderError says why they are not."""
    path = model_file(spec)
    try:
        return read_onnx(path)
    except OnnxFileError as exc:
        raise LoaderError(
            f"model {spec.name!r}: cannot read the initializers of {exc.path}: {exc.reason}"
        ) from exc


def parse_device(device: str) -> int | None:
    """None for "cpu", N for "cuda:N"; LoaderError for anything else."""
    if device == "cpu":
        return None
    kind, sep, index = device.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        return int(index)
    raise LoaderError(f'device {device!r} is not "cpu" or "cuda:N" (e.g. "cuda:0")')


class OnnxLoader:
    """Run ONNX models with onnxruntime; see the module docstring."""

    name = "onnx"

    def estimate(self, spec: ModelSpec) -> int | None:
        """The initializers' bytes from the file's headers; LoaderError when they cannot be
        read (the cache then falls back to ``size_hint``)."""
        return initializers(spec).bytes

    def load(self, spec: ModelSpec) -> Loaded:
        path = model_file(spec)
        unknown = sorted(set(spec.options) - set(LOAD_OPTIONS))
        if unknown:
            raise LoaderError(
                f"model {spec.name!r}: unknown onnx option(s) {', '.join(unknown)};"
                f" allowed: {', '.join(LOAD_OPTIONS)}"
            )
        device_id = parse_device(spec.device)
        try:
            import onnxruntime
        except ImportError as exc:
            raise LoaderError(f"model {spec.name!r} needs onnxruntime: {INSTALL_HINT}") from exc

        providers: list[Any] = ["CPUExecutionProvider"]
        if device_id is not None:
            available = onnxruntime.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise LoaderError(
                    f"model {spec.name!r}: device {spec.device} needs onnxruntime's CUDA"
                    f" provider, which is not available (this onnxruntime has:"
                    f" {', '.join(available)}); install onnxruntime-gpu instead of onnxruntime"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), *providers]

        try:
            session = onnxruntime.InferenceSession(
                path, self._session_options(onnxruntime, spec), providers=providers
            )
        except Exception as exc:
            raise LoaderError(
                f"model {spec.name!r}: onnxruntime cannot load {path}: {type(exc).__name__}: {exc}"
            ) from exc

        running = list(session.get_providers())
        if device_id is not None and "CUDAExecutionProvider" not in running:
            # onnxruntime falls back to the CPU when CUDA fails to initialise; the cache would
            # then count GPU memory that is really host memory.
            raise LoaderError(
                f"model {spec.name!r}: onnxruntime could not start CUDA on {spec.device}"
                f" (the session runs on {', '.join(running)}); check the CUDA and cuDNN"
                " libraries onnxruntime-gpu needs"
            )
        model = OnnxModel(
            path=path,
            session=session,
            inputs={arg.name: arg.type for arg in session.get_inputs()},
            outputs=[arg.name for arg in session.get_outputs()],
            providers=running,
        )
        try:
            info: OnnxInfo | None = initializers(spec)
        except LoaderError as exc:  # onnxruntime read it, the header reader did not
            _log.warning("loader.estimate_failed", model=spec.name, path=path, error=str(exc))
            info = None
        if info is None:
            return Loaded(model=model, estimate_bytes=None)
        return Loaded(
            model=model,
            estimate_bytes=info.bytes,
            tensor_bytes={spec.device: info.bytes},
            parts={"initializers": info.bytes},
        )

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        if not isinstance(model, OnnxModel):
            raise LoaderError(f"the onnx loader cannot run a {type(model).__name__}")
        if model.session is None:
            raise LoaderError(f"{model.path} was unloaded")
        unknown = sorted(set(options) - set(INFER_OPTIONS))
        if unknown:
            raise LoaderError(
                f"{model.path}: unknown request option(s) {', '.join(unknown)};"
                f" allowed: {', '.join(INFER_OPTIONS)}"
            )
        wanted = self._wanted_outputs(model, options.get("outputs"))
        feed = self._feed(model, inputs)
        try:
            results = model.session.run(wanted, feed)
        except Exception as exc:
            raise LoaderError(f"{model.path}: {type(exc).__name__}: {exc}") from exc
        return dict(zip(wanted or model.outputs, results, strict=True))

    def unload(self, model: Any) -> None:
        # onnxruntime frees a session when its last reference goes; drop ours even if the
        # caller keeps the OnnxModel around.
        if isinstance(model, OnnxModel):
            model.session = None

    @staticmethod
    def _session_options(onnxruntime: Any, spec: ModelSpec) -> Any:
        options = onnxruntime.SessionOptions()
        threads = spec.options.get("intra_op_num_threads")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
                raise LoaderError(
                    f"model {spec.name!r}: intra_op_num_threads must be an int >= 0"
                    f" (0: onnxruntime decides), got {threads!r}"
                )
            options.intra_op_num_threads = threads
        level = spec.options.get("graph_optimization_level")
        if level is not None:
            if level not in OPTIMIZATION_LEVELS:
                raise LoaderError(
                    f"model {spec.name!r}: graph_optimization_level {level!r} is not one of"
                    f" {', '.join(OPTIMIZATION_LEVELS)}"
                )
            member = OPTIMIZATION_LEVELS[level]
            options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, member)
        return options

    @staticmethod
    def _wanted_outputs(model: OnnxModel, outputs: Any) -> list[str] | None:
        if outputs is None:
            return None
        if isinstance(outputs, str) or not isinstance(outputs, list | tuple):
            raise LoaderError(f"{model.path}: option outputs must be a list of output names")
        unknown = [name for name in outputs if name not in model.outputs]
        if unknown or not outputs:
            raise LoaderError(
                f"{model.path}: unknown output(s) {', '.join(map(str, unknown)) or '(none given)'};"
                f" the model's outputs are {', '.join(model.outputs)}"
            )
        return list(outputs)

    @staticmethod
    def _feed(model: OnnxModel, inputs: Any) -> dict[str, npt.NDArray[Any]]:
        expected = ", ".join(f"{name} ({kind})" for name, kind in model.inputs.items())
        if not isinstance(inputs, Mapping):
            if len(model.inputs) != 1:
                raise LoaderError(
                    f"{model.path} has {len(model.inputs)} inputs: pass a dict of"
                    f" name -> array; expected inputs: {expected}"
                )
            inputs = {next(iter(model.inputs)): inputs}
        unknown = [str(name) for name in inputs if name not in model.inputs]
        missing = [name for name in model.inputs if name not in inputs]
        if unknown or missing:
            problems = []
            if unknown:
                problems.append(f"unknown input(s) {', '.join(unknown)}")
            if missing:
                problems.append(f"missing input(s) {', '.join(missing)}")
            raise LoaderError(f"{model.path}: {'; '.join(problems)}; expected inputs: {expected}")
        return {name: _as_array(model, name, value) for name, value in inputs.items()}


def _as_array(model: OnnxModel, name: str, value: Any) -> npt.NDArray[Any]:
    """``value`` as an array of input ``name``'s element type; lossy casts are refused."""
    import numpy as np

    kind = model.inputs[name]
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise LoaderError(f"{model.path}: input {name} is not an array: {exc}") from exc
    dtype = INPUT_DTYPES.get(kind)
    if dtype is None or array.dtype == dtype:
        return array
    if array.size == 0:
        return array.astype(dtype)
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise LoaderError(
            f"{model.path}: input {name} is {kind} but the values are {array.dtype};"
            f" converting them to {dtype} would lose information"
        )
    return array.astype(dtype)
