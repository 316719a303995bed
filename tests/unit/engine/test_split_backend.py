"""The split backend on real MNIST: views, private heads, failures, determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgen.data.class_drop import ClassDropPartitioner
from fedgen.data.federated import make_federated_data
from fedgen.engine.backends.base import LocalWork
from fedgen.engine.backends.split import SplitBackend
from fedgen.engine.federation import Federation
from fedgen.errors import ConfigError
from fedgen.strategies.fedavg import FedAvg
from fedgen.tasks.split_gan import HuscfGan, HuscfGanParams
from fedgen.types import ClientInstruction, RoundPlan

# G head, G tail, D head, D tail: 1 = the optional block (2nd / 2nd-to-last) on the client.
CUTS = [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]]


@pytest.fixture(scope="module")
def clients(mnist_dir):
    torch.set_num_threads(1)
    data = make_federated_data(
        ["mnist"], 3, ClassDropPartitioner("iid", 48), seed=0, data_dir=mnist_dir
    )
    return {c.client_id: c for c in data.clients}


def make_task() -> HuscfGan:
    return HuscfGan(HuscfGanParams(architecture="light", batch_size=16), 10, (1, 28, 28), seed=1)


def run_round(task, clients, private=None, lr=None, backend=None, steps=2):
    backend = backend or SplitBackend(cuts=CUTS)
    config = {} if lr is None else {"lr": lr}
    plan = RoundPlan(0, [ClientInstruction(c, 100 + c, config) for c in sorted(clients)])
    work = LocalWork(task, task.federated_state(), [], steps, None, 0)
    return list(backend.run(plan, work, clients, private or {})), work.global_state


def test_results_carry_views_own_blocks_and_server_activations(clients):
    # Prepare
    task = make_task()
    # Execute
    results, global_state = run_round(task, clients)
    # Assert
    assert [r.client_id for r in results] == [0, 1, 2] and all(r.ok for r in results)
    views = {r.client_id: {k: global_state[k] + r.update[k] for k in global_state} for r in results}
    for r in results:
        assert r.update.keys() == global_state.keys()
        assert r.extras["d3"].shape == (1, 32, 7, 7)  # batch mean of D3's (B, 32, 7, 7)
        assert r.bytes_up > 0 and r.metrics["steps"] == 2.0
        for key in ("seconds_per_iteration", "bytes_per_iteration", "latency_analytic"):
            assert r.metrics[f"split/{key}"] > 0
    blocks = {
        c: sorted({".".join(k.split(".")[:2]) for k in r.private_keys})
        for c, r in ((r.client_id, r) for r in results)
    }
    assert blocks[0] == [
        "discriminator.0",
        "discriminator.3",
        "discriminator.4",
        "generator.0",
        "generator.1",
        "generator.4",
    ]
    assert blocks[1] == ["discriminator.0", "discriminator.4", "generator.0", "generator.4"]
    # G3 and D3 always run on the server: one shared copy in every client's view.
    for key in (k for k in global_state if k.startswith(("generator.2.", "discriminator.2."))):
        assert torch.equal(views[0][key], views[1][key]) and torch.equal(
            views[1][key], views[2][key]
        )
        assert not torch.equal(views[0][key], global_state[key])  # and it trained
    # Heads are per client.
    key = "generator.0.fc.weight"
    assert not torch.equal(views[0][key], views[1][key])


def test_private_head_and_tail_are_loaded_over_the_global_state(clients):
    # Prepare: client 1 holds its own G1 and D5; with lr 0 nothing trains (no BatchNorm
    # in the light network), so each view is exactly what was loaded.
    task = make_task()
    g = task.federated_state()
    own = {k: torch.full_like(v, 0.5) for k, v in g.items() if k.startswith("generator.0.")}
    own.update({k: -v for k, v in g.items() if k.startswith("discriminator.4.")})
    # Execute
    results, global_state = run_round(task, clients, private={1: own}, lr=0.0)
    # Assert
    by_id = {r.client_id: r for r in results}
    for key, value in global_state.items():
        expected = own[key] - value if key in own else torch.zeros_like(value)
        assert torch.equal(by_id[1].update[key], expected), key
        assert torch.equal(by_id[0].update[key], torch.zeros_like(value)), key


def test_same_round_twice_is_bit_identical(clients):
    # Prepare
    task = make_task()
    backend = SplitBackend(cuts=CUTS)
    # Execute: the second run reuses the trainer, its optimizers start fresh.
    first, _ = run_round(task, clients, backend=backend)
    second, _ = run_round(task, clients, backend=backend)
    # Assert
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(a.update[k], b.update[k]) for k in a.update)
        assert torch.equal(a.extras["d3"], b.extras["d3"])


def test_a_trainer_built_after_sampling_trains_as_one_built_before(clients):
    # Prepare: the faithful network (BatchNorm); one task samples first, as every
    # evaluation does, before its backend builds a trainer.
    def faithful() -> HuscfGan:
        return HuscfGan(
            HuscfGanParams(architecture="faithful", batch_size=16), 10, (1, 28, 28), seed=1
        )

    sampled = faithful()
    sampled.sample(torch.arange(10), torch.Generator().manual_seed(0))
    # Execute
    reference, _ = run_round(faithful(), clients)
    after, _ = run_round(sampled, clients)
    # Assert: the same updates (BatchNorm in training mode in both).
    for a, b in zip(reference, after, strict=True):
        assert all(torch.equal(a.update[k], b.update[k]) for k in a.update), a.client_id


def test_a_clip_acts_on_what_the_round_trained_not_on_the_clusters_head(clients):
    # Prepare: client 1's head starts from its cluster's (global + 1); at lr 0 the round
    # trains nothing (the light network has no BatchNorm statistics), under a clip of 1.
    from fedgen.transforms.clip import NormClip

    task = make_task()
    g = task.federated_state()
    own = {k: v + 1.0 for k, v in g.items() if k.startswith("generator.0.")}
    plan = RoundPlan(2, [ClientInstruction(c, 100 + c, {"lr": 0.0}) for c in sorted(clients)])
    work = LocalWork(task, g, [NormClip(max_norm=1.0)], 2, None, 2)
    # Execute
    results = {r.client_id: r for r in SplitBackend(cuts=CUTS).run(plan, work, clients, {1: own})}
    # Assert: the strategy's global + update rebuilds the head it started from, unclipped.
    assert all(torch.equal(g[k] + results[1].update[k], own[k]) for k in own)


def test_channels_last_trains_the_same_round_up_to_rounding(clients):
    # Prepare: the published network (BatchNorm, full width) in both layouts, same seed.
    def task(channels_last: bool) -> HuscfGan:
        params = HuscfGanParams(architecture="faithful", batch_size=16, channels_last=channels_last)
        return HuscfGan(params, 10, (1, 28, 28), seed=1)

    # Execute: one split round of two iterations each.
    plain, _ = run_round(task(False), clients)
    backend = SplitBackend(cuts=CUTS)
    nhwc, _ = run_round(task(True), clients, backend=backend)
    # Assert: every client's and the server's copy of a block computes channels-last.
    trainer = backend._trainer
    assert trainer is not None
    segments = [trainer.gen_server, trainer.disc_server]
    segments += [*trainer.gen_clients.values(), *trainer.disc_clients.values()]
    weights = [p for s in segments for p in s.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    # Assert: every client's update and D3 activations agree but for rounding (Adam's
    # first steps divide by tiny second moments, so a few coordinates differ more).
    for a, b in zip(plain, nhwc, strict=True):
        assert a.update.keys() == b.update.keys()
        diff = torch.cat([(a.update[k] - b.update[k]).double().reshape(-1) for k in a.update])
        size = torch.cat([a.update[k].double().reshape(-1) for k in a.update])
        assert float(diff.norm() / size.norm()) < 1e-2
        d3 = b.extras["d3"] - a.extras["d3"]
        assert float(d3.norm() / a.extras["d3"].norm()) < 1e-2


def test_client_dropping_mid_iteration_is_a_failure_and_the_round_goes_on(clients):
    # Prepare: client 1 disconnects after its 5th message of the round (mid-iteration 0:
    # the generator pass takes 4 messages, the discriminator's fake pass 4 more).
    task = make_task()
    before = task.federated_state()
    fed = Federation(
        task=task,
        clients=list(clients.values()),
        strategy=FedAvg(min_clients=2),
        backend=SplitBackend(cuts=CUTS, drop_after={1: 5}),
        rounds=1,
        seed=0,
        local_steps=2,
    )
    # Execute
    record = fed.run_round(0)
    # Assert
    assert record.metrics["failures"] == 1 and record.metrics["clients"] == 2
    assert "dropped out in iteration 0" in record.metrics["failed_clients"]["1"]
    assert any(not torch.equal(before[k], fed.global_state[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in fed.global_state.values())


def test_bad_cuts_and_task_are_clear_errors(clients):
    with pytest.raises(ConfigError, match="4 bits"):
        run_round(make_task(), clients, backend=SplitBackend(cuts=[[1, 0, 2, 0]]))
    with pytest.raises(ConfigError, match="'exact', 'genetic'"):
        SplitBackend(cuts="fastest")
    with pytest.raises(ConfigError, match="does not exist"):
        SplitBackend(devices="/no/such/devices.yaml")


def test_exact_cuts_follow_the_device_profiles(clients):
    # Prepare
    task = make_task()
    backend = SplitBackend(cuts="exact", profile_seed=3)
    # Execute
    plan = backend.cut_plan(task, sorted(clients))
    # Assert: bits per client, consistent with the per-profile search (same profile, same cut).
    assert plan.bits.shape == (3, 4) and np.isin(plan.bits, (0, 1)).all()
    names = [d.name for d in plan.devices]
    for i in range(3):
        for j in range(3):
            if names[i] == names[j]:
                assert (plan.bits[i] == plan.bits[j]).all()
    assert plan.latency([0, 1, 2]) > 0


def test_differential_privacy_with_the_split_backend_is_rejected(mnist_dir):
    # The split server sees raw activations and gradients, which no update-level DP
    # guarantee covers: the experiment must not start and say why.
    from pathlib import Path

    from fedgen.config import load_config
    from fedgen.errors import ConfigError
    from fedgen.experiment import build_experiment

    recipe = Path(__file__).resolve().parents[3] / "configs" / "huscf" / "s1.yaml"
    cfg = load_config(
        recipe,
        [
            f"data.data_dir={mnist_dir}",
            "strategy.name=fedavg",
            "strategy.params={sampling: poisson, weighted: false, fixed_denominator: true,"
            " fraction: 0.5, min_clients: 1}",
            "transforms=[{name: clip, params: {max_norm: 1.0}},"
            " {name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-5}}]",
        ],
    )
    with pytest.raises(ConfigError, match="backend split"):
        build_experiment(cfg)


@pytest.mark.parametrize(
    ("kind", "failed"),
    [("crash_before", "before training"), ("crash_after", "after training"), ("nan", None)],
)
def test_injected_faults_reach_the_split_clients(clients, kind, failed):
    # Prepare: every client meets the fault.
    from fedgen.config import FaultsConfig
    from fedgen.engine.faults import FaultPlan

    task = make_task()
    plan = RoundPlan(0, [ClientInstruction(c, 100 + c, {}) for c in sorted(clients)])
    faults = FaultPlan.from_config(FaultsConfig(**{kind: 1.0}))
    work = LocalWork(task, task.federated_state(), [], 2, None, 0, faults=faults)
    # Execute
    results = list(SplitBackend(cuts=CUTS).run(plan, work, clients, {}))
    # Assert: one result per client in plan order; crashes are failures, a NaN update is
    # sent as such (the round loop rejects it).
    assert [r.client_id for r in results] == [0, 1, 2]
    if failed:
        assert all(not r.ok and failed in (r.failure or "") for r in results)
    else:
        assert all(r.ok and any(v.isnan().any() for v in r.update.values()) for r in results)


def test_a_crash_before_training_leaves_the_other_clients_training(clients):
    from fedgen.config import FaultsConfig
    from fedgen.engine.faults import FaultPlan

    task = make_task()
    faults = FaultPlan.from_config(FaultsConfig(crash_before=0.5))
    assert faults is not None
    seeds = {c: 100 + c for c in sorted(clients)}
    crashed = {c for c, s in seeds.items() if faults.draw(s) == "crash_before"}
    assert 0 < len(crashed) < len(seeds), "choose seeds so that some but not all crash"
    plan = RoundPlan(0, [ClientInstruction(c, s, {}) for c, s in seeds.items()])
    work = LocalWork(task, task.federated_state(), [], 2, None, 0, faults=faults)
    results = list(SplitBackend(cuts=CUTS).run(plan, work, clients, {}))
    assert [r.client_id for r in results] == sorted(clients)
    assert {r.client_id for r in results if not r.ok} == crashed


def adam_steps(backend: SplitBackend) -> set[int]:
    """The step counts of every Adam of the backend's trainer."""
    assert backend._trainer is not None
    opts = backend._trainer._optimizers()
    return {int(s["step"]) for o in opts for s in o.state.values()}


