"""Privacy through the round loop: epsilon per round, clean stop at the budget, resume."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.callbacks import CheckpointCallback
from fedgen.experiment import build_experiment, restore_latest
from fedgen.privacy.accounting import compute_epsilon

CLIENT_DP = [
    "strategy.params={fraction: 0.5, min_clients: 1, weighted: false, "
    "sampling: poisson, fixed_denominator: true}",
    "transforms=[{name: clip, params: {max_norm: 0.5, target_quantile: 0.5, "
    "count_noise_stddev: 1.0}}, {name: client_dp, params: {noise_multiplier: 1.2, "
    "delta: 1.0e-3}}]",
]
SAMPLE_DP = [
    "strategy.params={min_clients: 2, fraction: 0.5}",
    "task.params.fake_labels=uniform",
    "dpsgd={noise_multiplier: 1.0, max_grad_norm: 1.0, delta: 1.0e-5}",
]
#: DP-SGD with each client's sigma calibrated for its own sampling rate, on clients of
#: unequal size (Dirichlet label skew).
SAMPLE_DP_PER_CLIENT = [
    "strategy.params={min_clients: 2, fraction: 0.5}",
    "task.params.fake_labels=uniform",
    "data.partition.kind=dirichlet",
    "data.partition.params={alpha: 0.5}",
    "dpsgd={epsilon: 8.0, max_grad_norm: 1.0, delta: 1.0e-5, noise_per_client: true}",
]


def config(mnist_dir, *items: str, rounds: int = 3):
    """The shared tiny federation (batch 32, 2 local steps) with the default strategy
    params and ``items`` (``dotted.key=value``) applied last."""
    torch.set_num_threads(1)
    overrides = {
        "task.params": "{batch_size: 32, generator_width: 8, discriminator_width: 8}",
        "federation.rounds": rounds,
        # The experiment's default strategy params, not the tiny federation's.
        "strategy.params": "{fraction: 0.4, ema_decay: 0.9}",
    }
    overrides.update(item.split("=", 1) for item in items)
    return tiny_config(mnist_dir, **overrides)


def test_client_level_epsilon_is_in_every_round_and_equals_opacus(mnist_dir):
    # Prepare: z = 1.2 is the effective multiplier; q = fraction = 0.5.
    fed = build_experiment(config(mnist_dir, *CLIENT_DP)).federation
    # Execute
    assert fed.run()
    # Assert: each round's epsilon is Opacus's for that many rounds (every round
    # releases a noised mean under the fixed denominator, even an empty cohort).
    for r, m in enumerate(fed.history):
        assert m["delta"] == 1e-3
        assert m["epsilon"] == pytest.approx(compute_epsilon(1.2, 0.5, r + 1, 1e-3), rel=1e-9)
        assert "normclip/unclipped_fraction" in m and m["clientleveldp/noise_std"] > 0
    assert fed.stop_reason is None


def test_the_run_stops_cleanly_after_the_last_round_that_fits(mnist_dir):
    # Prepare: a budget that 2 rounds fit and 3 do not; 5 rounds planned.
    eps2 = compute_epsilon(1.2, 0.5, 2, 1e-3)
    eps3 = compute_epsilon(1.2, 0.5, 3, 1e-3)
    budget = (eps2 + eps3) / 2
    items = [
        CLIENT_DP[0],
        "transforms=[{name: clip, params: {max_norm: 0.5}}, {name: client_dp, params: "
        f"{{noise_multiplier: 1.2, epsilon: {budget}, delta: 1.0e-3}}}}]",
    ]
    fed = build_experiment(config(mnist_dir, *items, rounds=5)).federation
    # Execute
    completed = fed.run()
    # Assert
    assert completed is True and fed.next_round == 2 and len(fed.history) == 2
    assert fed.history[-1]["epsilon"] <= budget
    assert fed.stop_reason is not None and "budget exhausted" in fed.stop_reason
    assert fed.is_final_round(1)


@pytest.mark.parametrize(
    "items",
    [CLIENT_DP, SAMPLE_DP, SAMPLE_DP_PER_CLIENT],
    ids=["client-level", "dp-sgd", "dp-sgd-per-client"],
)
def test_resume_with_dp_is_bit_identical(mnist_dir, tmp_path, items):
    cfg = config(mnist_dir, *items, rounds=3)
    # Interrupted after round 0's checkpoint, in round 1.
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    # The uninterrupted reference draws its noise with the same secret key; the resumed
    # run can only have it from the checkpoint.
    ref = build_experiment(cfg).federation
    assert ref.noise_key is not None and ref.noise_key != first.noise_key
    ref.noise_key = first.noise_key
    assert ref.run()
    original = first.run_round

    def interrupt(r):
        if r == 1:
            raise KeyboardInterrupt
        return original(r)

    first.run_round = interrupt  # type: ignore[method-assign]
    assert first.run() is False
    second = build_experiment(cfg).federation
    assert restore_latest(second, tmp_path, cfg) == 0
    assert second.noise_key == first.noise_key
    assert second.run()
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    assert [m["epsilon"] for m in second.history] == [m["epsilon"] for m in ref.history]
    assert second.privacy.state_dict() == ref.privacy.state_dict()


def test_sample_level_reports_the_largest_epsilon_over_clients(mnist_dir):
    fed = build_experiment(config(mnist_dir, *SAMPLE_DP, rounds=2)).federation
    assert fed.run()
    sample = fed.privacy.sample
    per_client = {
        cid: compute_epsilon(1.0, sample.rates[cid], acc.steps, 1e-5)
        for cid, acc in sample.accountants.items()
    }
    # Each sampled client was charged 2 local steps per round it took part in.
    assert all(acc.steps % 2 == 0 and acc.steps > 0 for acc in sample.accountants.values())
    assert fed.history[-1]["epsilon"] == pytest.approx(max(per_client.values()), rel=1e-9)
    # The cohort's exact example count would show one example more or less: withheld.
    assert not any("examples" in m for m in fed.history)


def test_with_both_levels_the_summary_keeps_each_levels_accountant_and_budget(mnist_dir):
    # Prepare: client-level DP with a fixed multiplier, DP-SGD with an epsilon budget
    both = [*CLIENT_DP, "task.params.fake_labels=uniform"]
    both.append("dpsgd={epsilon: 8.0, max_grad_norm: 1.0, delta: 1.0e-5, accountant: prv}")
    privacy = build_experiment(config(mnist_dir, *both, rounds=2)).federation.privacy
    # Execute
    summary = privacy.describe()
    # Assert: the flat keys are the client level's; DP-SGD's own are named as such
    assert summary["privacy_unit"] == "client" and "epsilon_budget" not in summary
    assert summary["dpsgd_accountant"] == "prv" and summary["dpsgd_epsilon_budget"] == 8.0


@pytest.mark.parametrize("items", [CLIENT_DP, SAMPLE_DP], ids=["client-level", "dp-sgd"])
def test_dp_noise_is_keyed_by_a_secret_not_by_the_config(mnist_dir, items):
    # Two fresh runs of one config (same root seed) draw different noise: the config
    # alone cannot regenerate it. Their sampling and local training are the same, so
    # the noise is what differs.
    cfg = config(mnist_dir, *items, rounds=1)
    a, b = (build_experiment(cfg).federation for _ in range(2))
    assert a.run() and b.run()
    assert a.noise_key != b.noise_key
    assert any(not torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    assert a.noise_key.hex() not in cfg.to_yaml()


@pytest.mark.parametrize("items", [CLIENT_DP, SAMPLE_DP], ids=["client-level", "dp-sgd"])
def test_root_seeded_noise_reruns_identically_from_the_config(mnist_dir, items):
    cfg = config(mnist_dir, *items, "noise_seed=root", rounds=1)
    a, b = (build_experiment(cfg).federation for _ in range(2))
    assert a.noise_key is None and a.run() and b.run()
    for k in a.global_state:
        assert torch.equal(a.global_state[k], b.global_state[k]), k
    # A root-seeded run is another experiment: its checkpoints do not resume a secret one.
    assert cfg.fingerprint() != config(mnist_dir, *items, rounds=1).fingerprint()


def test_every_noisy_step_is_charged_when_a_local_step_draws_several_batches(
    mnist_dir, monkeypatch
):
    # Prepare: count the noise Opacus really adds (one draw per DP-SGD step), with a
    # discriminator that takes 3 steps, each on its own batch, per local step.
    from opacus.optimizers import DPOptimizer

    draws: list[int] = []
    add_noise = DPOptimizer.add_noise

    def counted(self):
        draws.append(1)
        return add_noise(self)

    monkeypatch.setattr(DPOptimizer, "add_noise", counted)
    fed = build_experiment(config(mnist_dir, *SAMPLE_DP, "task.params.d_steps=3", rounds=2))
    # Execute
    assert fed.federation.run()
    # Assert: the accountants charged every draw, 3 per local step of each client round.
    accountants = fed.federation.privacy.sample.accountants
    assert sum(acc.steps for acc in accountants.values()) == len(draws) > 0
    assert all(acc.steps % (3 * 2) == 0 for acc in accountants.values())


def test_rounds_per_client_caps_participation_and_spends_the_budget_as_less_noise(mnist_dir):
    # Prepare: 4 clients, 2 a round, 6 rounds; epsilon 8 over at most 2 rounds a client
    # against the same epsilon over all 6.
    items = [
        "strategy.params={min_clients: 1, fraction: 0.5}",
        "task.params.fake_labels=uniform",
        "dpsgd={epsilon: 8.0, max_grad_norm: 1.0, delta: 1.0e-5, rounds_per_client: 2}",
    ]
    capped = build_experiment(config(mnist_dir, *items, rounds=6)).federation
    uncapped_items = [*items[:2], "dpsgd={epsilon: 8.0, max_grad_norm: 1.0, delta: 1.0e-5}"]
    uncapped = build_experiment(config(mnist_dir, *uncapped_items, rounds=6)).federation
    # Execute
    capped.run()
    # Assert: less noise for the same epsilon (4 noisy steps a client instead of 12;
    # the gap grows with the steps); nobody took part in more than 2 rounds, and the run
    # stopped once every client had used them, within its budget.
    sample = capped.privacy.sample
    assert sample.noise_multiplier < 0.95 * uncapped.privacy.sample.noise_multiplier
    taken = {cid: sample.rounds_taken(cid) for cid in range(4)}
    assert taken == {cid: 2 for cid in range(4)}
    assert sum(m["clients"] for m in capped.history) == 8  # client rounds: 4 x 2
    assert capped.stop_reason is not None and "rounds_per_client=2" in capped.stop_reason
    assert len(capped.history) < 6
    assert 7.0 < capped.history[-1]["epsilon"] <= 8.0


def test_rounds_per_client_is_refused_where_it_cannot_hold(mnist_dir):
    from fedgen.errors import ConfigError

    cap = "dpsgd={epsilon: 8.0, max_grad_norm: 1.0, delta: 1.0e-5, rounds_per_client: 2}"
    with pytest.raises(ConfigError, match=r"needs federation\.mode=sync"):
        build_experiment(config(mnist_dir, cap, "federation.mode=gossip"))
    with pytest.raises(ConfigError, match="rounds_per_client"):
        build_experiment(config(mnist_dir, cap, "dpsgd.rounds_per_client=0"))


def test_rounds_per_client_stops_cleanly_when_too_few_clients_are_left(mnist_dir):
    # 4 clients, 2 a round, min_clients 2, at most 2 rounds each. With these root seeds
    # one client is left with rounds to spare while the others are spent: the sampler
    # would refuse a pool below min_clients mid-run; the run stops before that instead.
    items = [
        "strategy.params={min_clients: 2, fraction: 0.5}",
        "task.params.fake_labels=uniform",
        "dpsgd={epsilon: 8.0, max_grad_norm: 1.0, delta: 1.0e-5, rounds_per_client: 2}",
    ]
    for seed in (5, 8):
        fed = build_experiment(config(mnist_dir, *items, f"seed={seed}", rounds=6)).federation
        fed.run()
        sample = fed.privacy.sample
        assert all(sample.rounds_taken(c) <= 2 for c in range(4))
        assert len(sample.eligible(list(range(4)))) == 1
        assert fed.stop_reason is not None and "too few" in fed.stop_reason


def test_noise_per_client_calibrates_each_client_for_its_own_rate(mnist_dir, monkeypatch):
    # Prepare: record the sigma Opacus really draws its noise with at every step.
    from opacus.optimizers import DPOptimizer

    from fedgen.privacy.accounting import calibrate_noise

    used: list[float] = []
    add_noise = DPOptimizer.add_noise

    def recorded(self):
        used.append(self.noise_multiplier)
        return add_noise(self)

    monkeypatch.setattr(DPOptimizer, "add_noise", recorded)
    fed = build_experiment(config(mnist_dir, *SAMPLE_DP_PER_CLIENT, rounds=2)).federation
    shared_items = [*SAMPLE_DP_PER_CLIENT[:-1], SAMPLE_DP_PER_CLIENT[-1].replace("true", "false")]
    shared = build_experiment(config(mnist_dir, *shared_items, rounds=2)).federation
    sample = fed.privacy.sample
    # Assert: each client's sigma is the one calibrated for its own rate over the run's
    # 2 rounds x 2 steps; the shards differ in size, so the sigmas do, and the largest is
    # the one sigma every client would share without the option.
    assert sample.client_noise is not None and len(set(sample.rates.values())) > 1
    for cid, z in sample.client_noise.items():
        assert z == calibrate_noise(8.0, sample.rates[cid], 4, 1e-5, "rdp")
    assert len(set(sample.client_noise.values())) > 1
    assert sample.noise_multiplier == max(sample.client_noise.values())
    assert sample.noise_multiplier == shared.privacy.sample.noise_multiplier
    assert shared.privacy.sample.client_noise is None
    # Execute
    assert fed.run()
    # Assert: training drew with the sampled clients' own sigmas, and every client's
    # epsilon is within the budget, the largest one close to it.
    sampled = {cid for cid in sample.accountants}
    assert set(used) == {sample.client_noise[cid] for cid in sampled}
    per_client = {
        cid: compute_epsilon(sample.client_noise[cid], sample.rates[cid], acc.steps, 1e-5)
        for cid, acc in sample.accountants.items()
    }
    assert fed.history[-1]["epsilon"] == pytest.approx(max(per_client.values()), rel=1e-9)
    assert max(per_client.values()) <= 8.0
    summary = fed.privacy.describe()
    assert summary["dpsgd_noise_multiplier_min"] == min(sample.client_noise.values())
    # The report says the sigmas differ, down to the smallest.
    from fedgen.report.html import _privacy_section
    from fedgen.report.svg import format_number

    smallest = format_number(min(sample.client_noise.values()))
    assert f"per client down to {smallest}" in _privacy_section(summary)


def test_noise_per_client_needs_an_epsilon_to_calibrate_from(mnist_dir):
    from fedgen.errors import ConfigError

    fixed = "dpsgd={noise_multiplier: 1.0, max_grad_norm: 1.0, noise_per_client: true}"
    with pytest.raises(ConfigError, match="noise_per_client calibrates each client"):
        build_experiment(config(mnist_dir, "task.params.fake_labels=uniform", fixed))


@pytest.mark.parametrize("per_client", [False, True], ids=["one-sigma", "per-client"])
def test_a_resume_planning_other_rounds_keeps_the_runs_sigma_in_clients_built_elsewhere(
    mnist_dir, per_client
):
    # Prepare: a run whose DP-SGD sigma was calibrated for 2 rounds, resumed from a recipe
    # that plans 6 (rounds are no part of the fingerprint), which calibrates another.
    items = [*SAMPLE_DP_PER_CLIENT, "ledger=false"]  # (no run folder holds its keys)
    if not per_client:
        items[-2] = items[-2].replace("true", "false")
    first = build_experiment(config(mnist_dir, *items, rounds=2)).federation
    resumed = build_experiment(config(mnist_dir, *items, rounds=6)).federation
    run_sigma = (first.privacy.sample.noise_multiplier, first.privacy.sample.client_noise)
    assert resumed.privacy.sample.noise_multiplier != run_sigma[0]
    # Execute
    resumed.load_state_dict(first.state_dict())
    # Assert: the server keeps the run's sigma, and so does a client built from the recipe
    # elsewhere (a worker process, a Flower node), whose noise the server accounts for.
    sample = resumed.privacy.sample
    assert (sample.noise_multiplier, sample.client_noise) == run_sigma
    kit = resumed.client_side.open()
    budget = kit.sample_budget
    assert (budget.noise_multiplier, budget.client_noise) == run_sigma
    assert kit.task.privacy_engine.noise_multiplier == run_sigma[0]
