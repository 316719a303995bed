"""Table tasks keep each client's Adam moments between rounds as private state: a zero
state is a fresh Adam, the moments carry over through the private state, and a run
resumes bit-identically."""

from __future__ import annotations

import pytest
import torch

from fedgen.config import load_config
from fedgen.data.table_data import SiloPartition
from fedgen.engine.callbacks import CheckpointCallback
from fedgen.experiment import build_experiment, restore_latest
from fedgen.tasks.tabular import CtganTask, TvaeTask


@pytest.fixture(scope="module")
def fair():
    return SiloPartition(max_modes=3).federate("fair", 2, seed=0)


def _task(cls, fair, keep: bool):
    params = cls.Params(batch_size=100, hidden=32, keep_optimizer=keep)
    return cls.from_spec(params, fair.spec(), 0)


def _train(task, fair, seed: int) -> None:
    task.train_local(fair.clients[0], 3, torch.Generator().manual_seed(seed), {})


def _same(a, b) -> bool:
    sa, sb = a.federated_state(), b.federated_state()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cls", [TvaeTask, CtganTask])
def test_a_zero_state_is_a_fresh_adam(cls, fair):
    fresh, kept = _task(cls, fair, False), _task(cls, fair, True)
    kept.load_state(kept.initial_private_state())  # zeros, step 0
    _train(fresh, fair, 1)
    _train(kept, fair, 1)
    assert _same(fresh, kept)
    steps = [v for k, v in kept.private_state().items() if k.endswith("/step")]
    assert steps and all(float(s) == 3 for s in steps)
    assert not any(k.startswith("optimizer/") for k in fresh.private_state())


@pytest.mark.parametrize("cls", [TvaeTask, CtganTask])
def test_the_moments_carry_over_through_the_private_state(cls, fair):
    # Prepare: one task trains twice; another stops after the first, its state moved to
    # a third task (as a client keeps it between rounds).
    whole, first = _task(cls, fair, True), _task(cls, fair, True)
    _train(whole, fair, 1)
    _train(first, fair, 1)
    second = _task(cls, fair, True)
    second.load_state({**first.federated_state(), **first.private_state()})
    # Execute
    _train(whole, fair, 2)
    _train(second, fair, 2)
    # Assert: bit for bit one optimizer's run; without the moments it differs.
    assert _same(whole, second)
    restarted = _task(cls, fair, True)
    restarted.load_state(first.federated_state())
    _train(restarted, fair, 2)
    assert not _same(whole, restarted)


def test_a_table_run_keeping_moments_resumes_bit_identically(tmp_path):
    sets = [
        "data.num_clients=2",
        "data.partition.params={max_modes: 2}",
        "task.params={batch_size: 100, pac: 10, hidden: 32, noise_dim: 16}",
        "federation.rounds=3",
        "federation.local_steps=2",
        "eval.every=0",
        "eval.final=false",
        "threads=1",
    ]
    cfg = load_config("configs/tabular_fair_ctgan.yaml", sets)
    ref = build_experiment(cfg).federation
    assert ref.run()
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    original, calls = first.task.train_local, {"n": 0}

    def train_local(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the second round (round 1), its second client
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    first.task.train_local = train_local  # type: ignore[method-assign]
    assert first.run() is False
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    assert restore_latest(second, tmp_path, cfg) == 0
    assert any(k.startswith("optimizer/") for k in second.private_states[0])
    assert second.run()
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    for cid, private in ref.private_states.items():
        assert all(torch.equal(v, second.private_states[cid][k]) for k, v in private.items())


@pytest.mark.parametrize("cls", [TvaeTask, CtganTask])
def test_local_sgd_keeps_no_moments_and_does_not_vectorize(cls, fair):
    # local_optimizer sgd (the client half of FedOpt): plain SGD steps, nothing private.
    params = cls.Params(batch_size=100, hidden=32, local_optimizer="sgd", lr=0.05)
    sgd, adam = cls.from_spec(params, fair.spec(), 0), _task(cls, fair, True)
    before = {k: v.clone() for k, v in sgd.federated_state().items()}
    _train(sgd, fair, 1)
    _train(adam, fair, 1)
    assert not any(k.startswith("optimizer/") for k in sgd.private_state())
    moved = sgd.federated_state()
    assert any(not torch.equal(moved[k], before[k]) for k in before)
    assert not _same(sgd, adam)
    assert sgd.functional_training() is None
    assert "local_optimizer is sgd" in sgd.why_no_functional_training()


def test_one_local_sgd_step_is_minus_lr_times_the_gradient(fair):
    # Prepare: the same task twice; one computes the loss's gradient by hand.
    params = TvaeTask.Params(
        batch_size=100, hidden=32, local_optimizer="sgd", lr=0.05, weight_decay=0.0
    )
    stepped, probe = (TvaeTask.from_spec(params, fair.spec(), 0) for _ in range(2))
    probe.load_state(stepped.federated_state())
    g = torch.Generator().manual_seed(3)
    x, _ = next(fair.clients[0].batches(100, g))
    eps = torch.randn((x.shape[0], params.latent_dim), generator=g)
    recon, kl = probe.loss(x, eps)
    (params.loss_factor * recon + kl).backward()
    # Execute: one step from the same generator state (batch, then noise).
    stepped.train_local(fair.clients[0], 1, torch.Generator().manual_seed(3), {})
    # Assert: every network tensor moved by exactly -lr * grad (sigma is clamped after).
    for name, module in probe.modules.items():
        after = dict(stepped.modules[name].named_parameters())
        for key, q in module.named_parameters():
            if key == "sigma" or q.grad is None:
                continue
            assert torch.allclose(after[key], q.detach() - 0.05 * q.grad, atol=1e-7), key


def test_tvae_trains_with_the_betas_it_is_given_and_torchs_by_default(fair):
    # Prepare: the default (torch's Adam betas, as the ctgan library's TVAE), the same
    # betas given explicitly, and other betas.
    def trained(**betas):
        params = TvaeTask.Params(batch_size=100, hidden=32, **betas)
        task = TvaeTask.from_spec(params, fair.spec(), 0)
        _train(task, fair, 1)
        return task

    default = trained()
    # Execute / Assert
    assert TvaeTask.Params(batch_size=100).betas == (0.9, 0.999)
    assert _same(default, trained(betas=(0.9, 0.999)))
    assert not _same(default, trained(betas=(0.5, 0.9)))
