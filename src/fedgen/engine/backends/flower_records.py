"""fedgen's wire messages inside Flower messages.

A Flower ``Message`` carries a ``RecordDict``; fedgen puts one encoded
``fedgen.wire`` message in it, as a uint8 array (Flower chunks large arrays on
its own), so the bytes a client decodes are exactly the bytes the server
encoded, and the same strict decoder checks them on both sides.
"""

from __future__ import annotations

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

    Raises:
        WireError: the content has no fedgen record or it is not a byte array.
    """
    try:
        record = content[RECORD]
        array = record[ARRAY].numpy()
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise WireError(
            f"a Flower message without fedgen's record {RECORD}/{ARRAY}: {exc!r}"
        ) from None
    if array.dtype != np.uint8 or array.ndim != 1:
        raise WireError(f"fedgen's record holds {array.dtype} {array.shape}, not bytes")
    return array.tobytes()
