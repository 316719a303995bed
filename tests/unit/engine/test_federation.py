"""The round loop on real MNIST digits: failures as values, resume bit-identity."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.callbacks import CheckpointCallback
from fedgen.engine.schedule import cohort_rng
from fedgen.experiment import build_experiment, restore_latest
from fedgen.seeding import numpy_rng
from fedgen.transforms.base import TransformContext, UpdateTransform

#: Poisson sampling at q = 0.5, unweighted over the expected cohort: what client DP needs.
DP_SAMPLING = (
    "{fraction: 0.5, min_clients: 1, weighted: false, sampling: poisson, fixed_denominator: true}"
)
CLIENT_DP = (
    "[{name: clip, params: {max_norm: 1.0}}, "
    "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-3}}]"
)


class Sabotage(UpdateTransform):
    """Client-side corruption of chosen clients' updates, as a poisoned client would send."""

    def __init__(self, kind: dict[int, str]) -> None:
        self.kind = kind

    def on_client(self, update, ctx: TransformContext):
        kind = self.kind.get(ctx.client_id)
        if kind == "nan":
            update = {k: torch.full_like(v, float("nan")) for k, v in update.items()}
        elif kind == "shape":
            update = {k: v.flatten() for k, v in update.items()}
        elif kind == "huge":
            update = {k: v + 1e9 for k, v in update.items()}
        elif kind == "crash":
            raise RuntimeError("device ran out of battery")
        return update, {}


def test_malformed_and_crashing_clients_are_failures_and_the_round_goes_on(mnist_dir):
    # Prepare
    exp = build_experiment(tiny_config(mnist_dir))
    fed = exp.federation
    fed.transforms.append(Sabotage({0: "nan", 1: "crash", 2: "huge"}))
    before = {k: v.clone() for k, v in fed.global_state.items()}
    # Execute: clients 0-2 fail, client 3 alone is below min_clients=2.
    record = fed.run_round(0)
    # Assert
    assert record.metrics["failures"] == 3
    assert set(record.metrics["failed_clients"]) == {"0", "1", "2"}
    assert "NaN" in record.metrics["failed_clients"]["0"]
    assert "battery" in record.metrics["failed_clients"]["1"]
    assert "exceeds" in record.metrics["failed_clients"]["2"]
    assert "round_failed" in record.metrics
    assert all(torch.equal(before[k], fed.global_state[k]) for k in before)


