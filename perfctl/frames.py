"""Arrays on the wire, client side: numpy arrays in and out of ``infer`` as raw frames.

perfd/wire/arrays.py describes the form: each array in the inputs becomes ``{"$frame": i}`` in the
JSON frame, with its dtype and shape in ``arrays``, and its bytes in the i-th frame after it.
numpy is imported only when a reply carries arrays.
"""

from __future__ import annotations

from typing import Any, Final

import zmq

from perfctl.errors import BAD_REPLY, BadReply

FRAME_KEY: Final = "$frame"  # an array's placeholder in the JSON frame (perfd/wire/arrays.py)


def is_array(value: Any) -> bool:
    """A numpy array (or numpy scalar), recognised without importing numpy."""
    return hasattr(value, "__array_interface__") and hasattr(value, "dtype")


def has_array(value: Any) -> bool:
    if is_array(value):
        return True
    if isinstance(value, dict):
        return any(has_array(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_array(v) for v in value)
    return False


def to_frames(value: Any, meta: list[dict[str, Any]], frames: list[Any]) -> Any:
    """``value`` with each array replaced by {"$frame": i}; its dtype and shape appended to
    ``meta``, its bytes (C order, a zero-copy memoryview when it can be) to ``frames``."""
    if is_array(value):
        if value.dtype.hasobject:
            raise TypeError(f"cannot send an array of Python objects (dtype {value.dtype})")
        meta.append({"dtype": value.dtype.str, "shape": list(value.shape)})
        frames.append(_buffer(value))
        return {FRAME_KEY: len(frames) - 1}
    if isinstance(value, dict):
        return {k: to_frames(v, meta, frames) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_frames(v, meta, frames) for v in value]
    return value


def _buffer(array: Any) -> Any:
    flags = getattr(array, "flags", None)
    if flags is not None and flags.c_contiguous:
        try:
            return memoryview(array)
        except (TypeError, ValueError):  # dtypes the buffer protocol cannot show (datetime64)
            pass
    return array.tobytes()  # C order, copied


def nbytes(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def from_frames(result: dict[str, Any], frames: list[zmq.Frame]) -> Any:
    """The reply's outputs with each {"$frame": i} replaced by frame i as a numpy array."""
    import numpy

    meta = result.get("arrays")
    if not isinstance(meta, list) or len(meta) != len(frames):
        raise BadReply(BAD_REPLY, f"'arrays' does not describe the reply's {len(frames)} frames")
    decoded = []
    for i, (info, frame) in enumerate(zip(meta, frames, strict=True)):
        try:
            dtype = numpy.dtype(info["dtype"])
            shape = tuple(int(n) for n in info["shape"])
            decoded.append(numpy.frombuffer(frame.buffer, dtype=dtype).reshape(shape))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadReply(BAD_REPLY, f"reply array {i}: {exc}") from None
    return _replace(result.get("outputs"), decoded)


def _replace(value: Any, decoded: list[Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {FRAME_KEY}:
            index = value[FRAME_KEY]
            if not isinstance(index, int) or not 0 <= index < len(decoded):
                raise BadReply(BAD_REPLY, f"reply names frame {index!r}; it has {len(decoded)}")
            return decoded[index]
        return {k: _replace(v, decoded) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, decoded) for v in value]
    return value
