"""Shamir t-of-n secret sharing over a prime field (Shamir 1979, "How to share a secret").

A secret ``s`` is the constant term of a random polynomial ``f`` of degree
``t - 1``; share ``i`` is ``(x_i, f(x_i))``. Any ``t`` shares determine ``f``
and so ``f(0) = s`` by Lagrange interpolation; any ``t - 1`` shares are
consistent with every secret, each with equally many polynomials, so they
reveal nothing (information-theoretically).

Secure aggregation shares 32-byte secrets (X25519 private keys, self-mask
seeds), so the default field is the smallest prime above ``2^256``. Written by
hand: no well-kept library shares byte strings of this size over a prime field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from fedgen.transforms.secagg.errors import MalformedMessageError, SecAggError

#: The smallest prime above 2^256 (2^256 + 297): every 32-byte secret is a field element.
PRIME = 2**256 + 297
#: Bytes of one share value of the default field on the wire.
SHARE_BYTES = 33


def split(
    secret: int,
    threshold: int,
    xs: Sequence[int],
    entropy: Callable[[int], bytes],
    prime: int = PRIME,
) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for the nonzero points ``xs``.

    ``entropy(n)`` returns ``n`` random bytes (``os.urandom`` in production).
    """
    if not 0 <= secret < prime:
        raise SecAggError(f"secret must lie in [0, prime), got {secret}")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)")
    if len(set(xs)) != len(xs) or any(not 0 < x < prime for x in xs):
        raise SecAggError("share points must be distinct and nonzero in the field")
    # 8 extra random bytes per coefficient make the reduction's bias below 2^-64.
    width = (prime.bit_length() + 7) // 8 + 8
    coeffs = [secret] + [
        int.from_bytes(entropy(width), "big") % prime for _ in range(threshold - 1)
    ]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % prime
        shares[x] = acc
    return shares


@lru_cache(maxsize=256)
def lagrange_at_zero(xs: tuple[int, ...], prime: int = PRIME) -> tuple[int, ...]:
    """Coefficients ``l_i = prod_{j != i} x_j / (x_j - x_i)`` so that ``f(0) = sum l_i f(x_i)``.

    Cached: in a round every secret of a full graph is rebuilt from the same points.
    """
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % prime
                den = den * (xj - xi) % prime
        out.append(num * pow(den, -1, prime) % prime)
    return tuple(out)


def reconstruct(shares: Mapping[int, int], threshold: int, prime: int = PRIME) -> int:
    """The secret from at least ``threshold`` shares ``{x: f(x)}`` (the ``threshold`` lowest x).

    Raises ``SecAggError`` unless the points are field elements other than 0 and the
    values field elements (what ``share_from_bytes`` yields), and ``threshold`` >= 1.
    """
    if type(threshold) is not int or threshold < 1:
        raise SecAggError(f"threshold must be an int >= 1, got {threshold!r:.40}")
    for x, y in shares.items():
        if not (type(x) is int and 0 < x < prime and type(y) is int and 0 <= y < prime):
            raise SecAggError(
                f"share ({x!r:.40}, {y!r:.40}) is not a nonzero point with a field value"
            )
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a {threshold}-of-n secret")
    xs = tuple(sorted(shares)[:threshold])
    coeffs = lagrange_at_zero(xs, prime)
    return sum(c * shares[x] for c, x in zip(coeffs, xs, strict=True)) % prime


def share_to_bytes(value: int) -> bytes:
    """A share value of the default field as ``SHARE_BYTES`` big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Inverse of ``share_to_bytes``; rejects values outside the field."""
    if not isinstance(data, bytes) or len(data) != SHARE_BYTES:
        raise MalformedMessageError(f"malformed share: not {SHARE_BYTES} bytes")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise MalformedMessageError("malformed share: not a field element")
    return value
