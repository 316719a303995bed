"""One contract for every registered strategy (as PEFT runs every method through one
matrix): the order of clients does not matter, equal updates give that update, the
state survives a checkpoint, a resumed tiny real federation ends bit for bit where an
uninterrupted one does, and a robust rule ignores one arbitrarily large update when its
tolerance holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.callbacks import CheckpointCallback
from fedgen.experiment import build_experiment, restore_latest
from fedgen.registry import STRATEGIES
from fedgen.strategies.base import Strategy
from fedgen.types import ClientResult, StateDict

NAMES = STRATEGIES.names()
#: Params each strategy needs here: robust rules tolerate one poisoned client of 7 (Bulyan's
#: n >= 4f + 3); kld_clustered clusters from round 1 into one cluster.
PARAMS: dict[str, dict[str, object]] = {
    "median": {"byzantine": 1},
    "trimmed_mean": {"byzantine": 1},
    "krum": {"byzantine": 1},
    "multi_krum": {"byzantine": 1},
    "bulyan": {"byzantine": 1},
    "norm_bound": {"max_norm": 1.0},
    "kld_clustered": {"num_clusters": 1, "plain_rounds": 1},
}
ROBUST = ["median", "trimmed_mean", "krum", "multi_krum", "bulyan", "norm_bound"]
GLOBAL: StateDict = {"net.w": torch.zeros(3), "net.b": torch.zeros(()), "net.n": torch.zeros(2)}
N = 7


def interrupt_at(task, call: int) -> None:
    """Make the task raise KeyboardInterrupt (as Ctrl-C would) on its ``call``-th training."""
    original, calls = task.train_local, [0]

    def train_local(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    task.train_local = train_local


def make(name: str) -> Strategy:
    strategy: Strategy = STRATEGIES.get(name)(min_clients=1, **PARAMS.get(name, {}), root_seed=0)
    return strategy


def results(updates: list[torch.Tensor], examples: list[int] | None = None) -> list[ClientResult]:
    """One result per 4-vector: ``net.w`` (3) and ``net.b`` (scalar); the extras and own
    tensors a clustered strategy reads (the split backend's), ignored by the others."""
    gen = torch.Generator().manual_seed(0)
    act = torch.rand(1, 2, 3, 3, generator=gen)
    return [
        ClientResult(
            client_id=i,
            num_examples=(examples or [10] * len(updates))[i],
            update={"net.w": u[:3].float(), "net.b": u[3].float()},
            extras={"d3": act},
            private_keys=frozenset({"net.b"}),
        )
        for i, u in enumerate(updates)
    ]


def honest(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return list(torch.randn(N, 4, generator=gen) * 0.05)


def step(strategy: Strategy, r: int, state: StateDict, rs: list[ClientResult]) -> StateDict:
    strategy.configure(r, list(range(N)), np.random.default_rng(r))
    return strategy.apply(r, state, strategy.aggregate(r, rs))


@pytest.mark.parametrize("name", NAMES)
def test_the_order_of_clients_does_not_matter(name):
    # Prepare: the same results, forward and reversed (example counts differ per client).
    rs = results(honest(), examples=[10, 20, 30, 40, 50, 60, 70])
    # Execute: round 1 (a clustered strategy clusters there).
    a = step(make(name), 1, dict(GLOBAL), rs)
    b = step(make(name), 1, dict(GLOBAL), list(reversed(rs)))
    # Assert: equal up to the float64 rounding of a sum taken in another order.
    for k in GLOBAL:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-7), (name, k)


@pytest.mark.parametrize("name", NAMES)
def test_equal_updates_aggregate_to_that_update(name):
    u = torch.tensor([0.1, -0.2, 0.05, 0.3])
    agg = make(name).aggregate(1, results([u.clone() for _ in range(N)]))
    assert torch.allclose(agg.delta["net.w"].double(), u[:3].double(), atol=1e-7), name
    assert torch.allclose(agg.delta["net.b"].double(), u[3].double(), atol=1e-7), name


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name):
    # Prepare: two rounds, then a fresh strategy loaded from the state.
    strategy = make(name)
    state = dict(GLOBAL)
    for r in range(2):
        state = step(strategy, r, state, results(honest(r)))
    restored = make(name)
    restored.load_state_dict(strategy.state_dict())
    # Execute: a third round on each.
    a = step(strategy, 2, state, results(honest(2)))
    b = step(restored, 2, state, results(honest(2)))
    # Assert
    for k in GLOBAL:
        assert torch.equal(a[k], b[k]), (name, k)
    assert torch.equal(strategy.evaluation_state(a)["net.w"], restored.evaluation_state(b)["net.w"])


