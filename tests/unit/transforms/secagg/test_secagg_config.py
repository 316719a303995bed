import pytest

from fedgen.transforms.secagg.config import SecAggConfig
from fedgen.transforms.secagg.errors import SecAggConfigError, SecAggSecurityWarning


def test_default_threshold_is_two_thirds_of_all_clients():
    plan = SecAggConfig().plan(10)
    assert (plan.holders, plan.threshold, plan.neighbours) == (10, 7, None)
    assert plan.levels == (2**31 - 1) // 10


def test_threshold_above_n_is_an_error():
    with pytest.raises(SecAggConfigError, match="threshold 11 exceeds the 10 share holders"):
        SecAggConfig(threshold=11).plan(10)


def test_threshold_below_majority_warns():
    with pytest.warns(SecAggSecurityWarning, match="below a majority"):
        plan = SecAggConfig(threshold=0.3).plan(10)
    assert plan.threshold == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1},
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"modulus_bits": 4},
        {"clip": 0.0},
        {"clip": float("inf")},
        {"value_bits": 40},
        {"neighbours": 1},
        {"rounding": "up"},
        {"dropout_rate": 1.0},
    ],
)
def test_bad_values_are_rejected(kwargs):
    with pytest.raises(SecAggConfigError):
        SecAggConfig(**kwargs)


def test_one_client_or_a_one_share_threshold_is_refused():
    with pytest.raises(SecAggConfigError, match="at least 2 clients"):
        SecAggConfig().plan(1)
    with pytest.raises(SecAggConfigError, match="one share would reveal"):
        SecAggConfig(threshold=0.05).plan(10)


def test_secagg_plus_rounds_the_degree_up_to_even_and_falls_back_to_full():
    plan = SecAggConfig(neighbours=5).plan(20)
    assert (plan.neighbours, plan.holders, plan.threshold) == (6, 7, 5)
    assert SecAggConfig(neighbours=8).plan(9).neighbours is None


def test_an_integer_threshold_of_one_says_how_to_write_every_holder():
    # YAML's `threshold: 1` is an int (one share holder), not the fraction 1.0.
    with pytest.raises(SecAggConfigError, match=r"1.0 for every share holder"):
        SecAggConfig(threshold=1)
    assert SecAggConfig(threshold=1.0).plan(5).threshold == 5
