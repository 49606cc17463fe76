"""Arrays over the wire without JSON-encoding them.

A request (or reply) may carry raw frames after its JSON frame. The JSON names them: any value
``{"$frame": i}`` inside ``args.inputs`` (or ``result.outputs``) stands for frame ``i``, and
``arrays[i] = {"dtype": "float32", "shape": [2, 4]}`` says how to read it (C order, little
endian as numpy's dtype string gives it). A JSON-only reply turns arrays into nested lists.

numpy is imported only when an array is actually decoded or encoded.
"""

from __future__ import annotations

from typing import Any

from perfd.errors import CommandError
from perfd.wire import protocol

FRAME_KEY = "$frame"
MAX_FRAMES = 64


def decode(value: Any, arrays: Any, frames: list[bytes]) -> Any:
    """Replace each {"$frame": i} in ``value`` with the numpy array of frame i."""
    if not frames:
        return value
    if not isinstance(arrays, list) or len(arrays) != len(frames):
        raise CommandError(
            protocol.INVALID_ARGS,
            f"'arrays' must describe each of the {len(frames)} extra frames (dtype, shape)",
        )
    import numpy

    decoded = []
    for i, (meta, frame) in enumerate(zip(arrays, frames, strict=True)):
        try:
            dtype = numpy.dtype(meta["dtype"])
            shape = tuple(int(n) for n in meta["shape"])
            array = numpy.frombuffer(frame, dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise CommandError(protocol.INVALID_ARGS, f"array {i}: {exc}") from None
        decoded.append(array)
    return _replace(value, decoded)


def _replace(value: Any, decoded: list[Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {FRAME_KEY}:
            index = value[FRAME_KEY]
            if not isinstance(index, int) or not 0 <= index < len(decoded):
                raise CommandError(protocol.INVALID_ARGS, f"no frame {index!r}")
            return decoded[index]
        return {k: _replace(v, decoded) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, decoded) for v in value]
    return value


def is_array(value: Any) -> bool:
    return hasattr(value, "__array_interface__") and hasattr(value, "dtype")


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


def to_frames(value: Any) -> tuple[Any, list[dict[str, Any]], list[bytes]]:
    """Arrays become {"$frame": i} placeholders: (JSON value, arrays metadata, frames)."""
    arrays: list[dict[str, Any]] = []
    frames: list[bytes] = []

    def walk(item: Any) -> Any:
        if is_array(item):
            # copy(order="C") rather than ascontiguousarray, which turns 0-d arrays into 1-d
            contiguous = item if item.flags.c_contiguous else item.copy(order="C")
            arrays.append({"dtype": contiguous.dtype.str, "shape": list(contiguous.shape)})
            frames.append(contiguous.tobytes())
            return {FRAME_KEY: len(frames) - 1}
        if isinstance(item, dict):
            return {str(k): walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return to_json(item)

    return walk(value), arrays, frames
