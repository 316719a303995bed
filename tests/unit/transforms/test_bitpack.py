"""Packing small unsigned integers into bytes: exact round trips, exact sizes."""

from __future__ import annotations

import pytest
import torch

from fedgen.transforms.bitpack import pack, packed_size, unpack


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_pack_then_unpack_is_exact_and_takes_ceil_of_count_bits_over_8_bytes(bits, count):
    # Prepare
    gen = torch.Generator().manual_seed(bits * 1000 + count)
    values = torch.randint(0, 1 << bits, (count,), generator=gen)
    # Execute
    packed = pack(values, bits)
    # Assert
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(count, bits)
    assert packed.numel() == -(-count * bits // 8)
    assert torch.equal(unpack(packed, bits, count), values)


def test_the_first_value_takes_the_lowest_bits_of_a_byte():
    assert pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]


def test_three_bit_values_form_one_little_endian_stream_across_bytes():
    # 8 values of 3 bits fill 3 bytes; value 2 (0b101) straddles bytes 0 and 1.
    packed = pack(torch.tensor([1, 2, 5, 0, 0, 0, 0, 7]), 3)
    stream = 1 | 2 << 3 | 5 << 6 | 7 << 21
    assert packed.tolist() == [stream & 255, stream >> 8 & 255, stream >> 16 & 255]


def test_a_value_too_wide_or_a_wrong_length_is_refused():
    with pytest.raises(ValueError, match="in \\[0, 4\\)"):
        pack(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="expected 2 packed bytes"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 4)
    with pytest.raises(ValueError, match="bits must be one of"):
        pack(torch.tensor([1]), 9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_is_refused_as_such_not_as_an_out_of_range_integer(bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        pack(torch.tensor([1.0, bad]), 4)
