import numpy as np
import pytest

from fedgen.transforms.secagg.config import SecAggConfig
from fedgen.transforms.secagg.errors import SecAggConfigError
from fedgen.transforms.secagg.fixed_point import (
    decode_sum,
    encode,
    from_wire,
    rounding_error_bound,
    to_wire,
)


def test_nearest_encoding_of_hand_values():
    # Prepare: levels 100, k = 16: -0.5 -> -50 -> 65536 - 50
    rng = np.random.default_rng(0)
    # Execute
    q, clipped = encode(np.array([0.0, 0.123, -0.5, 2.0]), 100, 16, "nearest", rng)
    # Assert
    assert q.tolist() == [0, 12, 65486, 100] and clipped == 1
    assert decode_sum(q, 100, 16).tolist() == [0.0, 0.12, -0.5, 1.0]


@pytest.mark.parametrize("k", [16, 32, 64])
def test_sum_of_n_clients_decodes_within_bound_and_never_wraps(k):
    # Prepare: n clients all at the extremes -1 and +1 (the worst case for wrapping)
    n = 7
    plan = SecAggConfig(modulus_bits=k).plan(n)
    rng = np.random.default_rng(1)
    values = [rng.choice([-1.0, 1.0], size=50) for _ in range(n - 1)] + [np.ones(50)]
    # Execute
    total = np.zeros(50, dtype=np.uint64)
    for v in values:
        q, _ = encode(v, plan.levels, k, "stochastic", rng)
        total += q
    decoded = decode_sum(total, plan.levels, k)
    # Assert
    assert np.abs(decoded - np.sum(values, axis=0)).max() <= n * rounding_error_bound(
        plan.levels, "stochastic"
    )
    assert (
        to_wire(total, k)
        and from_wire(to_wire(total, k), k).tolist() == (total & np.uint64((1 << k) - 1)).tolist()
    )


def test_stochastic_rounding_is_unbiased():
    # Prepare: 0.3 of a level, 200k draws
    rng = np.random.default_rng(2)
    v = np.full(200_000, 0.3 / 10)
    # Execute
    q, _ = encode(v, 10, 32, "stochastic", rng)
    # Assert: mean 0.3 level, sd of the mean ~ 0.001
    assert abs(q.astype(np.float64).mean() - 0.3) < 0.005
    assert set(np.unique(q).tolist()) == {0, 1}


def test_configs_whose_sum_could_wrap_are_rejected():
    # 16-bit values of 3 clients need 2^15 * 3 < 2^(k-1): k = 17 is too small, 18 fits
    with pytest.raises(SecAggConfigError, match=r"could wrap.*modulus_bits to >= 18"):
        SecAggConfig(modulus_bits=17, value_bits=16).plan(3)
    assert SecAggConfig(modulus_bits=18, value_bits=16).plan(3).levels == 2**15 - 1
    with pytest.raises(SecAggConfigError, match="fewer than 8 bits"):
        SecAggConfig(modulus_bits=16).plan(1000)
