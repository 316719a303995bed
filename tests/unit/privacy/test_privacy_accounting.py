"""The accountant wrapper against Opacus called directly (oracle), calibration, bad input."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedgen.privacy.accounting import PrivacyAccountant, calibrate_noise, compute_epsilon
from fedgen.privacy.errors import PrivacyConfigError


@pytest.mark.parametrize(("mechanism", "library"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_equals_opacus_stepped_by_hand(mechanism, library):
    # Prepare: the library's own accountant, stepped once per round.
    oracle = library()
    for _ in range(40):
        oracle.step(noise_multiplier=1.3, sample_rate=0.2)
    # Execute
    ours = compute_epsilon(1.3, 0.2, 40, 1e-5, mechanism)
    # Assert
    assert ours == pytest.approx(oracle.get_epsilon(delta=1e-5), rel=1e-9)
    assert ours > 0


def test_heterogeneous_history_equals_opacus():
    # Prepare: a run whose noise changed midway (e.g. resumed with another z).
    oracle = RDPAccountant()
    acc = PrivacyAccountant("rdp")
    for z, q, n in ((2.0, 0.4, 7), (1.0, 0.4, 3), (2.0, 0.1, 5)):
        for _ in range(n):
            oracle.step(noise_multiplier=z, sample_rate=q)
        # Execute: ours takes a block of steps at once.
        acc.step(z, q, n)
    # Assert
    assert acc.steps == 15
    assert acc.epsilon(1e-6) == pytest.approx(oracle.get_epsilon(delta=1e-6), rel=1e-9)


def test_rdp_epsilon_matches_a_published_figure():
    # Abadi et al. 2016 / Opacus tutorials: z=1.1, q=256/60000, 60 epochs of MNIST
    # (14062 steps) spend epsilon of about 2.9 at delta=1e-5 under RDP (Opacus 1.x).
    eps = compute_epsilon(1.1, 256 / 60000, 14062, 1e-5, "rdp")
    assert 2.5 < eps < 3.2


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_calibration_round_trip(mechanism):
    # Execute
    z = calibrate_noise(4.0, 0.3, 10, 1e-5, mechanism)
    # Assert: the calibrated z meets the budget and a slightly smaller one does not.
    assert compute_epsilon(z, 0.3, 10, 1e-5, mechanism) <= 4.0
    assert compute_epsilon(0.97 * z, 0.3, 10, 1e-5, mechanism) > 4.0


def test_epsilon_after_leaves_the_state_unchanged():
    acc = PrivacyAccountant("rdp")
    acc.step(1.5, 0.5, 2)
    before = acc.epsilon(1e-5)
    ahead = acc.epsilon_after(1e-5, 1.5, 0.5, 1)
    assert ahead == pytest.approx(compute_epsilon(1.5, 0.5, 3, 1e-5))
    assert acc.epsilon(1e-5) == before and acc.steps == 2


def test_state_dict_round_trip_and_mechanism_mismatch():
    acc = PrivacyAccountant("rdp")
    acc.step(1.5, 0.5, 4)
    other = PrivacyAccountant("rdp")
    other.load_state_dict(acc.state_dict())
    assert other.epsilon(1e-5) == acc.epsilon(1e-5)
    with pytest.raises(PrivacyConfigError, match="resume with the run folder's own config"):
        PrivacyAccountant("prv").load_state_dict(acc.state_dict())


@pytest.mark.parametrize("epsilon", [0.0, -1.0, float("inf")])
def test_epsilon_must_be_positive_and_finite(epsilon):
    with pytest.raises(PrivacyConfigError, match="epsilon must be a finite number > 0"):
        calibrate_noise(epsilon, 0.1, 10, 1e-5)


@pytest.mark.parametrize("delta", [1.0, 1.5, 0.0, -1e-5])
def test_delta_must_be_in_the_open_unit_interval(delta):
    with pytest.raises(PrivacyConfigError, match=r"delta must be in \(0, 1\)"):
        compute_epsilon(1.0, 0.1, 10, delta)


def test_all_problems_are_reported_together():
    with pytest.raises(PrivacyConfigError) as info:
        compute_epsilon(-1.0, 1.5, 0, 2.0, "moments")
    assert len(info.value.problems) == 5
    assert "choose one of rdp, prv" in str(info.value)


def test_budget_that_no_noise_can_meet_says_what_to_change():
    # One full-participation step cannot reach epsilon=1e-7 below Opacus's z ceiling.
    with pytest.raises(PrivacyConfigError, match="raise epsilon or delta"):
        calibrate_noise(1e-7, 1.0, 1, 1e-5)


def test_prv_does_not_pass_on_the_warning_of_its_inner_rdp_bound():
    # Opacus's PRV accountant sizes its domain with an RDP bound, which warns that its
    # optimal order is the largest alpha for a client with a low rate and little noise
    # (the MNIST DP-SGD recipe's largest shard); PRV's own epsilon is not that bound.
    import warnings

    from fedgen.privacy import accounting

    accounting._calibrated.cache_clear()  # Opacus must search here, not this process's memory
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = calibrate_noise(10.0, 0.0355, 2250, 1e-5, "prv")
        acc = PrivacyAccountant("prv")
        acc.step(z, 0.0355, 2250)
        assert 9.9 < acc.epsilon(1e-5) <= 10.0
