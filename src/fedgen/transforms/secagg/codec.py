"""Secure aggregation's messages as ``fedgen.wire`` messages, to cross a real wire.

Every request, reply and a client's exported state (``SecAggClientHalf.export``)
becomes one ``Message``: byte strings and vectors as arrays (uint8, float64), the
rest as JSON meta that names each array by its path. Decoding rebuilds the same
objects (tuples stay tuples, integer keys stay integers); it checks shapes and
names, not protocol rules: the receiving half still checks every field
(``messages.check``), as for a message that never left the process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedgen.transforms.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from fedgen.transforms.secagg.requests import (
    LoneRelease,
    LoneRequest,
    MaskRequest,
    ShareBatch,
    StartRound,
)
from fedgen.wire import Message, WireError

#: The dataclasses a message may hold, by name.
KINDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        StartRound,
        KeyDirectory,
        MaskRequest,
        UnmaskRequest,
        AdvertiseKeys,
        ShareBatch,
        MaskedInput,
        UnmaskResponse,
        EncryptedShare,
        LoneRequest,
        LoneRelease,
    )
}
#: Nesting a hostile message may not exceed (a share inside a batch is three levels).
_MAX_DEPTH = 8


def to_message(value: object) -> Message:
    """``value`` (a protocol object, or a dict of plain values) as one wire message."""
    arrays: dict[str, torch.Tensor] = {}
    return Message(arrays, {"secagg": _pack(value, "", arrays)})


def from_message(message: Message) -> Any:
    """What ``to_message`` encoded. Raises ``WireError`` if the message is not one."""
    if set(message.meta) != {"secagg"}:
        raise WireError("not a secure-aggregation message (its meta must hold only 'secagg')")
    used: set[str] = set()
    value = _unpack(message.meta["secagg"], message.arrays, used, 0)
    if used != set(message.arrays):
        raise WireError("a secure-aggregation message carries arrays its meta does not name")
    return value


def _pack(value: object, path: str, arrays: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, bytes):
        arrays[path] = (
            torch.frombuffer(bytearray(value), dtype=torch.uint8)
            if value
            else (torch.empty(0, dtype=torch.uint8))
        )
        return {"b": path}
    if isinstance(value, np.ndarray):
        arrays[path] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64))
        return {"a": path}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: _pack(getattr(value, f.name), f"{path}/{f.name}", arrays)
            for f in dataclasses.fields(value)
        }
        return {"k": type(value).__name__, "f": fields}
    if isinstance(value, tuple | list):
        return {"t": [_pack(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, Mapping):
        return {"m": [[k, _pack(v, f"{path}/{k}", arrays)] for k, v in value.items()]}
    if value is None or isinstance(value, bool | int | float | str):
        return {"v": value}
    raise WireError(f"secure aggregation cannot send a {type(value).__name__}")


def _unpack(node: Any, arrays: dict[str, torch.Tensor], used: set[str], depth: int) -> Any:
    if depth > _MAX_DEPTH or not isinstance(node, dict) or len(node) not in (1, 2):
        raise WireError("a malformed secure-aggregation message (bad nesting)")
    if "v" in node and len(node) == 1:
        return node["v"]
    if ("b" in node or "a" in node) and len(node) == 1:
        path = node.get("b", node.get("a"))
        if not isinstance(path, str):
            raise WireError("a malformed secure-aggregation message (an array without a name)")
        tensor = arrays.get(path)
        want = torch.uint8 if "b" in node else torch.float64
        if tensor is None or tensor.dtype != want or tensor.dim() != 1 or path in used:
            raise WireError(f"a secure-aggregation message lacks its array {str(path)[:40]!r}")
        used.add(path)
        return tensor.numpy().tobytes() if "b" in node else tensor.numpy().copy()
    if "t" in node and len(node) == 1 and isinstance(node["t"], list):
        return tuple(_unpack(v, arrays, used, depth + 1) for v in node["t"])
    if "m" in node and len(node) == 1 and isinstance(node["m"], list):
        out: dict[Any, Any] = {}
        for pair in node["m"]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int | str)):
                raise WireError("a malformed secure-aggregation message (bad mapping entry)")
            out[pair[0]] = _unpack(pair[1], arrays, used, depth + 1)
        return out
    if "k" in node and "f" in node and isinstance(node["f"], dict):
        kind = KINDS.get(node["k"]) if isinstance(node["k"], str) else None
        if kind is None:
            raise WireError(f"secure aggregation has no message {str(node['k'])[:40]!r}")
        fields = {k: _unpack(v, arrays, used, depth + 1) for k, v in node["f"].items()}
        try:
            return kind(**fields)
        except TypeError as exc:
            raise WireError(f"a malformed {kind.__name__}: {exc}") from None
    raise WireError("a malformed secure-aggregation message (unknown node)")