@pytest.mark.parametrize("name", ROBUST)
def test_a_robust_rule_ignores_one_arbitrarily_large_update(name):
    # Prepare: 6 honest updates and one of norm ~1e12 (f = 1 of n = 7 meets every rule's
    # tolerance, Bulyan's n >= 4f + 3 included).
    good = honest()[: N - 1]
    lo, hi = torch.stack(good).min(0).values, torch.stack(good).max(0).values
    for huge in (torch.full((4,), 1e12), torch.tensor([1e12, -1e12, 1e12, -1e12])):
        # Execute
        agg = make(name).aggregate(1, results([*good, huge]))
        out = torch.cat([agg.delta["net.w"].reshape(-1), agg.delta["net.b"].reshape(-1)])
        # Assert: the rules that discard stay inside the honest range per coordinate; norm
        # bounding leaves the attacker max_norm / n of pull, no more.
        if name == "norm_bound":
            assert float((out - torch.stack(good).mean(0) * (N - 1) / N).norm()) <= 1.0 / N + 1e-9
        else:
            assert bool(((out >= lo - 1e-9) & (out <= hi + 1e-9)).all()), (name, out)


#: A tiny real federation for each strategy (kld_clustered runs on the split backend
#: with its block task; it needs a cluster count it can always fill).
def federation_config(mnist_dir, name: str):
    overrides: dict[str, object] = {
        "federation.rounds": 2,
        "federation.local_steps": 1,
        "strategy.name": name,
        "threads": 1,
    }
    if name == "kld_clustered":
        overrides.update(
            {
                "task.name": "huscf_cgan",
                "task.params": "{batch_size: 16, architecture: light}",
                "backend.name": "split",
                "strategy.params": "{num_clusters: 1, plain_rounds: 1}",
            }
        )
    else:
        overrides["strategy.params"] = "{min_clients: 2}"
    return tiny_config(mnist_dir, **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_a_resumed_tiny_federation_ends_bit_identical(mnist_dir, tmp_path, name):
    # Prepare: the uninterrupted reference, 2 rounds of 4 clients.
    cfg = federation_config(mnist_dir, name)
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    if name != "kld_clustered":  # the split backend trains its clients jointly
        # The second client of round 1 (a Ditto client trains twice: global, personal).
        per_client = 2 if name == "ditto" else 1
        interrupt_at(first.task, per_client * (4 + 1) + 1)
        assert first.run() is False
    else:
        first.rounds = 1
        assert first.run()
    # Execute
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(second, tmp_path, cfg) == 0
    assert second.run()
    # Assert
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), (name, k)
    sampled = ref.strategy.evaluation_state(ref.global_state)
    again = second.strategy.evaluation_state(second.global_state)
    for k in sampled:
        assert torch.equal(sampled[k], again[k]), (name, k)
    # What clients keep (a Ditto client's personal model) resumes bit for bit too.
    assert ref.private_states.keys() == second.private_states.keys()
    for cid, own in ref.private_states.items():
        assert own.keys() == second.private_states[cid].keys(), (name, cid)
        for k in own:
            assert torch.equal(own[k], second.private_states[cid][k]), (name, cid, k)
