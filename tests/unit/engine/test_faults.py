"""Injected faults: drawn per client and round from the seed, survived by the round loop."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.config import FaultsConfig, load_config
from fedgen.engine.faults import FaultPlan
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.seeding import derive_seed


def test_fault_draws_follow_their_rates_and_repeat_for_a_seed():
    plan = FaultPlan.from_config(FaultsConfig(crash_before=0.3, nan=0.1))
    assert plan is not None
    seeds = [derive_seed(0, "round", r, "client", c) for r in range(100) for c in range(20)]
    draws = [plan.draw(s) for s in seeds]
    assert abs(draws.count("crash_before") / len(draws) - 0.3) < 0.03
    assert abs(draws.count("nan") / len(draws) - 0.1) < 0.02
    assert draws == [plan.draw(s) for s in seeds]


def test_no_fault_rates_mean_no_plan_and_rates_over_one_are_refused():
    assert FaultPlan.from_config(None) is None
    assert FaultPlan.from_config(FaultsConfig()) is None
    with pytest.raises(ConfigError, match="add up to"):
        load_config(None, ["faults={crash_before: 0.7, nan: 0.5}"])


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("crash_before", "injected crash before training"),
        ("crash_after", "injected crash after training"),
        ("nan", "NaN"),
        ("wrong_shape", "shape"),
        ("oversized", "exceeds"),
    ],
)
def test_every_fault_kind_becomes_a_failure_value(mnist_dir, kind, reason):
    # Prepare: every client meets the fault.
    cfg = tiny_config(
        mnist_dir,
        **{"faults": f"{{{kind}: 1.0}}", "strategy.params": "{fraction: 1.0, min_clients: 1}"},
    )
    fed = build_experiment(cfg).federation
    before = {k: v.clone() for k, v in fed.global_state.items()}
    # Execute
    record = fed.run_round(0)
    # Assert: four failures naming the fault, the round failed, the state kept.
    assert record.metrics["failures"] == 4
    assert all(reason in v for v in record.metrics["failed_clients"].values())
    assert "round_failed" in record.metrics
    assert all(torch.equal(before[k], fed.global_state[k]) for k in before)


def test_faults_are_part_of_the_fingerprint():
    assert (
        load_config(None).fingerprint()
        != load_config(None, ["faults={crash_before: 0.1}"]).fingerprint()
    )


def test_a_nan_fault_corrupts_a_channels_last_weight():
    # Prepare: an update whose first float tensor is a channels-last conv weight (as
    # huscf_cgan's channels_last gives), which has no flat view.
    weight = torch.ones(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    plan = FaultPlan.from_config(FaultsConfig(nan=1.0))
    # Execute
    out = plan.corrupt("nan", {"w": weight, "steps": torch.tensor(3)})
    # Assert: one NaN, the rest and the original untouched.
    assert int(torch.isnan(out["w"]).sum()) == 1 and out["w"].shape == weight.shape
    assert not torch.isnan(weight).any() and torch.equal(out["steps"], torch.tensor(3))