def test_kept_optimizers_carry_adam_moments_across_rounds(clients):
    # Prepare: two rounds of 2 iterations on one backend, with and without the option.
    kept, fresh = SplitBackend(cuts=CUTS, keep_optimizers=True), SplitBackend(cuts=CUTS)
    for backend in (kept, fresh):
        task = make_task()
        # Execute
        for _ in range(2):
            results, _ = run_round(task, clients, backend=backend)
            assert all(r.ok for r in results)
    # Assert: the published code's optimizers step on (4); FedAvg's start again (2).
    assert adam_steps(kept) == {4} and adam_steps(fresh) == {2}
    assert "optimizers" in kept.state_dict() and fresh.state_dict() == {}


def test_kept_optimizers_refuse_a_partial_cohort(clients):
    backend = SplitBackend(cuts=CUTS, keep_optimizers=True)
    task = make_task()
    plan = RoundPlan(3, [ClientInstruction(c, 100 + c, {}) for c in (0, 2)])
    work = LocalWork(task, task.federated_state(), [], 2, None, 0)
    with pytest.raises(ConfigError, match=r"every client in every round.*plans 2 of 3"):
        list(backend.run(plan, work, clients, {}))
    # A client dropped by the backend's own fault injection changes the cohort too.
    with pytest.raises(ConfigError, match="keep_optimizers with drop_after"):
        SplitBackend(cuts=CUTS, keep_optimizers=True, drop_after={1: 3})


