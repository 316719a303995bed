"""Pack small unsigned integers (1, 2, 4 or 8 bits each) into bytes, and back.

What makes a quantized update's byte count real: ``n`` values of ``bits`` bits travel
as ``ceil(n * bits / 8)`` uint8 bytes. Within a byte the first value takes the lowest
bits (little-endian bit order), so the layout is fixed and documented for any reader.
"""

from __future__ import annotations

import torch

#: Widths a byte divides into evenly.
WIDTHS = (1, 2, 4, 8)


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits pack into."""
    return -(-count * bits // 8)


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """``values`` (integers in [0, 2**bits)) as a flat uint8 tensor of ``packed_size`` bytes.

    Raises:
        ValueError: ``bits`` is not one of ``WIDTHS`` or a value does not fit in it.
    """
    if bits not in WIDTHS:
        raise ValueError(f"bits must be one of {WIDTHS}, got {bits}")
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"values must be integers in [0, {1 << bits}) to pack in {bits} bits")
    per_byte = 8 // bits
    padded = torch.zeros(packed_size(flat.numel(), bits) * per_byte, dtype=torch.int64)
    padded[: flat.numel()] = flat
    shifts = torch.arange(per_byte, dtype=torch.int64) * bits
    # (bytes, per_byte) values shifted into their slots, summed into one byte each.
    return (padded.reshape(-1, per_byte) << shifts).sum(dim=1).to(torch.uint8)


def unpack(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` values of ``bits`` bits packed in ``data`` (int64).

    Raises:
        ValueError: ``data`` is not a flat uint8 tensor of exactly ``packed_size`` bytes.
    """
    if bits not in WIDTHS:
        raise ValueError(f"bits must be one of {WIDTHS}, got {bits}")
    expected = packed_size(count, bits)
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != expected:
        raise ValueError(
            f"expected {expected} packed bytes (uint8, flat) for {count} values of {bits} "
            f"bits, got {data.dtype} of shape {tuple(data.shape)}"
        )
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int64) * bits
    values = (data.to(torch.int64).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(-1)[:count]
