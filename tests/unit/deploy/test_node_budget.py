"""A deployed DP-SGD client keeps its own budget (a real Flower Context, a real accountant)."""

from __future__ import annotations

import pytest
from tiny_federation import TINY_DPSGD, tiny_config

from fedgen.deploy.node_budget import NodeBudget
from fedgen.experiment import build_experiment

flwr_app = pytest.importorskip("flwr.app")


def _context(node_config: dict[str, object]):
    return flwr_app.Context(
        run_id=1, node_id=2, node_config=node_config, state=flwr_app.RecordDict(), run_config={}
    )


@pytest.fixture(scope="module")
def sample(mnist_dir):
    """The recipe's DP-SGD accounting: epsilon 8 over 3 rounds, at most 2 per client."""
    cfg = tiny_config(
        mnist_dir,
        **{
            **TINY_DPSGD,
            "dpsgd": "{epsilon: 8.0, max_grad_norm: 1.0, delta: 1.0e-5, rounds_per_client: 2}",
            "strategy.params": "{fraction: 0.5, min_clients: 1}",
        },
    )
    privacy = build_experiment(cfg).federation.privacy
    assert privacy is not None and privacy.sample is not None
    return privacy.sample


def test_a_resent_round_is_admitted_once_and_another_model_for_it_is_refused(sample, tmp_path):
    budget = NodeBudget(_context({"state-dir": str(tmp_path)}), "ab" * 16, 1)
    first = budget.admit(0, "d0", sample)
    # A resumed run resends round 0 with the same model: admitted, not charged again.
    assert budget.admit(0, "d0", sample) == first
    with pytest.raises(ValueError, match="round 0 was trained here on another model"):
        budget.admit(0, "other", sample)
    # The record outlives the ClientApp process (a new one reads the state-dir).
    again = NodeBudget(_context({"state-dir": str(tmp_path)}), "ab" * 16, 1)
    assert again.admit(1, "d1", sample) > first


def test_rounds_past_the_recipes_cap_are_refused(sample):
    budget = NodeBudget(_context({}), "", 1)  # no state-dir: kept in the Context
    spent = [budget.admit(r, f"d{r}", sample) for r in (0, 1)]
    assert spent[0] < spent[1] <= 8.0  # the recipe's sigma fits its 2 rounds in epsilon 8
    with pytest.raises(ValueError, match="rounds_per_client=2 rounds"):
        budget.admit(2, "d2", sample)


def test_the_operators_own_budget_is_enforced_and_must_be_a_number(sample):
    one_round = NodeBudget(_context({}), "", 1).admit(0, "d0", sample)
    tight = NodeBudget(_context({"max-epsilon": one_round * 1.01}), "", 1)
    tight.admit(0, "d0", sample)
    with pytest.raises(ValueError, match=r"would take this client to epsilon=.* > its budget"):
        tight.admit(1, "d1", sample)
    with pytest.raises(ValueError, match=r"--node-config 'max-epsilon=10\.0'"):
        NodeBudget(_context({"max-epsilon": "lots"}), "", 1).admit(0, "d0", sample)


def test_an_unreadable_record_refuses_rather_than_starting_afresh(sample, tmp_path):
    budget = NodeBudget(_context({"state-dir": str(tmp_path)}), "ab" * 16, 1)
    budget.admit(0, "d0", sample)
    assert budget.path is not None
    budget.path.write_text('{"0": "d')
    with pytest.raises(ValueError, match=r"is unreadable .*restore it, or start a new run"):
        budget.admit(1, "d1", sample)