def test_a_resumed_run_with_kept_optimizers_ends_bit_identical(mnist_dir, tmp_path):
    # Prepare: S1's recipe, tiny; stopped in round 2 and resumed from round 1's
    # checkpoint, whose Adam moments the resumed run must continue from.
    from resume_support import uninterrupted_and_resumed

    from fedgen.config import load_config

    sets = {
        "data.num_clients": 3,
        "data.partition.params.samples_per_client": 48,
        "task.params.architecture": "light",
        "task.params.batch_size": 16,
        "federation.local_steps": 2,
        "federation.local_epochs": "null",
        "federation.rounds": 3,
        "backend.params.keep_optimizers": "true",
        "eval.every": 0,
        "eval.final": "false",
        "ledger": "false",
        "threads": 1,
    }
    cfg = load_config("configs/huscf/s1.yaml", [f"{k}={v}" for k, v in sets.items()])
    # Execute
    ref, resumed = uninterrupted_and_resumed(cfg, tmp_path)
    # Assert
    assert ref.global_state.keys() == resumed.global_state.keys()
    assert all(torch.equal(v, resumed.global_state[k]) for k, v in ref.global_state.items())
    for cid, state in ref.private_states.items():
        assert all(torch.equal(v, resumed.private_states[cid][k]) for k, v in state.items())
