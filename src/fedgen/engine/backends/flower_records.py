"""fedgen's wire messages inside Flower messages.

A Flower ``Message`` carries a ``RecordDict``; fedgen puts one encoded
``fedgen.wire`` message in it, as a uint8 array (Flower chunks large arrays on
its own), so the bytes a client decodes are exactly the bytes the server
encoded, and the same strict decoder checks them on both sides.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from fedgen.wire import WireError

#: The RecordDict key and the array name that hold the encoded message.
RECORD, ARRAY = "fedgen", "wire"


def pack(data: bytes) -> Any:
    """A Flower ``RecordDict`` holding ``data`` (an encoded wire message)."""
    from flwr.app import Array, ArrayRecord, RecordDict

    array = Array(np.frombuffer(data, dtype=np.uint8).copy())
    return RecordDict({RECORD: ArrayRecord(array_dict={ARRAY: array})})


def unpack(content: Any) -> bytes:
    """The encoded wire message in a Flower ``RecordDict``.

    The array's ``.npy`` bytes are read here rather than by ``np.load``, which allocates
    whatever shape the header claims before reading: a reply of a hundred bytes could
    ask for petabytes. Only a 1-D ``uint8`` array whose header matches its length is taken.

    Raises:
        WireError: the content has no fedgen record or it is not a byte array.
    """
    try:
        data = content[RECORD][ARRAY].data
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise WireError(
            f"a Flower message without fedgen's record {RECORD}/{ARRAY}: {exc!r}"
        ) from None
    if not isinstance(data, bytes):
        raise WireError(f"fedgen's record holds {type(data).__name__}, not .npy bytes")
    return npy_payload(data)


def npy_payload(data: bytes) -> bytes:
    """The bytes of a 1-D ``uint8`` array saved by ``np.save`` (format 1.0 or 2.0),
    checked against its header without allocating by it; ``WireError`` otherwise."""
    from numpy.lib import format as npy

    fp = io.BytesIO(data)
    try:
        version = npy.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy format {version}, expected 1.0 or 2.0")
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise WireError(f"fedgen's record is not a readable .npy array: {exc}") from None
    if dtype != np.uint8 or len(shape) != 1:
        raise WireError(f"fedgen's record holds {dtype} {shape}, not bytes")
    start = fp.tell()
    if shape[0] != len(data) - start:
        raise WireError(f"fedgen's record claims {shape[0]} bytes but holds {len(data) - start}")
    return data[start:]
