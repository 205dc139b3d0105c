"""A job's numeric inputs stored as one binary value (NumPy's .npy bytes), not BSON arrays.

A 96×96×3 image is 27,648 BSON array elements, each with its own key: the database
spent ~15 ms of CPU per job decoding and storing them. Packed, they are one element.
Only a rectangular list of numbers is packed, as int64 when all are integers and as
float64 otherwise, so the numbers read back have the values sent (an integer among
floats comes back as a float, and true or false among numbers as 1 or 0); anything
else (named inputs, strings, ragged lists) is stored as sent. The binary subtype is
Sibyl's own, so a packed value cannot be mistaken for anything a client sent.
"""

import io

import numpy as np
from bson.binary import Binary

PACKED_SUBTYPE = 0x80  # the first of BSON's user-defined binary subtypes


def pack(value):
    """The value to store for a job's inputs."""
    if not isinstance(value, list):
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return value
    if array.dtype.kind not in "if" or array.size == 0:
        return value
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return Binary(buffer.getvalue(), PACKED_SUBTYPE)


def is_packed(value) -> bool:
    return isinstance(value, Binary) and value.subtype == PACKED_SUBTYPE


def unpacked_array(value):
    """Stored inputs as the runners take them: a packed value as its NumPy array."""
    if is_packed(value):
        return np.load(io.BytesIO(value), allow_pickle=False)
    return value


def unpacked(value):
    """Stored inputs as JSON: a packed value as the nested lists it was."""
    if is_packed(value):
        return unpacked_array(value).tolist()
    return value
