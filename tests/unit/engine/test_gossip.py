"""Gossip averaging (D-PSGD): topologies, mixing against exact averages, a real run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.topology import (
    average,
    consensus_distance,
    mix,
    mixing_matrix,
    neighbours,
    switched_harary_graph,
)
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment


def random_models(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)}
        for _ in range(n)
    ]


def test_complete_graph_with_uniform_weights_averages_exactly_in_one_step():
    # Prepare
    models = random_models(6)
    w = mixing_matrix(neighbours("complete", 6, np.random.default_rng(0)), "uniform")

    # Execute
    mixed = mix(models, w)

    # Assert: every client holds the plain mean of all six.
    mean = {k: torch.stack([m[k] for m in models]).mean(0) for k in models[0]}
    for m in mixed:
        for k in mean:
            torch.testing.assert_close(m[k], mean[k], rtol=0, atol=1e-6)
    assert consensus_distance(mixed) < 1e-12
    assert consensus_distance(models) > 1.0


def test_ring_metropolis_weights_by_hand():
    w = mixing_matrix(neighbours("ring", 4, np.random.default_rng(0)), "metropolis")
    third = 1 / 3
    expected = torch.tensor(
        [
            [third, third, 0, third],
            [third, third, third, 0],
            [0, third, third, third],
            [third, 0, third, third],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(w, expected)


def test_consensus_distance_falls_to_zero_over_mixing_only_steps_on_a_ring():
    models = random_models(8, seed=1)
    w = mixing_matrix(neighbours("ring", 8, np.random.default_rng(0)), "metropolis")
    start_mean = average(models)
    distances = [consensus_distance(models)]
    for _ in range(150):
        models = mix(models, w)
        distances.append(consensus_distance(models))
    # Monotone on a doubly stochastic W, to ~0, and the average never moves.
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(distances))
    assert distances[-1] < 1e-9 * distances[0]
    for k, v in average(models).items():
        torch.testing.assert_close(v, start_mean[k], rtol=0, atol=1e-5)


def test_random_regular_graph_is_seeded_connected_and_regular():
    a = neighbours("regular", 12, np.random.default_rng(5), degree=3)
    b = neighbours("regular", 12, np.random.default_rng(5), degree=3)
    assert a == b
    assert all(len(n) == 3 and i not in n for i, n in enumerate(a))
    assert all(i in a[j] for i, n in enumerate(a) for j in n)  # undirected
    w = mixing_matrix(a, "metropolis")
    torch.testing.assert_close(w.sum(0), torch.ones(12, dtype=torch.float64))
    torch.testing.assert_close(w.sum(1), torch.ones(12, dtype=torch.float64))


@pytest.mark.parametrize(
    ("topology", "n", "degree", "message"),
    [
        ("regular", 5, 3, "does not exist"),
        ("regular", 4, 4, "does not exist"),
        ("star", 4, 3, "ring, regular or complete"),
        ("ring", 1, 3, "at least 2 clients"),
        ("regular", 6, 1, "never connected"),
    ],
)
def test_impossible_graphs_are_refused(topology, n, degree, message):
    with pytest.raises(ConfigError, match=message):
        neighbours(topology, n, np.random.default_rng(0), degree)


def assert_connected_regular(adj: list[set[int]], degree: int) -> None:
    assert all(len(n) == degree and i not in n for i, n in enumerate(adj))
    assert all(i in adj[j] for i, n in enumerate(adj) for j in n)  # undirected
    seen, todo = {0}, [0]
    while todo:
        for j in adj[todo.pop()] - seen:
            seen.add(j)
            todo.append(j)
    assert len(seen) == len(adj)


@pytest.mark.parametrize(
    ("n", "degree"), [(20, 7), (16, 8), (30, 12), (10, 9), (2, 1), (60, 2), (12, 3)]
)
def test_random_regular_graphs_of_any_valid_degree_are_drawn(n, degree):
    # The pairing model alone is simple with probability ~exp(-(d^2 - 1) / 4): about
    # 6e-6 at degree 7, so it used to give up on most of these.
    a = neighbours("regular", n, np.random.default_rng(3), degree)
    assert_connected_regular(a, degree)
    assert a == neighbours("regular", n, np.random.default_rng(3), degree)


def test_switched_harary_graph_is_seeded_random_and_joins_what_switches_split():
    # Degree 2: switches cut the Harary ring into several cycles; joins make one again.
    for seed in range(3):
        assert_connected_regular(switched_harary_graph(300, 2, np.random.default_rng(seed)), 2)
    a = switched_harary_graph(40, 5, np.random.default_rng(1))
    assert_connected_regular(a, 5)
    assert a == switched_harary_graph(40, 5, np.random.default_rng(1))
    assert a != switched_harary_graph(40, 5, np.random.default_rng(2))


def test_gossip_run_reports_consensus_and_evaluates_the_average(mnist_dir):
    # Prepare: a complete graph with uniform weights: one step is exact averaging, so
    # gossip is FedAvg with equal weights (the clients' models agree after every round).
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **{
                "federation.mode": "gossip",
                "federation.gossip": "{topology: complete, weights: uniform}",
                "federation.clock": "{speeds: lognormal}",
            },
        )
    ).federation

    # Execute
    assert fed.run()

    # Assert
    models = list(fed.schedule.models.values())
    assert len(models) == 4
    assert all(m["consensus_distance"] < 1e-10 for m in fed.history)
    assert all(m["consensus_distance_before_mixing"] > 0 for m in fed.history)
    for k, v in average(models).items():
        assert torch.equal(fed.global_state[k], v), k
    times = [m["sim_time"] for m in fed.history]
    assert times == sorted(times) and times[0] > 0


def test_gossip_ring_keeps_distinct_client_models(mnist_dir):
    fed = build_experiment(
        tiny_config(mnist_dir, **{"federation.mode": "gossip", "federation.rounds": 2})
    ).federation
    assert fed.run()
    models = list(fed.schedule.models.values())
    assert consensus_distance(models) == pytest.approx(fed.history[-1]["consensus_distance"])
    assert fed.history[-1]["consensus_distance"] > 0  # a ring of 4 does not average exactly


def test_gossip_refuses_server_transforms(mnist_dir):
    with pytest.raises(ConfigError, match="gossip has no server"):
        build_experiment(
            tiny_config(
                mnist_dir,
                **{
                    "federation.mode": "gossip",
                    "transforms": "[{name: clip, params: {max_norm: 1.0}}]",
                },
            )
        )


def test_resumed_gossip_run_ends_bit_identical(mnist_dir, tmp_path):
    from test_federation import interrupt_at

    from fedgen.engine.callbacks import CheckpointCallback
    from fedgen.experiment import restore_latest

    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.mode": "gossip",
            "federation.rounds": 4,
            "federation.clock": "{speeds: lognormal, jitter: 0.2}",
        },
    )
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    interrupt_at(first.task, 4 * 2 + 3)  # round 2, third of 4 clients
    assert first.run() is False
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(second, tmp_path, cfg) == 1
    assert second.run()
    for cid, model in ref.schedule.models.items():
        for k, v in model.items():
            assert torch.equal(v, second.schedule.models[cid][k]), (cid, k)
    assert [m["sim_time"] for m in second.history] == [m["sim_time"] for m in ref.history]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy.name": "krum"}, "strategy Krum"),
        ({"strategy.name": "median", "strategy.params": "{byzantine: 1}"}, "strategy Coordinate"),
        ({"detection": "{threshold: 3.5}"}, "the detection section"),
        ({"strategy.name": "fedprox", "strategy.params": "{mu: 0.1}"}, "proximal_mu"),
        ({"strategy.name": "ditto"}, "ditto_lambda"),
        ({"strategy.name": "fedavgm"}, "strategy FedAvgM"),
        ({"strategy.params": "{ema_decay: 0.9}"}, "ema_decay=0.9"),
        ({"strategy.params": "{fraction: 0.4}"}, "fraction=0.4"),
        ({"strategy.params": "{server_lr: 0.5}"}, "server_lr=0.5"),
    ],
)
def test_gossip_refuses_strategy_settings_it_would_ignore(mnist_dir, overrides, message):
    cfg = tiny_config(mnist_dir, **{"federation.mode": "gossip", **overrides})
    with pytest.raises(ConfigError, match=message) as refused:
        build_experiment(cfg)
    assert "gossip uses no strategy setting" in str(refused.value)


def test_gossip_rounds_in_which_every_client_failed_stop_the_run(mnist_dir):
    # Prepare: every client crashes before training, every round.
    fed = build_experiment(
        tiny_config(
            mnist_dir,
            **{
                "federation.mode": "gossip",
                "federation.rounds": 5,
                "federation.max_failed_rounds": 2,
                "federation.clock": "{speeds: equal}",
                "faults": "{crash_before: 1.0}",
            },
        )
    ).federation
    start = {k: v.clone() for k, v in fed.global_state.items()}

    # Execute
    assert fed.run()

    # Assert: two failed rounds, then the stop, as in a sync run; nothing moved but time.
    assert fed.stop_status == "failed" and "max_failed_rounds=2" in (fed.stop_reason or "")
    assert len(fed.history) == 2
    assert all("no client's update arrived" in m["round_failed"] for m in fed.history)
    assert [m["sim_time"] for m in fed.history] == [2.0, 4.0]
    assert fed.schedule.models == {}
    for k, v in start.items():
        assert torch.equal(fed.global_state[k], v), k
