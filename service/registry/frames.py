"""Arrays between the API and a model runner: one message, no pickles.

A message is a JSON header, a newline, then each array's raw bytes in order:
{"arrays": [[name, dtype, shape], ...]} or {"error": "..."}. Only numeric and
boolean dtypes are read back, so a hostile runner can send nothing but numbers.
"""

import json
import math

import numpy as np

NUMERIC_KINDS = "biuf"
MAX_HEADER_BYTES = 64 * 1024


class FrameError(ValueError):
    """A message that is not a well-formed frame."""


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    contiguous = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    header = [[name, a.dtype.str, list(a.shape)] for name, a in contiguous.items()]
    parts = [json.dumps({"arrays": header}).encode(), b"\n"]
    parts += [a.tobytes() for a in contiguous.values()]
    return b"".join(parts)


def pack_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode() + b"\n"


def unpack(message: bytes) -> dict[str, np.ndarray]:
    """The arrays of a message, or {"error": message} for an error message."""
    end = message.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        raise FrameError("no header in the message")
    try:
        header = json.loads(message[:end])
        if "error" in header:
            return {"error": str(header["error"])}
        arrays, offset = {}, end + 1
        for name, dtype_text, shape in header["arrays"]:
            dtype = np.dtype(dtype_text)
            if dtype.kind not in NUMERIC_KINDS or not all(
                isinstance(d, int) and d >= 0 for d in shape
            ):
                raise FrameError(f"refused array {name!r}: {dtype_text} {shape}")
            count = math.prod(shape)  # Python integers: no overflow
            size = dtype.itemsize * count
            if offset + size > len(message):
                raise FrameError(f"array {name!r} is longer than the message")
            arrays[str(name)] = np.frombuffer(message, dtype, count, offset).reshape(shape)
            offset += size
    except (ValueError, TypeError, KeyError, RecursionError) as error:
        raise FrameError(f"unreadable message: {str(error)[:100]}") from None
    if offset != len(message):
        raise FrameError("the message has bytes after its arrays")
    return arrays
