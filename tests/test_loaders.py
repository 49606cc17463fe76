"""The loaders: python factories, ONNX models under onnxruntime, and the registry."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from perfd.loaders import Loaded, Loader, LoaderError, ModelSpec, Registry
from perfd.loaders.onnx import OnnxLoader, OnnxModel
from perfd.loaders.openai import OpenAILoader
from perfd.loaders.python import PythonLoader, PythonModel
from perfd.net.provider import Providers
from tests.models import onnx_toy, toy
from tests.models.onnx_toy import BIAS

TOY = "tests.models.toy"


@pytest.fixture(autouse=True)
def _reset_toy() -> Iterator[None]:
    """Blocking-load events and counters never leak between tests."""
    toy.reset()
    yield
    toy.reset()


def python_spec(target: str, **options: Any) -> ModelSpec:
    return ModelSpec(name="m", loader="python", target=target, options=options)


def load_python(target: str, **options: Any) -> PythonModel:
    loaded = PythonLoader().load(python_spec(target, **options))
    assert isinstance(loaded.model, PythonModel)
    return loaded.model


# -- python loader ------------------------------------------------------------------------------


def test_python_load_and_infer() -> None:
    """A module:callable target loads and a request calls the model with its inputs."""
    loader = PythonLoader()
    loaded = loader.load(python_spec(f"{TOY}:make_echo"))
    assert loaded.estimate_bytes is None
    assert loader.infer(loaded.model, {"a": [1, 2]}, {}) == {"a": [1, 2]}


def test_python_options_go_to_the_factory() -> None:
    """spec.options become the factory's keyword arguments (method excluded)."""
    model = load_python(f"{TOY}:make_echo", temperature=0.5, top_k=3)
    assert model.obj.options == {"temperature": 0.5, "top_k": 3}


def test_python_request_options_go_to_the_call() -> None:
    """Request options become keyword arguments of the model call."""
    model = load_python(f"{TOY}:make_upper")
    assert PythonLoader().infer(model, ["ab", "c"], {"suffix": "!"}) == ["AB!", "C!"]


def test_python_method_option() -> None:
    """options.method names the method requests call; the class itself is the factory."""
    loader = PythonLoader()
    model = load_python(f"{TOY}:Embedder", method="encode", dim=3)
    assert model.obj.dim == 3
    vector = loader.infer(model, "hello", {})
    assert vector == toy.Embedder(3).encode("hello")
    assert len(vector) == 3
    assert all(isinstance(x, float) for x in vector)
    normed = loader.infer(model, "hello", {"normalize": True})
    assert sum(x * x for x in normed) == pytest.approx(1.0)


