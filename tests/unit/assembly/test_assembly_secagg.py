"""Unsound uses of secure aggregation are rejected before round 1, each with its fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_federation import tiny_config as shared_tiny_config

from fedgen.config import load_config
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.strategies.clustered import KldClustered
from fedgen.transforms.base import TransformContext

CLIP = "{name: clip, params: {max_norm: 2.0}}"
DP_STRATEGY = (
    "{fraction: 1.0, min_clients: 1, weighted: false, sampling: poisson, fixed_denominator: true}"
)
DP = "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-3}}"
SA = "{name: secagg}"


def tiny_config(mnist_dir, **overrides):
    """The shared tiny federation, one round of one step."""
    return shared_tiny_config(
        mnist_dir, **{"federation.rounds": 1, "federation.local_steps": 1, **overrides}
    )


@pytest.mark.parametrize(
    ("overrides", "fix"),
    [
        ({"transforms": f"[{SA}, {CLIP}]"}, "order the transforms [clip, client_dp, secagg]"),
        (
            {"strategy.params": DP_STRATEGY, "transforms": f"[{CLIP}, {SA}, {DP}]"},
            "move transforms[1] (secagg) to the end",
        ),
        (
            {"transforms": f"[{CLIP}, {{name: secagg, params: {{clip: 1.0}}}}]"},
            "set secagg clip >= 2",
        ),
        (
            {
                "strategy.params": "{weighted: false, fixed_denominator: true}",
                "transforms": "[{name: clip, params: {max_norm: 1.0, target_quantile: 0.5}}, "
                "{name: secagg, params: {clip: 5.0}}]",
            },
            "leave secagg's clip unset to follow the clip bound",
        ),
        ({"transforms": "[{name: secagg}]"}, "add {name: clip, params: {max_norm: 1.0}} before"),
        (
            {"strategy.name": "kld_clustered", "strategy.params": "{}", "transforms": f"[{SA}]"},
            "use strategy fedavg (or fedavgm, fedadam, ...), or remove secagg",
        ),
        (
            {"backend.name": "split", "transforms": f"[{CLIP}, {SA}]"},
            "use backend inprocess or process_pool",
        ),
        (
            {"federation.centralized": "true", "transforms": f"[{CLIP}, {SA}]"},
            "set federation.centralized=false",
        ),
        (
            {"transforms": f"[{CLIP}, {{name: secagg, params: {{threshold: 5}}}}]"},
            "for the planned 4 clients per round: threshold 5 exceeds",
        ),
        (
            # q = 0.5 of 4 clients: 2 expected, up to 4, whose 16-bit sum wraps mod 2^17.
            {
                "strategy.params": "{fraction: 0.5, min_clients: 1, sampling: poisson}",
                "transforms": f"[{CLIP}, {{name: secagg, params: {{modulus_bits: 17, "
                f"value_bits: 16}}}}]",
            },
            "for up to 4 clients per round: the sum of 4 clients of 16-bit values could "
            "wrap modulo 2^17; raise modulus_bits to >= 18",
        ),
        (
            # 16-bit words, 4 clients: sqrt(d) quanta of 2/8191 exceed 1% of the bound 2
            # for the tiny model's ~10^4 coordinates.
            {
                "strategy.params": DP_STRATEGY,
                "transforms": f"[{CLIP}, {DP}, {{name: secagg, params: {{modulus_bits: 16}}}}]",
            },
            "past clip max_norm by up to",
        ),
        (
            # Under client-level DP a Poisson cohort of 2 (of 4 expected) must resolve too:
            # 3 shares of 2 holders cannot.
            {
                "strategy.params": DP_STRATEGY,
                "transforms": f"[{CLIP}, {DP}, {{name: secagg, params: {{threshold: 3}}}}]",
            },
            "cannot run a round of 2 usable clients",
        ),
        (
            # Half of 2 holders is one share, which would reveal the secret.
            {
                "strategy.params": DP_STRATEGY,
                "transforms": f"[{CLIP}, {DP}, {{name: secagg, params: {{threshold: 0.5}}}}]",
            },
            "set secagg threshold to a fraction above 0.5",
        ),
    ],
    ids=["before-clip", "not-last", "range-below-clip", "fixed-range-adaptive", "no-range",
         "kld-clustered", "split-backend", "centralized",
         "threshold-above-cohort", "poisson-cohort-above-plan", "dp-rounding-excess",
         "dp-small-cohort-integer-threshold", "dp-small-cohort-half-threshold"],
)  # fmt: skip
def test_unsound_combination_raises_with_its_fix(mnist_dir, overrides, fix):
    with pytest.raises(ConfigError) as err:
        build_experiment(tiny_config(mnist_dir, **overrides))
    assert fix in str(err.value)


def test_every_problem_is_listed_together(mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        **{
            "backend.name": "split",
            "federation.centralized": "true",
            "transforms": f"[{SA}, {CLIP}]",
        },
    )
    with pytest.raises(ConfigError) as err:
        build_experiment(cfg)
    msg = str(err.value)
    assert "backend split" in msg and "centralized" in msg and "before clip" in msg


def test_clip_dp_secagg_builds_and_the_range_follows_the_clip(mnist_dir):
    # Prepare
    cfg = tiny_config(
        mnist_dir,
        **{"strategy.params": DP_STRATEGY, "transforms": f"[{CLIP}, {DP}, {SA}]"},
    )
    # Execute
    fed = build_experiment(cfg).federation
    # Assert
    clip, _, secagg = fed.transforms
    assert fed.privacy is not None and fed.secagg is secagg
    assert secagg.round_config().clip == 2.0
    clip.max_norm = 3.0  # as adaptive clipping would move it
    assert secagg.round_config().clip == 3.0


def test_without_dp_a_small_cohort_may_fail_its_round(mnist_dir):
    # Prepare: the same threshold 3 as under DP, for the planned 4 clients per round
    cfg = tiny_config(
        mnist_dir,
        **{
            "strategy.params": DP_STRATEGY,
            "transforms": f"[{CLIP}, {{name: secagg, params: {{threshold: 3}}}}]",
        },
    )
    # Execute / Assert: no DP, so a cohort of 2 only fails its round (nothing leaks)
    assert build_experiment(cfg).federation.secagg is not None


def test_an_explicit_range_at_least_the_clip_bound_is_kept(mnist_dir):
    cfg = tiny_config(mnist_dir, transforms=f"[{CLIP}, {{name: secagg, params: {{clip: 2.5}}}}]")
    assert build_experiment(cfg).federation.secagg.round_config().clip == 2.5


def test_a_strategy_that_needs_individual_updates_cannot_aggregate_a_sum():
    strategy = KldClustered()
    assert not strategy.aggregates_sums
    with pytest.raises(ConfigError, match="use strategy fedavg"):
        strategy.aggregate_sum(0, {}, 0.0, 0, 0)
    with pytest.raises(ConfigError, match="use strategy fedavg"):
        strategy.client_weight(10)


@pytest.mark.parametrize("recipe", ["mnist_cgan_secagg.yaml", "mnist_cgan_dp_secagg.yaml"])
def test_the_secagg_recipes_validate(mnist_dir, recipe):
    path = Path(__file__).resolve().parents[3] / "configs" / recipe
    cfg = load_config(path, [f"data.data_dir={mnist_dir}", "backend.name=inprocess"])
    fed = build_experiment(cfg).federation
    assert fed.secagg is fed.transforms[-1] and fed.secagg.auto_clip
    assert fed.secagg.round_config().clip == fed.transforms[0].max_norm


def test_dp_noise_covers_the_rounding_excess(mnist_dir):
    # Prepare: 24-bit words, small enough an excess to accept, large enough to see.
    sa = "{name: secagg, params: {modulus_bits: 24}}"
    cfg = tiny_config(
        mnist_dir, **{"strategy.params": DP_STRATEGY, "transforms": f"[{CLIP}, {DP}, {sa}]"}
    )
    fed = build_experiment(cfg).federation
    dp = fed.transforms[1]
    d = sum(v.numel() for v in fed.global_state.values() if v.is_floating_point())
    levels = (2**23 - 1) // 4
    # Execute
    _, metrics = dp.on_server(
        {"w": torch.zeros(3)}, TransformContext(round=0, client_id=None, seed=0, num_clients=4)
    )
    # Assert: one quantum (2 / levels) per coordinate, and the noise std uses C + that.
    excess = math.sqrt(d) * 2.0 / levels
    assert dp.rounding_excess() == pytest.approx(excess, rel=1e-12)
    assert 0 < excess / 2.0 < 0.01
    assert metrics["noise_std"] == pytest.approx(1.0 * (2.0 + excess) / 4, rel=1e-12)
