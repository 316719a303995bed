"""Canonical encodings and the digests a ledger records.

``canonical_json`` is the one byte encoding of an entry body, a signed message or a tree head:
sorted keys, no spaces, ASCII only (so the bytes never depend on the platform's encoding), and
no NaN or infinity (which JSON cannot carry).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from fedgen.ledger.errors import LedgerError

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """Encode ``value`` as canonical JSON text.

    Raises:
        LedgerError: ``value`` holds something JSON cannot encode (a tensor, a set, NaN, a key
            that is not a string).
    """
    try:
        _check_keys(value)
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError, RecursionError) as err:
        raise LedgerError(
            f"a ledger body must be plain JSON (dicts with string keys, lists, strings, ints, "
            f"finite floats, booleans, null): {err}"
        ) from err


def _check_keys(value: Any) -> None:
    """JSON would turn other keys into strings, so the body read back would differ."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"key {key!r} is not a string")
            _check_keys(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex over a canonical serialization of a state dict.

    Keys are taken in sorted order; for each, the key, the dtype name, the shape and the
    tensor's bytes (contiguous, on the CPU) are hashed, each field length-prefixed so no two
    different states share a byte stream. Equal tensors give equal digests on any device.
    """
    h = hashlib.sha256(b"fedgen-state-v1\n")
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        header = canonical_json(
            {
                "key": key,
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "shape": list(tensor.shape),
            }
        ).encode()
        # Flattened to one dimension first: byte views need at least one dimension.
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        h.update(len(header).to_bytes(8, "big") + header)
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 hex of a file's bytes, read in chunks.

    Raises:
        LedgerError: the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as err:
        raise LedgerError(f"cannot read {path} to digest it: {err}") from err
    return h.hexdigest()
