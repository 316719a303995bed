"""Privacy settings are checked before round 1, every problem at once, each with its fix."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config
from torch import nn

from fedgen.experiment import build_experiment
from fedgen.privacy.dpsgd import module_problems
from fedgen.privacy.errors import PrivacyConfigError
from fedgen.tasks.gan import ConditionalGan, GanParams

SOUND_STRATEGY = (
    "strategy.params={fraction: 0.5, min_clients: 1, weighted: false, "
    "sampling: poisson, fixed_denominator: true}"
)
CLIP_AND_NOISE = (
    "transforms=[{name: clip, params: {max_norm: 1.0}}, "
    "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-5}}]"
)


def config(mnist_dir, *items: str):
    """The shared tiny federation (batch 32, 2 local steps) with the default strategy
    params and ``items`` (``dotted.key=value``) applied last."""
    overrides = {
        "task.params": "{batch_size: 32, generator_width: 8, discriminator_width: 8}",
        "federation.rounds": 2,
        # The experiment's default strategy params, not the tiny federation's.
        "strategy.params": "{fraction: 0.4, ema_decay: 0.9}",
    }
    overrides.update(item.split("=", 1) for item in items)
    return tiny_config(mnist_dir, **overrides)


def problems_of(cfg) -> list[str]:
    with pytest.raises(PrivacyConfigError) as info:
        build_experiment(cfg)
    return info.value.problems


def test_sound_client_level_dp_builds_and_binds(mnist_dir):
    exp = build_experiment(config(mnist_dir, SOUND_STRATEGY, CLIP_AND_NOISE))
    privacy = exp.federation.privacy
    assert privacy is not None and privacy.client is not None
    assert privacy.client.sample_rate == 0.5 and privacy.client.noise_multiplier == 1.0
    assert exp.federation.transforms[1].expected_clients == 2.0  # q * N


def test_noise_without_clipping_is_rejected(mnist_dir):
    cfg = config(
        mnist_dir,
        SOUND_STRATEGY,
        "transforms=[{name: client_dp, params: {noise_multiplier: 1.0}}]",
    )
    [problem] = problems_of(cfg)
    assert "no clip bounds the updates" in problem and "{name: clip" in problem


def test_example_weighted_fedavg_with_fixed_sampling_lists_every_fix(mnist_dir):
    # Prepare: the default FedAvg (weighted, fixed-size sampling) under client DP.
    cfg = config(mnist_dir, "strategy.params={fraction: 0.5}", CLIP_AND_NOISE)
    # Execute
    problems = problems_of(cfg)
    # Assert: all three unsound settings, each naming its fix, in one error.
    text = "\n".join(problems)
    assert len(problems) == 3
    assert "strategy.params.weighted=false" in text
    assert "strategy.params.fixed_denominator=true" in text
    assert "strategy.params.sampling=poisson" in text


def test_a_budget_that_does_not_fit_one_round_is_rejected(mnist_dir):
    cfg = config(
        mnist_dir,
        SOUND_STRATEGY,
        "transforms=[{name: clip, params: {max_norm: 1.0}}, "
        "{name: client_dp, params: {noise_multiplier: 0.5, epsilon: 0.5}}]",
    )
    [problem] = problems_of(cfg)
    assert "in one round" in problem and "raise noise_multiplier or epsilon" in problem


def test_bad_epsilon_delta_and_dpsgd_problems_come_together(mnist_dir):
    cfg = config(
        mnist_dir,
        SOUND_STRATEGY,
        "transforms=[{name: clip, params: {max_norm: 1.0}}, "
        "{name: client_dp, params: {epsilon: -1.0, delta: 2.0}}]",
        "dpsgd={noise_multiplier: 1.0}",
    )
    problems = problems_of(cfg)
    text = "\n".join(problems)
    assert "epsilon must be a finite number > 0" in text
    assert "delta must be in (0, 1)" in text
    assert "dpsgd.max_grad_norm is not set" in text  # DP-SGD noise with no clipping
    assert "task.params.fake_labels=uniform" in text  # the generator would read labels


@pytest.mark.parametrize(
    ("dpsgd", "needle"),
    [
        ("{epsilon: 0, max_grad_norm: 1.0}", "epsilon must be a finite number > 0"),
        ("{epsilon: 10, delta: 1.0, max_grad_norm: 1.0}", "delta must be in (0, 1)"),
        ("{epsilon: 10, delta: 0.0, max_grad_norm: 1.0}", "delta must be in (0, 1)"),
        ("{noise_multiplier: 1.0}", "a noise multiplier with no clipping"),
        ("{max_grad_norm: 1.0}", "needs noise_multiplier or epsilon"),
        ("{epsilon: 0.01, noise_multiplier: 0.5, max_grad_norm: 1.0}", "in one round"),
    ],
)
def test_dpsgd_bad_input(mnist_dir, dpsgd, needle):
    cfg = config(mnist_dir, "task.params.fake_labels=uniform", f"dpsgd={dpsgd}")
    problems = problems_of(cfg)
    assert any(needle in p for p in problems), problems


def test_dpsgd_delta_must_sit_below_one_over_the_largest_clients_examples(mnist_dir):
    # Prepare: Dirichlet label skew gives clients of different sizes
    skewed = ("data.partition={kind: dirichlet, params: {alpha: 0.5}}",)
    sizes = [
        c.num_examples
        for c in build_experiment(config(mnist_dir, *skewed)).federation.clients.values()
    ]
    smallest, largest = min(sizes), max(sizes)
    assert smallest < largest, sizes
    # Between 1/largest and 1/smallest: below the smallest client's bound, not the largest's
    delta = 1.0 / largest
    dpsgd = f"dpsgd={{epsilon: 10, delta: {delta!r}, max_grad_norm: 1.0}}"
    # Execute
    problems = problems_of(config(mnist_dir, *skewed, "task.params.fake_labels=uniform", dpsgd))
    # Assert
    assert any("not below 1/(examples of the largest client)" in p for p in problems), problems


def test_a_module_opacus_cannot_make_private_is_named_with_its_fix():
    # Prepare: a cGAN whose discriminator gained a BatchNorm layer.
    task = ConditionalGan(GanParams(fake_labels="uniform"), 10, (1, 28, 28), seed=0)
    task.modules["discriminator"].features.insert(1, nn.BatchNorm2d(8 * 4))
    # Execute
    problems = module_problems(task)
    # Assert
    assert len(problems) == 1
    assert "'discriminator'" in problems[0] and "BatchNorm" in problems[0]
    assert "GroupNorm" in problems[0]


def test_sound_dpsgd_calibrates_sigma_and_attaches_to_the_task(mnist_dir):
    cfg = config(
        mnist_dir,
        "task.params.fake_labels=uniform",
        "dpsgd={epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0}",
    )
    exp = build_experiment(cfg)
    engine = exp.task.privacy_engine
    sample = exp.federation.privacy.sample
    assert engine is not None and engine.noise_multiplier == sample.noise_multiplier > 0
    # Calibrated for the client with the highest rate taking part in every round.
    assert sample.epsilon() == 0.0
    assert all(0 < q <= 1 for q in sample.rates.values())
    assert torch.is_tensor(next(iter(exp.task.federated_state().values())))


def test_client_level_dp_refuses_integer_tensors_it_cannot_noise(mnist_dir):
    # Prepare: a sound DP federation whose discriminator gains a BatchNorm (its step
    # counter is an int64 tensor the clients would send without clip or noise).
    from fedgen.assembly.privacy import build_privacy

    fed = build_experiment(config(mnist_dir, SOUND_STRATEGY, CLIP_AND_NOISE)).federation
    fed.task.modules["discriminator"].add_module("extra_norm", nn.BatchNorm1d(4))
    # Execute
    with pytest.raises(PrivacyConfigError) as info:
        build_privacy(
            dpsgd=None,
            task=fed.task,
            clients=list(fed.clients.values()),
            strategy=fed.strategy,
            transforms=fed.transforms,
            rounds=2,
            local_steps=2,
            local_epochs=None,
        )
    # Assert
    [problem] = info.value.problems
    assert "extra_norm.num_batches_tracked" in problem and "GroupNorm" in problem


def test_a_client_level_dp_run_needs_every_round_checkpointed_before_it_is_sent(
    mnist_dir, tmp_path
):
    # Prepare: rounds sent to the next cohort but lost in a crash before a checkpoint
    # would be trained again with the same round-keyed noise on other survivors' updates.
    from fedgen.experiment import run_experiment

    cfg = config(mnist_dir, SOUND_STRATEGY, CLIP_AND_NOISE, "checkpoint.every=2")
    # Execute
    with pytest.raises(PrivacyConfigError) as info:
        run_experiment(cfg, tmp_path / "run", progress=False)
    # Assert: the fix is named, before any round; a finished run of such a config still
    # opens for reading (the check is the run's, not the experiment's).
    [problem] = info.value.problems
    assert "checkpoint.every is 2" in problem and "set checkpoint.every=1" in problem
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))
    build_experiment(cfg)


def test_a_dpsgd_run_needs_every_round_checkpointed_before_it_is_released(mnist_dir, tmp_path):
    # DP-SGD's noise and batches are keyed by the round too: rounds released but lost in
    # a crash would be trained again with the same noise from another start, and the
    # accountant, restored from the checkpoint, would not count the first release.
    from fedgen.experiment import run_experiment

    cfg = config(
        mnist_dir,
        "task.params.fake_labels=uniform",
        "dpsgd={noise_multiplier: 1.0, max_grad_norm: 1.0}",
        "checkpoint.every=3",
    )
    with pytest.raises(PrivacyConfigError) as info:
        run_experiment(cfg, tmp_path / "run", progress=False)
    [problem] = info.value.problems
    assert (
        problem.startswith("DP-SGD: checkpoint.every is 3") and "set checkpoint.every=1" in problem
    )
