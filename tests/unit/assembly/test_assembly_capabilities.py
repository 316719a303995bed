"""Validation asks a strategy what its aggregation needs, never its class: server
optimizers compose with DP and secure aggregation, robust rules are refused with why."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.privacy.accounting import compute_epsilon
from fedgen.strategies.base import Needs

CLIP = "{name: clip, params: {max_norm: 2.0}}"
DP = "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-3}}"
SA = "{name: secagg}"
DP_PARAMS = (
    "fraction: 1.0, min_clients: 1, weighted: false, sampling: poisson, fixed_denominator: true"
)


def build(mnist_dir, strategy: str, params: str, transforms: str):
    cfg = tiny_config(
        mnist_dir,
        **{
            "federation.rounds": 1,
            "federation.local_steps": 1,
            "strategy.name": strategy,
            "strategy.params": params,
            "transforms": transforms,
        },
    )
    return build_experiment(cfg).federation


def test_dp_fedadam_builds_and_is_accounted(mnist_dir):
    fed = build(mnist_dir, "fedadam", f"{{{DP_PARAMS}}}", f"[{CLIP}, {DP}]")
    assert fed.privacy is not None and fed.privacy.client is not None
    assert fed.privacy.client.sample_rate == 1.0


def test_secure_fedavgm_builds_and_runs_a_round(mnist_dir):
    fed = build(mnist_dir, "fedavgm", "{min_clients: 2}", f"[{CLIP}, {SA}]")
    assert fed.secagg is not None and fed.strategy.needs is Needs.SUM
    assert fed.run()


def test_dp_and_secagg_together_with_fedyogi(mnist_dir):
    fed = build(mnist_dir, "fedyogi", f"{{{DP_PARAMS}}}", f"[{CLIP}, {DP}, {SA}]")
    assert fed.privacy is not None and fed.secagg is fed.transforms[-1]


@pytest.mark.parametrize("rule", ["krum", "median", "bulyan"])
def test_secure_robust_rule_is_refused_with_the_reason(mnist_dir, rule):
    with pytest.raises(ConfigError) as err:
        build(mnist_dir, rule, "{min_clients: 2}", f"[{CLIP}, {SA}]")
    msg = str(err.value)
    assert "needs each client's individual update" in msg
    assert "a robust rule compares the clients' updates with each other" in msg


def test_client_dp_with_a_robust_rule_is_refused_with_the_reason(mnist_dir):
    with pytest.raises(ConfigError) as err:
        params = "{min_clients: 1, weighted: false, sampling: poisson}"
        build(mnist_dir, "median", params, f"[{CLIP}, {DP}]")
    assert "declares no such bound (a robust rule compares" in str(err.value)


def test_dp_fedadam_runs_and_spends_what_the_accountant_says(mnist_dir):
    # Prepare: FedAdam's server step on the noised mean (Needs.SUM), q = 1, sigma = 1.
    fed = build(mnist_dir, "fedadam", f"{{{DP_PARAMS}}}", f"[{CLIP}, {DP}]")
    before = {k: v.clone() for k, v in fed.global_state.items()}
    # Execute
    record = fed.run_round(0)
    # Assert: the model moved, and one round spent the accountant's epsilon.
    assert any(not torch.equal(before[k], fed.global_state[k]) for k in before)
    assert record.metrics["epsilon"] == pytest.approx(compute_epsilon(1.0, 1.0, 1, 1e-3), rel=1e-9)
