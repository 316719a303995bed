import numpy as np
import pytest
import torch

from fedgen.errors import ConfigError, RoundFailedError
from fedgen.strategies.fedavg import FedAvg
from fedgen.strategies.moving_average import effective_decay, replay_averages
from fedgen.types import ClientResult


def result(cid: int, n: int, w: list[float], b: float) -> ClientResult:
    return ClientResult(cid, n, update={"w": torch.tensor(w), "b": torch.tensor([b])})


def test_weighted_mean_matches_hand_computation():
    # Prepare: two clients with 1 and 3 examples.
    strategy = FedAvg(min_clients=2)
    results = [result(0, 1, [1.0, 2.0], 4.0), result(1, 3, [5.0, -2.0], 0.0)]
    # Execute
    agg = strategy.aggregate(0, iter(results))
    # Assert: (1*[1,2] + 3*[5,-2]) / 4 = [4, -1];  (1*4 + 3*0) / 4 = 1
    assert torch.allclose(agg.delta["w"], torch.tensor([4.0, -1.0], dtype=torch.float64))
    assert torch.allclose(agg.delta["b"], torch.tensor([1.0], dtype=torch.float64))
    assert agg.num_examples == 4 and agg.num_clients == 2


def test_unweighted_mean():
    agg = FedAvg(weighted=False).aggregate(
        0, [result(0, 1, [1.0, 2.0], 4.0), result(1, 3, [5.0, -2.0], 0.0)]
    )
    assert torch.allclose(agg.delta["w"], torch.tensor([3.0, 0.0], dtype=torch.float64))


def test_server_lr_scales_the_step():
    strategy = FedAvg(server_lr=0.5)
    agg = strategy.aggregate(0, [result(0, 2, [2.0, 2.0], 2.0), result(1, 2, [2.0, 2.0], 2.0)])
    new = strategy.apply(0, {"w": torch.zeros(2), "b": torch.ones(1)}, agg)
    assert torch.equal(new["w"], torch.tensor([1.0, 1.0]))
    assert torch.equal(new["b"], torch.tensor([2.0]))
    assert new["w"].dtype == torch.float32


def test_too_few_results_fail_the_round():
    with pytest.raises(RoundFailedError, match="min_clients=2"):
        FedAvg(min_clients=2).aggregate(0, [result(0, 1, [1.0, 1.0], 1.0)])


def test_configure_samples_a_fraction_reproducibly():
    strategy = FedAvg(fraction=0.3, min_clients=2, root_seed=1)
    clients = list(range(10))
    a = strategy.configure(4, clients, np.random.default_rng(5))
    b = strategy.configure(4, clients, np.random.default_rng(5))
    assert a.client_ids == b.client_ids
    assert len(a.client_ids) == 3 and len(set(a.client_ids)) == 3
    assert len({ins.seed for ins in a.instructions}) == 3


def test_bad_parameters_say_what_to_change():
    with pytest.raises(ConfigError, match="fraction"):
        FedAvg(fraction=0.0)
    with pytest.raises(ConfigError, match="server_lr"):
        FedAvg(server_lr=-1)


def test_ema_tracks_the_global_state_and_survives_a_checkpoint():
    # Prepare: global 0 -> 2 -> 4 with decay 0.5 starting from the initial state 0.
    strategy = FedAvg(ema_decay=0.5)
    state = {"w": torch.zeros(1)}
    for _ in range(2):
        agg = strategy.aggregate(0, [result(0, 1, [2.0], 0.0), result(1, 1, [2.0], 0.0)])
        agg.delta.pop("b")
        state = strategy.apply(0, state, agg)
    # Assert: ema = 0.5*(0.5*0 + 0.5*2) + 0.5*4 = 2.5; training state untouched.
    assert torch.equal(state["w"], torch.tensor([4.0]))
    assert torch.allclose(strategy.evaluation_state(state)["w"], torch.tensor([2.5]))
    restored = FedAvg(ema_decay=0.5)
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.evaluation_state(state)["w"], strategy.ema["w"])
    with pytest.raises(ConfigError, match="ema_decay"):
        FedAvg(ema_decay=1.0)


def test_poisson_sampling_includes_each_client_with_probability_fraction():
    # Prepare
    strategy = FedAvg(fraction=0.3, min_clients=5, sampling="poisson")
    clients = list(range(20))
    # Execute: 2000 rounds of independent draws.
    sizes, hits = [], np.zeros(20)
    for r in range(2000):
        plan = strategy.configure(r, clients, np.random.default_rng(r))
        sizes.append(len(plan.client_ids))
        hits[plan.client_ids] += 1
    # Assert: cohort ~ Binomial(20, 0.3) (mean 6, never raised to min_clients, may be
    # empty) and each client in ~30% of rounds.
    assert abs(np.mean(sizes) - 6.0) < 0.15
    assert min(sizes) < 5
    assert np.all(np.abs(hits / 2000 - 0.3) < 0.05)
    assert strategy.sample_rate(20) == 0.3 and strategy.expected_clients(20) == 6.0


