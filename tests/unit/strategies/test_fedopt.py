"""Server optimizers (Reddi et al. 2021; Hsu et al. 2019) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from fedgen.errors import ConfigError
from fedgen.registry import STRATEGIES
from fedgen.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedgen.types import ClientResult


def _round(strategy, state: dict[str, torch.Tensor], values: list[float]):
    """One round: clients with deltas ``values`` on the scalar ``w`` (mean 0.5 below)."""
    results = [
        ClientResult(i, 10, update={"w": torch.tensor([v]), "n": torch.tensor([0])})
        for i, v in enumerate(values)
    ]
    return strategy.apply(0, state, strategy.aggregate(0, results))


def test_fedavgm_accumulates_the_mean_delta_with_momentum():
    # Prepare: beta 0.5, eta 2; the mean delta is 0.5 both rounds.
    strategy = FedAvgM(momentum=0.5, server_lr=2.0, weighted=False)
    state = {"w": torch.tensor([1.0]), "n": torch.tensor([3])}
    # Execute
    first = _round(strategy, state, [0.4, 0.6])
    second = _round(strategy, first, [0.4, 0.6])
    # Assert: v = 0.5, then 0.5 * 0.5 + 0.5 = 0.75; x = 1 + 2 * 0.5 = 2, then 2 + 1.5.
    assert first["w"].item() == pytest.approx(2.0)
    assert second["w"].item() == pytest.approx(3.5)
    assert torch.equal(second["n"], torch.tensor([3]))  # an integer tensor is not stepped


@pytest.mark.parametrize(
    ("cls", "v1"),
    [
        # v_-1 = tau^2 = 0.01, Delta^2 = 0.25, beta2 = 0.99:
        (FedAdagrad, 0.01 + 0.25),
        (FedYogi, 0.01 - 0.01 * 0.25 * -1.0),  # sign(0.01 - 0.25) = -1
        (FedAdam, 0.99 * 0.01 + 0.01 * 0.25),
    ],
)
def test_adaptive_rules_by_hand(cls, v1):
    # Prepare: eta 1, beta1 0.9, tau 0.1; mean delta 0.5 in both rounds.
    strategy = cls(server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.1, weighted=False)
    state = {"w": torch.tensor([0.0]), "n": torch.tensor([0])}
    # Execute
    first = _round(strategy, state, [0.4, 0.6])
    second = _round(strategy, first, [0.4, 0.6])
    # Assert: m_0 = 0.1 * 0.5 = 0.05, x_1 = m_0 / (sqrt(v_0) + tau).
    x1 = 0.05 / (math.sqrt(v1) + 0.1)
    assert first["w"].item() == pytest.approx(x1, rel=1e-6)
    # Round 2: m_1 = 0.9 * 0.05 + 0.05 = 0.095, v_1 from v_0 by the same rule.
    v2 = {
        FedAdagrad: v1 + 0.25,
        FedYogi: v1 - 0.01 * 0.25 * math.copysign(1.0, v1 - 0.25),
        FedAdam: 0.99 * v1 + 0.01 * 0.25,
    }[cls]
    assert second["w"].item() == pytest.approx(x1 + 0.095 / (math.sqrt(v2) + 0.1), rel=1e-6)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_moments_survive_a_checkpoint_and_resume_identically(name):
    # Prepare: two rounds, then a copy restored from the first strategy's state.
    strategy = STRATEGIES.get(name)(weighted=False)
    state = {"w": torch.tensor([0.0]), "n": torch.tensor([0])}
    state = _round(strategy, state, [0.4, 0.6])
    restored = STRATEGIES.get(name)(weighted=False)
    restored.load_state_dict(strategy.state_dict())
    # Execute: one more round on each.
    a = _round(strategy, state, [1.0, -0.2])
    b = _round(restored, state, [1.0, -0.2])
    # Assert
    assert torch.equal(a["w"], b["w"])
    with pytest.raises(ValueError, match="moments"):
        STRATEGIES.get(name)().load_state_dict({})


def test_server_optimizers_aggregate_from_a_sum_and_check_their_params():
    for cls in (FedAvgM, FedAdam, FedYogi, FedAdagrad):
        assert cls().aggregates_sums
    with pytest.raises(ConfigError, match="momentum"):
        FedAvgM(momentum=1.0)
    with pytest.raises(ConfigError, match="beta2"):
        FedAdam(beta2=1.5)
    with pytest.raises(ConfigError, match="tau"):
        FedYogi(tau=0.0)
