import itertools

import pytest
import sympy

from fedgen.transforms.secagg.errors import SecAggError
from fedgen.transforms.secagg.keys import deterministic_entropy
from fedgen.transforms.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    lagrange_at_zero,
    reconstruct,
    share_from_bytes,
    share_to_bytes,
    split,
)


def test_default_field_is_the_prime_just_above_2_256():
    assert sympy.isprime(PRIME)
    assert PRIME > 2**256 and sympy.prevprime(PRIME) < 2**256
    assert PRIME.bit_length() <= SHARE_BYTES * 8


def test_reconstruct_matches_lagrange_by_hand():
    # Prepare: f(x) = 7 + 3x + 5x^2 over F_97; f(1)=15, f(2)=33, f(3)=61.
    shares = {1: 15, 2: 33, 3: 61}
    # Execute
    coeffs = lagrange_at_zero((1, 2, 3), 97)
    secret = reconstruct(shares, 3, prime=97)
    # Assert: l1 = 2*3/((2-1)(3-1)) = 3, l2 = 1*3/((1-2)(3-2)) = -3, l3 = 1*2/((1-3)(2-3)) = 1
    assert coeffs == (3, 97 - 3, 1)
    assert secret == (3 * 15 - 3 * 33 + 61) % 97 == 7


def test_any_t_shares_rebuild_a_256_bit_secret():
    # Prepare
    entropy = deterministic_entropy(0)
    secret = int.from_bytes(bytes(range(32)), "big")
    xs = list(range(1, 8))
    shares = split(secret, 4, xs, entropy)
    # Execute / Assert: every 4-subset (and the full set) gives the secret back
    for subset in itertools.combinations(xs, 4):
        assert reconstruct({x: shares[x] for x in subset}, 4) == secret
    assert reconstruct(shares, 4) == secret


def test_t_minus_1_shares_are_consistent_with_every_secret_equally_often():
    # Prepare: F_11, t = 3; count, for each candidate secret, the polynomials of
    # degree < 3 through the observed t-1 = 2 shares.
    p, t = 11, 3
    shares = split(4, t, [2, 5, 7], deterministic_entropy(1), prime=p)
    observed = {2: shares[2], 5: shares[5]}
    # Execute
    counts = {}
    for s in range(p):
        counts[s] = sum(
            all((s + a * x + b * x * x) % p == y for x, y in observed.items())
            for a in range(p)
            for b in range(p)
        )
    # Assert: each secret is explained by exactly one polynomial: nothing is learnt.
    assert set(counts.values()) == {1}
    # ... while t shares pin the secret down.
    full = shares
    explained = [
        s
        for s in range(p)
        if any(
            all((s + a * x + b * x * x) % p == y for x, y in full.items())
            for a in range(p)
            for b in range(p)
        )
    ]
    assert explained == [4]


def test_t_minus_1_shares_are_uniform_whatever_the_secret():
    # Prepare: F_13, t = 2: the one share at x=3 over 2600 splits, for secrets 0 and 12
    p = 13
    entropy = deterministic_entropy(2)
    # Execute
    hist = {s: [0] * p for s in (0, 12)}
    for s in hist:
        for _ in range(2600):
            hist[s][split(s, 2, [3, 4], entropy, prime=p)[3]] += 1
    # Assert: every value appears ~200 times for both secrets (6 sigma ~ 85)
    for s in hist:
        assert all(abs(c - 200) < 85 for c in hist[s]), hist[s]


def test_fewer_than_t_shares_cannot_rebuild():
    shares = split(123, 3, [1, 2, 3], deterministic_entropy(3))
    with pytest.raises(SecAggError, match="2 shares cannot rebuild a 3-of-n"):
        reconstruct({1: shares[1], 2: shares[2]}, 3)


def test_bad_points_and_malformed_shares_are_rejected():
    with pytest.raises(SecAggError, match="distinct and nonzero"):
        split(1, 2, [0, 1], deterministic_entropy(4))
    with pytest.raises(SecAggError, match="malformed share"):
        share_from_bytes(b"\xff" * SHARE_BYTES)
    assert share_from_bytes(share_to_bytes(PRIME - 1)) == PRIME - 1
