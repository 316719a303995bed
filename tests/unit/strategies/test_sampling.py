"""Client selection as its own component: the draws strategies delegate to it."""

from __future__ import annotations

import numpy as np
import pytest

from fedgen.errors import ConfigError
from fedgen.registry import SAMPLERS, STRATEGIES
from fedgen.strategies.sampling import build_sampler, round_half_up, round_plan


def test_fixed_draws_are_those_fedavg_drew_inline():
    # Prepare: the draw FedAvg made before sampling became a component (commit 056fc5d).
    sampler = build_sampler("fixed", fraction=0.4, min_clients=2)
    clients = list(range(10))
    for r in range(5):
        # Execute
        drawn = sampler.sample(r, clients, np.random.default_rng(r))
        # Assert
        rng = np.random.default_rng(r)
        k = max(2, round_half_up(0.4 * 10))
        assert drawn == sorted(rng.choice(clients, size=k, replace=False).tolist())
    assert sampler.expected_clients(10) == 4.0 and sampler.largest_cohort(10) == 4
    assert sampler.sample_rate(10) == 0.4 and not sampler.independent


def test_poisson_is_independent_and_may_be_empty():
    sampler = build_sampler("poisson", fraction=0.3, min_clients=5)
    rng = np.random.default_rng(0)
    sizes = [len(sampler.sample(r, list(range(20)), rng)) for r in range(500)]
    assert min(sizes) < 5 and abs(np.mean(sizes) - 6.0) < 0.3
    assert sampler.independent and sampler.largest_cohort(20) == 20
    assert sampler.sample_rate(20) == 0.3 and sampler.expected_clients(20) == 6.0


def test_every_strategy_delegates_to_a_registered_sampler():
    assert SAMPLERS.names() == ["fixed", "poisson"]
    for name in STRATEGIES.names():
        strategy = STRATEGIES.get(name)(root_seed=0)
        assert type(strategy.sampler) in {SAMPLERS.get(n) for n in SAMPLERS.names()}, name


def test_refusals_name_the_fix():
    with pytest.raises(ConfigError, match="'fixed' or 'poisson'"):
        build_sampler("bernoulli", 0.5, 1)
    with pytest.raises(ConfigError, match="lower strategy"):
        build_sampler("fixed", 0.5, 3).sample(0, [0, 1], np.random.default_rng(0))
    with pytest.raises(ConfigError, match="fraction"):
        build_sampler("fixed", 0.0, 1)


def test_round_plan_derives_each_clients_seed_from_the_root():
    a = round_plan(3, [1, 4], root_seed=7, config={"proximal_mu": 0.1})
    b = round_plan(3, [1, 4], root_seed=8)
    assert a.client_ids == [1, 4] and a.instructions[0].config == {"proximal_mu": 0.1}
    assert a.instructions[0].seed != b.instructions[0].seed
    assert a.instructions[0].config is not a.instructions[1].config


def test_poisson_cohorts_planned_below_min_clients_are_refused_before_any_round():
    # Prepare: 10 clients at q = 0.1 plan one client a round; min_clients is 2.
    fedavg = STRATEGIES.get("fedavg")
    ids = list(range(10))
    rng = np.random.default_rng(0)
    # Execute / Assert: refused, naming the fixes; with the fixed denominator every
    # round aggregates, so the same sampling is fine.
    with pytest.raises(ConfigError, match=r"plans 1 of 10 clients.*fixed_denominator"):
        fedavg(sampling="poisson", fraction=0.1, min_clients=2).configure(0, ids, rng)
    fixed = fedavg(sampling="poisson", fraction=0.1, weighted=False, fixed_denominator=True)
    fixed.configure(0, ids, rng)
    fedavg(sampling="poisson", fraction=0.3, min_clients=2).configure(0, ids, rng)
    # Later rounds are not refused: a pool that shrinks (DP-SGD's spent clients) is the
    # loop's to end cleanly.
    fedavg(sampling="poisson", fraction=0.1, min_clients=2).configure(3, ids, rng)
