"""Robust aggregation rules: hand computations, the shared contract, their refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgen.errors import ConfigError, RoundFailedError
from fedgen.registry import STRATEGIES
from fedgen.strategies.robust import RobustAggregation, krum_scores
from fedgen.types import ClientResult

RULES = ["median", "trimmed_mean", "krum", "multi_krum", "bulyan", "norm_bound"]


def _results(vectors: list[list[float]]) -> list[ClientResult]:
    """One result per vector, as an update of two tensors (a 2-vector and a scalar)."""
    return [
        ClientResult(
            client_id=i,
            num_examples=10 + i,
            update={"w": torch.tensor(v[:-1], dtype=torch.float32), "b": torch.tensor(v[-1])},
        )
        for i, v in enumerate(vectors)
    ]


def _flat(agg) -> torch.Tensor:
    return torch.cat([agg.delta["w"].reshape(-1), agg.delta["b"].reshape(-1)])


def _strategy(name: str, byzantine: int = 1, **params) -> RobustAggregation:
    cls = STRATEGIES.get(name)
    need = 1 if name == "norm_bound" else {"krum": 5, "multi_krum": 5, "bulyan": 7}.get(name, 3)
    return cls(byzantine=byzantine, min_clients=need, **params)


def test_median_and_trimmed_mean_by_hand():
    results = _results([[1.0, 0.0, 5.0], [2.0, 4.0, 5.0], [10.0, 1.0, -7.0], [3.0, 2.0, 5.0]])
    median = _strategy("median").aggregate(0, results)
    # Per coordinate, the midpoint of the two middle values of 4.
    assert _flat(median).tolist() == [2.5, 1.5, 5.0]
    trimmed = _strategy("trimmed_mean").aggregate(0, results)
    # Drop the largest and smallest per coordinate: mean of (2, 3), (1, 2), (5, 5).
    assert _flat(trimmed).tolist() == [2.5, 1.5, 5.0]
    assert median.num_clients == 4 and median.num_examples == 10 + 11 + 12 + 13


def test_krum_and_multi_krum_by_hand():
    # 1-D points 0, 0.1, 0.25, 10 (padded with zero coordinates), f = 0: each scored
    # over its n - f - 2 = 2 nearest others: 0.0725, 0.0325, 0.085, 9.9^2 + 9.75^2.
    points = [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.25, 0.0, 0.0], [10.0, 0.0, 0.0]]
    stacked = torch.tensor(points, dtype=torch.float64)
    assert torch.allclose(
        krum_scores(stacked, 0),
        torch.tensor([0.0725, 0.0325, 0.085, 9.9**2 + 9.75**2], dtype=torch.float64),
    )
    krum = STRATEGIES.get("krum")(byzantine=0, min_clients=3).aggregate(0, _results(points))
    assert _flat(krum)[0].item() == pytest.approx(0.1)
    multi = STRATEGIES.get("multi_krum")(byzantine=0, min_clients=3, selected=2)
    # The two best: 0.1, then 0.
    assert _flat(multi.aggregate(0, _results(points)))[0].item() == pytest.approx(0.05)


def test_norm_bound_scales_only_the_long_updates():
    results = _results([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]])  # norms 5 and 0.5
    agg = STRATEGIES.get("norm_bound")(max_norm=1.0, min_clients=1).aggregate(0, results)
    assert torch.allclose(_flat(agg), torch.tensor([0.45, 0.6, 0.0], dtype=torch.float64))
    assert agg.metrics["clipped"] == 1.0
    # The median of an even count is the mean of the two middle values.
    assert agg.metrics["update_norm_median"] == pytest.approx(2.75)


@pytest.mark.parametrize("name", RULES)
def test_contract_order_identity_and_one_huge_update(name):
    strategy = _strategy(name)
    n = max(strategy.required_results(), 5)
    gen = torch.Generator().manual_seed(0)
    honest = (torch.randn(n, 3, generator=gen) * 0.1).tolist()
    # Order of clients does not matter.
    a = _flat(strategy.aggregate(0, _results(honest)))
    b = _flat(strategy.aggregate(0, _results(honest[::-1])))
    assert torch.allclose(a, b, atol=1e-12), name
    # All clients equal: the rule returns that update.
    same = _flat(strategy.aggregate(0, _results([[0.1, -0.2, 0.3]] * n)))
    expected = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    if name == "norm_bound":
        expected = expected * min(1.0, 1.0 / float(expected.norm()))
    assert torch.allclose(same, expected, atol=1e-7), name
    # One arbitrarily large update among honest ones (f = 1 within tolerance): ignored by
    # the robust rules, bounded to max_norm / n by norm_bound.
    poisoned = [*honest[:-1], [1e12, -1e12, 1e12]]
    out = _flat(strategy.aggregate(0, _results(poisoned)))
    assert out.abs().max() < (1.0 / n + 0.5 if name == "norm_bound" else 1.0), (name, out)


@pytest.mark.parametrize("name", RULES)
def test_state_dict_round_trip(name):
    strategy = _strategy(name, ema_decay=0.5)
    state = {"w": torch.zeros(2), "b": torch.tensor(0.0)}
    agg = strategy.aggregate(0, _results([[0.1, 0.2, 0.3]] * max(strategy.required_results(), 2)))
    strategy.apply(0, state, agg)
    fresh = _strategy(name, ema_decay=0.5)
    fresh.load_state_dict(strategy.state_dict())
    assert all(torch.equal(fresh.ema[k], strategy.ema[k]) for k in state)


def test_a_cohort_too_small_for_the_tolerance_is_refused_before_any_client_trains():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match=r"n > 2f \+ 2\), but plans 4 clients of 10"):
        STRATEGIES.get("krum")(byzantine=2, fraction=0.4).configure(0, list(range(10)), rng)
    with pytest.raises(ConfigError, match=r"n >= 4f \+ 3"):
        STRATEGIES.get("bulyan")(byzantine=1, fraction=0.5).configure(0, list(range(10)), rng)
    plan = STRATEGIES.get("bulyan")(byzantine=1, fraction=0.7).configure(0, list(range(10)), rng)
    assert len(plan.instructions) == 7
    with pytest.raises(ConfigError, match="remove fixed_denominator"):
        STRATEGIES.get("median")(weighted=False, fixed_denominator=True)


def test_a_round_with_too_few_results_fails_and_says_why():
    strategy = _strategy("krum")
    with pytest.raises(RoundFailedError, match="needs at least 5"):
        strategy.aggregate(3, _results([[0.0, 0.0, 0.0]] * 4))


def test_secure_aggregation_refuses_a_rule_that_needs_each_update(mnist_dir):
    from tiny_federation import tiny_config

    from fedgen.experiment import build_experiment

    cfg = tiny_config(
        mnist_dir,
        **{
            "strategy.name": "median",
            "strategy.params": "{min_clients: 3}",
            "transforms": "[{name: clip, params: {max_norm: 1.0}}, {name: secagg}]",
        },
    )
    with pytest.raises(ConfigError, match="needs each client's individual update"):
        build_experiment(cfg)


def test_a_real_round_with_a_robust_rule(mnist_dir):
    from tiny_federation import tiny_config

    from fedgen.experiment import build_experiment

    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **{
                "strategy.name": "bulyan",
                "strategy.params": "{byzantine: 0, min_clients: 4, fraction: 1.0}",
            },
        )
    ).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    record = fed.run_round(0)
    assert record.metrics["clients"] == 4 and record.metrics["strategy/selected"] == 4.0
    assert any(not torch.equal(before[k], fed.global_state[k]) for k in before)


@pytest.mark.parametrize(
    ("name", "byzantine", "fraction", "need", "tolerance"),
    [
        ("median", 2, 0.4, 5, r"n >= 2f \+ 1"),
        ("trimmed_mean", 2, 0.4, 5, r"n >= 2f \+ 1"),
        ("multi_krum", 2, 0.5, 7, r"n > 2f \+ 2"),
    ],
)
def test_each_rule_refuses_a_cohort_below_its_tolerance(name, byzantine, fraction, need, tolerance):
    # Prepare: 10 clients, a fraction that plans one fewer result than the rule needs.
    rng = np.random.default_rng(0)
    strategy = STRATEGIES.get(name)(byzantine=byzantine, fraction=fraction)
    assert strategy.required_results() == need
    # Execute / Assert: refused before any client trains, naming the bound and the fix.
    with pytest.raises(
        ConfigError, match=rf"only with at least {need} results a round \({tolerance}\)"
    ):
        strategy.configure(0, list(range(10)), rng)
    # One more planned client is enough.
    plan = STRATEGIES.get(name)(byzantine=byzantine, fraction=need / 10).configure(
        0, list(range(10)), rng
    )
    assert len(plan.instructions) == need


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("median", {"byzantine": -1}, "strategy median: byzantine must be >= 0, got -1"),
        ("multi_krum", {"selected": 0}, "strategy multi_krum: selected must be >= 1, got 0"),
        ("norm_bound", {"max_norm": 0.0}, "strategy norm_bound: max_norm must be > 0, got 0"),
    ],
)
def test_invalid_rule_parameters_are_refused_with_the_value(name, params, message):
    with pytest.raises(ConfigError, match=message):
        STRATEGIES.get(name)(**params)


def test_bulyan_by_hand():
    # Prepare: n = 7, f = 1 (n >= 4f + 3). Five honest updates near each other, two far
    # away; the last coordinate is the scalar tensor, equal for the honest five.
    honest = [[0.0, 1.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.5, 0.0], [0.3, 0.45, 0.0], [0.6, 0.4, 0.0]]
    results = _results([*honest, [10.0, 10.0, 10.0], [-10.0, -10.0, -10.0]])
    # Execute
    agg = _strategy("bulyan").aggregate(0, results)
    # Assert: Krum, one pick at a time, selects theta = n - 2f = 5 updates: the honest
    # five. Then per coordinate, the mean of the beta = theta - 2f = 3 values closest
    # to the selected five's median. First coordinate: median 0.2, closest 0.2, 0.15,
    # 0.3 -> 0.21667 (the plain mean would be 0.25); second: median 0.45, closest 0.45,
    # 0.4, 0.5 -> 0.45 (mean 0.47); third: 0.
    assert agg.metrics["selected"] == 5.0
    assert _flat(agg).tolist() == pytest.approx([0.65 / 3, 0.45, 0.0], abs=1e-6)


def test_norm_bound_leaves_an_integer_step_counter_out_of_the_norm():
    # Prepare: a BatchNorm step counter beside the weights; its delta is the local step
    # count.
    def result(i: int, w: list[float], steps: int) -> ClientResult:
        counter = torch.tensor(steps, dtype=torch.int64)
        return ClientResult(i, 10, update={"w": torch.tensor(w), "bn.num_batches_tracked": counter})

    bounded = STRATEGIES.get("norm_bound")(max_norm=1.0, min_clients=1)
    # Execute / Assert: norms 0.5, below the bound: nothing is scaled, and the counter
    # takes the median of the clients' deltas.
    agg = bounded.aggregate(0, [result(0, [0.3, 0.4], 30), result(1, [0.3, 0.4], 30)])
    assert agg.delta["w"].tolist() == pytest.approx([0.3, 0.4]) and agg.metrics["clipped"] == 0
    assert agg.delta["bn.num_batches_tracked"].item() == 30
    assert list(agg.delta) == ["w", "bn.num_batches_tracked"]
