"""Oracle: the functional Adam and SGD take torch.optim's steps, also under vmap."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from fedgen.tasks.functional_optim import (
    adam_init,
    adam_step,
    counted_adam_init,
    counted_adam_step,
    sgd_init,
    sgd_step,
)

STEPS = 4


def grads_for(step: int, shape: tuple[int, ...], client: int = 0) -> torch.Tensor:
    """A fixed gradient sequence (any values do: the optimizers only read them)."""
    gen = torch.Generator().manual_seed(1000 * client + step)
    return torch.randn(shape, generator=gen)


def torch_reference(make_opt, client: int = 0) -> torch.Tensor:
    param = torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4))
    opt = make_opt([param])
    for s in range(1, STEPS + 1):
        param.grad = grads_for(s, (3, 4), client)
        opt.step()
    return param.detach()


def test_adam_matches_torch():
    # Prepare
    expected = torch_reference(lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.5, 0.999)))
    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4)}
    state = adam_init(params)
    # Execute
    for s in range(1, STEPS + 1):
        params, state = adam_step(params, {"w": grads_for(s, (3, 4))}, state, s, 1e-2, (0.5, 0.999))
    # Assert: the same operations in the same order
    torch.testing.assert_close(params["w"], expected, atol=1e-7, rtol=0)


def test_adam_with_weight_decay_matches_torch():
    # torch's coupled L2 decay (TVAE's 1e-5; a large one here, so a slip would show).
    expected = torch_reference(lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.3))
    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4)}
    state = adam_init(params)
    for s in range(1, STEPS + 1):
        grads = {"w": grads_for(s, (3, 4))}
        params, state = adam_step(params, grads, state, s, 1e-2, (0.9, 0.999), weight_decay=0.3)
    torch.testing.assert_close(params["w"], expected, atol=1e-7, rtol=0)
    undecayed = torch_reference(lambda p: torch.optim.Adam(p, lr=1e-2))
    assert (params["w"] - undecayed).abs().max() > 1e-3


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_torch(momentum, nesterov):
    expected = torch_reference(
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=momentum, nesterov=nesterov)
    )
    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4)}
    state = sgd_init(params)
    for s in range(1, STEPS + 1):
        params, state = sgd_step(
            params, {"w": grads_for(s, (3, 4))}, state, s, 0.1, momentum, nesterov=nesterov
        )
    torch.testing.assert_close(params["w"], expected, atol=1e-7, rtol=0)


def test_stacked_clients_under_vmap_each_match_torch():
    # Three clients with their own gradients, one vmap-ed Adam over the stacked state.
    clients = 3
    expected = [
        torch_reference(lambda p: torch.optim.Adam(p, lr=1e-2), client=c) for c in range(clients)
    ]
    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4).expand(clients, 3, 4).clone()}
    state = vmap(adam_init)(params)
    for s in range(1, STEPS + 1):
        grads = {"w": torch.stack([grads_for(s, (3, 4), c) for c in range(clients)])}
        params, state = vmap(lambda p, g, st, s=s: adam_step(p, g, st, s, 1e-2, (0.9, 0.999)))(
            params, grads, state
        )
    for c in range(clients):
        torch.testing.assert_close(params["w"][c], expected[c], atol=1e-6, rtol=0)


@pytest.mark.parametrize("batched", [False, True])
def test_counted_adam_resumes_clients_at_their_own_step_counts(batched):
    # Three clients whose torch Adams took 0, 2 and 7 steps (kept state) before this
    # round: the counted Adam continues each at its own bias correction, under vmap
    # (a scalar count per client) and as a batched step (a (clients,) count).
    lr, betas, decay, before = 1e-2, (0.5, 0.9), 1e-3, [0, 2, 7]
    start = torch.linspace(-1, 1, 12).reshape(3, 4)
    params_in, states, expected = [], [], []
    for c, k in enumerate(before):
        param = torch.nn.Parameter(start.clone())
        opt = torch.optim.Adam([param], lr=lr, betas=betas, weight_decay=decay)
        for s in range(k):
            param.grad = grads_for(100 + s, (3, 4), c)
            opt.step()
        kept = opt.state.get(param, {})
        states.append(
            {
                "step": kept.get("step", torch.zeros(())).clone(),
                "exp_avg": {"w": kept.get("exp_avg", torch.zeros(3, 4)).clone()},
                "exp_avg_sq": {"w": kept.get("exp_avg_sq", torch.zeros(3, 4)).clone()},
            }
        )
        params_in.append(param.detach().clone())
        for s in range(1, STEPS + 1):
            param.grad = grads_for(s, (3, 4), c)
            opt.step()
        expected.append(param.detach())
    params = {"w": torch.stack(params_in)}
    state = {
        "step": torch.stack([st["step"] for st in states]),
        "exp_avg": {"w": torch.stack([st["exp_avg"]["w"] for st in states])},
        "exp_avg_sq": {"w": torch.stack([st["exp_avg_sq"]["w"] for st in states])},
    }

    def one(p, g, st):
        return counted_adam_step(p, g, st, lr, betas, weight_decay=decay)

    for s in range(1, STEPS + 1):
        grads = {"w": torch.stack([grads_for(s, (3, 4), c) for c in range(3)])}
        params, state = (one if batched else vmap(one))(params, grads, state)
    assert state["step"].tolist() == [k + STEPS for k in before]
    for c in range(3):
        torch.testing.assert_close(params["w"][c], expected[c], atol=1e-7, rtol=0)
    # A fresh counted state is a fresh torch Adam's (step 0, zero moments).
    fresh = counted_adam_init({"w": start})
    assert float(fresh["step"]) == 0 and not fresh["exp_avg"]["w"].any()