def test_fixed_denominator_divides_by_the_expected_cohort():
    # Prepare: Poisson q = 0.5 over 8 clients -> denominator 4, whoever returns.
    strategy = FedAvg(fraction=0.5, weighted=False, sampling="poisson", fixed_denominator=True)
    strategy.configure(0, list(range(8)), np.random.default_rng(0))
    # Execute: two results (sum w = [6, 0], b = 4).
    agg = strategy.aggregate(0, [result(0, 1, [1.0, 2.0], 4.0), result(1, 9, [5.0, -2.0], 0.0)])
    # Assert
    assert torch.allclose(agg.delta["w"], torch.tensor([1.5, 0.0], dtype=torch.float64))
    assert torch.allclose(agg.delta["b"], torch.tensor([1.0], dtype=torch.float64))
    # No result at all is still a (zero) aggregate: every round releases.
    empty = strategy.aggregate(1, [])
    assert empty.num_clients == 0 and empty.delta == {}


def test_fixed_denominator_needs_an_unweighted_mean_and_sampling_is_checked():
    with pytest.raises(ConfigError, match="weighted=false"):
        FedAvg(fixed_denominator=True)
    with pytest.raises(ConfigError, match="'fixed' or 'poisson'"):
        FedAvg(sampling="bernoulli")


def test_fixed_sampling_draws_are_unchanged_by_the_new_options():
    # The default experiment's client draws must stay bit-identical.
    a = FedAvg(fraction=0.4, min_clients=2, root_seed=3)
    b = FedAvg(fraction=0.4, min_clients=2, root_seed=3, sampling="fixed")
    for r in range(5):
        pa = a.configure(r, list(range(10)), np.random.default_rng(r))
        pb = b.configure(r, list(range(10)), np.random.default_rng(r))
        assert pa == pb


def test_ema_warmup_grows_the_decay_and_the_count_survives_a_checkpoint():
    # Prepare: decay 0.9 warmed up.
    strategy = FedAvg(ema_decay=0.9, ema_warmup=True, min_clients=1)
    state = {"w": torch.zeros(1)}
    # Execute: two rounds moving w to 2, then 4.
    for target in (2.0, 4.0):
        result = ClientResult(0, 1, update={"w": torch.tensor([target]) - state["w"]})
        state = strategy.apply(0, state, strategy.aggregate(0, [result]))
    restored = FedAvg(ema_decay=0.9, ema_warmup=True)
    restored.load_state_dict(strategy.state_dict())
    # Assert: updates 0 and 1 use decays 1/10 and 2/11; 0.9 from update 80 on.
    assert effective_decay(0.9, 0, True) == pytest.approx(0.1)
    assert effective_decay(0.9, 1, True) == pytest.approx(2 / 11)
    assert effective_decay(0.9, 79, True) < 0.9 == effective_decay(0.9, 80, True)
    assert effective_decay(0.9, 0, False) == 0.9
    expected = 2 / 11 * (0.1 * 0 + 0.9 * 2) + 9 / 11 * 4
    assert float(strategy.ema["w"]) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(restored.ema["w"], strategy.ema["w"]) and restored.ema_updates == 2
    assert strategy.averaging and not FedAvg().averaging


def test_debiased_average_weights_only_the_trained_rounds():
    # Prepare: a slow decay, debiased, from a start far from every round's model.
    decay = 0.98
    strategy = FedAvg(ema_decay=decay, ema_warmup="debias", min_clients=1)
    state = {"w": torch.tensor([100.0])}
    targets = [1.0, 2.0, 3.0, 4.0]
    # Execute: four rounds moving w to each target.
    for target in targets:
        result = ClientResult(0, 1, update={"w": torch.tensor([target]) - state["w"]})
        state = strategy.apply(0, state, strategy.aggregate(0, [result]))
    # Assert: the rounds' models weighted decay ** age and normalised; the start of 100
    # has no weight (the plain average would keep 0.98 ** 4 of it: about 92).
    weights = [decay ** (len(targets) - 1 - i) for i in range(len(targets))]
    expected = sum(w * t for w, t in zip(weights, targets, strict=True)) / sum(weights)
    assert float(strategy.ema["w"]) == pytest.approx(expected, rel=1e-6)
    assert effective_decay(decay, 0, "debias") == 0.0
    assert effective_decay(0.0, 5, "debias") == 0.0
    assert effective_decay(decay, 10_000, "debias") == pytest.approx(decay)
    assert FedAvg.Params(ema_warmup="debias").ema_warmup == "debias"
    with pytest.raises(ValueError):
        FedAvg.Params(ema_warmup="slow")


def test_a_replayed_average_is_the_strategys_and_skips_failed_rounds():
    # Prepare: a debiased average over rounds 0, 2 and 3; round 1 failed (not applied,
    # so the global state after it is round 0's).
    strategy = FedAvg(ema_decay=0.9, ema_warmup="debias", min_clients=1)
    start = {"w": torch.tensor([10.0])}
    state, states, averages = start, [], []
    for r, target in enumerate([1.0, None, 3.0, 4.0]):
        if target is not None:
            result = ClientResult(0, 1, update={"w": torch.tensor([target]) - state["w"]})
            state = strategy.apply(r, state, strategy.aggregate(r, [result]))
        states.append(state)
        averages.append(strategy.ema["w"].clone())
    # Execute
    replayed = replay_averages(
        start, states, 0.9, "debias", {0, 1, 2, 3}, applied=[True, False, True, True]
    )
    counted = replay_averages(start, states, 0.9, "debias", {3})
    # Assert: every round's replay is the strategy's own average, and counting the failed
    # round as an update (its repeated state) would give another one.
    for r in range(4):
        assert torch.allclose(replayed[r]["w"], averages[r]), r
    assert not torch.allclose(counted[3]["w"], averages[3])
