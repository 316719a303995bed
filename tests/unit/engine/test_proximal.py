"""FedProx's proximal term reaches any optimizer a task steps (Li et al. 2020)."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config
from torch import nn

from fedgen.engine.proximal import anchored_parameters, proximal_term
from fedgen.experiment import build_experiment
from fedgen.registry import STRATEGIES


def test_one_sgd_step_by_hand():
    # Prepare: w = [1, 2], anchor [0, 4], loss = sum(w) (gradient 1), lr 0.1, mu 0.5.
    module = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 2.0]]))
    anchor = {"net.weight": torch.tensor([[0.0, 4.0]])}
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    pairs = anchored_parameters({"net": module}, anchor)
    # Execute
    with proximal_term(pairs, mu=0.5):
        module.weight.sum().backward()
        opt.step()
    # Assert: w - lr * (1 + mu * (w - anchor)) = [1 - 0.1 * 1.5, 2 - 0.1 * 0]
    assert torch.allclose(module.weight, torch.tensor([[0.85, 2.0]]))
    # Closed: a later step is plain SGD.
    opt.zero_grad()
    module.weight.sum().backward()
    opt.step()
    assert torch.allclose(module.weight, torch.tensor([[0.75, 1.9]]))


def test_only_anchored_parameters_are_pulled():
    free, held = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    for m in (free, held):
        nn.init.ones_(m.weight)
    pairs = anchored_parameters({"free": free, "held": held}, {"held.weight": torch.zeros(1, 1)})
    opt = torch.optim.SGD([*free.parameters(), *held.parameters()], lr=1.0)
    with proximal_term(pairs, mu=1.0):
        opt.zero_grad()
        (free.weight.sum() * 0 + held.weight.sum() * 0).backward()
        opt.step()
    assert free.weight.item() == 1.0 and held.weight.item() == 0.0
    with pytest.raises(ValueError, match="mu"), proximal_term(pairs, mu=-1.0):
        pass


def test_fedprox_pulls_a_real_federation_toward_the_global_weights(mnist_dir):
    # Prepare: the tiny federation, one round, as FedAvg and as FedProx with a large mu.
    def run(strategy: str, params: str):
        cfg = tiny_config(
            mnist_dir,
            **{"federation.rounds": 1, "strategy.name": strategy, "strategy.params": params},
        )
        fed = build_experiment(cfg).federation
        start = {k: v.clone() for k, v in fed.global_state.items()}
        assert fed.run()
        return sum(float((fed.global_state[k] - start[k]).norm()) for k in start)

    # Execute
    plain = run("fedavg", "{min_clients: 2}")
    zero = run("fedprox", "{min_clients: 2, mu: 0.0}")
    strong = run("fedprox", "{min_clients: 2, mu: 100.0}")
    # Assert: mu 0 is FedAvg bit for bit; a strong pull moves the model less.
    assert zero == plain
    assert strong < 0.9 * plain
    assert STRATEGIES.get("fedprox")(mu=0.3).client_config(0) == {"proximal_mu": 0.3}


def test_fedprox_reaches_the_split_trainer(mnist_dir):
    # Prepare: the split backend's block cGAN, one round under FedAvg and FedProx.
    def run(strategy: str, params: str):
        cfg = tiny_config(
            mnist_dir,
            **{
                "federation.rounds": 1,
                "task.name": "huscf_cgan",
                "task.params": "{batch_size: 16, architecture: light}",
                "backend.name": "split",
                "strategy.name": strategy,
                "strategy.params": params,
            },
        )
        fed = build_experiment(cfg).federation
        start = {k: v.clone() for k, v in fed.global_state.items()}
        assert fed.run()
        return sum(float((fed.global_state[k] - start[k]).norm()) for k in start)

    # Execute
    plain = run("fedavg", "{min_clients: 2}")
    zero = run("fedprox", "{min_clients: 2, mu: 0.0}")
    strong = run("fedprox", "{min_clients: 2, mu: 100.0}")
    # Assert
    assert zero == plain
    assert strong < 0.9 * plain
