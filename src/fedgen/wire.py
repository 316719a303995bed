"""Messages as they cross a wire: named arrays and a JSON ``meta``, encoded to bytes.

What the server sends a client and what comes back is a ``Message``: named
tensors (a global state, an update, a private state) and a ``meta`` dict of JSON
values (ids, config, metrics, a failure text, a signature). ``encode`` turns one
into bytes and ``decode`` turns bytes back into an equal message, bit for bit;
``message_nbytes`` gives the encoded length without building the buffer, so a
backend that skips serialization still reports the bytes a wire would carry.

Why a format of our own and not safetensors (installed here, but only because the
``lm`` extra's transformers and peft need it): safetensors sorts tensors by dtype
and name (a message keeps its own order), its metadata is a flat string-to-string
map (``meta`` is nested JSON, so it would be JSON inside a JSON string), it has no
complex dtypes, and it would become a core dependency for a format simple enough to
check whole here. The layout below is safetensors' idea (a length-prefixed JSON
header, then raw little-endian bytes) made strict enough that one message has
exactly one encoding.

Layout, version 1 (all integers little-endian)::

    offset  size  field
    0       6     magic  b"FGWIRE"
    6       2     version, uint16 (1)
    8       8     H, the header's length in bytes, uint64
    16      H     header: canonical JSON, ASCII (see below)
    16+H    pad   zero bytes up to P = 16 + H rounded up to a multiple of 8
    P       ...   payload: each array's raw bytes, in header order, each followed by
                  zero bytes up to a multiple of 8

The header is ``{"arrays": [entry, ...], "meta": {...}}`` written as
``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)``; an entry is ``{"dtype": "float32", "name": "w", "nbytes": 24,
"offset": 0, "shape": [2, 3]}``. ``offset`` counts from P: the first array is at 0,
each next one at the previous ``offset + nbytes`` rounded up to 8, and
``nbytes = prod(shape) * itemsize``. So the whole message is
``P + sum(round_up_8(nbytes))`` bytes, and every array starts 8-byte aligned. A
shape has at most 64 sizes, and its sizes other than 0 multiply to less than 2**63.
Array bytes are the tensor's C-order elements, little-endian (complex: real then
imaginary part, each little-endian); ``bool`` is one byte, 0 or 1.

Decoding trusts nothing: a header that is not canonical (duplicate keys, other
spacing, NaN, a float written another way), an unknown dtype, a shape whose size
disagrees with ``nbytes``, an offset that is not the one the layout implies
(so no gaps, overlaps or reordering), nonzero padding, or a buffer longer or
shorter than the layout all raise ``WireError`` saying what is wrong. Nothing is
allocated beyond what the input's length already holds, and decoded tensors own
their memory (a copy, never a view into the input).
"""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedgen.errors import FedgenError

MAGIC = b"FGWIRE"
VERSION = 1
#: magic, version (uint16), header length (uint64).
PREAMBLE = struct.Struct("<6sHQ")
ALIGN = 8
#: At most this many dimensions per array (far more than any model's tensors have).
MAX_DIMS = 64
#: The sizes of a shape other than 0 multiply to at most this (torch's int64 sizes).
MAX_DIM = 2**63 - 1

#: Wire name -> torch dtype; the wire name is torch's own, without ``torch.``.
DTYPES: dict[str, torch.dtype] = {
    str(dt).removeprefix("torch."): dt
    for dt in (
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
    )
}
_NAMES = {dt: name for name, dt in DTYPES.items()}
_ITEMSIZE = {dt: torch.empty((), dtype=dt).element_size() for dt in DTYPES.values()}
_BIG_ENDIAN = sys.byteorder == "big"


class WireError(FedgenError):
    """A message cannot be encoded (not JSON, an unsupported tensor) or decoded (bad bytes)."""