def test_one_bad_client_is_left_out_and_the_rest_aggregate(mnist_dir):
    exp = build_experiment(tiny_config(mnist_dir))
    fed = exp.federation
    fed.transforms.append(Sabotage({2: "shape"}))
    before = {k: v.clone() for k, v in fed.global_state.items()}
    record = fed.run_round(0)
    assert record.metrics["failures"] == 1 and record.metrics["clients"] == 3
    assert "round_failed" not in record.metrics
    assert any(not torch.equal(before[k], fed.global_state[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in fed.global_state.values())


def test_same_seed_same_weights_other_seed_other_weights(mnist_dir):
    a = build_experiment(tiny_config(mnist_dir)).federation
    b = build_experiment(tiny_config(mnist_dir)).federation
    c = build_experiment(tiny_config(mnist_dir, seed=1)).federation
    for fed in (a, b, c):
        fed.rounds = 2
        fed.run()
    assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    assert any(not torch.equal(a.global_state[k], c.global_state[k]) for k in a.global_state)


def interrupt_at(task, call: int) -> None:
    """Make the task raise KeyboardInterrupt (as Ctrl-C would) on its ``call``-th local training."""
    original = task.train_local
    calls = {"n": 0}

    def train_local(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    task.train_local = train_local


@pytest.mark.parametrize("every", [1, 2])
def test_resume_after_interrupt_is_bit_identical(mnist_dir, tmp_path, every):
    cfg = tiny_config(mnist_dir, **{"federation.rounds": 4})
    # Uninterrupted reference.
    ref = build_experiment(cfg).federation
    assert ref.run()
    # Interrupted in round 2, checkpoints every `every` rounds.
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    ckpt = CheckpointCallback(tmp_path, every=every, keep=2, meta=meta)
    first = build_experiment(cfg, [ckpt]).federation
    interrupt_at(first.task, 4 * 2 + 2)  # round 2, second of 4 clients
    assert first.run() is False
    # Resume in a fresh process-like object from the newest checkpoint.
    second = build_experiment(cfg, [CheckpointCallback(tmp_path, every, 2, meta)]).federation
    restored = restore_latest(second, tmp_path, cfg)
    assert restored == 1  # rounds 0-1 complete, round 2 dropped
    assert second.next_round == 2
    assert second.run()
    for k in ref.global_state:
        assert torch.equal(ref.global_state[k], second.global_state[k]), k
    assert [m["round"] for m in second.history] == [0, 1, 2, 3]


def test_resume_refuses_another_experiment(mnist_dir, tmp_path):
    from fedgen.errors import CheckpointError

    cfg = tiny_config(mnist_dir, **{"federation.rounds": 1})
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation.run()
    other = tiny_config(mnist_dir, **{"task.params.lr": 1e-3})
    with pytest.raises(CheckpointError, match="different experiment"):
        restore_latest(build_experiment(other).federation, tmp_path, other)


def test_resuming_a_dp_run_saved_without_a_noise_key_says_its_noise_is_public(
    mnist_dir, tmp_path, caplog
):
    # Prepare: a client-level DP run whose checkpoint holds no key, as one written before
    # noise keys were kept (its noise came from the root seed).
    cfg = tiny_config(
        mnist_dir,
        **{"strategy.params": DP_SAMPLING, "transforms": CLIENT_DP, "federation.rounds": 2},
    )
    meta = {"format": 1, "fingerprint": cfg.fingerprint()}
    first = build_experiment(cfg, [CheckpointCallback(tmp_path, 1, 2, meta)]).federation
    first.noise_key = None
    first.rounds = 1
    first.run()
    # Execute
    second = build_experiment(cfg).federation
    restore_latest(second, tmp_path, cfg)
    # Assert: it goes on as it ran (no key), and says so, since the config asks for secret noise.
    assert second.noise_key is None
    assert "protects nobody who holds its config" in caplog.text


def test_process_pool_matches_in_process_bit_for_bit(mnist_dir):
    """Oracle: parallel workers give the same weights as the sequential loop.

    Enough local steps that both workers train at the same time: workers that
    shared parameter storage (torch pickles tensors through shared memory)
    once made this differ.
    """
    longer = {"federation.local_steps": 25}
    seq = build_experiment(tiny_config(mnist_dir, threads=1, **longer)).federation
    pool_cfg = tiny_config(
        mnist_dir,
        threads=1,
        **longer,
        **{"backend.name": "process_pool", "backend.params": "{workers: 2}"},
    )
    pool = build_experiment(pool_cfg).federation
    for fed in (seq, pool):
        fed.rounds = 2
        assert fed.run()
    assert all(torch.equal(seq.global_state[k], pool.global_state[k]) for k in seq.global_state)


def test_process_pool_turns_a_crash_into_a_failure(mnist_dir):
    exp = build_experiment(
        tiny_config(mnist_dir, **{"backend.name": "process_pool", "backend.params": "{workers: 2}"})
    )
    fed = exp.federation
    fed.transforms.append(Sabotage({1: "crash"}))
    fed.client_side = None  # workers get the harness's objects, Sabotage included
    record = fed.run_round(0)
    fed.backend.close()
    assert record.metrics["failures"] == 1
    assert "battery" in record.metrics["failed_clients"]["1"]


def test_dp_round_with_an_empty_poisson_cohort_still_releases_noise(mnist_dir):
    # Prepare: fraction 0.05 of 4 clients with this seed samples nobody in round 0.
    cfg = tiny_config(
        mnist_dir,
        **{
            "strategy.params": "{fraction: 0.05, min_clients: 1, weighted: false, "
            "sampling: poisson, fixed_denominator: true}",
            "transforms": CLIENT_DP,
        },
    )
    fed = build_experiment(cfg).federation
    fed.noise_key = bytes(32)  # a fixed key whose round-0 cohort is empty
    plan = fed.strategy.configure(0, sorted(fed.clients), cohort_rng(fed, 0))
    assert plan.client_ids == []
    before = {k: v.clone() for k, v in fed.global_state.items()}
    # Execute
    record = fed.run_round(0)
    # Assert: no client, yet the noised zero mean was applied and accounted.
    assert "round_failed" not in record.metrics
    # ... and the metrics do not reveal that the cohort was empty.
    assert not set(record.metrics) & {"clients", "failures", "examples", "bytes_up", "seconds"}
    assert all(not torch.equal(before[k], fed.global_state[k]) for k in before)
    assert record.metrics["epsilon"] > 0


def test_client_level_dp_cohorts_cannot_be_recomputed_from_the_config(mnist_dir):
    # Prepare: Poisson sampling at q = 0.5 over 4 clients, with and without client DP.
    private = build_experiment(
        tiny_config(mnist_dir, **{"strategy.params": DP_SAMPLING, "transforms": CLIENT_DP})
    ).federation
    plain = build_experiment(tiny_config(mnist_dir, **{"strategy.params": DP_SAMPLING})).federation
    pool = sorted(private.clients)

    def cohorts(fed) -> list[list[int]]:
        return [fed.schedule.begin(r, fed).plan.client_ids for r in range(24)]

    public = [
        private.strategy.configure(r, pool, numpy_rng(private.seed, "sample", r)).client_ids
        for r in range(24)
    ]
    # Execute
    drawn = cohorts(private)
    # Assert: under client DP the cohorts are not the root seed's (amplification by
    # sampling needs them secret; 24 rounds all agreeing by chance: 2^-96), the same key
    # draws the same ones (resume), and without DP they are the root seed's (reruns).
    assert private.noise_key is not None and drawn != public
    assert drawn == cohorts(private)
    assert cohorts(plain) == public


def test_a_client_without_private_state_starts_from_the_initial_one(mnist_dir):
    # Prepare: a private discriminator; client 3 trained after three others, and alone.
    from fedgen.engine.backends.base import LocalWork
    from fedgen.types import ClientInstruction, RoundPlan

    task_params = (
        "{batch_size: 16, generator_width: 8, discriminator_width: 8, federate: [generator]}"
    )
    fed = build_experiment(tiny_config(mnist_dir, **{"task.params": task_params})).federation

    def client_3_update(order: list[int]) -> dict[str, torch.Tensor]:
        plan = RoundPlan(0, [ClientInstruction(c, 100 + c, {}) for c in order])
        work = LocalWork(fed.task, fed.global_state, [], 2, None, 0)
        results = list(fed.backend.run(plan, work, fed.clients, {}))
        return next(r for r in results if r.client_id == 3).update

    # Execute
    after_others, alone = client_3_update([0, 1, 2, 3]), client_3_update([3])
    # Assert: the same update, whoever trained on the task instance before it.
    assert all(torch.equal(after_others[k], alone[k]) for k in alone)


def test_a_clients_figure_cannot_write_one_the_loop_or_the_evaluator_owns(mnist_dir):
    # Prepare: clients report, beside their losses, figures named as the loop's and the
    # evaluator's own (a failed round, an evaluation and its TSTR accuracy).
    exp = build_experiment(tiny_config(mnist_dir))
    fed = exp.federation
    original = fed.task.train_local

    def train_local(*args, **kwargs):
        forged = {"round_failed": 1.0, "eval_seconds": 1.0, "tstr_accuracy": 1.0}
        return {**original(*args, **kwargs), **forged}

    fed.task.train_local = train_local  # type: ignore[method-assign]
    # Execute
    record = fed.run_round(0)
    # Assert: the round stands, the clients' losses keep their names, and what they
    # named otherwise is recorded as theirs.
    assert "round_failed" not in record.metrics and "eval_seconds" not in record.metrics
    assert "tstr_accuracy" not in record.metrics
    assert record.metrics["client/tstr_accuracy"] == 1.0
    assert any(k.startswith("loss/") for k in record.metrics) and record.metrics["steps"] > 0


def test_a_sample_grid_too_large_to_draw_is_refused_before_round_one(mnist_dir):
    # The run's grid is one picture built in memory; 20,000 images a class would not fit.
    from fedgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval.grid_per_class=20000: .*lower"):
        build_experiment(tiny_config(mnist_dir, **{"eval.grid_per_class": "20000"}))
    build_experiment(tiny_config(mnist_dir, **{"eval.grid_per_class": "10"}))
