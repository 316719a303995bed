"""Pack small unsigned integers (1 to 8 bits each) into bytes, and back.

What makes a quantized update's byte count real: ``n`` values of ``bits`` bits travel
as ``ceil(n * bits / 8)`` uint8 bytes. The values form one little-endian bit stream:
value ``i`` takes bits ``i * bits`` to ``(i + 1) * bits - 1``, lowest first, and byte
``k`` holds stream bits ``8k`` (its lowest) to ``8k + 7``. For 1, 2, 4 and 8 bits that
is simply "the first value of a byte takes its lowest bits"; 3, 5, 6 and 7 bits cross
byte boundaries, so 8 values of 3 bits fill exactly 3 bytes.
"""

from __future__ import annotations

import torch

#: Widths a value may take.
WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8)
#: Widths a byte divides into evenly (the fast path: no bit stream needed).
_EVEN = (1, 2, 4, 8)


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits pack into."""
    return -(-count * bits // 8)


def _check_bits(bits: int) -> None:
    if bits not in WIDTHS:
        raise ValueError(f"bits must be one of {WIDTHS}, got {bits}")


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """``values`` (integers in [0, 2**bits)) as a flat uint8 tensor of ``packed_size`` bytes.

    Raises:
        ValueError: ``bits`` is not one of ``WIDTHS``, a value is NaN or Inf, or does not
            fit in ``bits``.
    """
    _check_bits(bits)
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        # Cast to int64, NaN becomes an arbitrary integer: say what the values were.
        raise ValueError(f"values to pack in {bits} bits hold NaN or Inf")
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"values must be integers in [0, {1 << bits}) to pack in {bits} bits")
    size = packed_size(flat.numel(), bits)
    if bits in _EVEN:
        per_byte = 8 // bits
        padded = torch.zeros(size * per_byte, dtype=torch.int64)
        padded[: flat.numel()] = flat
        shifts = torch.arange(per_byte, dtype=torch.int64) * bits
        # (bytes, per_byte) values shifted into their slots, summed into one byte each.
        return (padded.reshape(-1, per_byte) << shifts).sum(dim=1).to(torch.uint8)
    # The bit stream: each value's bits, lowest first, then 8 at a time into bytes.
    stream = torch.zeros(size * 8, dtype=torch.int64)
    stream[: flat.numel() * bits] = ((flat.unsqueeze(1) >> torch.arange(bits)) & 1).reshape(-1)
    return (stream.reshape(-1, 8) << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` values of ``bits`` bits packed in ``data`` (int64).

    Raises:
        ValueError: ``data`` is not a flat uint8 tensor of exactly ``packed_size`` bytes.
    """
    _check_bits(bits)
    expected = packed_size(count, bits)
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != expected:
        raise ValueError(
            f"expected {expected} packed bytes (uint8, flat) for {count} values of {bits} "
            f"bits, got {data.dtype} of shape {tuple(data.shape)}"
        )
    if bits in _EVEN:
        per_byte = 8 // bits
        shifts = torch.arange(per_byte, dtype=torch.int64) * bits
        values = (data.to(torch.int64).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
        return values.reshape(-1)[:count]
    stream = ((data.to(torch.int64).unsqueeze(1) >> torch.arange(8)) & 1).reshape(-1)
    chunks = stream[: count * bits].reshape(count, bits)
    return (chunks << torch.arange(bits)).sum(dim=1)
