"""Oracle: the vectorized backend trains the same model as the sequential one.

Tiny real federations (MNIST, ``tests/tiny_federation.py``) run from the same recipe
and root seed through ``inprocess`` (one client after another, ``train_local``) and
``vectorized`` (all clients of a round as one ``vmap``-ed functional step), for every
task that has a functional step. The global states must agree to float tolerance,
and the per-round figures the loop records (bytes, examples, losses) must agree too.

Tolerance: the two paths sum the same products in another order (batched matmuls),
so gradients differ by float32 rounding, and Adam divides each gradient by its own
running magnitude, which turns a relative rounding error into the same relative
error of a step of size ``lr``. Over a few steps that stays near 1e-5 on weights of
size 0.1-1; a wrong batch, seed or loss moves weights by ~lr = 2e-4 to 1e-3 per step.
Widths are 16, so that every GroupNorm group holds two channels: the bias in front of
a one-channel group is removed by the normalisation, so its gradient is pure rounding
noise, which Adam scales to steps of +-lr in either path (different noise, both right).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.engine.backends.vectorized import why_not_vectorized
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.registry import TASKS
from fedgen.tasks.base import Task
from fedgen.tasks.gan_functional import GanFunctionalTraining

ATOL = 1e-4
#: Adam's first steps move a coordinate by about its learning rate whatever the size of
#: its gradient, so a gradient within float32 rounding of zero can take either sign on
#: two paths whose kernels sum in different orders, and that coordinate ends up to a few
#: learning rates apart. Measured on an AMD EPYC (the cGAN cases, 4 steps at lr 2e-4):
#: under 1% of a tensor's coordinates beyond ATOL, by at most 2.4e-4; an Intel Xeon had
#: none. So a small share of coordinates may pass ATOL, by no more than MAX_DIFF; a
#: difference in what is computed (another batch, noise or state) moves most of them.
MAX_SHARE_BEYOND_ATOL = 0.02
MAX_DIFF = 1e-3

#: The table cases' federation: statsmodels' affairs survey over 6 clients, half of them
#: a round for 3 rounds of 3 steps, so that clients train again and resume their Adams.
FAIR_HALF_A_ROUND = {
    "data.sources": "[fair]",
    "data.partition.kind": "table_dirichlet",
    "data.partition.params": "{alpha: 1.0, min_size: 12, max_modes: 3}",
    "data.num_clients": 6,
    "strategy.params": "{fraction: 0.5, min_clients: 2}",
    "federation.local_steps": 3,
    "federation.rounds": 3,
}

#: Every task with a functional step, and tiny params for it (widths 16, see above).
VECTORIZING: dict[str, dict[str, str]] = {
    "cgan": {
        "task.params": "{batch_size: 16, generator_width: 16, discriminator_width: 16}",
    },
    "cgan-uniform-labels": {
        "task.params": (
            "{batch_size: 16, generator_width: 16, discriminator_width: 16, fake_labels: uniform}"
        ),
    },
    # MSGAN's paired generator batch: labels of the client's own batch (padded where a
    # shard is smaller than a batch: test_unequal_steps_and_small_shards), and uniform
    # labels of a fixed count.
    "cgan-mode-seeking": {
        "task.params": (
            "{batch_size: 16, generator_width: 16, discriminator_width: 16, mode_seeking: 0.5}"
        ),
    },
    "cgan-mode-seeking-uniform": {
        "task.params": (
            "{batch_size: 16, generator_width: 16, discriminator_width: 16, mode_seeking: 0.5, "
            "fake_labels: uniform}"
        ),
    },
    # AC-GAN's class head: its cross-entropy in both losses, on the reused fakes and on
    # a uniform paired batch with the mode-seeking term.
    "cgan-aux": {
        "task.params": (
            "{batch_size: 16, generator_width: 16, discriminator_width: 16, aux_weight: 1.0}"
        ),
    },
    "cgan-aux-mode-seeking-uniform": {
        "task.params": (
            "{batch_size: 16, generator_width: 16, discriminator_width: 16, aux_weight: 1.0, "
            "mode_seeking: 0.5, fake_labels: uniform}"
        ),
    },
    "cgan-private-discriminator": {
        "task.params": (
            "{batch_size: 16, generator_width: 16, discriminator_width: 16, federate: [generator]}"
        ),
    },
    # FedPer's personal layers: private tensors inside federated modules.
    "cgan-personal-layers": {
        "task.params": (
            "{batch_size: 16, generator_width: 16, discriminator_width: 16, "
            "personal: [generator.embed, generator.body.5, discriminator.head]}"
        ),
    },
    "cvae": {"task.name": "cvae", "task.params": "{batch_size: 16, width: 16}"},
    # The DDPM's UNet (GroupNorm, self-attention at 7x7), and FedDiffuse's USplit: the
    # latent and decoder blocks private, each client continuing from its own in round 2.
    # Width 16, not 8: at 8 every GroupNorm group is one channel, so the biases before it
    # have a gradient of exactly zero, whose float rounding Adam's first steps turn into
    # steps of about lr (2e-4) that differ between the two paths.
    "ddpm": {
        "task.name": "ddpm",
        "task.params": "{width: 16, timesteps: 20, sampling_steps: 2, batch_size: 16}",
    },
    # Min-SNR-5 weights each example's error by its timestep (Hang et al. 2023).
    "ddpm-min-snr": {
        "task.name": "ddpm",
        "task.params": (
            "{width: 16, timesteps: 20, sampling_steps: 2, batch_size: 16, snr_gamma: 5}"
        ),
    },
    "ddpm-usplit": {
        "task.name": "ddpm",
        "task.params": (
            "{width: 16, timesteps: 20, sampling_steps: 2, batch_size: 16, federate: usplit}"
        ),
    },
    "cvae-mlp": {
        "task.name": "cvae",
        "task.params": "{batch_size: 16, architecture: mlp, hidden: 8, latent_dim: 4}",
    },
    # A table: statsmodels' affairs survey, Dirichlet skew on its target; shards of
    # 12-100+ rows against batches of 32 (TVAE takes a small shard whole, unpadded).
    "tvae": {
        "task.name": "tvae",
        "data.sources": "[fair]",
        "data.partition.kind": "table_dirichlet",
        "data.partition.params": "{alpha: 1.0, min_size: 12, max_modes: 3}",
        "data.num_clients": 20,
        "strategy.params": "{fraction: 0.3, min_clients: 2}",
        "task.params": "{batch_size: 32, hidden: 16, latent_dim: 4, keep_optimizer: false}",
        "federation.local_steps": "null",
        "federation.local_epochs": 1.0,
    },
    # Each client keeps its Adam (moments and step count) between rounds, the table
    # tasks' default: half the clients a round, so some train in both rounds and resume.
    "tvae-kept-optimizer": {
        "task.name": "tvae",
        **FAIR_HALF_A_ROUND,
        "task.params": "{batch_size: 32, hidden: 16, latent_dim: 4}",
    },
    # The decoder conditioned on the target's one-hot, read from each client's rows;
    # or on the silo column's and the target's, side by side.
    "tvae-conditional": {
        "task.name": "tvae",
        **FAIR_HALF_A_ROUND,
        "task.params": "{batch_size: 32, hidden: 16, latent_dim: 4, condition_on: had_affair}",
    },
    "tvae-two-conditions": {
        "task.name": "tvae",
        **FAIR_HALF_A_ROUND,
        "task.params": (
            "{batch_size: 32, hidden: 16, latent_dim: 4, condition_on: [occupation, had_affair]}"
        ),
    },
    # CTGAN: training-by-sampling, Gumbel noise and the critic's dropout drawn in
    # train_local's order, the gradient penalty's nested grad; kept Adams (default).
    "ctgan": {
        "task.name": "ctgan",
        **FAIR_HALF_A_ROUND,
        "task.params": "{batch_size: 20, pac: 5, hidden: 16, noise_dim: 8}",
    },
    # Conditional vectors naming the target alone.
    "ctgan-conditional": {
        "task.name": "ctgan",
        **FAIR_HALF_A_ROUND,
        "task.params": (
            "{batch_size: 20, pac: 5, hidden: 16, noise_dim: 8, condition_on: had_affair}"
        ),
    },
    # Conditional vectors naming the silo column and the target jointly.
    "ctgan-two-conditions": {
        "task.name": "ctgan",
        **FAIR_HALF_A_ROUND,
        "task.params": (
            "{batch_size: 20, pac: 5, hidden: 16, noise_dim: 8, "
            "condition_on: [occupation, had_affair]}"
        ),
    },
    "ctgan-fresh-optimizer": {
        "task.name": "ctgan",
        **FAIR_HALF_A_ROUND,
        "task.params": "{batch_size: 20, pac: 5, hidden: 16, noise_dim: 8, keep_optimizer: false}",
    },
}


#: The vectorized backend without its sequential fallback: it vectorizes or raises.
NO_FALLBACK = "{fallback: false}"


def run(mnist_dir: Path, backend: str, **overrides: Any) -> tuple[dict, list[dict]]:
    """Final global state and per-round metrics of a tiny federation."""
    cfg = tiny_config(
        mnist_dir,
        **{"backend.name": backend, "ledger": "false", "federation.rounds": 2, **overrides},
    )
    fed = build_experiment(cfg).federation
    assert fed.run()
    return fed.global_state, fed.history


def assert_close_but_adam_rounding(got: torch.Tensor, want: torch.Tensor, key: str) -> None:
    """``got`` equals ``want`` to ATOL, but for a share of coordinates (see
    MAX_SHARE_BEYOND_ATOL) that are still within MAX_DIFF."""
    assert got.shape == want.shape and got.dtype == want.dtype, key
    diff = (got.double() - want.double()).abs()
    share = float((diff > ATOL).double().mean()) if diff.numel() else 0.0
    assert share <= MAX_SHARE_BEYOND_ATOL, f"{key}: {share:.1%} of coordinates beyond {ATOL}"
    largest = float(diff.max()) if diff.numel() else 0.0
    assert largest <= MAX_DIFF, f"{key}: max difference {largest}"


def test_the_oracle_tells_a_different_run_from_rounding(mnist_dir, one_thread):
    # Negative control of the tolerance: the same federation with one more local step a
    # round (one more batch each) is not the same model under it.
    (a, _), (b, _) = (
        run(mnist_dir, "inprocess", **VECTORIZING["cgan"], **{"federation.local_steps": n})
        for n in (2, 3)
    )
    failed = []
    for key in a:
        try:
            assert_close_but_adam_rounding(b[key], a[key], key)
        except AssertionError:
            failed.append(key)
    assert len(failed) > len(a) // 2, failed


def assert_same_run(a: tuple[dict, list[dict]], b: tuple[dict, list[dict]]) -> None:
    (state_a, history_a), (state_b, history_b) = a, b
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert_close_but_adam_rounding(state_b[key], state_a[key], key)
    for ra, rb in zip(history_a, history_b, strict=True):
        assert ra["clients"] == rb["clients"] and ra["examples"] == rb["examples"]
        assert ra["bytes_down"] == rb["bytes_down"]
        # The reply's metrics are JSON text: a loss's last digits change its length.
        assert abs(ra["bytes_up"] - rb["bytes_up"]) <= 16 * ra["clients"]
        losses = [k for k in ra if k.startswith("loss/")]  # none under secure aggregation
        assert losses == [k for k in rb if k.startswith("loss/")]
        for k in losses:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4), k


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_task_with_a_functional_step_is_checked():
    # A task that overrides functional_training must be in the oracle's list.
    overriding = {
        name
        for name in TASKS.names()
        if TASKS.get(name).functional_training is not Task.functional_training
    }
    assert overriding == {name.split("-")[0] for name in VECTORIZING}


# vmap runs an op without a batching rule client by client, with this warning: too slow.
@pytest.mark.filterwarnings("error:There is a performance drop")
@pytest.mark.parametrize("case", sorted(VECTORIZING))
def test_vectorized_equals_sequential(mnist_dir, one_thread, case):
    # Prepare / Execute
    overrides = VECTORIZING[case]
    sequential = run(mnist_dir, "inprocess", **overrides)
    # fallback false: a round that did not vectorize (or a batched step that raised and
    # was replayed client by client) would match the sequential run trivially.
    vectorized = run(mnist_dir, "vectorized", **overrides, **{"backend.params": NO_FALLBACK})
    # Assert (a private discriminator continues from each client's own: round 2 checks it)
    assert_same_run(sequential, vectorized)


@pytest.mark.parametrize("case", ["tvae-kept-optimizer", "ctgan"])
def test_kept_optimizers_resume_and_return_alike(mnist_dir, one_thread, case):
    # A client's Adam (moments and step count, private tensors) continues in its next
    # round on both paths and comes back the same: a step count is exact.
    runs = {}
    for backend, extra in (("inprocess", {}), ("vectorized", {"backend.params": NO_FALLBACK})):
        cfg = tiny_config(
            mnist_dir, **{"backend.name": backend, "ledger": "false", **VECTORIZING[case], **extra}
        )
        fed = build_experiment(cfg).federation
        assert fed.run()
        runs[backend] = fed.private_states
    sequential, vectorized = runs["inprocess"], runs["vectorized"]
    assert sequential.keys() == vectorized.keys()
    counts = set()
    for cid, own in sequential.items():
        assert own.keys() == vectorized[cid].keys()
        for key, value in own.items():
            if key.endswith("/step"):
                assert torch.equal(vectorized[cid][key], value), key
                counts.add(int(value))
            else:
                torch.testing.assert_close(vectorized[cid][key], value, atol=ATOL, rtol=0)
    assert max(counts) > 3  # some client resumed its optimizer in a later round


@pytest.mark.parametrize(
    "case", ["cgan", "cgan-mode-seeking", "cgan-aux", "cvae", "cvae-mlp", "ddpm"]
)
def test_unequal_steps_and_small_shards(mnist_dir, one_thread, case):
    # Quantity skew and local epochs: clients train different numbers of steps, and some
    # shards are smaller than a batch (padded rows, masked out of the losses); chunks of
    # 3 clients cut the cohort of 6. The example-weighted average dilutes a small
    # client's update below the tolerance, so a masking error may pass here: one
    # client's padded step is checked on its own in tests/unit/tasks/test_functional_padding.py.
    overrides = {
        **VECTORIZING[case],
        "data.num_clients": 60,
        "data.partition.kind": "quantity",
        "data.partition.params": "{alpha: 0.3, min_size: 4}",
        "strategy.params": "{fraction: 0.1, min_clients: 2}",
        "federation.local_steps": "null",
        "federation.local_epochs": 0.2,
        "federation.rounds": 1,
    }
    cfg = tiny_config(mnist_dir, **{**overrides, "ledger": "false"})
    sizes = sorted(c.num_examples for c in build_experiment(cfg).federation.clients.values())
    assert sizes[0] < 16 and sizes[-1] > 5 * 16  # padding and unequal steps both occur
    sequential = run(mnist_dir, "inprocess", **overrides)
    vectorized = run(
        mnist_dir,
        "vectorized",
        **overrides,
        **{"backend.params": "{chunk_size: 3, fallback: false}"},
    )
    assert_same_run(sequential, vectorized)


def test_fallback_says_why_and_trains_sequentially(mnist_dir, one_thread, monkeypatch, caplog):
    # A task without a functional step trains through train_local, bit for bit.
    monkeypatch.setattr(TASKS.get("cgan"), "functional_training", lambda self: None)
    sequential = run(mnist_dir, "inprocess")
    with caplog.at_level(logging.WARNING, logger="fedgen.engine.backends.vectorized"):
        vectorized = run(mnist_dir, "vectorized")
    assert "has no functional training step" in caplog.text
    for key, value in sequential[0].items():
        assert torch.equal(vectorized[0][key], value), key


def test_forced_vectorization_refuses_with_the_reason(mnist_dir, monkeypatch):
    monkeypatch.setattr(TASKS.get("cgan"), "functional_training", lambda self: None)
    with pytest.raises(ConfigError, match="has no functional training step"):
        run(mnist_dir, "vectorized", **{"backend.params": "{fallback: false}"})


def test_a_failed_batched_computation_falls_back_per_client(
    mnist_dir, one_thread, monkeypatch, caplog
):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(GanFunctionalTraining, "step", broken)
    sequential = run(mnist_dir, "inprocess")
    with caplog.at_level(logging.WARNING, logger="fedgen.engine.backends.vectorized"):
        vectorized = run(mnist_dir, "vectorized")
    assert "batched computation failed (RuntimeError: boom)" in caplog.text
    for key, value in sequential[0].items():
        assert torch.equal(vectorized[0][key], value), key


def test_dpsgd_and_faults_do_not_vectorize(mnist_dir):
    # Prepare: the work of a plain tiny federation's round.
    fed = build_experiment(tiny_config(mnist_dir, ledger="false")).federation
    from fedgen.engine.backends.base import LocalWork
    from fedgen.engine.faults import FaultPlan

    work = LocalWork(fed.task, fed.global_state, [], 2, None)
    assert why_not_vectorized(work) is None
    # Execute / Assert
    work.faults = FaultPlan.__new__(FaultPlan)
    assert "fault injection" in str(why_not_vectorized(work))
    work.faults = None
    fed.task.privacy_engine = object()  # type: ignore[assignment]
    assert "DP-SGD" in str(why_not_vectorized(work))


def test_update_transforms_and_secure_aggregation_apply_alike(mnist_dir, one_thread):
    # The client halves (clip) and the secure-aggregation stage run on the vectorized
    # clients' updates exactly as on the sequential ones.
    overrides = {
        **VECTORIZING["cgan"],
        "transforms": "[{name: clip, params: {max_norm: 0.5}}, {name: secagg, params: {}}]",
    }
    assert_same_run(
        run(mnist_dir, "inprocess", **overrides), run(mnist_dir, "vectorized", **overrides)
    )


def test_compressed_downlink_clients_start_from_the_model_they_received(
    mnist_dir, one_thread, caplog
):
    # Under federation.downlink a client trains from its own copy of the model (rebuilt
    # from compressed deltas), not the server's: such rounds train sequentially (every
    # vectorized client used to fail with a KeyError).
    overrides = {
        **VECTORIZING["cgan"],
        "federation.downlink": "{name: quantize, params: {bits: 2}}",
        "federation.rounds": 3,
    }
    sequential = run(mnist_dir, "inprocess", **overrides)
    with caplog.at_level(logging.WARNING, logger="fedgen.engine.backends.vectorized"):
        vectorized = run(mnist_dir, "vectorized", **overrides)
    assert "compressed downlink" in caplog.text
    assert all(not r.get("failures") for r in vectorized[1])
    assert_same_run(sequential, vectorized)


@pytest.mark.parametrize("case", ["cgan-private-discriminator", "cvae-mlp", "tvae-kept-optimizer"])
def test_vectorized_pool_workers_train_the_sequential_model(mnist_dir, one_thread, case):
    # Two workers, each training its share of a round's clients together: private
    # tensors (and TVAE's kept Adams) travel in the clients' custody, unequal steps and
    # small shards included, and under secure aggregation the masked halves are held
    # between messages.
    # (A table keeps its own label-skew partition: quantity skew splits images.)
    quantity = {
        "data.partition.kind": "quantity",
        "data.partition.params": "{alpha: 0.5, min_size: 4}",
    }
    overrides = {
        **VECTORIZING[case],
        "data.num_clients": 12,
        **({} if case.startswith("tvae") else quantity),
        "strategy.params": "{fraction: 0.5, min_clients: 2}",
        "federation.local_steps": "null",
        # Images at 0.1 epochs: 1 to 17 steps a client under the quantity skew; tables 0.3.
        "federation.local_epochs": 0.3 if case.startswith("tvae") else 0.1,
        "transforms": "[{name: clip, params: {max_norm: 0.5}}, {name: secagg, params: {}}]",
    }
    sequential = run(mnist_dir, "inprocess", **overrides)
    pool = run(
        mnist_dir,
        "process_pool",
        **overrides,
        **{"backend.params": "{workers: 2, vectorize: true}"},
    )
    assert_same_run(sequential, pool)
    if case.startswith("cgan"):
        # Batched, not a silent fallback to train_local: the batched (grouped)
        # convolutions sum in another order, so the models agree to float tolerance but
        # not bit for bit. (The MLP's batched matmuls happen to agree bit for bit.)
        assert any(not torch.equal(pool[0][k], v) for k, v in sequential[0].items())


def test_vectorized_pool_workers_fall_back_to_train_local(mnist_dir, one_thread):
    # Fault injection wraps train_local, so it cannot vectorize: each worker trains its
    # batch client by client, bit for bit, and the clients whose update turns NaN fail.
    overrides = {"faults": "{nan: 0.4}", "federation.rounds": 2}
    sequential = run(mnist_dir, "inprocess", **overrides)
    pool = run(mnist_dir, "process_pool", **overrides, **{"backend.params": "{vectorize: true}"})
    assert any(r.get("failures") for r in sequential[1])
    assert [r.get("failures") for r in pool[1]] == [r.get("failures") for r in sequential[1]]
    for key, value in sequential[0].items():
        assert torch.equal(pool[0][key], value), key


def test_vectorized_pool_refuses_a_client_timeout(mnist_dir):
    with pytest.raises(ConfigError, match="unset client_timeout or vectorize"):
        run(
            mnist_dir,
            "process_pool",
            **{"backend.params": "{vectorize: true, client_timeout: 30}"},
        )


def test_a_step_measured_slower_on_cpu_says_so_once(mnist_dir, one_thread, caplog):
    # The ddpm step vectorizes (the oracle above) but was measured slower than training
    # each client in turn on a CPU: a user who picked the backend for speed is told.
    with caplog.at_level(logging.WARNING, logger="fedgen.engine.backends.vectorized"):
        run(mnist_dir, "vectorized", **VECTORIZING["ddpm"], **{"backend.params": NO_FALLBACK})
    said = [r.getMessage() for r in caplog.records if "measured 0.66-0.72x" in r.getMessage()]
    assert len(said) == 1 and "use backend process_pool" in said[0]