@dataclass(frozen=True)
class Message:
    """Named arrays and JSON metadata: what one side of a federation sends the other.

    ``arrays`` keeps its order on the wire. ``meta`` holds only JSON values: dicts
    with string keys, lists (not tuples), strings, ints, finite floats, bools and
    None, so that what is decoded equals what was encoded.
    """

    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """The encoded length (``message_nbytes``)."""
        return message_nbytes(self.arrays, self.meta)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _dumps(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _check_json(value: Any, where: str) -> None:
    """Raise ``WireError`` unless ``value`` is JSON that decodes back to itself."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if item is None or isinstance(item, bool | str):
            continue
        if isinstance(item, int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise WireError(f"{path} is {item}; a message carries only finite numbers")
            continue
        if isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
            continue
        if isinstance(item, dict):
            for key, v in item.items():
                if not isinstance(key, str):
                    raise WireError(f"{path} has the key {key!r}; meta keys must be strings")
                stack.append((v, f"{path}[{key!r}]"))
            continue
        hint = " (use a list)" if isinstance(item, tuple) else ""
        raise WireError(f"{path} is a {type(item).__name__}, not a JSON value{hint}")


@functools.lru_cache(maxsize=64)
def _entries(layout: tuple[tuple[str, str, tuple[int, ...], int], ...]) -> tuple[bytes, int]:
    """The header's ``arrays`` list as JSON, and the payload length, for arrays of these
    names, wire dtypes, shapes and element sizes. Cached: every job of a round carries
    the same model, and every reply the same update layout."""
    entries = []
    offset = 0
    for name, dtype, shape, element_size in layout:
        nbytes = math.prod(shape) * element_size
        entries.append(
            {"dtype": dtype, "name": name, "nbytes": nbytes, "offset": offset, "shape": list(shape)}
        )
        offset += _align(nbytes)
    return _dumps(entries), offset


def _header(arrays: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> tuple[bytes, int]:
    """The header bytes of a message and its payload length (aligned)."""
    if not isinstance(meta, dict):
        raise WireError(f"meta must be a dict, got {type(meta).__name__}")
    _check_json(meta, "meta")
    layout = []
    for name, tensor in arrays.items():
        if not isinstance(name, str):
            raise WireError(f"array names must be strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise WireError(f"array {name!r} is a {type(tensor).__name__}, not a tensor")
        # A quantized tensor's dtype has no wire name, so the dtype lookup refuses it.
        if tensor.layout != torch.strided or tensor.is_meta:
            raise WireError(f"array {name!r} is not a dense tensor (layout {tensor.layout})")
        dtype = _NAMES.get(tensor.dtype)
        if dtype is None:
            raise WireError(f"array {name!r} has dtype {tensor.dtype}, which has no wire name")
        shape = tuple(tensor.shape)
        if len(shape) > MAX_DIMS:
            raise WireError(f"array {name!r} has {len(shape)} dimensions, at most {MAX_DIMS}")
        layout.append((name, dtype, shape, _ITEMSIZE[tensor.dtype]))
    entries, offset = _entries(tuple(layout))
    try:
        meta_json = _dumps(meta)
    except (ValueError, RecursionError) as exc:  # e.g. an int too long to print
        raise WireError(f"meta cannot be written as JSON: {exc}") from exc
    # _dumps({"arrays": ..., "meta": ...}) written out: sorted keys, no spaces.
    header = b'{"arrays":' + entries + b',"meta":' + meta_json + b"}"
    return header, offset


def message_nbytes(arrays: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> int:
    """Length of ``encode(Message(arrays, meta))``, computed without touching array data.

    Raises:
        WireError: the message cannot be encoded (see ``encode``).
    """
    header, payload = _header(arrays, meta)
    return _align(PREAMBLE.size + len(header)) + payload


def _raw(tensor: torch.Tensor) -> memoryview:
    """The tensor's elements as little-endian bytes (a view of its memory when possible)."""
    flat = tensor.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8)
    if _BIG_ENDIAN:
        raw = byteswap(raw, tensor.dtype)
    return raw.numpy().data