def test_python_dotted_attribute_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attributes after the colon may be dotted (a classmethod factory)."""
    (tmp_path / "dotted_toy.py").write_text(
        "class Model:\n"
        "    @classmethod\n"
        "    def build(cls, scale=1):\n"
        "        return lambda x: x * scale\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "dotted_toy", raising=False)
    model = load_python("dotted_toy:Model.build", scale=3)
    assert PythonLoader().infer(model, 2, {}) == 6


def test_python_estimate_is_the_size_hint() -> None:
    """Without a path a python model cannot be sized before loading: size_hint or None."""
    loader = PythonLoader()
    assert loader.estimate(python_spec(f"{TOY}:make_echo")) is None
    spec = ModelSpec(name="m", loader="python", target=f"{TOY}:make_echo", size_hint=1234)
    assert loader.estimate(spec) == 1234
    assert loader.load(spec).estimate_bytes == 1234


def test_python_numpy_output() -> None:
    """A model may return numpy arrays; the loader passes them through."""
    model = load_python(f"{TOY}:make_doubler")
    out = PythonLoader().infer(model, [[1, 2]], {})
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.tolist() == [[2.0, 4.0]]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("tests.models.toy.make_echo", "must look like 'module:callable'"),
        (":make_echo", "must look like 'module:callable'"),
        ("tests.models.toy:", "must look like 'module:callable'"),
        ("tests.models.no_such_module:make", "module 'tests.models.no_such_module' not found"),
        (f"{TOY}:no_such_factory", f"'{TOY}' has no attribute 'no_such_factory'"),
        (f"{TOY}:Embedder.nope", f"'{TOY}:Embedder' has no attribute 'nope'"),
        (f"{TOY}:MB", "is a int, not a callable factory"),
    ],
)
def test_python_bad_target(target: str, problem: str) -> None:
    """A bad target raises LoaderError naming the target and what is wrong with it."""
    with pytest.raises(LoaderError, match="python target") as info:
        PythonLoader().load(python_spec(target))
    assert repr(target) in str(info.value)
    assert problem in str(info.value)


def test_python_module_with_broken_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that exists but fails to import says so, not 'not found'."""
    (tmp_path / "broken_toy.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "broken_toy", raising=False)
    with pytest.raises(LoaderError, match="importing 'broken_toy' failed") as info:
        PythonLoader().load(python_spec("broken_toy:make"))
    assert "no_such_dependency_xyz" in str(info.value)


def test_python_factory_error_is_a_loader_error() -> None:
    """A factory that raises gives LoaderError naming the target, chained to the cause."""
    with pytest.raises(LoaderError, match="make_failing") as info:
        PythonLoader().load(python_spec(f"{TOY}:make_failing", message="no GPU for you"))
    assert "ToyLoadError: no GPU for you" in str(info.value)
    assert isinstance(info.value.__cause__, toy.ToyLoadError)


def test_python_missing_method() -> None:
    """options.method naming a method the model lacks fails the load."""
    with pytest.raises(LoaderError, match="has no method 'embed'"):
        load_python(f"{TOY}:Embedder", method="embed")


def test_python_bad_method_value() -> None:
    """options.method must be a method name."""
    with pytest.raises(LoaderError, match="method must be a method name"):
        load_python(f"{TOY}:Embedder", method=3)


def test_python_uncallable_model_needs_a_method() -> None:
    """A model that is not callable and has no method option fails the load with a hint."""
    with pytest.raises(LoaderError, match="set option method"):
        load_python(f"{TOY}:Embedder")


def test_python_bad_factory_options() -> None:
    """Options the factory does not accept fail the load."""
    with pytest.raises(LoaderError, match="TypeError"):
        load_python(f"{TOY}:make_upper", colour="red")


def test_python_infer_error_is_a_loader_error() -> None:
    """A model that raises during a request gives LoaderError naming the target."""
    model = load_python(f"{TOY}:make_upper")
    with pytest.raises(LoaderError, match=f"{TOY}:make_upper failed: TypeError"):
        PythonLoader().infer(model, 42, {})


def test_python_unload_closes() -> None:
    """unload calls the model's close(), which gives its memory back."""
    model = load_python(f"{TOY}:make_ballast", size_mb=2)
    assert len(model.obj.buffer) == 2 * toy.MB
    PythonLoader().unload(model)
    assert model.obj.closed
    assert len(model.obj.buffer) == 0


def test_python_unload_without_close() -> None:
    """unload of a model without close() does nothing."""
    model = load_python(f"{TOY}:make_echo")
    PythonLoader().unload(model)
    assert PythonLoader().infer(model, 1, {}) == 1


def test_toy_blocking_factory_waits_for_release() -> None:
    """make_blocking sets ENTERED, counts calls and fails rather than hang when not released."""
    with pytest.raises(LoaderError, match="not released"):
        load_python(f"{TOY}:make_blocking", timeout=0.01)
    assert toy.ENTERED.is_set()
    assert toy.blocking_calls() == 1
    toy.RELEASE.set()
    model = load_python(f"{TOY}:make_blocking", tag="x")
    assert model.obj.options == {"tag": "x"}
    assert toy.blocking_calls() == 2


# -- onnx loader --------------------------------------------------------------------------------


def write_model(path: Path, *, with_counts: bool = False) -> Path:
    """Y = X * 2 + B and Z = X + B for X: float32 [N, 4]; with_counts adds K2 = K + K (int64)."""
    return onnx_toy.write_toy(path, with_counts=with_counts)


@pytest.fixture
def onnx_path(tmp_path: Path) -> Path:
    return write_model(tmp_path / "toy.onnx")


def onnx_spec(path: Path | str, **options: Any) -> ModelSpec:
    return ModelSpec(name="toy", loader="onnx", path=str(path), options=options)


def load_onnx(path: Path | str, **options: Any) -> OnnxModel:
    loaded = OnnxLoader().load(onnx_spec(path, **options))
    assert isinstance(loaded.model, OnnxModel)
    return loaded.model


def test_onnx_estimate_is_the_initializer_bytes(onnx_path: Path) -> None:
    """estimate and Loaded: the initializers' bytes as the onnx package reads them (20 for the
    toy: a float32 scalar and a float32 [4]), not the file's size; also Loaded.tensor_bytes."""
    truth = onnx_toy.initializer_bytes(onnx_path)
    assert truth == onnx_toy.TOY_INITIALIZER_BYTES != onnx_path.stat().st_size
    assert OnnxLoader().estimate(onnx_spec(onnx_path)) == truth
    loaded = OnnxLoader().load(onnx_spec(onnx_path))
    assert loaded.estimate_bytes == truth
    assert loaded.tensor_bytes == {"cpu": truth}
    assert loaded.parts == {"initializers": truth}


def test_onnx_external_data_model_estimate_and_load(tmp_path: Path) -> None:
    """Weights in an external data file: the estimate counts them (the .onnx file is a few
    hundred bytes); onnxruntime loads and runs the model."""
    path = onnx_toy.write_linear(tmp_path / "ext.onnx", width=64, layers=2, external=True)
    truth = onnx_toy.initializer_bytes(path)
    assert truth == 2 * (64 * 64 + 64) * 4
    assert OnnxLoader().estimate(onnx_spec(path)) == truth > 50 * path.stat().st_size
    loaded = OnnxLoader().load(onnx_spec(path))
    assert (loaded.estimate_bytes, loaded.tensor_bytes) == (truth, {"cpu": truth})
    x = np.ones((1, 64), dtype=np.float32)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    expected = (x @ weights["W0"] + weights["B0"]) @ weights["W1"] + weights["B1"]
    out = OnnxLoader().infer(loaded.model, x, {})
    np.testing.assert_allclose(out["Y"], expected, rtol=1e-4, atol=1e-6)


def test_onnx_estimate_of_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file whose headers cannot be read: estimate raises LoaderError naming the model, the
    file and why (the cache falls back to size_hint)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(LoaderError) as caught:
        OnnxLoader().estimate(onnx_spec(bad))
    message = str(caught.value)
    assert message.startswith(f"model 'toy': cannot read the initializers of {bad}: ")
    assert "not an ONNX model" in message


def test_onnx_infer_nested_lists(onnx_path: Path) -> None:
    """Nested lists (ints too) become float32 and every output comes back as an array."""
    model = load_onnx(onnx_path)
    assert model.inputs == {"X": "tensor(float)"}
    assert model.outputs == ["Y", "Z"]
    assert model.providers == ["CPUExecutionProvider"]
    out = OnnxLoader().infer(model, {"X": [[1, 2, 3, 4], [0.5, 0, 0, -1]]}, {})
    assert set(out) == {"Y", "Z"}
    assert out["Y"].dtype == np.float32
    assert out["Y"].tolist() == [[3, 6, 9, 12], [2, 2, 3, 2]]
    assert out["Z"].tolist() == [[2, 4, 6, 8], [1.5, 2, 3, 3]]


def test_onnx_infer_numpy_and_bare_array(onnx_path: Path) -> None:
    """A single-input model takes a bare array; float64 arrays are cast to float32."""
    model = load_onnx(onnx_path)
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    out = OnnxLoader().infer(model, x, {})
    np.testing.assert_allclose(out["Y"], x * 2 + np.array(BIAS))
    np.testing.assert_allclose(out["Z"], x + np.array(BIAS))


def test_onnx_outputs_option(onnx_path: Path) -> None:
    """The outputs request option picks which outputs are computed and returned."""
    model = load_onnx(onnx_path)
    out = OnnxLoader().infer(model, [[0, 0, 0, 0]], {"outputs": ["Z"]})
    assert list(out) == ["Z"]
    assert out["Z"].tolist() == [BIAS]
    with pytest.raises(LoaderError, match="unknown output"):
        OnnxLoader().infer(model, [[0, 0, 0, 0]], {"outputs": ["W"]})
    with pytest.raises(LoaderError, match="list of output names"):
        OnnxLoader().infer(model, [[0, 0, 0, 0]], {"outputs": "Z"})


def test_onnx_two_inputs(tmp_path: Path) -> None:
    """A multi-input model takes a dict; int64 inputs convert from lists."""
    model = load_onnx(write_model(tmp_path / "two.onnx", with_counts=True))
    out = OnnxLoader().infer(model, {"X": [[1, 1, 1, 1]], "K": [7]}, {})
    assert out["K2"].dtype == np.int64
    assert out["K2"].tolist() == [14]
    with pytest.raises(LoaderError, match="has 2 inputs: pass a dict") as info:
        OnnxLoader().infer(model, [[1, 1, 1, 1]], {})
    assert "X (tensor(float)), K (tensor(int64))" in str(info.value)


def test_onnx_wrong_input_name(onnx_path: Path) -> None:
    """Unknown or missing input names give LoaderError naming the expected inputs."""
    model = load_onnx(onnx_path)
    with pytest.raises(LoaderError, match="unknown input") as info:
        OnnxLoader().infer(model, {"x": [[1, 2, 3, 4]]}, {})
    assert "missing input(s) X" in str(info.value)
    assert "expected inputs: X (tensor(float))" in str(info.value)


def test_onnx_lossy_cast_refused(tmp_path: Path) -> None:
    """Floats are not silently truncated into an int64 input."""
    model = load_onnx(write_model(tmp_path / "two.onnx", with_counts=True))
    with pytest.raises(LoaderError, match="K is tensor\\(int64\\) but the values are float64"):
        OnnxLoader().infer(model, {"X": [[1, 1, 1, 1]], "K": [1.5]}, {})


def test_onnx_bad_shape(onnx_path: Path) -> None:
    """onnxruntime's own errors (a wrong shape) come back as LoaderError."""
    model = load_onnx(onnx_path)
    with pytest.raises(LoaderError, match=str(onnx_path)):
        OnnxLoader().infer(model, [[1, 2, 3]], {})
    with pytest.raises(LoaderError, match="not an array"):
        OnnxLoader().infer(model, [[1, 2, 3, 4], [1]], {})


def test_onnx_unknown_request_option(onnx_path: Path) -> None:
    """Request options other than outputs are refused by name."""
    with pytest.raises(LoaderError, match="unknown request option\\(s\\) temperature"):
        OnnxLoader().infer(load_onnx(onnx_path), [[1, 2, 3, 4]], {"temperature": 1})


def test_onnx_session_options(onnx_path: Path) -> None:
    """intra_op_num_threads and graph_optimization_level are accepted and checked."""
    model = load_onnx(onnx_path, intra_op_num_threads=1, graph_optimization_level="disable")
    assert OnnxLoader().infer(model, [[0, 0, 0, 0]], {})["Y"].tolist() == [BIAS]
    with pytest.raises(LoaderError, match="graph_optimization_level 'max' is not one of"):
        load_onnx(onnx_path, graph_optimization_level="max")
    with pytest.raises(LoaderError, match="intra_op_num_threads must be an int"):
        load_onnx(onnx_path, intra_op_num_threads="4")
    with pytest.raises(LoaderError, match="unknown onnx option\\(s\\) threads"):
        load_onnx(onnx_path, threads=4)


def test_onnx_missing_path(tmp_path: Path) -> None:
    """A missing or empty path fails estimate and load with LoaderError."""
    missing = tmp_path / "nope.onnx"
    with pytest.raises(LoaderError, match="does not exist"):
        OnnxLoader().estimate(onnx_spec(missing))
    with pytest.raises(LoaderError, match="does not exist"):
        OnnxLoader().load(onnx_spec(missing))
    with pytest.raises(LoaderError, match="needs path"):
        OnnxLoader().load(onnx_spec(""))
    with pytest.raises(LoaderError, match="is not a file"):
        OnnxLoader().load(onnx_spec(tmp_path))


def test_onnx_invalid_file(tmp_path: Path) -> None:
    """A file that is not an ONNX model gives LoaderError naming it."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(LoaderError, match="onnxruntime cannot load"):
        OnnxLoader().load(onnx_spec(bad))


def test_onnx_cuda_without_provider(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:N without onnxruntime's CUDA provider fails the load and says what to install."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    spec = ModelSpec(name="toy", loader="onnx", path=str(onnx_path), device="cuda:0")
    with pytest.raises(LoaderError, match="CUDA provider, which is not available") as info:
        OnnxLoader().load(spec)
    assert "onnxruntime-gpu" in str(info.value)


def test_onnx_cuda_fallback_to_cpu_is_an_error(
    onnx_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that silently fell back to the CPU for cuda:N fails the load."""
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    if "CUDAExecutionProvider" in onnxruntime.capi._pybind_state.get_available_providers():
        pytest.skip("this onnxruntime really has CUDA: no fallback to provoke")
    spec = ModelSpec(name="toy", loader="onnx", path=str(onnx_path), device="cuda:1")
    with (
        pytest.warns(UserWarning, match="not in available provider"),
        pytest.raises(LoaderError, match="could not start CUDA on cuda:1"),
    ):
        OnnxLoader().load(spec)


def test_onnx_bad_device(onnx_path: Path) -> None:
    """A device that is neither cpu nor cuda:N is refused."""
    spec = ModelSpec(name="toy", loader="onnx", path=str(onnx_path), device="gpu0")
    with pytest.raises(LoaderError, match='is not "cpu" or "cuda:N"'):
        OnnxLoader().load(spec)


def test_onnx_without_onnxruntime(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime installed, load says to install the onnx extra."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(LoaderError, match='pip install "perfd\\[onnx\\]"'):
        OnnxLoader().load(onnx_spec(onnx_path))


def test_onnx_unload_drops_the_session(onnx_path: Path) -> None:
    """After unload the session is gone and requests fail with LoaderError."""
    model = load_onnx(onnx_path)
    OnnxLoader().unload(model)
    assert model.session is None
    with pytest.raises(LoaderError, match="was unloaded"):
        OnnxLoader().infer(model, [[1, 2, 3, 4]], {})


# -- registry -----------------------------------------------------------------------------------


class FakeLoader:
    """A loader whose models are their specs' targets."""

    name = "fake"

    def estimate(self, spec: ModelSpec) -> int | None:
        return 7

    def load(self, spec: ModelSpec) -> Loaded:
        return Loaded(model=spec.target, estimate_bytes=7)

    def infer(self, model: Any, inputs: Any, options: dict[str, Any]) -> Any:
        return f"{model}:{inputs}"

    def unload(self, model: Any) -> None:
        pass


def test_registry_builtins() -> None:
    """python and onnx are built in, and the same instance is returned every time."""
    registry = Registry()
    assert isinstance(registry.get("python"), PythonLoader)
    assert isinstance(registry.get("onnx"), OnnxLoader)
    assert registry.get("python") is registry.get("python")
    assert {"python", "onnx"} <= set(registry.names())


def test_registry_unknown_name() -> None:
    """An unknown loader name raises LoaderError listing the known loaders."""
    with pytest.raises(LoaderError, match="unknown loader 'tensorrt'") as info:
        Registry().get("tensorrt")
    assert "known loaders:" in str(info.value)
    assert "onnx, " in str(info.value)
    assert "python" in str(info.value)


def test_registry_openai_needs_the_daemons_providers() -> None:
    """A bare Registry has no openai loader: the error says the daemon wires it in."""
    with pytest.raises(LoaderError, match=r"needs perfd's providers") as info:
        Registry().get("openai")
    assert "OpenAILoader" in str(info.value)


def test_registry_openai_wired_in() -> None:
    """The daemon's way: OpenAILoader passed in extra is what "openai" resolves to."""
    loader = OpenAILoader(lambda: Providers({}))
    registry = Registry(extra={"openai": loader})
    assert registry.get("openai") is loader
    assert "openai" in registry.names()


def test_registry_extra_loaders() -> None:
    """Injected loaders are found by name and listed; they may replace a built-in."""
    fake = FakeLoader()
    registry = Registry(extra={"fake": fake, "python": fake})
    assert registry.get("fake") is fake
    assert registry.get("python") is fake
    assert "fake" in registry.names()
    loader: Loader = registry.get("fake")
    assert loader.infer(loader.load(ModelSpec("m", "fake", target="t")).model, 1, {}) == "t:1"


PLUGIN_MODULE = "perfd_test_plugin"


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake installed distribution on sys.path whose entry points name perfd loaders."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(
        "IMPORTED = True\n"
        "class EchoLoader:\n"
        "    name = 'echo'\n"
        "    def estimate(self, spec): return None\n"
        "    def load(self, spec): raise NotImplementedError\n"
        "    def infer(self, model, inputs, options): return inputs\n"
        "    def unload(self, model): pass\n"
        "NOT_A_LOADER = object()\n"
    )
    dist_info = tmp_path / "perfd_test_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: perfd-test-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[perfd.loaders]\n"
        f"echo = {PLUGIN_MODULE}:EchoLoader\n"
        f"broken = {PLUGIN_MODULE}_missing:Loader\n"
        f"bogus = {PLUGIN_MODULE}:NOT_A_LOADER\n"
        f"python = {PLUGIN_MODULE}:EchoLoader\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    yield tmp_path
    sys.modules.pop(PLUGIN_MODULE, None)


def test_registry_entry_point(plugin_dist: Path) -> None:
    """A loader from the perfd.loaders entry-point group is imported when first asked for."""
    registry = Registry()
    assert PLUGIN_MODULE not in sys.modules
    assert {"echo", "broken", "bogus", "python", "onnx"} <= set(registry.names())
    assert PLUGIN_MODULE not in sys.modules  # listing names imports nothing
    loader = registry.get("echo")
    assert type(loader).__name__ == "EchoLoader"
    assert loader.infer(None, "hi", {}) == "hi"
    assert registry.get("echo") is loader


def test_registry_builtin_wins_over_entry_point(plugin_dist: Path) -> None:
    """An entry point cannot shadow a built-in loader name."""
    assert isinstance(Registry().get("python"), PythonLoader)


def test_registry_broken_entry_point(plugin_dist: Path) -> None:
    """An entry point that fails to import raises LoaderError naming it."""
    with pytest.raises(LoaderError, match="entry point 'broken'") as info:
        Registry().get("broken")
    assert f"{PLUGIN_MODULE}_missing:Loader" in str(info.value)
    assert "perfd-test-plugin" in str(info.value)
    assert "ModuleNotFoundError" in str(info.value)


def test_registry_entry_point_not_a_loader(plugin_dist: Path) -> None:
    """An entry point whose object lacks the Loader methods raises LoaderError listing them."""
    with pytest.raises(LoaderError, match=r"entry point 'bogus'.*has no estimate, load"):
        Registry().get("bogus")


def test_registry_does_not_scan_for_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Looking up a built-in never scans entry points (importlib.metadata is slow)."""
    registry = Registry()

    def fail() -> dict[str, Any]:
        raise AssertionError("scanned entry points")

    monkeypatch.setattr(registry, "_discover", fail)
    assert isinstance(registry.get("onnx"), OnnxLoader)


def test_loaders_package_is_cheap_to_import() -> None:
    """perfd.loaders imports neither numpy, onnxruntime nor importlib.metadata."""
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, perfd.loaders; "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'importlib.metadata') "
            "if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"
