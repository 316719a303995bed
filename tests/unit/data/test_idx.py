"""IDX parsing on hand-built files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fedgen.data.idx import parse_idx, read_idx


def _idx_bytes(array: np.ndarray, type_code: int, dtype: str) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def test_parse_uint8_images() -> None:
    # Prepare
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    # Execute
    parsed = parse_idx(_idx_bytes(images, 0x08, "u1"))
    # Assert
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, images)


def test_parse_big_endian_int32_to_native() -> None:
    values = np.array([1, -2, 70000], dtype=np.int32)
    parsed = parse_idx(_idx_bytes(values, 0x0C, ">i4"))
    assert parsed.dtype == np.dtype("int32")
    np.testing.assert_array_equal(parsed, values)


def test_read_gzipped_file(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(labels, 0x08, "u1")))
    np.testing.assert_array_equal(read_idx(path), labels)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "two zero bytes"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "unknown IDX element type"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x07", "truncated or corrupted"),
    ],
)
def test_malformed_files_say_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_idx(raw, origin="bad.idx")


def test_broken_gzip_says_to_fetch_again(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="fetch it again"):
        read_idx(path)
