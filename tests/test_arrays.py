"""Arrays as raw frames: round trips, placeholders, bad metadata."""

from __future__ import annotations

import numpy as np
import pytest

from perfd.wire import arrays


@pytest.mark.parametrize(
    "value",
    [
        np.float32(2.5) * np.ones((), dtype=np.float32),  # 0-d keeps its shape
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.arange(12, dtype=np.float64).reshape(3, 4).T,  # not C-contiguous
        np.zeros((2, 0), dtype=np.float32),
    ],
)
def test_round_trip_keeps_dtype_and_shape(value: np.ndarray) -> None:
    """to_frames then decode gives back the same array."""
    placeholder, meta, frames = arrays.to_frames({"x": value})
    out = arrays.decode(placeholder, meta, frames)["x"]
    assert out.dtype == value.dtype
    assert out.shape == value.shape
    assert np.array_equal(out, value)


def test_json_form_turns_arrays_and_scalars_into_lists_and_numbers() -> None:
    """A JSON-only reply has nested lists and plain numbers."""
    assert arrays.to_json({"a": np.arange(3), "b": np.float32(1.5), "c": (1, 2)}) == {
        "a": [0, 1, 2],
        "b": 1.5,
        "c": [1, 2],
    }


@pytest.mark.parametrize(
    ("value", "meta", "words"),
    [
        ({"$frame": 0}, [], "must describe each"),
        ({"$frame": 3}, [{"dtype": "<f4", "shape": [1]}], "no frame 3"),
        ({"$frame": 0}, [{"dtype": "nope", "shape": [1]}], "array 0"),
        ({"$frame": 0}, [{"dtype": "<f4", "shape": [7]}], "array 0"),
    ],
)
def test_bad_array_metadata(value: object, meta: list[object], words: str) -> None:
    """Wrong metadata gives an ArrayError naming the problem (perfd answers it as invalid_args
    with these words: tests/test_daemon_cache.py::test_numpy_outputs_as_json_and_as_frames)."""
    with pytest.raises(arrays.ArrayError, match=words):
        arrays.decode(value, meta, [b"\0\0\0\0"])


def test_zero_copy_frames_are_views_and_objects_are_refused() -> None:
    """perfctl's zero_copy frames are memoryviews of C-contiguous arrays (a copy otherwise);
    an array of Python objects is refused; other values are kept."""
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    placeholder, meta, frames = arrays.to_frames([value, value.T, 2.5], zero_copy=True)
    assert placeholder == [{"$frame": 0}, {"$frame": 1}, 2.5]
    assert isinstance(frames[0], memoryview)
    assert arrays.nbytes(frames[0]) == 24
    assert np.array_equal(arrays.decode(placeholder, meta, frames)[1], value.T)
    with pytest.raises(arrays.ArrayError, match="Python objects") as caught:
        arrays.to_frames({"x": np.array([object()])})
    assert caught.value.problem == "object_dtype"


def test_has_array_and_placeholder_walk_without_numpy_import() -> None:
    """has_array finds arrays in dicts, lists and tuples; decode without frames keeps the value."""
    assert arrays.has_array({"a": [1, (2, np.zeros(1))]})
    assert not arrays.has_array({"a": [1, (2, "x")]})
    assert arrays.decode({"$frame": 0}, None, []) == {"$frame": 0}