def byteswap(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reverse the byte order of each number in ``raw`` (uint8 elements of ``dtype``).

    A complex number is two floats: each is swapped, their order is kept.
    """
    unit = _ITEMSIZE[dtype]
    if dtype.is_complex:
        unit //= 2
    if unit == 1:
        return raw
    return raw.reshape(-1, unit).flip(1).reshape(-1)


def encode(message: Message) -> bytes:
    """The bytes of ``message`` in the layout of this module's docstring.

    Raises:
        WireError: ``meta`` is not JSON that decodes back to itself (a tuple, NaN, a
            key that is not a string), or an array is not a dense tensor of a dtype
            in ``DTYPES``.
    """
    header, _ = _header(message.arrays, message.meta)
    start = PREAMBLE.size + len(header)
    parts: list[bytes | memoryview] = [
        PREAMBLE.pack(MAGIC, VERSION, len(header)),
        header,
        bytes(_align(start) - start),
    ]
    for tensor in message.arrays.values():
        raw = _raw(tensor)
        parts.append(raw)
        parts.append(bytes(_align(raw.nbytes) - raw.nbytes))
    return b"".join(parts)


def _fail(what: str) -> WireError:
    return WireError(f"not a fedgen wire message: {what}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_header(data: memoryview) -> tuple[list[Any], dict[str, Any], int]:
    """Parse and check the preamble and header; return the entries, meta and where it ends."""
    if len(data) < PREAMBLE.size:
        raise _fail(f"{len(data)} bytes, fewer than the {PREAMBLE.size}-byte preamble")
    magic, version, length = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _fail(f"magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise _fail(f"format version {version}, this fedgen reads version {VERSION}")
    if length > len(data) - PREAMBLE.size:
        raise _fail(
            f"the header claims {length} bytes, only {len(data) - PREAMBLE.size} follow; "
            "the message is truncated"
        )
    raw = bytes(data[PREAMBLE.size : PREAMBLE.size + length])
    try:
        text = raw.decode("ascii")
        header = json.loads(text, parse_constant=_no_constants)
        canonical = _dumps(header)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(f"the header is not ASCII JSON ({str(exc)[:120]})") from exc
    if canonical != raw:
        raise _fail("the header is not in canonical form (sorted keys, no spaces, no duplicates)")
    if type(header) is not dict or set(header) != {"arrays", "meta"}:
        raise _fail("the header must be an object with exactly the keys arrays and meta")
    entries, meta = header["arrays"], header["meta"]
    if type(entries) is not list or type(meta) is not dict:
        raise _fail("the header's arrays must be a list and its meta an object")
    return entries, meta, PREAMBLE.size + length


def _entry(i: int, entry: Any, offset: int, room: int) -> tuple[str, torch.dtype, list[int], int]:
    """Check array entry ``i``, expected at ``offset`` with ``room`` payload bytes left."""
    if type(entry) is not dict or set(entry) != {"dtype", "name", "nbytes", "offset", "shape"}:
        raise _fail(f"array entry {i} must have exactly dtype, name, nbytes, offset and shape")
    name, dtype_name, shape, nbytes = entry["name"], entry["dtype"], entry["shape"], entry["nbytes"]
    if type(name) is not str:
        raise _fail(f"array entry {i}'s name is not a string")
    dtype = DTYPES.get(dtype_name) if type(dtype_name) is str else None
    if dtype is None:
        raise _fail(f"array {name[:40]!r} has the unknown dtype {str(dtype_name)[:40]!r}")
    if type(shape) is not list or len(shape) > MAX_DIMS:
        raise _fail(f"array {name[:40]!r}: shape must be a list of at most {MAX_DIMS} sizes")
    if type(entry["offset"]) is not int or entry["offset"] != offset:
        raise _fail(
            f"array {name[:40]!r} is at offset {str(entry['offset'])[:40]}, but the layout puts "
            f"it at {offset} (right after the previous array, 8-byte aligned)"
        )
    if type(nbytes) is not int or nbytes < 0:
        raise _fail(f"array {name[:40]!r}'s nbytes must be an integer >= 0")
    if _align(nbytes) > room:
        raise _fail(f"array {name[:40]!r} needs {nbytes} bytes, {room} remain: truncated")
    # Sizes other than 0 multiply to at most MAX_DIM (checked as they multiply, so a
    # hostile shape never builds a huge number); any 0 makes the array empty.
    product = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise _fail(f"array {name[:40]!r}'s shape holds {str(d)[:40]}, not a size >= 0")
        product *= d or 1
        if product > MAX_DIM:
            raise _fail(f"array {name[:40]!r}'s shape multiplies past 2**63 - 1")
    count = 0 if 0 in shape else product
    if count * _ITEMSIZE[dtype] != nbytes:
        raise _fail(
            f"array {name[:40]!r}: shape {shape} of {dtype_name} is {count * _ITEMSIZE[dtype]} "
            f"bytes, the header says {nbytes}"
        )
    return name, dtype, shape, nbytes


def decode(data: bytes | bytearray | memoryview) -> Message:
    """The message encoded in ``data``; its tensors are fresh copies.

    Raises:
        WireError: ``data`` is not exactly one well-formed message (the message says
            what is wrong); nothing else is raised.
    """
    view = memoryview(data).cast("B")
    entries, meta, header_end = _read_header(view)
    start = _align(header_end)
    payload = len(view) - start
    if payload < 0:
        raise _fail("the message is truncated inside the header's padding")
    planned: list[tuple[str, torch.dtype, list[int], int, int]] = []
    names: set[str] = set()
    offset = 0
    for i, entry in enumerate(entries):
        name, dtype, dims, nbytes = _entry(i, entry, offset, payload - offset)
        if name in names:
            raise _fail(f"two arrays are named {name[:40]!r}")
        names.add(name)
        planned.append((name, dtype, dims, offset, nbytes))
        offset += _align(nbytes)
    if offset != payload:
        raise _fail(f"{payload - offset} bytes past the last array")
    pads = [(header_end, start)]
    pads += [(start + o + n, start + _align(o + n)) for _, _, _, o, n in planned]
    if any(any(view[a:b]) for a, b in pads):
        raise _fail("nonzero padding bytes")
    arrays: dict[str, torch.Tensor] = {}
    for name, dtype, dims, o, n in planned:
        raw = torch.empty(n, dtype=torch.uint8)
        if n:
            raw.numpy()[:] = np.frombuffer(view, dtype=np.uint8, count=n, offset=start + o)
        if dtype == torch.bool and n and int(raw.max()) > 1:
            raise _fail(f"array {name!r} is bool but holds a byte other than 0 or 1")
        if _BIG_ENDIAN:
            raw = byteswap(raw, dtype)
        arrays[name] = raw.view(dtype).reshape(dims)
    return Message(arrays, meta)
