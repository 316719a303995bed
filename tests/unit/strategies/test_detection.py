"""The detection stage flags outlying clients (FedDetect-style) and logs them per round."""

from __future__ import annotations

import pytest
import torch
from tiny_federation import tiny_config

from fedgen.assembly.attack import choose_attackers
from fedgen.errors import ConfigError
from fedgen.experiment import build_experiment
from fedgen.strategies.detection import DetectingStrategy, OutlierDetector, robust_z
from fedgen.strategies.fedavg import FedAvg
from fedgen.types import ClientResult


def results(vectors: list[torch.Tensor], losses: list[float] | None = None) -> list[ClientResult]:
    return [
        ClientResult(
            i,
            10,
            update={"w": v.float()},
            metrics={"loss/d": (losses or [1.0] * len(vectors))[i]},
        )
        for i, v in enumerate(vectors)
    ]


def honest(n: int = 7) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(50, generator=gen)
    return [base + 0.3 * torch.randn(50, generator=gen) for _ in range(n)]


def test_robust_z_by_hand():
    # median 2, absolute deviations 1, 0, 0, 8 -> MAD 0.5; z of 10 = 8 / (1.4826 * 0.5).
    z = robust_z(torch.tensor([1.0, 2.0, 2.0, 10.0], dtype=torch.float64))
    assert z[3].item() == pytest.approx(8 / (1.4826 * 0.5))
    assert z[1].item() == 0.0
    assert torch.isfinite(robust_z(torch.ones(4, dtype=torch.float64))).all()


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (lambda u: 10 * u, "norm"),  # scaling
        (lambda u: torch.zeros_like(u), "norm"),  # free rider
        (lambda u: -u, "cosine"),  # sign flip
    ],
)
def test_each_kind_of_outlier_is_flagged(bad, why):
    updates = honest()
    updates[3] = bad(updates[3])
    flagged = OutlierDetector(3.5).flag(results(updates))
    assert list(flagged) == [3] and flagged[3].startswith(why)


def test_an_outlying_loss_is_flagged_and_too_few_results_flag_nothing():
    losses = [1.0, 1.1, 0.9, 1.05, 0.95, 7.0, 1.0]
    flagged = OutlierDetector(3.5).flag(results(honest(), losses))
    assert list(flagged) == [5] and flagged[5].startswith("loss/d")
    assert OutlierDetector().flag(results(honest(2))) == {}


def test_exclusion_leaves_flagged_clients_out_and_logs_them():
    updates = honest()
    updates[2] = 10 * updates[2]
    rs = results(updates)
    agg = DetectingStrategy(FedAvg(weighted=False), OutlierDetector(), exclude=True).aggregate(
        0, rs
    )
    kept = [u for i, u in enumerate(updates) if i != 2]
    assert torch.allclose(agg.delta["w"], torch.stack(kept).double().mean(0), atol=1e-6)
    assert agg.metrics["detect/flagged"] == 1.0 and agg.metrics["detect/flag/2"] == 1.0
    logged = DetectingStrategy(FedAvg(weighted=False), OutlierDetector()).aggregate(0, rs)
    assert torch.allclose(logged.delta["w"], torch.stack(updates).double().mean(0), atol=1e-6)


def test_a_tiny_federation_logs_its_scaling_attacker(mnist_dir):
    cfg = tiny_config(
        mnist_dir,
        attack="{kind: scaling, fraction: 0.25}",
        detection="{threshold: 3.5}",
        **{"federation.rounds": 1},
    )
    fed = build_experiment(cfg).federation
    assert fed.run()
    [attacker] = choose_attackers(range(4), 0.25, cfg.seed)
    metrics = fed.history[-1]
    assert metrics["strategy/detect/flagged"] == 1.0
    assert metrics[f"strategy/detect/flag/{attacker}"] == 1.0


def test_secagg_and_client_dp_refuse_the_detection_stage(mnist_dir):
    secure = tiny_config(
        mnist_dir,
        detection="{}",
        transforms="[{name: clip, params: {max_norm: 1.0}}, {name: secagg}]",
    )
    with pytest.raises(ConfigError, match="screens each client's update statistics"):
        build_experiment(secure)
    private = tiny_config(
        mnist_dir,
        detection="{}",
        transforms="[{name: clip, params: {max_norm: 1.0}}, "
        "{name: client_dp, params: {noise_multiplier: 1.0, delta: 1.0e-3}}]",
        **{
            "strategy.params": "{fraction: 1.0, min_clients: 1, weighted: false, "
            "sampling: poisson, fixed_denominator: true}"
        },
    )
    with pytest.raises(ConfigError, match="remove the detection section"):
        build_experiment(private)


def test_a_client_that_took_fewer_steps_is_not_an_outlier_by_its_step_counter():
    # Prepare: near-equal honest updates; one client took 3 local steps, the rest 30, so
    # their BatchNorm step counters' deltas differ (as under local_epochs on unequal shards).
    updates = results(honest())
    for i, res in enumerate(updates):
        assert res.update is not None
        res.update["bn.num_batches_tracked"] = torch.tensor(3 if i == 0 else 30)
    # Execute / Assert: the counter is no gradient; nobody is flagged by norm or cosine.
    assert OutlierDetector(3.5).flag(updates) == {}
