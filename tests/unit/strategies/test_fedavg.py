import numpy as np
import pytest
import torch

from fedgen.errors import ConfigError, RoundFailedError
from fedgen.strategies.fedavg import FedAvg
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
