"""The noising half of DP-FedAvg: noise scale measured, seeding, binding, bad input."""

from __future__ import annotations

import pytest
import torch

from fedgen.privacy.accounting import compute_epsilon
from fedgen.privacy.errors import PrivacyConfigError
from fedgen.transforms.base import TransformContext
from fedgen.transforms.clip import UNCLIPPED_KEY, NormClip
from fedgen.transforms.dp import ClientLevelDP, effective_noise_multiplier


def server_ctx(r: int, seed: int = 99) -> TransformContext:
    return TransformContext(round=r, client_id=None, seed=seed + r, num_clients=10)


def bound_dp(z: float, clip_norm: float, m: float) -> ClientLevelDP:
    dp = ClientLevelDP(noise_multiplier=z, delta=1e-5)
    assert (
        dp.bind(NormClip(max_norm=clip_norm), sample_rate=0.4, expected_clients=m, rounds=5) == []
    )
    return dp


def test_noise_std_on_the_server_half_is_z_c_over_m():
    # Prepare: a zero aggregate of 200k coordinates in two tensors.
    dp = bound_dp(z=1.5, clip_norm=0.8, m=4.0)
    zero = {"a.w": torch.zeros(400, 250), "b.w": torch.zeros(100_000, dtype=torch.float64)}
    # Execute
    noised, metrics = dp.on_server(zero, server_ctx(0))
    # Assert: std = z * C / m = 0.3, measured over all coordinates (the standard error
    # of a std estimate from n=2e5 normals is 0.3/sqrt(2n) ~ 5e-4); mean ~ 0.
    values = torch.cat([noised["a.w"].double().flatten(), noised["b.w"].flatten()])
    assert metrics["noise_std"] == pytest.approx(0.3)
    assert float(values.std()) == pytest.approx(0.3, abs=3e-3)
    assert abs(float(values.mean())) < 3e-3
    assert noised["a.w"].dtype == torch.float32 and noised["b.w"].dtype == torch.float64


def test_noise_is_added_once_and_seeded_from_the_server_seed():
    dp = bound_dp(z=1.0, clip_norm=1.0, m=2.0)
    agg = {"w": torch.ones(1000, dtype=torch.float64)}
    a, _ = dp.on_server(agg, server_ctx(3))
    b, _ = dp.on_server(agg, server_ctx(3))
    c, _ = dp.on_server(agg, server_ctx(4))
    assert torch.equal(a["w"], b["w"])
    assert not torch.equal(a["w"], c["w"])
    assert torch.equal(agg["w"], torch.ones(1000, dtype=torch.float64))  # input untouched


def test_side_channel_tensors_are_not_noised_here():
    dp = bound_dp(z=1.0, clip_norm=1.0, m=2.0)
    bit = torch.tensor([0.5], dtype=torch.float64)
    out, _ = dp.on_server({"w": torch.zeros(10), UNCLIPPED_KEY: bit}, server_ctx(0))
    assert torch.equal(out[UNCLIPPED_KEY], bit)


def test_target_epsilon_calibrates_z_for_the_planned_rounds():
    dp = ClientLevelDP(epsilon=8.0, delta=1e-5)
    assert dp.bind(NormClip(max_norm=1.0), sample_rate=0.5, expected_clients=50, rounds=20) == []
    assert dp.noise_multiplier is not None
    assert compute_epsilon(dp.noise_multiplier, 0.5, 20, 1e-5) <= 8.0
    assert compute_epsilon(0.97 * dp.noise_multiplier, 0.5, 20, 1e-5) > 8.0


def test_adaptive_clipping_splits_z_between_update_and_count_as_andrew_et_al():
    # Prepare: m = 100 expected clients, sigma_b defaults to m / 20 = 5.
    clip = NormClip(max_norm=1.0, target_quantile=0.5)
    dp = ClientLevelDP(noise_multiplier=2.0, delta=1e-5)
    # Execute
    assert dp.bind(clip, sample_rate=0.1, expected_clients=100, rounds=10) == []
    # Assert: z_update = (2^-2 - 10^-2)^-1/2, and recombining gives z back.
    assert clip.count_noise_stddev == pytest.approx(5.0)
    assert dp.update_noise_multiplier == pytest.approx((0.25 - 0.01) ** -0.5)
    assert effective_noise_multiplier(dp.update_noise_multiplier, 5.0) == pytest.approx(2.0)


def test_adaptive_clipping_that_cannot_reach_z_says_what_to_change():
    clip = NormClip(max_norm=1.0, target_quantile=0.5)
    dp = ClientLevelDP(noise_multiplier=2.0, delta=1e-5)
    problems = dp.bind(clip, sample_rate=0.4, expected_clients=4, rounds=10)
    assert len(problems) == 1 and "count_noise_stddev" in problems[0]


def test_noise_state_keeps_the_runs_z_on_resume():
    # A run resumed with other settings (e.g. more rounds) keeps the z it started with.
    dp = bound_dp(z=2.5, clip_norm=1.0, m=4.0)
    resumed = bound_dp(z=1.0, clip_norm=1.0, m=4.0)
    resumed.load_state_dict(dp.state_dict())
    assert resumed.noise_multiplier == 2.5 and resumed.update_noise_multiplier == 2.5


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": -3.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": 10.0, "delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"epsilon": 10.0, "delta": 0.0}, r"delta must be in \(0, 1\)"),
        ({"noise_multiplier": 0.0}, "noise_multiplier=0.0: must be a finite number > 0"),
        ({}, "needs noise_multiplier or epsilon"),
        ({"epsilon": 10.0, "accountant": "gdp"}, "choose one of rdp, prv"),
    ],
)
def test_bad_dp_parameters_say_what_to_change(kwargs, needle):
    with pytest.raises(PrivacyConfigError, match=needle):
        ClientLevelDP(**kwargs)


def test_a_budget_that_does_not_fit_one_round_is_rejected_at_bind():
    dp = ClientLevelDP(noise_multiplier=0.3, epsilon=1.0, delta=1e-5)
    problems = dp.bind(NormClip(max_norm=1.0), sample_rate=1.0, expected_clients=10, rounds=5)
    assert len(problems) == 1 and "in one round" in problems[0]
