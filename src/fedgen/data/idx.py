"""Reading IDX files, the format of MNIST, Fashion-MNIST and KMNIST.

An IDX file is a big-endian header followed by raw array data:
two zero bytes, one byte naming the element type, one byte giving the number
of dimensions, then one 4-byte size per dimension (LeCun et al.,
http://yann.lecun.com/exdb/mnist/). Files ending in ``.gz`` are gunzipped first.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# Type byte -> big-endian NumPy dtype, as listed in the format description.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def parse_idx(raw: bytes, origin: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into an array of its stated shape.

    Raises ``ValueError`` naming ``origin`` if the header is malformed or the
    data length does not match the header.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{origin} is not an IDX file (it must start with two zero bytes); "
            "delete it and fetch it again"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{origin}: unknown IDX element type 0x{type_code:02x}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{origin}: truncated IDX header; delete the file and fetch it again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(
            f"{origin}: header promises shape {shape} ({expected} bytes) but the "
            f"file holds {len(raw) - header_size} bytes; it is truncated or "
            "corrupted: delete it and fetch it again"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    # Native byte order and an owned, writable buffer: callers may hand it to torch.
    return data.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in ``.gz``) into a NumPy array."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(
                f"{path} is not a valid gzip file ({exc}); delete it and fetch it again"
            ) from exc
    return parse_idx(raw, origin=str(path))
