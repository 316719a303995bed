"""A deployed DP-SGD client keeps its own budget (a real Flower Context, a real accountant,
files in a real state-dir)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tiny_federation import TINY_DPSGD, tiny_config

from fedgen.deploy.node_budget import NodeBudget
from fedgen.experiment import build_experiment
from fedgen.privacy.accounting import PrivacyAccountant

flwr_app = pytest.importorskip("flwr.app")

RUN, OTHER_RUN = "ab" * 16, "cd" * 16
KEY = "k1" * 16  # the fingerprint of the run's noise key


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


def _budget(tmp_path, run: str = RUN, **node_config: object) -> NodeBudget:
    return NodeBudget(_context({"state-dir": str(tmp_path), **node_config}), run, 1)


def test_a_resent_job_is_admitted_once_and_another_job_for_its_round_is_refused(sample, tmp_path):
    steps = sample.steps_of(1)
    first = _budget(tmp_path).admit(0, "job0", steps, sample, KEY)
    # A resumed run resends round 0 bit for bit: admitted, not charged again.
    assert _budget(tmp_path).admit(0, "job0", steps, sample, KEY) == first
    # Anything else for round 0 (another seed, model or config) would draw fresh noise.
    with pytest.raises(ValueError, match="round 0 was trained here as another job"):
        _budget(tmp_path).admit(0, "job0-other-seed", steps, sample, KEY)
    # The record outlives the ClientApp process (a new one reads the state-dir).
    assert _budget(tmp_path).admit(1, "job1", steps, sample, KEY) > first


def test_a_round_recorded_under_the_recipes_legacy_name_is_the_same_job(sample, tmp_path):
    # Prepare: round 0 recorded by an older fedgen, whose recipe fingerprint hashed
    # data.data_dir, so the job's record had another name.
    steps = sample.steps_of(1)
    first = _budget(tmp_path).admit(0, "job0-legacy", steps, sample, KEY)
    # Execute / Assert: resent by this fedgen, which names it job0 and knows the old name
    assert _budget(tmp_path).admit(0, "job0", steps, sample, KEY, also=["job0-legacy"]) == first
    # Without the old name it reads as another job for round 0, as before.
    with pytest.raises(ValueError, match="round 0 was trained here as another job"):
        _budget(tmp_path).admit(0, "job0", steps, sample, KEY)
    # A legacy name does not excuse other noise: the rest of the record must match.
    other = dataclasses.replace(sample, noise_multiplier=2 * sample.noise_multiplier)
    with pytest.raises(ValueError, match="another job or with other noise"):
        _budget(tmp_path).admit(0, "job0", steps, other, KEY, also=["job0-legacy"])


def test_a_job_asking_for_more_steps_than_the_recipe_plans_is_refused(sample, tmp_path):
    with pytest.raises(ValueError, match=r"asks for 20 DP-SGD steps, the recipe plans \d+"):
        _budget(tmp_path).admit(0, "job0", 20, sample, KEY)
    assert not (tmp_path / "privacy" / f"run-{RUN}-client-1.json").exists()


def test_rounds_past_the_recipes_cap_are_refused(sample, tmp_path):
    steps = sample.steps_of(1)
    spent = [_budget(tmp_path).admit(r, f"job{r}", steps, sample, KEY) for r in (0, 1)]
    assert spent[0] < spent[1] <= 8.0  # the recipe's sigma fits its 2 rounds in epsilon 8
    with pytest.raises(ValueError, match="rounds_per_client=2 rounds"):
        _budget(tmp_path).admit(2, "job2", steps, sample, KEY)


def test_the_operators_budget_spans_every_run_on_the_shard(sample, tmp_path):
    steps = sample.steps_of(1)
    one_round = _budget(tmp_path / "probe").admit(0, "job0", steps, sample, KEY)
    tight = {"max-epsilon": one_round * 1.01}
    _budget(tmp_path, RUN, **tight).admit(0, "job0", steps, sample, KEY)
    # A server cannot reset the node's budget by starting a new run.
    with pytest.raises(ValueError, match=r"over every run it trained in, past this node's"):
        _budget(tmp_path, OTHER_RUN, **tight).admit(0, "job0", steps, sample, KEY)
    # Without the operator's budget each run is held to its recipe alone.
    _budget(tmp_path, OTHER_RUN).admit(0, "job0", steps, sample, KEY)


def test_the_operators_budget_is_measured_at_the_nodes_delta(sample, tmp_path):
    steps = sample.steps_of(1)
    recipe_delta = _budget(tmp_path / "a").admit(0, "job0", steps, sample, KEY)
    # A recipe with a looser delta would report a smaller epsilon; the node measures
    # its own budget at max-delta (default 1e-5), whatever the recipe says.
    loose = dataclasses.replace(sample, delta=0.1)
    node = {"max-epsilon": recipe_delta * 0.99}
    with pytest.raises(ValueError, match=r"\(delta=1e-05\); refused"):
        _budget(tmp_path / "b", **node).admit(0, "job0", steps, loose, KEY)


def test_each_round_is_priced_at_the_noise_it_trained_with(sample, tmp_path):
    # A later hello brings a recipe with twice the sigma: the round before it is still
    # accounted at the sigma it trained with, not re-priced cheaper.
    steps, rate, sigma = sample.steps_of(1), sample.rates[1], sample.noise_for(1)
    noisier = dataclasses.replace(
        sample, client_noise={c: 2 * sample.noise_for(c) for c in sample.rates}
    )
    _budget(tmp_path).admit(0, "job0", steps, sample, KEY)
    spent = _budget(tmp_path).admit(1, "job1", steps, noisier, KEY)
    acc = PrivacyAccountant(sample.mechanism)
    acc.step(sigma, rate, steps)
    acc.step(2 * sigma, rate, steps)
    assert spent == pytest.approx(acc.epsilon(sample.delta))
    kept = json.loads((tmp_path / "privacy" / f"run-{RUN}-client-1.json").read_text())
    assert [e["sigma"] for e in kept["rounds"].values()] == [sigma, 2 * sigma]


def test_the_node_config_is_checked_and_a_state_dir_is_required(sample, tmp_path):
    with pytest.raises(ValueError, match=r"--node-config 'max-epsilon=10\.0'"):
        _budget(tmp_path, **{"max-epsilon": "lots"}).admit(0, "j", sample.steps_of(1), sample, KEY)
    with pytest.raises(ValueError, match=r"max-delta=2\.0 must be below 1"):
        _budget(tmp_path, **{"max-delta": 2.0}).admit(0, "j", sample.steps_of(1), sample, KEY)
    with pytest.raises(ValueError, match="DP-SGD on a deployed node needs a state-dir"):
        NodeBudget(_context({}), RUN, 1)


def test_an_unreadable_record_refuses_rather_than_starting_afresh(sample, tmp_path):
    steps = sample.steps_of(1)
    budget = _budget(tmp_path)
    budget.admit(0, "job0", steps, sample, KEY)
    budget.path.write_text('{"rounds": {"0": {"job": "d')
    with pytest.raises(ValueError, match=r"is unreadable .*restore it from a backup"):
        _budget(tmp_path).admit(1, "job1", steps, sample, KEY)
    # Another run's unreadable record stops the operator's budget too, not only its run.
    with pytest.raises(ValueError, match="is unreadable"):
        _budget(tmp_path, OTHER_RUN, **{"max-epsilon": 100.0}).admit(0, "j", steps, sample, KEY)


def test_a_resend_under_other_noise_or_another_key_is_refused(sample, tmp_path):
    steps = sample.steps_of(1)
    _budget(tmp_path).admit(0, "job0", steps, sample, KEY)
    # A second hello brought a recipe with another sigma: the same job would draw the
    # same normal numbers at another scale, and the two answers would cancel the noise.
    noisier = dataclasses.replace(
        sample, client_noise={c: 2 * sample.noise_for(c) for c in sample.rates}
    )
    with pytest.raises(ValueError, match="as another job or with other noise"):
        _budget(tmp_path).admit(0, "job0", steps, noisier, KEY)
    # The key file was replaced: every resend would draw independent noise.
    with pytest.raises(ValueError, match="noise key for the run changed"):
        _budget(tmp_path).admit(0, "job0", steps, sample, "k2" * 16)


@pytest.mark.parametrize("run", ["x/../run-" + RUN, "x/y", "", "a" * 81, "run.1"])
def test_a_run_id_that_is_not_a_plain_name_is_refused(run, tmp_path):
    # The server chooses the run id, and it names the node's files.
    with pytest.raises(ValueError, match=r"run id|without an id"):
        NodeBudget(_context({"state-dir": str(tmp_path)}), run, 1)


def test_a_resumed_runs_pinned_sigma_names_the_jobs_of_the_recipe_it_started_from(mnist_dir):
    # A resumed DP-SGD run pins its sigma in the recipe (dpsgd.noise_multiplier beside
    # epsilon); a node that trained a round under the unpinned recipe knows it again.
    from fedgen.deploy.client_app import _recipe_fingerprints
    from fedgen.experiment import RecipeClientSide

    cfg = tiny_config(mnist_dir, **{**TINY_DPSGD, "dpsgd": "{epsilon: 8.0, max_grad_norm: 1.0}"})
    side = RecipeClientSide(cfg)
    started = _recipe_fingerprints(side.recipe)
    side.keep_dpsgd_noise(0.9, None)
    pinned = _recipe_fingerprints(side.recipe)
    assert pinned[0] != started[0] and started[0] in pinned
