"""Arrays over the wire without JSON-encoding them, for both sides (perfd and perfctl).

A request (or reply) may carry raw frames after its JSON frame. The JSON names them: any value
``{"$frame": i}`` inside ``args.inputs`` (or ``result.outputs``) stands for frame ``i``, and
``arrays[i] = {"dtype": "float32", "shape": [2, 4]}`` says how to read it (C order, little
endian as numpy's dtype string gives it). A JSON-only reply turns arrays into nested lists.

numpy is imported only when an array is actually decoded: perfctl imports this module at start.
Errors are ArrayError, with the facts as attributes; each side words them for its reader (perfd
as an ``invalid_args`` reply, perfctl as a bad reply).
"""

from __future__ import annotations

from typing import Any, Final, Literal

FRAME_KEY: Final = "$frame"  # an array's placeholder in the JSON frame

Problem = Literal["undescribed", "bad_array", "no_frame", "object_dtype"]


class ArrayError(ValueError):
    """Frames and their description disagree. ``problem`` says how: "undescribed" (``arrays``
    is not a list of ``count`` entries), "bad_array" (entry ``index`` cannot be read:
    ``detail``), "no_frame" (a placeholder names frame ``index`` of ``count``), "object_dtype"
    (an array of Python objects cannot be sent: ``detail`` is its dtype)."""

    def __init__(
        self, problem: Problem, *, index: Any = None, count: int = 0, detail: str = ""
    ) -> None:
        self.problem: Problem = problem
        self.index = index
        self.count = count
        self.detail = detail
        super().__init__(_words(problem, index, count, detail))


def _words(problem: Problem, index: Any, count: int, detail: str) -> str:
    if problem == "undescribed":
        return f"'arrays' must describe each of the {count} extra frames (dtype, shape)"
    if problem == "bad_array":
        return f"array {index}: {detail}"
    if problem == "no_frame":
        return f"no frame {index!r}"
    return f"cannot send an array of Python objects (dtype {detail})"


def is_array(value: Any) -> bool:
    """A numpy array (or numpy scalar), recognised without importing numpy."""
    return hasattr(value, "__array_interface__") and hasattr(value, "dtype")


def has_array(value: Any) -> bool:
    """Whether ``value`` holds an array anywhere in its dicts, lists and tuples."""
    if is_array(value):
        return True
    if isinstance(value, dict):
        return any(has_array(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_array(v) for v in value)
    return False


def decode(value: Any, arrays: Any, frames: list[Any]) -> Any:
    """Replace each {"$frame": i} in ``value`` with the numpy array of frame i.

    A frame is bytes or anything with a ``buffer`` (a zmq.Frame): the arrays are views on it."""
    if not frames:
        return value
    if not isinstance(arrays, list) or len(arrays) != len(frames):
        raise ArrayError("undescribed", count=len(frames))
    import numpy

    decoded = []
    for i, (meta, frame) in enumerate(zip(arrays, frames, strict=True)):
        try:
            dtype = numpy.dtype(meta["dtype"])
            shape = tuple(int(n) for n in meta["shape"])
            array = numpy.frombuffer(getattr(frame, "buffer", frame), dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArrayError("bad_array", index=i, detail=str(exc)) from None
        decoded.append(array)
    return _replace(value, decoded)


def _replace(value: Any, decoded: list[Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {FRAME_KEY}:
            index = value[FRAME_KEY]
            if not isinstance(index, int) or not 0 <= index < len(decoded):
                raise ArrayError("no_frame", index=index, count=len(decoded))
            return decoded[index]
        return {k: _replace(v, decoded) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, decoded) for v in value]
    return value


def to_json(value: Any) -> Any:
    """Arrays and numpy scalars become lists and numbers; everything else is kept."""
    if is_array(value):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
        return value.item()
    return value


def to_frames(
    value: Any, *, zero_copy: bool = False
) -> tuple[Any, list[dict[str, Any]], list[bytes | memoryview]]:
    """Arrays become {"$frame": i} placeholders: (JSON value, arrays metadata, frames).

    A frame is the array's bytes in C order: a copy, or with ``zero_copy`` a memoryview of a
    C-contiguous array (the caller keeps it unchanged until it is sent)."""
    arrays: list[dict[str, Any]] = []
    frames: list[bytes | memoryview] = []

    def walk(item: Any) -> Any:
        if is_array(item):
            if item.dtype.hasobject:
                raise ArrayError("object_dtype", detail=str(item.dtype))
            # copy(order="C") rather than ascontiguousarray, which turns 0-d arrays into 1-d
            contiguous = item if item.flags.c_contiguous else item.copy(order="C")
            arrays.append({"dtype": contiguous.dtype.str, "shape": list(contiguous.shape)})
            frames.append(_buffer(contiguous) if zero_copy else contiguous.tobytes())
            return {FRAME_KEY: len(frames) - 1}
        if isinstance(item, dict):
            return {str(k): walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return to_json(item)

    return walk(value), arrays, frames


def _buffer(array: Any) -> bytes | memoryview:
    try:
        return memoryview(array)
    except (TypeError, ValueError):  # dtypes the buffer protocol cannot show (datetime64)
        return bytes(array.tobytes())


def nbytes(frame: bytes | memoryview) -> int:
    """A frame's size in bytes (a memoryview's len counts items of its first axis)."""
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)
