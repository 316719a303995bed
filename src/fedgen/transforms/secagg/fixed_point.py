"""Fixed-point encoding of real vectors into the group Z_(2^k) and back.

A client's coordinate ``v`` (already divided by the clip bound, so ``v`` in
[-1, 1] after clipping) becomes the integer ``q = round(v * levels)`` in
``[-levels, levels]``, stored modulo ``2^k``. ``SecAggConfig.plan`` picks
``levels`` so that the sum of n clients stays in ``(-2^(k-1), 2^(k-1))``: the
sum of the residues then decodes to the exact integer sum, with no wrap.

Rounding error of one coordinate, in units of ``v``: at most ``0.5 / levels``
for nearest rounding, below ``1 / levels`` for stochastic rounding (which is
unbiased: ``E[q] = v * levels``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedgen.transforms.secagg.errors import MalformedMessageError


def word_bytes(modulus_bits: int) -> int:
    """Bytes of one element of ``Z_(2^k)`` on the wire (2, 4 or 8)."""
    return 2 if modulus_bits <= 16 else 4 if modulus_bits <= 32 else 8


def modulus_mask(modulus_bits: int) -> np.uint64:
    """``2^k - 1`` as a ``uint64``: ``x & mask`` is ``x mod 2^k``."""
    return np.uint64((1 << modulus_bits) - 1)


def rounding_error_bound(levels: int, rounding: Literal["stochastic", "nearest"]) -> float:
    """Largest error of one encoded coordinate, in units of the clipped value."""
    return (0.5 if rounding == "nearest" else 1.0) / levels


def encode(
    values: np.ndarray,
    levels: int,
    modulus_bits: int,
    rounding: Literal["stochastic", "nearest"],
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """Clip ``values`` to [-1, 1] and encode them as ``uint64`` residues modulo ``2^k``.

    Returns the residues and how many coordinates were clipped.
    """
    v = np.asarray(values, dtype=np.float64)
    clipped = int(np.count_nonzero(np.abs(v) > 1.0))
    scaled = np.clip(v, -1.0, 1.0) * levels
    # Stochastic: floor(x + u), u ~ U[0, 1), rounds up with probability frac(x): E[q] = x.
    stochastic = rounding == "stochastic"
    q = np.floor(scaled + rng.random(scaled.shape)) if stochastic else np.rint(scaled)
    # Two's complement of int64 then masking gives q mod 2^k for negative q too.
    residues = q.astype(np.int64).view(np.uint64) & modulus_mask(modulus_bits)
    return residues, clipped


def decode_sum(residues: np.ndarray, levels: int, modulus_bits: int) -> np.ndarray:
    """Decode a sum of residues (``uint64``, reduced mod ``2^k``) to float64 in units of ``v``."""
    r = np.asarray(residues, dtype=np.uint64) & modulus_mask(modulus_bits)
    if modulus_bits == 64:
        signed = r.view(np.int64)
    else:
        signed = r.astype(np.int64)
        signed[signed >= 1 << (modulus_bits - 1)] -= 1 << modulus_bits
    return signed.astype(np.float64) / levels


def to_wire(residues: np.ndarray, modulus_bits: int) -> bytes:
    """Little-endian words of ``word_bytes(k)`` bytes each."""
    dtype = np.dtype(f"<u{word_bytes(modulus_bits)}")
    return residues.astype(dtype).tobytes()


def from_wire(payload: bytes, modulus_bits: int) -> np.ndarray:
    """Inverse of ``to_wire``: ``uint64`` residues.

    Raises ``MalformedMessageError`` if ``payload`` is not bytes of whole words.
    """
    word = word_bytes(modulus_bits)
    if not isinstance(payload, bytes) or len(payload) % word:
        raise MalformedMessageError(f"a masked vector is bytes of whole {word}-byte words")
    return np.frombuffer(payload, dtype=np.dtype(f"<u{word}")).astype(np.uint64)
