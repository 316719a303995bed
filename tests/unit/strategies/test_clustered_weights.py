"""KLD weights ``n_j * exp(-KLD_j)`` stay valid when every KLD is large (log-space)."""

from __future__ import annotations

import math

import pytest
import torch

from fedgen.errors import ConfigError
from fedgen.strategies.clustered import kld_weights


def test_large_klds_give_valid_weights_not_an_empty_clients_error() -> None:
    # Prepare: exp(-800) underflows to 0.0 in float64, for every client.
    n = torch.tensor([100.0, 200.0, 50.0])
    kld = torch.tensor([800.0, 801.0, 805.0])
    # By hand: divide every weight by exp(-800): (100, 200 e^-1, 50 e^-5), then normalise.
    raw = [100.0, 200.0 * math.exp(-1.0), 50.0 * math.exp(-5.0)]
    expected = [r / sum(raw) for r in raw]
    # Execute
    w = kld_weights(n, kld)
    # Assert
    assert w.dtype == torch.float64
    assert w.tolist() == pytest.approx(expected, rel=1e-12)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)


def test_one_huge_kld_gets_weight_zero_beside_small_ones() -> None:
    w = kld_weights(torch.tensor([10.0, 10.0, 10.0]), torch.tensor([0.1, 0.1, 900.0]))
    assert w.tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-12)


def test_clients_without_examples_weigh_zero_and_all_empty_is_an_error() -> None:
    w = kld_weights(torch.tensor([0.0, 30.0, 10.0]), torch.tensor([700.0, 800.0, 800.0]))
    assert w.tolist() == pytest.approx([0.0, 0.75, 0.25], rel=1e-12)
    with pytest.raises(ConfigError, match="weight 0"):
        kld_weights(torch.zeros(2), torch.tensor([800.0, 900.0]))


def test_non_finite_kld_is_an_error_that_names_the_kld() -> None:
    with pytest.raises(ConfigError, match="KLD"):
        kld_weights(torch.tensor([10.0, 10.0]), torch.tensor([float("nan"), 1.0]))


def test_infinite_klds_everywhere_do_not_blame_empty_clients() -> None:
    with pytest.raises(ConfigError, match="infinite"):
        kld_weights(torch.tensor([10.0, 10.0]), torch.tensor([float("inf"), float("inf")]))
