"""Arrays as raw frames: round trips, placeholders, bad metadata."""

from __future__ import annotations

import numpy as np
import pytest

from perfd.errors import CommandError
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
    """Wrong metadata gives invalid_args naming the problem."""
    with pytest.raises(CommandError, match=words) as caught:
        arrays.decode(value, meta, [b"\0\0\0\0"])
    assert caught.value.code == "invalid_args"
